//! Upstreams for tests: echo servers and servers that misbehave on purpose.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// Listens on an ephemeral port of 127.0.0.1 and runs `serve` on every connection it accepts,
/// each in a task of its own, for as long as the test runs. Returns the address.
pub async fn accept_each<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve(s));
            }
        }
    });
    addr
}

/// An echo upstream named `name` on an ephemeral port (answers with JSON about the request).
pub async fn echo(name: &str) -> SocketAddr {
    weft_echo::spawn_echo("127.0.0.1:0".parse().expect("addr"), name)
        .await
        .expect("echo binds")
}

/// An upstream that waits `delay` before answering 200.
pub async fn slow(delay: Duration) -> SocketAddr {
    serve(move |_req| async move {
        tokio::time::sleep(delay).await;
        Response::new(Full::new(Bytes::from_static(b"slow")))
    })
    .await
}

/// An upstream that holds every request until the test lets it through, so that a test can
/// act while requests are provably in flight (instead of sleeping and hoping they are).
///
/// [`Gate::arrived`] counts the requests received so far and [`Gate::wait_arrived`] waits for
/// that count; each [`Gate::release`] lets one held request (or the next to arrive) answer
/// `200 gated`; [`Gate::open`] lets every request through from then on.
pub struct Gate {
    /// Its address.
    pub addr: SocketAddr,
    arrived: tokio::sync::watch::Receiver<usize>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Gate {
    /// Requests received so far (answered or held).
    pub fn arrived(&self) -> usize {
        *self.arrived.borrow()
    }

    /// Waits until at least `n` requests have been received. Panics after 10 s (a failure
    /// guard, not the synchronisation).
    pub async fn wait_arrived(&self, n: usize) {
        let mut rx = self.arrived.clone();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|a| *a >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} requests reached the gated upstream within 10 s"))
            .expect("the gated upstream is running");
    }

    /// Lets `n` more requests answer.
    pub fn release(&self, n: usize) {
        self.permits.add_permits(n);
    }

    /// Lets every request answer, now and from now on.
    pub fn open(&self) {
        self.permits.close();
    }
}

/// A [`Gate`]d upstream on an ephemeral port (HTTP/1.1 and h2c).
pub async fn gated() -> Gate {
    let (arrivals, arrived) = tokio::sync::watch::channel(0usize);
    let arrivals = Arc::new(arrivals);
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let p = permits.clone();
    let addr = serve(move |_req| {
        let (arrivals, permits) = (arrivals.clone(), p.clone());
        async move {
            arrivals.send_modify(|n| *n += 1);
            // A closed semaphore (an open gate) lets everything through.
            if let Ok(permit) = permits.acquire().await {
                permit.forget();
            }
            Response::new(Full::new(Bytes::from_static(b"gated")))
        }
    })
    .await;
    Gate {
        addr,
        arrived,
        permits,
    }
}

/// An upstream that reads the request head then closes the connection without answering.
pub async fn reset() -> SocketAddr {
    accept_each(|mut s| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        drop(s);
    })
    .await
}

/// A raw TCP echo server: every chunk read comes back prefixed with `prefix`.
pub async fn tcp_echo(prefix: &str) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let prefix = prefix.as_bytes().to_vec();
    accept_each(move |mut s| {
        let prefix = prefix.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut out = prefix.clone();
                out.extend_from_slice(&buf[..n]);
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

/// A port with nothing listening on it.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

/// An upstream that counts request body bytes and answers with the count; the counter is
/// returned too.
pub async fn sink() -> (SocketAddr, Arc<AtomicU64>) {
    let total = Arc::new(AtomicU64::new(0));
    let t = total.clone();
    let addr = serve_incoming(move |req: Request<Incoming>| {
        let t = t.clone();
        async move {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    n += d.len() as u64;
                }
            }
            t.fetch_add(n, Ordering::Relaxed);
            Response::new(Full::new(Bytes::from(n.to_string())))
        }
    })
    .await;
    (addr, total)
}

/// A WebSocket echo server: every text or binary message comes back unchanged.
pub async fn websocket_echo() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    accept_each(|s| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
            return;
        };
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                break;
            }
        }
    })
    .await
}

