//! End-to-end tests: a real hyper 1.x HTTP/1 server over
//! `GuardedIo<TcpStream>`, driven by raw TCP clients.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test-support helpers outside #[test] functions report failure by panicking"
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use weft_framing::{GuardHandle, GuardedIo, Limits, Rejection};

/// Safety limit for every wait in these tests (never a timing assertion).
const SAFETY: Duration = Duration::from_secs(5);

struct Finished {
    guard: GuardHandle,
    result: Result<(), hyper::Error>,
}

struct Server {
    addr: SocketAddr,
    finished: mpsc::UnboundedReceiver<Finished>,
}

impl Server {
    async fn start(limits: Limits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, finished) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (io, guard) = GuardedIo::new(stream, limits);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc_guard = guard.clone();
                    let svc = service_fn(move |req| handle(req, svc_guard.clone()));
                    let result = http1::Builder::new()
                        .serve_connection(TokioIo::new(io), svc)
                        .with_upgrades()
                        .await;
                    let _ = tx.send(Finished { guard, result });
                });
            }
        });
        Server { addr, finished }
    }

    /// Waits for the (single) connection of a test to finish on the server.
    async fn next_finished(&mut self) -> Finished {
        timeout(SAFETY, self.finished.recv())
            .await
            .expect("server connection did not finish")
            .expect("server gone")
    }
}

/// Service: `/ws` with `Upgrade` → 101 and an echo over the upgraded
/// connection (calls `mark_upgraded`); `/slow` waits a little before
/// answering; everything else answers 200 with the request body length.
async fn handle(
    mut req: Request<Incoming>,
    guard: GuardHandle,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/ws" && req.headers().contains_key(hyper::header::UPGRADE) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 4096];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut reply = b"echo:".to_vec();
                        reply.extend_from_slice(&buf[..n]);
                        if io.write_all(&reply).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        guard.mark_upgraded();
        let resp = Response::builder()
            .status(101)
            .header("upgrade", "echo")
            .header("connection", "upgrade")
            .body(Full::default())
            .unwrap();
        return Ok(resp);
    }
    if req.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut body = req.into_body();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    len += data.len() as u64;
                }
            }
            Err(_) => {
                let resp = Response::builder()
                    .status(400)
                    .body(Full::from("body error"))
                    .unwrap();
                return Ok(resp);
            }
        }
    }
    Ok(Response::new(Full::from(len.to_string())))
}

async fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    timeout(SAFETY, stream.read_to_end(&mut out))
        .await
        .expect("connection was not closed")
        .expect("read error");
    out
}

/// Sends `request` on a fresh connection and reads until the server closes.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_to_eof(&mut stream).await
}

/// Splits a byte stream of responses into (status, body); every response
/// must carry a content-length.
fn parse_responses(mut raw: &[u8]) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "incomplete response head: {:?}",
                    String::from_utf8_lossy(raw)
                )
            });
        let head = std::str::from_utf8(&raw[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next().unwrap()[9..12].parse().unwrap();
        let len: usize = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.trim().parse().unwrap());
        let body = &raw[end + 4..end + 4 + len];
        out.push((status, String::from_utf8(body.to_vec()).unwrap()));
        raw = &raw[end + 4 + len..];
    }
    out
}

fn limits() -> Limits {
    Limits::default()
}

/// Asserts that `request` alone on a connection gets exactly the guard's
/// minimal response for `expected`, that the connection closes, and that
/// hyper shut the IO down cleanly.
async fn assert_rejected(request: &[u8], expected: Rejection, limits: Limits) {
    let mut server = Server::start(limits).await;
    let raw = exchange(server.addr, request).await;
    assert_eq!(
        String::from_utf8_lossy(&raw),
        String::from_utf8_lossy(expected.response_bytes()),
        "request {:?}",
        String::from_utf8_lossy(&request[..request.len().min(200)])
    );
    let done = server.next_finished().await;
    assert_eq!(done.guard.rejection(), Some(expected));
    let stats = done.guard.stats();
    assert!(stats.shutdown_called, "hyper must call poll_shutdown");
    assert!(stats.rejection_response_sent);
    assert!(done.result.is_ok(), "{:?}", done.result);
}

