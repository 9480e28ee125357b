//! A real Prometheus scraping two Weft sidecars (outbound and inbound, mTLS between them) and a
//! TCP sidecar under traffic, then Istio's dashboard PromQL through Prometheus's HTTP API: the
//! series, labels and values Istio users' dashboards and alerts rely on.

use std::collections::BTreeSet;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_e2e::prometheus::{TestPrometheus, require_prometheus, sample_value};
use weft_e2e::upstream::tcp_echo;
use weft_e2e::{TestProxy, get};

use crate::istio_metrics::two_sidecars;

/// The dashboard shipped for Istio's standard queries.
const DASHBOARD: &str = include_str!("../../deploy/grafana/weft-istio-dashboard.json");

/// Every panel query of the dashboard.
fn dashboard_queries() -> Vec<String> {
    let d: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect()
}

/// The `istio_*` metric names a PromQL expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("istio_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Sends `ok` requests answered 200 and `denied` answered 403 through the client sidecar, and
/// one TCP connection through `tcp`.
async fn traffic(client: &TestProxy, tcp: &TestProxy, ok: usize, denied: usize) {
    for _ in 0..ok {
        assert_eq!(get(&client.url("outbound", "/reviews/1")).await.status, 200);
    }
    for _ in 0..denied {
        assert_eq!(get(&client.url("outbound", "/forbidden")).await.status, 403);
    }
    let mut s = tokio::net::TcpStream::connect(tcp.addr("db"))
        .await
        .expect("connect");
    s.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.expect("read");
}

fn label<'a>(sample: &'a Value, name: &str) -> &'a str {
    sample["metric"][name].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_weft_and_istio_dashboard_queries_answer() {
    let Some(binary) = require_prometheus() else {
        return;
    };
    let (client, server, _client_id, _server_id, _pki) = two_sidecars().await;
    let up = tcp_echo(">").await;
    let tcp = TestProxy::start(&format!(
        r#"
node: {{ workload_name: db-v1, namespace: data }}
listeners:
  - {{ name: db, address: 127.0.0.1:0, protocol: tcp, traffic_direction: inbound, tcp: {{ cluster: db }} }}
clusters:
  - {{ name: db, endpoints: [{{ address: "{up}" }}] }}
"#
    ))
    .await;

    traffic(&client, &tcp, 10, 2).await;
    let prometheus = TestPrometheus::start(
        &binary,
        &[
            ("client", client.admin()),
            ("server", server.admin()),
            ("tcp", tcp.admin()),
        ],
    )
    .await;
    prometheus.wait_targets_up(3).await;
    let total = "sum(istio_requests_total{reporter=\"destination\"})";
    prometheus
        .query_until(total, |r| r.first().map(sample_value) == Some(12.0))
        .await;
    // A second batch after the first scrape, so that rates over the window are not zero.
    traffic(&client, &tcp, 10, 2).await;
    prometheus
        .query_until(total, |r| r.first().map(sample_value) == Some(24.0))
        .await;
    // Each target is scraped on its own schedule: wait for the client's (source) side too.
    prometheus
        .query_until("sum(istio_requests_total{reporter=\"source\"})", |r| {
            r.first().map(sample_value) == Some(24.0)
        })
        .await;

    // The issue's query: incoming requests by workload and response code.
    let by_code = prometheus
        .query("sum(rate(istio_requests_total{reporter=\"destination\"}[1m])) by (destination_workload, response_code)")
        .await;
    assert_eq!(by_code.len(), 2, "{by_code:?}");
    let rate = |code: &str| {
        by_code
            .iter()
            .find(|s| label(s, "response_code") == code)
            .map(sample_value)
            .unwrap_or_else(|| panic!("no {code} series: {by_code:?}"))
    };
    assert!(
        by_code
            .iter()
            .all(|s| label(s, "destination_workload") == "reviews-v1")
    );
    assert!(rate("200") > 0.0 && rate("403") > 0.0, "{by_code:?}");
    // Same samples, same window: the rates keep the counts' 20:4 ratio.
    assert!(
        (rate("200") / rate("403") - 5.0).abs() < 1e-9,
        "{by_code:?}"
    );

    // Raw counters, both reporters, with the peer's workload on each side.
    for reporter in ["source", "destination"] {
        let r = prometheus
            .query(&format!(
                "sum(istio_requests_total{{reporter=\"{reporter}\"}}) by (source_workload, destination_workload, response_code)"
            ))
            .await;
        let count = |code: &str| {
            r.iter()
                .find(|s| {
                    label(s, "response_code") == code
                        && label(s, "source_workload") == "productpage-v1"
                        && label(s, "destination_workload") == "reviews-v1"
                })
                .map(sample_value)
        };
        assert_eq!(count("200"), Some(20.0), "{reporter}: {r:?}");
        assert_eq!(count("403"), Some(4.0), "{reporter}: {r:?}");
    }

    // p99 from the duration histogram: a number no larger than the smallest bucket bound that
    // holds every request (read from the same data).
    let p99 = prometheus
        .query("histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket[1m])) by (le))")
        .await;
    assert_eq!(p99.len(), 1, "{p99:?}");
    let p99 = sample_value(&p99[0]);
    let count = sample_value(
        &prometheus
            .query("sum(istio_request_duration_milliseconds_count)")
            .await[0],
    );
    let buckets = prometheus
        .query("sum(istio_request_duration_milliseconds_bucket) by (le)")
        .await;
    let bound = buckets
        .iter()
        .filter(|b| sample_value(b) == count)
        .filter_map(|b| label(b, "le").parse::<f64>().ok())
        .fold(f64::INFINITY, f64::min);
    assert!(
        p99.is_finite() && p99 >= 0.0 && p99 <= bound,
        "p99 {p99}, all within le={bound}"
    );

    // Every dashboard query reads families Weft exports, and Prometheus evaluates it with data.
    let exposition = format!(
        "{}{}{}",
        client.metrics_text().await,
        server.metrics_text().await,
        tcp.metrics_text().await
    );
    let queries = dashboard_queries();
    assert!(queries.len() >= 10);
    for q in &queries {
        for name in metric_names(q) {
            assert!(
                exposition
                    .lines()
                    .any(|l| l.starts_with(&format!("{name}{{"))),
                "{name} (in `{q}`) is not in Weft's exposition"
            );
        }
        // There were no 5xx: that panel alone has no series.
        let expect_data = !q.contains("response_code=~\"5.*\"");
        // Rate queries need two scrapes that saw the series (TCP bytes are reported when the
        // connection closes): wait for Prometheus to have them, bounded.
        let mut r = prometheus.query(q).await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while expect_data && r.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            r = prometheus.query(q).await;
        }
        assert_eq!(!r.is_empty(), expect_data, "`{q}`: {r:?}");
        assert!(r.iter().all(|s| !sample_value(s).is_nan()), "`{q}`: {r:?}");
    }
    let success = prometheus
        .query(&queries[1])
        .await
        .first()
        .map(sample_value);
    assert_eq!(success, Some(1.0), "no 5xx: success rate 1");
}
