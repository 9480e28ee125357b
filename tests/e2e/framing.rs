//! Request-smuggling vectors and limits, probed with raw bytes through a running proxy: each is
//! refused with the right status and never reaches the upstream.

use std::time::Duration;

use weft_e2e::upstream::sink;
use weft_e2e::{TestProxy, metric_value, raw};

async fn proxy() -> (TestProxy, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let (up, bytes) = sink().await;
    let p = TestProxy::start(&format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    http: {{ request_header_timeout: 300ms }}
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: up }} }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#
    ))
    .await;
    (p, bytes)
}

fn status_line(resp: &str) -> &str {
    resp.lines().next().unwrap_or("")
}

#[tokio::test]
async fn smuggling_vectors_get_400_and_never_reach_the_upstream() {
    let (p, upstream_bytes) = proxy().await;
    let addr = p.addr("main");
    let cases: &[(&str, &[u8])] = &[
        ("CL and TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("TE and CL", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
        ("duplicate equal CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
        ("CL list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello"),
        ("duplicate Host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("missing Host", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n"),
        ("bare CR in value", b"GET / HTTP/1.1\r\nHost: a\r\nX-Evil: a\rb\r\n\r\n"),
        ("NUL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX-Evil: a\x00b\r\n\r\n"),
        ("space before colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-Evil : a\r\n\r\n"),
        ("TE gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
        ("TE chunked twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("TE not final chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
    ];
    for (name, bytes) in cases {
        let resp = raw(addr, bytes).await;
        assert!(
            status_line(&resp).starts_with("HTTP/1.1 400")
                || status_line(&resp).starts_with("HTTP/1.1 501"),
            "{name}: {resp:?}"
        );
    }
    // The bad-chunk case sends its head before the body is found bad: it may reach the upstream
    // as a request cut short, but no smuggled bytes are delivered as a second request.
    assert_eq!(upstream_bytes.load(std::sync::atomic::Ordering::Relaxed), 0);
    let m = p.metrics().await;
    assert!(m.contains("weft_downstream_rq_rejected_total"), "{m}");
    let lines = p.access_log_lines(cases.len()).await;
    assert!(
        lines.iter().any(|l| l["response_flags"] == "DPE"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn header_limits_give_431() {
    let (p, _) = proxy().await;
    let addr = p.addr("main");
    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..101 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert!(status_line(&raw(addr, &many).await).starts_with("HTTP/1.1 431"));

    let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 70 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    assert!(status_line(&raw(addr, &big).await).starts_with("HTTP/1.1 431"));
}

#[tokio::test]
async fn a_slow_header_section_gets_408() {
    let (p, _) = proxy().await;
    let mut s = tokio::net::TcpStream::connect(p.addr("main"))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    // Never finish the head: the 300 ms header timeout must answer and close.
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let resp = String::from_utf8_lossy(&out);
    assert!(status_line(&resp).starts_with("HTTP/1.1 408"), "{resp:?}");
}

#[tokio::test]
async fn valid_pipelined_requests_pass_and_a_bad_one_after_them_is_refused() {
    let (p, upstream_bytes) = proxy().await;
    let resp = raw(
        p.addr("main"),
        b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /c HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    )
    .await;
    let statuses: Vec<&str> = resp.split("HTTP/1.1 ").skip(1).map(|r| &r[..3]).collect();
    assert_eq!(statuses, ["200", "200", "400"], "{resp}");
    assert_eq!(upstream_bytes.load(std::sync::atomic::Ordering::Relaxed), 8);
    let m = p.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"weft_downstream_rq_total{listener="main",code_class="2xx"}"#
        ),
        2.0
    );
}