#[tokio::test]
async fn smuggling_vectors_get_exact_status_and_close() {
    use Rejection as R;
    let cases: &[(&str, Rejection)] = &[
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            R::ContentLengthWithTransferEncoding,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
            R::ContentLengthWithTransferEncoding,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            R::DuplicateContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
            R::DuplicateContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
            R::InvalidContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            R::InvalidContentLength,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            R::DuplicateHost,
        ),
        ("GET / HTTP/1.1\r\n\r\n", R::MissingHost),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", R::InvalidHost),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            R::UnsupportedTransferEncoding,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            R::UnsupportedTransferEncoding,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            R::UnsupportedTransferEncoding,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            R::UnsupportedTransferEncoding,
        ),
        (
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            R::UnsupportedTransferEncoding,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            R::ObsFold,
        ),
        ("GET / HTTP/1.1\nHost: a\n\n", R::InvalidLineEnding),
        (
            "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
            R::InvalidLineEnding,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
            R::InvalidHeaderName,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
            R::InvalidHeaderValue,
        ),
        (
            "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            R::MalformedRequestLine,
        ),
        (
            "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            R::MalformedRequestLine,
        ),
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", R::UnsupportedVersion),
        ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", R::UnsupportedVersion),
    ];
    for (request, expected) in cases {
        assert_rejected(request.as_bytes(), *expected, limits()).await;
    }
}

#[tokio::test]
async fn too_many_headers_is_431() {
    let mut req = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..100 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    assert_rejected(req.as_bytes(), Rejection::TooManyHeaders, limits()).await;
}

#[tokio::test]
async fn huge_header_is_431() {
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 70 * 1024));
    req.extend_from_slice(b"\r\n\r\n");
    assert_rejected(&req, Rejection::HeadTooLarge, limits()).await;
}

#[tokio::test]
async fn slow_head_is_408() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    // Incomplete head, then nothing: the guard must time out.
    assert_rejected(
        b"GET / HTTP/1.1\r\nHost: a\r\n",
        Rejection::HeadTimeout,
        limits,
    )
    .await;
}

#[tokio::test]
async fn idle_connection_is_not_a_slow_head() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let mut server = Server::start(limits).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // Idle (no byte of a head yet) for longer than the header timeout.
    tokio::time::sleep(Duration::from_millis(400)).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let raw = read_to_eof(&mut stream).await;
    assert_eq!(parse_responses(&raw), vec![(200, "0".to_string())]);
    drop(stream);
    assert_eq!(server.next_finished().await.guard.rejection(), None);
}

const PIPELINE: &str = concat!(
    "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    "POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    "3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n",
    "\r\nGET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
);

#[tokio::test]
async fn pipelined_keep_alive_requests_all_succeed() {
    let mut server = Server::start(limits()).await;
    let raw = exchange(server.addr, PIPELINE.as_bytes()).await;
    assert_eq!(
        parse_responses(&raw),
        vec![
            (200, "5".to_string()),
            (200, "7".to_string()),
            (200, "0".to_string())
        ]
    );
    let done = server.next_finished().await;
    assert_eq!(done.guard.rejection(), None);
    assert!(done.result.is_ok(), "{:?}", done.result);
}