/// Serves `f` (with a buffered request) on an ephemeral port, HTTP/1.1 and h2c.
pub async fn serve<F, Fut>(f: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    serve_incoming(f).await
}

/// Serves `f` on an ephemeral port, HTTP/1.1 and h2c.
pub async fn serve_incoming<F, Fut>(f: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    accept_each(move |s| {
        let f = f.clone();
        async move {
            let svc = hyper::service::service_fn(move |req| {
                let f = f.clone();
                async move { Ok::<_, Infallible>(f(req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(s), svc)
                .await;
        }
    })
    .await
}

/// A gRPC reply body. Empty, it ends with the response head (trailers-only replies).
type GrpcBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// `message` in one gRPC frame (uncompressed; 4-byte big-endian length).
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    out.extend_from_slice(message);
    out.into()
}

/// A unary gRPC server on an ephemeral port, h2c with prior knowledge. `POST /{service}/{method}`
/// answers by method:
/// - `Say`: `200`, `content-type: application/grpc`, one message
///   `hello <request message> md=<x-probe-md> te=<te> path=<path>` (`-` for a header the request
///   lacks), then trailers `grpc-status: 0`;
/// - `Fail`: trailers-only: `200` with `grpc-status: 5`, `grpc-message: no such thing`, no body;
/// - `FailLate`: `200`, no message, trailers `grpc-status: 7`, `grpc-message: denied late`;
/// - `Slow`: never answers;
/// - `Http500` (or any other method): `500`, no gRPC headers, empty body.
pub async fn grpc_unary() -> SocketAddr {
    accept_each(|s| async move {
        let svc =
            hyper::service::service_fn(
                |req| async move { Ok::<_, Infallible>(grpc_reply(req).await) },
            );
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(s), svc)
            .await;
    })
    .await
}

/// [`grpc_unary`]'s answer to `req`.
async fn grpc_reply(req: Request<Incoming>) -> Response<GrpcBody> {
    use hyper::body::Frame;
    let header = |name: &str| {
        req.headers().get(name).map_or_else(
            || "-".to_owned(),
            |v| String::from_utf8_lossy(v.as_bytes()).into_owned(),
        )
    };
    let (md, te, path) = (
        header("x-probe-md"),
        header("te"),
        req.uri().path().to_owned(),
    );
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    // The first frame's message (a unary request has one).
    let message = body
        .get(1..5)
        .map(|len| u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize)
        .and_then(|len| body.get(5..5 + len))
        .unwrap_or_default();
    let trailers = |pairs: &[(&'static str, &'static str)]| {
        let mut map = http::HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, http::HeaderValue::from_static(v));
        }
        Frame::trailers(map)
    };
    match path.rsplit('/').next().unwrap_or_default() {
        "Say" => {
            let reply = format!(
                "hello {} md={md} te={te} path={path}",
                String::from_utf8_lossy(message)
            );
            let data = Frame::data(grpc_frame(reply.as_bytes()));
            let frames = vec![data, trailers(&[("grpc-status", "0")])];
            grpc_response(200, &[("content-type", "application/grpc")], frames)
        }
        "Fail" => grpc_response(
            200,
            &[
                ("content-type", "application/grpc"),
                ("grpc-status", "5"),
                ("grpc-message", "no such thing"),
            ],
            vec![],
        ),
        "FailLate" => grpc_response(
            200,
            &[("content-type", "application/grpc")],
            vec![trailers(&[
                ("grpc-status", "7"),
                ("grpc-message", "denied late"),
            ])],
        ),
        "Slow" => std::future::pending().await,
        _ => grpc_response(500, &[], vec![]),
    }
}

/// A response of [`grpc_unary`]: `status`, `headers`, then the body's `frames`; without frames an
/// empty body, so that the head carries END_STREAM (a trailers-only reply).
fn grpc_response(
    status: u16,
    headers: &[(&str, &str)],
    frames: Vec<hyper::body::Frame<Bytes>>,
) -> Response<GrpcBody> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = if frames.is_empty() {
        http_body_util::Empty::new().boxed()
    } else {
        let frames = frames.into_iter().map(Ok::<_, Infallible>);
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
    };
    b.body(body).expect("a valid response")
}
