//! The floor under Weft's request path: the least a reverse proxy built on hyper 1.x can do per
//! request, measured by `bench/floor.sh` side by side with Weft and haproxy (a benchmark, not a
//! test; issue 16's question is whether haproxy's CPU per request is reachable on hyper at all).
//!
//! One current-thread tokio runtime (one worker, like `workers: 1`), one listener, every request
//! forwarded unchanged to one upstream: no routing, no header policy, no framing guard, no
//! metrics, no access log. Three modes:
//!
//! - `legacy`: HTTP/1.1 server, hyper-util's pooled legacy client (what Weft uses upstream);
//! - `conn`: HTTP/1.1 server, one upstream HTTP/1.1 connection per downstream connection,
//!   driven by `hyper::client::conn::http1` (no pool, no pool key, no channel to a pool task
//!   other than the connection's own);
//! - `h2`: HTTP/2 server (prior knowledge), the pooled legacy client upstream (HTTP/1.1);
//! - `h2-conn`: HTTP/2 server, upstream as in `conn` (a stream that finds the connection's
//!   upstream sender taken opens another; with one stream at a time, as `bench/floor.sh` sends,
//!   each downstream connection keeps one upstream connection);
//! - `h2-local`: HTTP/2 server answering `hello world` itself (no upstream): hyper's HTTP/2
//!   server alone.
//!
//! ```text
//! hyper_floor MODE LISTEN_ADDR UPSTREAM_ADDR
//! hyper_floor conn 127.0.0.1:18390 127.0.0.1:18081
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

type Body = BoxBody<Bytes, hyper::Error>;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Legacy,
    Conn,
    H2,
    H2Conn,
    H2Local,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: hyper_floor legacy|conn|h2|h2-conn|h2-local LISTEN_ADDR UPSTREAM_ADDR";
    let [_, mode, listen, upstream] = args.as_slice() else {
        return Err(usage.into());
    };
    let mode = match mode.as_str() {
        "legacy" => Mode::Legacy,
        "conn" => Mode::Conn,
        "h2" => Mode::H2,
        "h2-conn" => Mode::H2Conn,
        "h2-local" => Mode::H2Local,
        other => return Err(format!("unknown mode '{other}'; {usage}").into()),
    };
    let listen: SocketAddr = listen
        .parse()
        .map_err(|e| format!("LISTEN_ADDR '{listen}': {e}"))?;
    let upstream: SocketAddr = upstream
        .parse()
        .map_err(|e| format!("UPSTREAM_ADDR '{upstream}': {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(mode, listen, upstream))
}

async fn serve(
    mode: Mode,
    listen: SocketAddr,
    upstream: SocketAddr,
) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(listen).await?;
    let authority: Authority = upstream.to_string().parse()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let io = TokioIo::new(stream);
        let client = client.clone();
        let authority = authority.clone();
        match mode {
            Mode::Legacy | Mode::H2 => {
                let service = service_fn(move |req| pooled(req, client.clone(), authority.clone()));
                if mode == Mode::H2 {
                    tokio::spawn(
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .timer(TokioTimer::new())
                            .serve_connection(io, service),
                    );
                } else {
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .serve_connection(io, service),
                    );
                }
            }
            Mode::H2Conn => {
                let slot: Arc<Mutex<Option<SendRequest<Incoming>>>> = Arc::new(Mutex::new(None));
                let service = service_fn(move |mut req: Request<Incoming>| {
                    *req.version_mut() = http::Version::HTTP_11;
                    if let Some(host) = req.uri().authority().map(|a| a.as_str().to_owned())
                        && let Ok(value) = http::HeaderValue::from_str(&host)
                    {
                        req.headers_mut().insert(http::header::HOST, value);
                    }
                    *req.uri_mut() = req
                        .uri()
                        .path_and_query()
                        .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
                    dedicated(req, slot.clone(), upstream)
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .serve_connection(io, service),
                );
            }
            Mode::H2Local => {
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .serve_connection(io, service_fn(local)),
                );
            }
            Mode::Conn => {
                // Requests on an HTTP/1.1 connection come one after the other: the sender is
                // taken for a request's send and put back before its response is awaited.
                let slot: Arc<Mutex<Option<SendRequest<Incoming>>>> = Arc::new(Mutex::new(None));
                let service = service_fn(move |req| dedicated(req, slot.clone(), upstream));
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .serve_connection(io, service),
                );
            }
        }
    }
}

/// The request's URI made absolute for the pooled client.
fn absolute(req: &mut Request<Incoming>, authority: Authority) {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
}

async fn pooled(
    mut req: Request<Incoming>,
    client: Client<HttpConnector, Incoming>,
    authority: Authority,
) -> Result<Response<Body>, Infallible> {
    absolute(&mut req, authority);
    *req.version_mut() = http::Version::HTTP_11;
    Ok(match client.request(req).await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(_) => bad_gateway(),
    })
}

async fn dedicated(
    req: Request<Incoming>,
    slot: Arc<Mutex<Option<SendRequest<Incoming>>>>,
    upstream: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let taken = slot.lock().take();
    let mut sender = match taken {
        Some(sender) if !sender.is_closed() => sender,
        _ => match connect(upstream).await {
            Some(sender) => sender,
            None => return Ok(bad_gateway()),
        },
    };
    if sender.ready().await.is_err() {
        return Ok(bad_gateway());
    }
    let response = sender.send_request(req);
    *slot.lock() = Some(sender);
    Ok(match response.await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(_) => bad_gateway(),
    })
}

async fn connect(upstream: SocketAddr) -> Option<SendRequest<Incoming>> {
    let stream = TcpStream::connect(upstream).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

async fn local(_: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let body = http_body_util::Full::new(Bytes::from_static(b"hello world\n"));
    Ok(Response::new(body.map_err(|never| match never {}).boxed()))
}

fn bad_gateway() -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}