#[tokio::test]
async fn pipelined_requests_survive_byte_by_byte_delivery() {
    let mut server = Server::start(limits()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for b in PIPELINE.as_bytes() {
        stream.write_all(std::slice::from_ref(b)).await.unwrap();
        tokio::task::yield_now().await;
    }
    let raw = read_to_eof(&mut stream).await;
    assert_eq!(
        parse_responses(&raw),
        vec![
            (200, "5".to_string()),
            (200, "7".to_string()),
            (200, "0".to_string())
        ]
    );
    drop(stream);
    assert_eq!(server.next_finished().await.guard.rejection(), None);
}

async fn assert_ok_then_rejected(first_path: &str) {
    let mut server = Server::start(limits()).await;
    let request = format!(
        "GET {first_path} HTTP/1.1\r\nHost: a\r\n\r\n\
         POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
    );
    let raw = exchange(server.addr, request.as_bytes()).await;
    assert_eq!(
        parse_responses(&raw),
        vec![(200, "0".to_string()), (400, "Bad Request".to_string())]
    );
    assert!(raw.ends_with(Rejection::DuplicateContentLength.response_bytes()));
    let done = server.next_finished().await;
    assert_eq!(
        done.guard.rejection(),
        Some(Rejection::DuplicateContentLength)
    );
    let stats = done.guard.stats();
    assert!(stats.shutdown_called && stats.rejection_response_sent);
    assert!(done.result.is_ok(), "{:?}", done.result);
}

#[tokio::test]
async fn valid_then_bad_pipelined_gets_200_then_400() {
    assert_ok_then_rejected("/").await;
}

#[tokio::test]
async fn slow_valid_then_bad_pipelined_gets_200_then_400() {
    // The service is still working on the first request when the guard
    // rejects the second: the 400 must wait for the 200.
    assert_ok_then_rejected("/slow").await;
}

#[tokio::test]
async fn no_guard_response_after_connection_close_response() {
    let mut server = Server::start(limits()).await;
    let raw = exchange(
        server.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(parse_responses(&raw), vec![(200, "0".to_string())]);
    let done = server.next_finished().await;
    assert!(!done.guard.stats().rejection_response_sent);
}

#[tokio::test]
async fn upgrade_switches_to_raw_passthrough() {
    let mut server = Server::start(limits()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // Raw bytes that would be rejected as HTTP are sent right behind the
    // upgrade request, before the 101 arrives.
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n\0raw\nGET / HTTP/9.9\n\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let expected_tail = b"echo:\0raw\nGET / HTTP/9.9\n\n";
    timeout(SAFETY, async {
        while !got.ends_with(expected_tail) {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no echo");
    assert!(got.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    // Both directions keep flowing raw.
    for msg in [
        &b"\r\n\r\n"[..],
        b"Transfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
    ] {
        stream.write_all(msg).await.unwrap();
        let mut expected = b"echo:".to_vec();
        expected.extend_from_slice(msg);
        let mut reply = vec![0u8; expected.len()];
        timeout(SAFETY, stream.read_exact(&mut reply))
            .await
            .expect("no echo")
            .unwrap();
        assert_eq!(reply, expected);
    }
    drop(stream);
    let done = server.next_finished().await;
    assert_eq!(done.guard.rejection(), None);
}

#[tokio::test]
async fn declined_upgrade_resumes_http() {
    let mut server = Server::start(limits()).await;
    let raw = exchange(
        server.addr,
        b"GET /other HTTP/1.1\r\nHost: a\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n\
          POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await;
    assert_eq!(
        parse_responses(&raw),
        vec![(200, "0".to_string()), (200, "2".to_string())]
    );
    assert_eq!(server.next_finished().await.guard.rejection(), None);
}

#[tokio::test]
async fn declined_upgrade_then_smuggling_is_still_caught() {
    let mut server = Server::start(limits()).await;
    let raw = exchange(
        server.addr,
        b"GET /other HTTP/1.1\r\nHost: a\r\nUpgrade: echo\r\n\r\n\
          GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    )
    .await;
    assert_eq!(
        parse_responses(&raw),
        vec![(200, "0".to_string()), (400, "Bad Request".to_string())]
    );
    let done = server.next_finished().await;
    assert_eq!(done.guard.rejection(), Some(Rejection::DuplicateHost));
}

#[tokio::test]
async fn bad_chunk_size_closes_connection() {
    let mut server = Server::start(limits()).await;
    let raw = exchange(
        server.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await;
    // hyper saw the body end early; the service answered that request
    // itself, so the guard adds nothing.
    assert_eq!(parse_responses(&raw), vec![(400, "body error".to_string())]);
    let done = server.next_finished().await;
    assert_eq!(done.guard.rejection(), Some(Rejection::InvalidChunkedBody));
    assert!(!done.guard.stats().rejection_response_sent);
}

#[tokio::test]
async fn large_chunked_upload_streams_with_flat_memory() {
    const TOTAL: usize = 64 * 1024 * 1024;
    let mut server = Server::start(limits()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let writer = async {
        stream
            .write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let data = vec![b'x'; 256 * 1024];
        let mut sent = 0;
        let mut size = 1usize;
        while sent < TOTAL {
            // Varying chunk sizes, from 1 byte to 256 KiB.
            size = (size * 7 + 13) % (256 * 1024) + 1;
            let n = size.min(TOTAL - sent);
            stream
                .write_all(format!("{n:x};i={sent}\r\n").as_bytes())
                .await
                .unwrap();
            stream.write_all(&data[..n]).await.unwrap();
            stream.write_all(b"\r\n").await.unwrap();
            sent += n;
        }
        stream.write_all(b"0\r\nX-Done: yes\r\n\r\n").await.unwrap();
        read_to_eof(&mut stream).await
    };
    let raw = timeout(Duration::from_secs(120), writer)
        .await
        .expect("upload stalled");
    assert_eq!(parse_responses(&raw), vec![(200, TOTAL.to_string())]);
    let done = server.next_finished().await;
    assert_eq!(done.guard.rejection(), None);
    let high_water = done.guard.stats().buffer_high_water;
    assert!(
        high_water <= 16 * 1024,
        "guard buffered {high_water} bytes for a streamed body"
    );
}

#[tokio::test]
async fn large_content_length_upload_streams_with_flat_memory() {
    const TOTAL: usize = 32 * 1024 * 1024;
    let mut server = Server::start(limits()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let writer = async {
        stream
            .write_all(
                format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {TOTAL}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let data = vec![b'y'; 1024 * 1024];
        for _ in 0..TOTAL / data.len() {
            stream.write_all(&data).await.unwrap();
        }
        read_to_eof(&mut stream).await
    };
    let raw = timeout(Duration::from_secs(120), writer)
        .await
        .expect("upload stalled");
    assert_eq!(parse_responses(&raw), vec![(200, TOTAL.to_string())]);
    let done = server.next_finished().await;
    assert!(done.guard.stats().buffer_high_water <= 16 * 1024);
}

#[tokio::test]
async fn expect_continue_interim_response_is_tracked() {
    let mut server = Server::start(limits()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let mut interim = vec![0u8; b"HTTP/1.1 100 Continue\r\n\r\n".len()];
    timeout(SAFETY, stream.read_exact(&mut interim))
        .await
        .expect("no 100 Continue")
        .unwrap();
    assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    // Body, then a bad pipelined request: 200 (after the 100) then 400.
    stream
        .write_all(
            b"abcGET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        )
        .await
        .unwrap();
    let raw = read_to_eof(&mut stream).await;
    assert_eq!(
        parse_responses(&raw),
        vec![(200, "3".to_string()), (400, "Bad Request".to_string())]
    );
    drop(stream);
    let done = server.next_finished().await;
    assert_eq!(
        done.guard.rejection(),
        Some(Rejection::DuplicateContentLength)
    );
}

#[tokio::test]
async fn head_response_then_rejection() {
    let mut server = Server::start(limits()).await;
    let raw = exchange(
        server.addr,
        b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    )
    .await;
    // The HEAD response announces content-length: 1 but has no body; the
    // guard's 400 follows its head directly.
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(raw.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(&raw[end..], Rejection::DuplicateHost.response_bytes());
    assert_eq!(
        server.next_finished().await.guard.rejection(),
        Some(Rejection::DuplicateHost)
    );
}
