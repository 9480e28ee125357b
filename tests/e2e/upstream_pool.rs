//! Upstream HTTP/1.1 connections pooled per worker (weft-upstream `h1_pool`):
//! kept alive and reused, never reused once the upstream closed them, closed after the
//! cluster's idle timeout, and still correct for bodies of every framing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use weft_e2e::{TestProxy, get};

/// Reads one request head (no body) from `s`; false at EOF.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            return true;
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An upstream running `serve` on each connection: counts the connections it accepts and
/// sends an event when one ends.
async fn counted<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicU64>, mpsc::UnboundedReceiver<()>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let accepted = Arc::new(AtomicU64::new(0));
    let (closed_tx, closed_rx) = mpsc::unbounded_channel();
    let count = accepted.clone();
    let serve = Arc::new(serve);
    let addr = weft_e2e::upstream::accept_each(move |s| {
        count.fetch_add(1, Ordering::SeqCst);
        let (closed, serve) = (closed_tx.clone(), serve.clone());
        async move {
            serve(s).await;
            let _ = closed.send(());
        }
    })
    .await;
    (addr, accepted, closed_rx)
}

/// A raw HTTP/1.1 upstream: counts the connections it accepts; answers each request `ok`
/// (`content-length: 2`, no `Connection: close`); with `close_after_each`, closes the
/// connection right after each response, silently. Sends an event when a connection ends.
async fn upstream(
    close_after_each: bool,
) -> (SocketAddr, Arc<AtomicU64>, mpsc::UnboundedReceiver<()>) {
    counted(move |mut s| async move {
        let mut buf = Vec::new();
        while read_head(&mut s, &mut buf).await {
            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if s.write_all(reply).await.is_err() || close_after_each {
                break;
            }
        }
    })
    .await
}

