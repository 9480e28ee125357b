//! An upstream that fails in controlled ways, switchable while it serves: 5xx bursts or
//! steady 5xx, connections closed before the response (reset), stalls, slow drips, a failing
//! health endpoint, and kill/restart on the same port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;

/// How the upstream answers requests (other than `/healthz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 with a JSON description of the request.
    Ok,
    /// This status, always.
    Status(u16),
    /// Close the connection without answering.
    Reset,
    /// Never answer.
    Stall,
    /// 200 at once, then `chunks` body chunks one per `every`.
    Drip {
        /// Chunks sent.
        chunks: u32,
        /// Pause before each chunk.
        every: Duration,
    },
}

struct State {
    name: String,
    mode: Mutex<Mode>,
    /// Requests left in a 5xx burst, and its status.
    burst: Mutex<(u64, u16)>,
    /// Requests left in a burst of gRPC errors (HTTP 200, `grpc-status`), and the code.
    grpc_burst: Mutex<(u64, u32)>,
    healthy: AtomicBool,
    hits: AtomicU64,
    health_hits: AtomicU64,
    hosts: Mutex<Vec<String>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// A controllable upstream on a fixed ephemeral port.
pub struct Faulty {
    /// Its address (kept across kill and restart).
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Faulty {
    /// Starts an upstream named `name` in [`Mode::Ok`].
    pub async fn start(name: &str) -> Faulty {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let f = Faulty {
            addr,
            state: Arc::new(State {
                name: name.to_owned(),
                mode: Mutex::new(Mode::Ok),
                burst: Mutex::new((0, 503)),
                grpc_burst: Mutex::new((0, 14)),
                healthy: AtomicBool::new(true),
                hits: AtomicU64::new(0),
                health_hits: AtomicU64::new(0),
                hosts: Mutex::new(Vec::new()),
                tasks: Mutex::new(Vec::new()),
            }),
        };
        f.serve(l);
        f
    }

    /// Switches how requests are answered.
    pub fn set(&self, mode: Mode) {
        *self.state.mode.lock() = mode;
    }

    /// The next `n` requests get `status`, then the mode applies again.
    pub fn burst(&self, n: u64, status: u16) {
        *self.state.burst.lock() = (n, status);
    }

    /// The next `n` requests get HTTP 200 with `grpc-status: code` (a trailers-only gRPC error).
    pub fn grpc_burst(&self, n: u64, code: u32) {
        *self.state.grpc_burst.lock() = (n, code);
    }

    /// Whether `/healthz` answers 200 (else 503).
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Requests served (health checks excluded).
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::Relaxed)
    }

    /// Health checks served.
    pub fn health_hits(&self) -> u64 {
        self.state.health_hits.load(Ordering::Relaxed)
    }

    /// Host headers seen, in order.
    pub fn hosts(&self) -> Vec<String> {
        self.state.hosts.lock().clone()
    }

    /// Stops listening and drops every open connection.
    pub fn kill(&self) {
        for t in self.state.tasks.lock().drain(..) {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => return self.serve(l),
                Err(e) if tokio::time::Instant::now() > deadline => panic!("rebind: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn serve(&self, l: TcpListener) {
        let state = self.state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let state2 = state.clone();
                let conn = tokio::spawn(async move {
                    let close = Arc::new(Notify::new());
                    let close2 = close.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state2.clone();
                        let close = close2.clone();
                        async move { Ok::<_, Infallible>(answer(&state, req, &close).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let serving = builder.serve_connection(TokioIo::new(s), svc);
                    tokio::select! {
                        _ = serving => {}
                        _ = close.notified() => {}
                    }
                });
                let mut tasks = state.tasks.lock();
                tasks.retain(|t| !t.is_finished());
                tasks.push(conn.abort_handle());
            }
        });
        self.state.tasks.lock().push(accept.abort_handle());
    }
}

/// A body fed from a channel (for slow drips).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(status: u16, text: String) -> Response<Body> {
    let mut r = Response::new(http_body_util::Full::new(Bytes::from(text)).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

async fn answer(state: &State, req: Request<Incoming>, close: &Notify) -> Response<Body> {
    if req.uri().path() == "/healthz" {
        state.health_hits.fetch_add(1, Ordering::Relaxed);
        let status = if state.healthy.load(Ordering::Relaxed) {
            200
        } else {
            503
        };
        return full(status, String::new());
    }
    state.hits.fetch_add(1, Ordering::Relaxed);
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let host = header("host");
    let attempt = header("x-envoy-attempt-count");
    state.hosts.lock().push(host.clone());
    let burst = {
        let mut b = state.burst.lock();
        if b.0 > 0 {
            b.0 -= 1;
            Some(b.1)
        } else {
            None
        }
    };
    let mode = *state.mode.lock();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if let Some(status) = burst {
        return full(status, format!("burst from {}", state.name));
    }
    let grpc = {
        let mut b = state.grpc_burst.lock();
        if b.0 > 0 {
            b.0 -= 1;
            Some(b.1)
        } else {
            None
        }
    };
    if let Some(code) = grpc {
        let mut r = full(200, String::new());
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/grpc"),
        );
        r.headers_mut()
            .insert("grpc-status", http::HeaderValue::from(code));
        return r;
    }
    match mode {
        Mode::Ok => full(
            200,
            serde_json::json!({
                "server": state.name,
                "host": host,
                "attempt": attempt,
                "body": String::from_utf8_lossy(&body),
            })
            .to_string(),
        ),
        Mode::Status(s) => full(s, format!("{s} from {}", state.name)),
        Mode::Reset => {
            close.notify_one();
            std::future::pending().await
        }
        Mode::Stall => std::future::pending().await,
        Mode::Drip { chunks, every } => {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                for _ in 0..chunks {
                    tokio::time::sleep(every).await;
                    if tx.send(Bytes::from_static(b"drip\n")).await.is_err() {
                        return;
                    }
                }
            });
            Response::new(ChannelBody(rx).boxed())
        }
    }
}

/// An upstream that speaks only HTTP/2 with prior knowledge (HTTP/1 is a protocol error to it):
/// `/healthz` answers 200 and counts in the returned counter, other paths answer `h2`.
pub async fn h2_only() -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let checks = Arc::new(AtomicU64::new(0));
    let counter = checks.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let counter = counter.clone();
                    async move {
                        if req.uri().path() == "/healthz" {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok::<_, Infallible>(full(200, "h2".to_owned()))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, checks)
}
