//! Each failure maps to Envoy's status and response flag, in the response and the access log.

use std::time::Duration;

use weft_e2e::upstream::{closed_port, echo, reset, slow};
use weft_e2e::{TestProxy, get, metric_value};

#[tokio::test]
async fn each_failure_has_envoys_status_and_flag() {
    let ok = echo("ok").await;
    let refused = closed_port().await;
    let stall = slow(Duration::from_secs(5)).await;
    let resets = reset().await;
    let p = TestProxy::start(&format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - {{ match: {{ path: {{ prefix: /ok }} }}, route: {{ cluster: ok }} }}
          - {{ match: {{ path: {{ prefix: /uh }} }}, route: {{ cluster: nowhere }} }}
          - {{ match: {{ path: {{ prefix: /uf }} }}, route: {{ cluster: refused }} }}
          - {{ match: {{ path: {{ prefix: /ut }} }}, route: {{ cluster: stall, timeout: 200ms }} }}
          - {{ match: {{ path: {{ prefix: /ur }} }}, route: {{ cluster: resets }} }}
clusters:
  - {{ name: ok, endpoints: [{{ address: "{ok}" }}] }}
  - {{ name: nowhere, endpoints: [{{ address: "no-such-host.invalid:80" }}], dns_refresh_rate: 1h }}
  - {{ name: refused, endpoints: [{{ address: "{refused}" }}], connect_timeout: 1s }}
  - {{ name: stall, endpoints: [{{ address: "{stall}" }}] }}
  - {{ name: resets, endpoints: [{{ address: "{resets}" }}] }}
"#
    ))
    .await;

    let cases = [
        ("/missing", 404, "NR", ""),
        ("/uh", 503, "UH", "no healthy upstream"),
        ("/uf", 503, "UF", "reset reason: connection failure"),
        ("/ut", 504, "UT", "upstream request timeout"),
        ("/ur", 503, "UR", "reset reason: connection termination"),
        ("/ok", 200, "-", ""),
    ];
    for (path, status, _, body) in cases {
        let r = get(&p.url("main", path)).await;
        assert_eq!(r.status.as_u16(), status, "{path}");
        assert!(r.text().contains(body), "{path}: {}", r.text());
    }
    let lines = p.access_log_lines(cases.len()).await;
    for (path, status, flag, _) in cases {
        let line = lines
            .iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no access log line for {path}: {lines:?}"));
        assert_eq!(line["status"], status, "{line}");
        assert_eq!(line["response_flags"], flag, "{line}");
    }
    let m = p.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"weft_response_flags_total{listener="main",response_flag="UF"}"#
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            r#"weft_upstream_cx_connect_fail_total{cluster="refused"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(&m, r#"weft_upstream_rq_timeout_total{cluster="stall"}"#),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"weft_downstream_rq_total{listener="main",code_class="5xx"}"#
        ),
        4.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"weft_downstream_rq_total{listener="main",code_class="4xx"}"#
        ),
        1.0
    );
}

/// A client that leaves while Weft waits on a slow upstream: the request is still accounted
/// for (in-flight counts come back to zero, the access log says `DC`), so least-request
/// balancing and idle timeouts are not skewed by requests that no longer exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_request_is_accounted_for() {
    let up = slow(Duration::from_secs(3)).await;
    let proxy = TestProxy::start(&format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: up, timeout: 10s }} }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#
    ))
    .await;
    let addr = proxy.addr("main");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let clusters = format!("http://{}/clusters", proxy.admin());
    let active = format!("up::{up}::rq_active::1");
    assert!(
        weft_e2e::eventually(Duration::from_secs(5), || async {
            get(&clusters).await.text().contains(&active)
        })
        .await,
        "{}",
        get(&clusters).await.text()
    );
    drop(s);
    let idle = format!("up::{up}::rq_active::0");
    assert!(
        weft_e2e::eventually(Duration::from_secs(5), || async {
            get(&clusters).await.text().contains(&idle)
        })
        .await,
        "{}",
        get(&clusters).await.text()
    );
    let lines = proxy.access_log_lines(1).await;
    let line = lines.last().expect("an access log line");
    assert_eq!(line["response_flags"], "DC", "{line}");
}
