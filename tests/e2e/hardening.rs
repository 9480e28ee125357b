//! Hardening against slow, half-open and hostile peers (docs/hardening.md): protocol sniffing
//! and header timeouts, connection limits, the overload manager, upgrades only where allowed,
//! Envoy's timeout semantics, and the framing details (chunked GET bodies, userinfo, broken
//! upstream framing). Real sockets throughout; the few short timeouts configured here are
//! what the tests wait for (events: EOF, a status), never a sleep that is asserted on.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_e2e::upstream::{echo, gated};
use weft_e2e::{TestProxy, eventually, get_with, h2_client, metric_value, raw, send};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn one_route(cluster: SocketAddr, route_extra: &str, listener_extra: &str) -> String {
    format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
{listener_extra}
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - {{ match: {{ path: {{ prefix: /open }} }}, route: {{ cluster: up, upgrade_configs: [{{ upgrade_type: foo }}, {{ upgrade_type: websocket, enabled: false }}] }} }}
          - route: {{ cluster: up{route_extra} }}
clusters:
  - {{ name: up, endpoints: [{{ address: "{cluster}" }}] }}
"#
    )
}

/// The JSON body of a raw HTTP/1.1 response (the echo upstream's description).
fn json_body(response: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// Reads until the peer closes; a failure guard of 10 s (the close is the event awaited).
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the proxy closed the connection within 10 s");
    out
}