fn config(up: SocketAddr, idle_timeout: &str) -> String {
    format!(
        r#"
access_log: {{ path: "off" }}
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: up }} }}]
clusters:
  - {{ name: up, idle_timeout: {idle_timeout}, endpoints: [{{ address: "{up}" }}] }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_upstream_connection() {
    let (up, accepted, _closed) = upstream(false).await;
    // One worker: with `reuseport` each worker keeps its own pool (see the per-worker test).
    let p = TestProxy::start(&format!("workers: 1\n{}", config(up, "60s"))).await;
    for i in 0..20 {
        let r = get(&p.url("main", &format!("/n/{i}"))).await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.body, "ok", "request {i}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one kept-alive upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_upstream_closed_while_idle_is_not_reused() {
    let (up, accepted, mut closed) = upstream(true).await;
    let p = TestProxy::start(&config(up, "60s")).await;
    for i in 0..10 {
        let r = get(&p.url("main", &format!("/n/{i}"))).await;
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
        assert_eq!(r.body, "ok", "request {i}");
        // The upstream has closed this request's connection (its FIN is on its way).
        tokio::time::timeout(Duration::from_secs(10), closed.recv())
            .await
            .expect("the upstream closes the connection")
            .expect("closed event");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        10,
        "a new connection for each request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_upstream_connection_is_closed_after_the_idle_timeout() {
    let (up, accepted, mut closed) = upstream(false).await;
    let p = TestProxy::start(&config(up, "200ms")).await;
    let r = get(&p.url("main", "/")).await;
    assert_eq!(r.status, 200);
    // Weft closes it (the upstream sees EOF) with no further traffic.
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("Weft closes the idle upstream connection")
        .expect("closed event");
    // And the next request opens a new one.
    let r = get(&p.url("main", "/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// With `runtime.accept: reuseport` each worker drives its own upstream connections (a
/// connection registered with one worker's reactor is never polled from another's): however the
/// kernel spreads the client connections, the requests reuse at most one upstream connection per
/// worker, and every one is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuseport_workers_each_reuse_their_own_upstream_connection() {
    let (up, accepted, _closed) = upstream(false).await;
    let yaml = format!(
        "workers: 2\nruntime:\n  accept: reuseport\n{}",
        config(up, "60s")
    );
    let p = TestProxy::start(&yaml).await;
    for i in 0..30 {
        let r = get(&p.url("main", &format!("/w/{i}"))).await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.body, "ok", "request {i}");
    }
    let opened = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&opened),
        "{opened} upstream connections for 30 sequential requests on two workers"
    );
}

/// Request bodies of every size go through pooled connections whole, one after another on a
/// reused connection (the body is sent while the request's task polls the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_go_through_whole() {
    let up = weft_e2e::upstream::echo("up").await;
    let p = TestProxy::start(&config(up, "60s")).await;
    let client = weft_e2e::client();
    for (i, len) in [0usize, 1, 16 * 1024, 256 * 1024, 3]
        .into_iter()
        .enumerate()
    {
        let req = http::Request::post(p.url("main", &format!("/echo/{i}")))
            .body(http_body_util::Full::new(bytes::Bytes::from(vec![
                b'x';
                len
            ])))
            .expect("request");
        let r = weft_e2e::send(&client, req).await;
        assert_eq!(r.status, 200, "request {i}");
        let text = String::from_utf8_lossy(&r.body);
        assert!(
            text.contains(&format!("\"body_bytes\": {len},")),
            "request {i}: the upstream got {len} body bytes: {text}"
        );
    }
}

/// A raw HTTP/1.1 upstream that answers by method and path: `HEAD` with a head only (its
/// `content-length: 2` describes the GET), `/nc` with `204`, `/stall` with the first 64 KiB of
/// a 1 MiB body and then nothing until the connection ends, anything else `ok`. Counts the
/// connections it accepts; sends an event when one ends.
async fn varied_upstream() -> (SocketAddr, Arc<AtomicU64>, mpsc::UnboundedReceiver<()>) {
    counted(|mut s| async move {
        let mut buf = Vec::new();
        loop {
            // The request line is at the start of the buffer before `read_head` drains it.
            let mut line = String::new();
            loop {
                if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                    line = String::from_utf8_lossy(&buf[..end]).into_owned();
                    break;
                }
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            if line.is_empty() || !read_head(&mut s, &mut buf).await {
                break;
            }
            let written = if line.starts_with("HEAD ") {
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
                    .await
            } else if line.starts_with("GET /nc ") {
                s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await
            } else if line.starts_with("GET /stall ") {
                // 64 KiB of a 1 MiB body, then nothing until the connection ends.
                let mut reply = b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n".to_vec();
                reply.resize(reply.len() + 64 * 1024, b'b');
                if s.write_all(&reply).await.is_ok() {
                    let mut rest = [0u8; 1024];
                    while matches!(s.read(&mut rest).await, Ok(n) if n > 0) {}
                }
                break;
            } else {
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
            };
            if written.is_err() {
                break;
            }
        }
    })
    .await
}

/// A response with no body to read (`HEAD`, `204`) is never polled to its end by the
/// downstream side: its connection still goes back to the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_no_content_responses_leave_their_connection_reusable() {
    let (up, accepted, _closed) = varied_upstream().await;
    let p = TestProxy::start(&format!("workers: 1\n{}", config(up, "60s"))).await;
    let client = weft_e2e::client();
    for i in 0..3 {
        let head = http::Request::head(p.url("main", &format!("/h/{i}")))
            .body(http_body_util::Full::default())
            .expect("request");
        let r = weft_e2e::send(&client, head).await;
        assert_eq!(r.status, 200, "HEAD {i}");
        assert!(r.body.is_empty(), "HEAD {i}: no body");
        let r = get(&p.url("main", "/nc")).await;
        assert_eq!(r.status, 204, "204 {i}");
        let r = get(&p.url("main", &format!("/g/{i}"))).await;
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, "ok".to_owned()),
            "GET {i}"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "HEAD, 204 and GET responses all leave the one upstream connection reusable"
    );
}

/// A client that goes away in the middle of a response: the upstream connection that still
/// owes the rest of that body is closed, never handed to the next request (which would read
/// the old body's bytes as its response).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_abandoned_mid_body_does_not_return_its_connection() {
    let (up, accepted, mut closed) = varied_upstream().await;
    let p = TestProxy::start(&format!("workers: 1\n{}", config(up, "60s"))).await;
    let mut c = TcpStream::connect(p.addr("main")).await.expect("connect");
    c.write_all(b"GET /stall HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("request");
    let mut got = Vec::new();
    while got.len() < 32 * 1024 {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(Duration::from_secs(10), c.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            other => panic!("the first part of the response did not arrive: {other:?}"),
        }
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", &got[..32]);
    drop(c);
    // Weft gives up on that response: the upstream sees its connection end.
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the abandoned upstream connection is closed")
        .expect("closed event");
    for i in 0..3 {
        let r = get(&p.url("main", &format!("/after/{i}"))).await;
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, "ok".to_owned()),
            "request {i}"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the abandoned connection, then one reused connection for the next requests"
    );
}