#[tokio::test]
async fn half_sent_prefaces_and_silent_h2_connections_are_closed_after_the_header_timeout() {
    let up = echo("up").await;
    let p = TestProxy::start(&one_route(
        up,
        "",
        "    http: { request_header_timeout: 300ms }",
    ))
    .await;
    // 16 of the 24 preface bytes, then nothing.
    let mut half = TcpStream::connect(p.addr("main")).await.unwrap();
    half.write_all(&PREFACE[..16]).await.unwrap();
    assert!(read_until_closed(&mut half).await.is_empty());

    // A full preface and SETTINGS, but never a request: GOAWAY, then close.
    let mut silent = TcpStream::connect(p.addr("main")).await.unwrap();
    silent.write_all(PREFACE).await.unwrap();
    silent
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let got = read_until_closed(&mut silent).await;
    assert!(
        got.chunks(1).len() >= 9 && got.windows(4).any(|w| w[3] == 0x7),
        "a GOAWAY frame (type 7) came first: {got:?}"
    );

    // A HEADERS frame without END_HEADERS and no CONTINUATION: the head never completes.
    let mut stuck = TcpStream::connect(p.addr("main")).await.unwrap();
    stuck.write_all(PREFACE).await.unwrap();
    stuck.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    // HEADERS, stream 1, flags END_STREAM only, 1 byte of block (an indexed :method GET).
    stuck
        .write_all(&[0, 0, 1, 1, 0x1, 0, 0, 0, 1, 0x82])
        .await
        .unwrap();
    read_until_closed(&mut stuck).await;

    // A preface sent in pieces is still HTTP/2.
    let r = send(
        &h2_client(),
        Request::get(p.url("main", "/x"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], "HTTP/1.1", "upstream is HTTP/1.1");
}

#[tokio::test]
async fn max_connections_refuses_the_excess_and_counts_it() {
    let up = echo("up").await;
    let p = TestProxy::start(&one_route(up, "", "    max_connections: 1")).await;
    let held = TcpStream::connect(p.addr("main")).await.unwrap();
    // The first connection is counted once accepted: wait for the gauge, not a guess.
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric_value(
                &p.metrics().await,
                "weft_downstream_cx_active{listener=\"main\"}",
            ) == 1.0
        })
        .await
    );
    let mut refused = TcpStream::connect(p.addr("main")).await.unwrap();
    refused
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .ok();
    assert!(
        read_until_closed(&mut refused).await.is_empty(),
        "closed without a response"
    );
    let m = p.metrics().await;
    assert_eq!(
        metric_value(&m, "weft_downstream_cx_overflow_total{listener=\"main\"}"),
        1.0,
        "{m}"
    );
    drop(held);
    let served = eventually(Duration::from_secs(5), || async {
        raw(
            p.addr("main"),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await
        .starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(served, "a slot frees when the held connection closes");
}

#[tokio::test]
async fn the_overload_manager_sheds_new_requests_closes_idle_connections_and_recovers() {
    let gate = gated().await;
    let base = one_route(gate.addr, "", "").replace(
        "        routes:\n",
        "        routes:\n          - { match: { path: { prefix: /idle } }, direct_response: { status: 200 } }\n",
    );
    let p = TestProxy::start(&base).await;
    let h2 = h2_client();
    // A request in flight on an HTTP/2 connection (not idle: it stays open when overloaded).
    let busy = {
        let (h2, url) = (h2.clone(), p.url("main", "/busy"));
        tokio::spawn(
            async move { send(&h2, Request::get(url).body(Full::default()).unwrap()).await },
        )
    };
    gate.wait_arrived(1).await;
    // An idle HTTP/1.1 connection (served one request, now waiting for the next).
    let mut idle = TcpStream::connect(p.addr("main")).await.unwrap();
    idle.write_all(b"GET /idle HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    // Any test process is above 16 MiB resident: the watermark trips at the next sample.
    p.write_config(&format!(
        "{base}overload: {{ max_rss_bytes: 16777216, refresh_interval: 10ms }}\n"
    ));
    p.proxy.reload().await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric_value(&p.metrics().await, "weft_overload_active") == 1.0
        })
        .await
    );
    read_until_closed(&mut idle).await;
    let shed = send(
        &h2,
        Request::get(p.url("main", "/new"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(shed.status, 503);
    assert_eq!(shed.text(), "envoy overloaded");
    // A new connection waits in the backlog: it is answered once the watermark clears.
    let waiting = {
        let addr = p.addr("main");
        tokio::spawn(async move {
            raw(
                addr,
                b"GET /later HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .await
        })
    };
    gate.open();
    assert_eq!(busy.await.unwrap().status, 200, "in-flight work completes");
    let m = p.metrics().await;
    assert_eq!(metric_value(&m, "weft_overload_rq_shed_total"), 1.0, "{m}");
    assert!(
        metric_value(&m, "weft_overload_cx_idle_closed_total") >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "weft_response_flags_total{listener=\"main\",response_flag=\"OM\"}"
        ),
        1.0,
        "{m}"
    );

    p.write_config(&base);
    p.proxy.reload().await.unwrap();
    let later = waiting.await.unwrap();
    assert!(later.starts_with("HTTP/1.1 200"), "{later}");
}

#[tokio::test]
async fn upgrades_go_through_only_where_the_route_allows_and_h2c_is_plain_http11() {
    let up = echo("up").await;
    let p = TestProxy::start(&one_route(up, "", "")).await;
    let url = |path: &str| p.url("main", path);
    // An unknown upgrade type: 403, as Envoy answers.
    let r = get_with(&url("/x"), &[("upgrade", "foo"), ("connection", "upgrade")]).await;
    assert_eq!(r.status, 403);
    // h2c: served as the plain HTTP/1.1 request, the upgrade headers removed.
    let r = get_with(
        &url("/x"),
        &[
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ("connection", "Upgrade, HTTP2-Settings"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    assert!(h.get("upgrade").is_none(), "{h}");
    assert!(h.get("http2-settings").is_none(), "{h}");
    assert!(h.get("connection").is_none(), "{h}");
    // A route that opts in to `foo` forwards it (the echo answers 200: no tunnel).
    let r = get_with(
        &url("/open"),
        &[("upgrade", "foo"), ("connection", "upgrade")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["upgrade"], "foo");
    // ... and one that disables WebSocket refuses it.
    let r = get_with(
        &url("/open"),
        &[("upgrade", "websocket"), ("connection", "upgrade")],
    )
    .await;
    assert_eq!(r.status, 403);
    let lines = p.access_log_lines(4).await;
    let refused: Vec<_> = lines.iter().filter(|l| l["status"] == 403).collect();
    assert_eq!(refused.len(), 2, "{lines:?}");
    assert!(
        refused.iter().all(|l| l["details"] == "upgrade_failed"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn chunked_get_bodies_are_forwarded_and_userinfo_never_reaches_the_upstream() {
    let up = echo("up").await;
    let p = TestProxy::start(&one_route(up, "", "")).await;
    let out = raw(
        p.addr("main"),
        b"GET /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(
        json_body(&out)["body_bytes"],
        5,
        "the body went upstream: {out}"
    );

    let out = raw(
        p.addr("main"),
        b"GET http://user:pw@evil.example/u HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(!out.contains("user:pw"), "userinfo stripped: {out}");
    assert_eq!(json_body(&out)["headers"]["host"], "evil.example", "{out}");

    // HTTP/2 `:authority` with userinfo.
    let r = send(
        &h2_client(),
        Request::get(format!("http://user:pw@{}/u", p.addr("main")))
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["headers"]["host"],
        p.addr("main").to_string(),
        "{:?}",
        r.json()
    );
}

/// An upstream that answers every connection's first request with `response`, then closes.
async fn canned(response: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(response).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn broken_upstream_framing_and_response_splitting_get_502_upe() {
    for (response, what) in [
        (
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1ffffffffffffffff\r\nxx\r\n0\r\n\r\n"[..],
            "chunk size overflowing 64 bits",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nxx\r\n0\r\n\r\n",
            "invalid chunk size",
        ),
        (
            b"HTTP/1.1 200 OK\r\nx-a: 1\nset-cookie: stolen=1\r\ncontent-length: 2\r\n\r\nok",
            "bare LF in a header value",
        ),
        (
            b"HTTP/1.1 200 OK\r\nx-a: 1\rset-cookie: stolen=1\r\ncontent-length: 2\r\n\r\nok",
            "bare CR in a header value",
        ),
    ] {
        let up = canned(response).await;
        let p = TestProxy::start(&one_route(up, "", "")).await;
        let out = raw(
            p.addr("main"),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 502"), "{what}: {out}");
        assert!(!out.contains("stolen"), "{what}: {out}");
        let lines = p.access_log_lines(1).await;
        assert_eq!(lines[0]["response_flags"], "UPE", "{what}: {lines:?}");
    }
}

/// Writes a request head announcing `len` body bytes, then the body in `pieces`, each after
/// the previous one was written and `gap` passed (a slow client; the gap drives the slowness,
/// nothing asserts on it).
async fn slow_upload(addr: SocketAddr, len: usize, pieces: usize, gap: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    for _ in 0..pieces {
        tokio::time::sleep(gap).await;
        if s.write_all(&vec![b'x'; len / pieces]).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn the_route_timeout_starts_when_the_request_is_complete() {
    let up = echo("up").await;
    // The upload takes longer than the route timeout; Envoy (and now Weft) answer 200.
    let p = TestProxy::start(&one_route(up, ", timeout: 300ms", "")).await;
    let out = slow_upload(p.addr("main"), 4000, 4, Duration::from_millis(150)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(json_body(&out)["body_bytes"], 4000, "{out}");

    // Once the request is complete, the route timeout bounds the wait for the upstream: 504 UT.
    let gate = gated().await;
    let p = TestProxy::start(&one_route(gate.addr, ", timeout: 300ms", "")).await;
    let out = raw(
        p.addr("main"),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    let lines = p.access_log_lines(1).await;
    assert_eq!(lines[0]["response_flags"], "UT", "{lines:?}");
}

#[tokio::test]
async fn request_and_stream_idle_timeouts_answer_408_or_504_si_as_envoy() {
    let gate = gated().await;
    // request_timeout: half a body, then nothing — 408.
    let p = TestProxy::start(&one_route(
        gate.addr,
        ", timeout: 0s",
        "    http: { request_timeout: 300ms }",
    ))
    .await;
    let mut s = TcpStream::connect(p.addr("main")).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhalf")
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&read_until_closed(&mut s).await).into_owned();
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");

    // Stream idle: an incomplete request that stops moving gets 408; a complete one whose
    // upstream never answers gets 504 SI (the route timeout is off here).
    let p = TestProxy::start(&one_route(
        gate.addr,
        ", timeout: 0s, idle_timeout: 300ms",
        "",
    ))
    .await;
    let mut s = TcpStream::connect(p.addr("main")).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhalf")
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&read_until_closed(&mut s).await).into_owned();
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    let out = raw(
        p.addr("main"),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    let lines = p.access_log_lines(2).await;
    assert!(
        lines.iter().any(|l| l["response_flags"] == "SI"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn upgrades_match_envoy_unknown_types_403_and_h2c_served_as_http11() {
    let Some(binary) = weft_e2e::envoy::require_envoy() else {
        return;
    };
    let up = echo("up").await;
    let weft = TestProxy::start(&one_route(up, "", "")).await;
    let envoy = weft_e2e::envoy::TestEnvoy::start(&binary, &[], up, &[]).await;
    for addr in [weft.addr("main"), envoy.addr()] {
        let url = format!("http://{addr}/x");
        let r = get_with(&url, &[("upgrade", "foo"), ("connection", "upgrade")]).await;
        assert_eq!(r.status, 403, "{addr}: unknown upgrade");
        let r = get_with(
            &url,
            &[
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
                ("connection", "Upgrade, HTTP2-Settings"),
            ],
        )
        .await;
        assert_eq!(r.status, 200, "{addr}: h2c");
        let h = &r.json()["headers"];
        for name in ["upgrade", "http2-settings", "connection"] {
            assert!(h.get(name).is_none(), "{addr}: {name} forwarded: {h}");
        }
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_a_response_is_disconnected_after_the_stream_idle_timeout() {
    const LEN: usize = 8 * 1024 * 1024;
    let mut response = format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\n\r\n").into_bytes();
    response.resize(response.len() + LEN, b'x');
    let up = canned(Box::leak(response.into_boxed_slice())).await;
    let p = TestProxy::start(&one_route(
        up,
        "",
        "    http: { stream_idle_timeout: 300ms }",
    ))
    .await;
    let mut s = TcpStream::connect(p.addr("main")).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // The client never reads: once the socket buffers are full nothing moves, and the proxy
    // gives the connection up (the access log entry is written when the response is dropped).
    let lines = p.access_log_lines(1).await;
    assert_eq!(lines.len(), 1, "the stalled response was ended");
    let sent = lines[0]["bytes_sent"].as_u64().unwrap();
    assert!(sent < LEN as u64, "cut short: {sent} of {LEN} bytes");
    drop(s);
}
