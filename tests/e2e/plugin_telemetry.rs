//! End to end: the shipped `telemetry` plugin through a running Weft (and once through Envoy 1.40).
//!
//! Weft runs the plugin in front of an echo upstream (which reports the headers it got, so the
//! propagated `traceparent` is visible) with a second upstream as the OTLP collector: a small
//! HTTP server on 127.0.0.1 that records every POST body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use serde_json::{Value, json};
use weft_e2e::envoy::{EnvoyPlugin, TestEnvoy, require_envoy};
use weft_e2e::plugins::shipped_plugin;
use weft_e2e::upstream::{closed_port, echo, serve_incoming};
use weft_e2e::{TestProxy, eventually, get_with, metric_value};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// What the collector received: `(path, content-type, body)` per export.
type Exports = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A collector on an ephemeral port answering 200 to every export and recording it.
async fn collector() -> (SocketAddr, Exports) {
    let seen: Exports = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let addr = serve_incoming(move |req: http::Request<hyper::body::Incoming>| {
        let s = s.clone();
        async move {
            let path = req.uri().path().to_owned();
            let ct = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            s.lock().push((path, ct, json));
            http::Response::new(Full::new(Bytes::from_static(b"{}")))
        }
    })
    .await;
    (addr, seen)
}

/// Every span the collector got.
fn spans(exports: &Exports) -> Vec<Value> {
    exports
        .lock()
        .iter()
        .flat_map(|(_, _, body)| {
            body["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// A text as a YAML scalar (JSON strings are YAML): the configuration reaches the plugin as is.
fn quoted(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

fn configuration(tracing: Value) -> String {
    json!({ "access_log": {}, "tracing": tracing }).to_string()
}

/// Weft with the plugin (as `name`: plugin metrics are process-wide, so each test has its own)
/// on listener `main` (route `api`) in front of `up`, and cluster `otel`.
async fn weft(name: &str, up: SocketAddr, otel: SocketAddr, config: &str) -> TestProxy {
    TestProxy::start(&format!(
        r#"
plugins:
  - name: {name}
    file: {file}
    configuration: {config}
    failure_policy: fail_closed
listeners:
  - name: main
    address: 127.0.0.1:0
    plugins: [{{ name: {name} }}]
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ name: api, route: {{ cluster: up }} }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
  - {{ name: otel, endpoints: [{{ address: "{otel}" }}] }}
"#,
        file = quoted(&shipped_plugin("telemetry")),
        config = quoted(config),
    ))
    .await
}

#[tokio::test]
async fn metrics_spans_and_trace_propagation_through_weft() {
    let up = echo("up").await;
    let (otel, exports) = collector().await;
    let p = weft(
        "telemetry",
        up,
        otel,
        &configuration(json!({
            "collector_cluster": "otel",
            "authority": "collector.local",
            "service_name": "e2e-weft",
            "flush_interval_ms": 100,
        })),
    )
    .await;

    let mut trace_ids = Vec::new();
    for i in 0..6 {
        let incoming = format!("00-{TRACE}-{PARENT}-01");
        let headers: Vec<(&str, &str)> = if i < 2 {
            vec![("traceparent", incoming.as_str())]
        } else {
            vec![]
        };
        let r = get_with(&p.url("main", &format!("/items/{i}?x=1")), &headers).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = r.json();
        let sent = seen["headers"]["traceparent"]
            .as_str()
            .unwrap_or_else(|| panic!("the upstream saw no traceparent: {seen}"))
            .to_owned();
        let parts: Vec<&str> = sent.split('-').collect();
        assert_eq!(parts.len(), 4, "{sent}");
        assert_eq!(parts[3], "01");
        if i < 2 {
            assert_eq!(parts[1], TRACE, "the incoming trace is continued");
            assert_ne!(parts[2], PARENT, "with our span as the parent");
        }
        trace_ids.push((parts[1].to_owned(), parts[2].to_owned()));
    }

    assert!(
        eventually(Duration::from_secs(10), || async {
            spans(&exports).len() >= 6
        })
        .await,
        "the collector got {} spans",
        spans(&exports).len()
    );
    let got = spans(&exports);
    assert_eq!(got.len(), 6, "each span once");
    for (trace, span) in &trace_ids {
        let s = got
            .iter()
            .find(|s| s["spanId"] == span.as_str())
            .unwrap_or_else(|| panic!("no span {span} in {got:?}"));
        assert_eq!(s["traceId"], trace.as_str());
        assert_eq!(s["kind"], 2);
        assert!(
            s["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("GET /items/")),
            "{s}"
        );
    }
    assert_eq!(
        got.iter().filter(|s| s["parentSpanId"] == PARENT).count(),
        2
    );
    {
        let exports = exports.lock();
        let (path, content_type, body) = &exports[0];
        assert_eq!(path, "/v1/traces");
        assert_eq!(content_type, "application/json");
        assert_eq!(
            body["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "e2e-weft"
        );
    }

    let metrics = p.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"weft_wasmcustom_requests_total{plugin="telemetry",method="GET",route="api",status="200"}"#
        ),
        6.0,
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"weft_wasmcustom_request_duration_milliseconds"#),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"weft_wasmcustom_telemetry_spans_exported_total{plugin="telemetry"}"#
        ),
        6.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_down_collector_costs_nothing_but_dropped_spans() {
    let up = echo("up").await;
    let dead = closed_port().await;
    let p = weft(
        "telemetry-down",
        up,
        dead,
        &configuration(json!({
            "collector_cluster": "otel",
            "flush_interval_ms": 50,
            "batch_size": 4,
            "max_queued_spans": 8,
            "timeout_ms": 500,
        })),
    )
    .await;
    for i in 0..20 {
        let r = get_with(&p.url("main", &format!("/{i}")), &[]).await;
        assert_eq!(r.status, 200, "traffic is unaffected: {}", r.text());
    }
    let dropped = r#"weft_wasmcustom_telemetry_spans_dropped_total{plugin="telemetry-down"}"#;
    let failures = r#"weft_wasmcustom_telemetry_export_failures_total{plugin="telemetry-down"}"#;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let m = p.metrics().await;
            metric_value(&m, dropped) == 12.0 && metric_value(&m, failures) >= 2.0
        })
        .await,
        "20 spans, at most 8 kept: {}",
        p.metrics().await
    );
    assert_eq!(
        metric_value(
            &p.metrics().await,
            r#"weft_wasmcustom_requests_total{plugin="telemetry-down",method="GET",route="api",status="200"}"#
        ),
        20.0
    );
}

#[tokio::test]
async fn envoy_continues_and_propagates_the_incoming_trace() {
    let Some(binary) = require_envoy() else {
        return;
    };
    let up = echo("up").await;
    let (otel, exports) = collector().await;
    let config = configuration(json!({
        "collector_cluster": "otel",
        "service_name": "e2e-envoy",
        "flush_interval_ms": 100,
    }));
    let envoy = TestEnvoy::start(
        &binary,
        &[EnvoyPlugin::new(
            "telemetry",
            &shipped_plugin("telemetry"),
            &config,
        )],
        up,
        &[("otel", otel)],
    )
    .await;
    let r = get_with(
        &envoy.url("/orders"),
        &[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), envoy.log());
    let seen = r.json();
    let sent = seen["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent upstream: {seen}\n{}", envoy.log()));
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE, "01"));
    assert_ne!(parts[2], PARENT);
    // The span reaches the collector from Envoy too.
    assert!(
        eventually(Duration::from_secs(10), || async {
            !spans(&exports).is_empty()
        })
        .await,
        "no export from Envoy:\n{}",
        envoy.log()
    );
    let got = spans(&exports);
    assert_eq!(got[0]["traceId"], TRACE);
    assert_eq!(got[0]["spanId"], parts[2]);
    assert_eq!(got[0]["parentSpanId"], PARENT);
}

/// Requests answered locally (another plugin's 401 and 403, a direct response, a redirect, the
/// proxy's own 404 for no route and 503 for no healthy endpoint) reach the telemetry plugin's
/// `on_log` with their real status: `response.code` is set before `on_log` whoever answered.
#[tokio::test]
async fn local_replies_are_labelled_with_their_real_status() {
    let up = echo("up").await;
    let dead = closed_port().await;
    let p = TestProxy::start(&format!(
        r#"
plugins:
  - name: telemetry-local
    file: {telemetry}
    configuration: {config}
    failure_policy: fail_closed
  - name: authz-local
    file: {authz}
    failure_policy: fail_closed
    configuration:
      api_keys:
        keys: [{{ name: client, key: weft-demo-key-0123 }}]
      policies:
        - name: admins-only
          action: DENY
          rules: [{{ to: [{{ operation: {{ paths: ["/private/admin*"] }} }}] }}]
listeners:
  - name: main
    address: 127.0.0.1:0
    plugins: [{{ name: telemetry-local }}]
    virtual_hosts:
      - name: any
        domains: ["local.test"]
        routes:
          - {{ name: healthz, match: {{ path: {{ exact: /healthz }} }}, direct_response: {{ status: 200, body: "ok" }} }}
          - {{ name: docs, match: {{ path: {{ prefix: /docs }} }}, redirect: {{ prefix_rewrite: /guide, response_code: 302 }} }}
          - {{ name: dead, match: {{ path: {{ prefix: /dead }} }}, route: {{ cluster: dead }} }}
          - name: private
            match: {{ path: {{ prefix: /private }} }}
            plugins: [{{ name: authz-local }}]
            route: {{ cluster: up }}
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
  - {{ name: dead, endpoints: [{{ address: "{dead}" }}] }}
"#,
        telemetry = quoted(&shipped_plugin("telemetry")),
        authz = quoted(&shipped_plugin("authz")),
        config = quoted(&json!({ "access_log": {} }).to_string()),
    ))
    .await;
    let url = |path: &str| p.url("main", path);
    let host = [("host", "local.test")];
    let key = [("host", "local.test"), ("x-api-key", "weft-demo-key-0123")];
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);
    let cases: [Case<'_>; 6] = [
        ("/private/data", &host, 401),
        ("/private/admin", &key, 403),
        ("/private/data", &key, 200),
        ("/healthz", &host, 200),
        ("/docs/x", &host, 302),
        ("/dead", &host, 503),
    ];
    for (path, headers, status) in cases {
        let r = get_with(&url(path), headers).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
    }
    let series = |route: &str, status: u16| {
        format!(
            r#"weft_wasmcustom_requests_total{{plugin="telemetry-local",method="GET",route="{route}",status="{status}"}}"#
        )
    };
    let expected = [
        ("private", 401),
        ("private", 403),
        ("private", 200),
        ("healthz", 200),
        ("docs", 302),
        ("dead", 503),
    ];
    assert!(
        eventually(Duration::from_secs(5), || async {
            let m = p.metrics().await;
            expected
                .iter()
                .all(|(route, status)| metric_value(&m, &series(route, *status)) == 1.0)
        })
        .await,
        "{}",
        p.metrics().await
    );
    let m = p.metrics().await;
    assert!(
        !m.contains(r#"plugin="telemetry-local",method="GET",route="private",status="0""#),
        "no local reply is labelled status 0: {m}"
    );
    // The exported series maps back to the name the plugin defined.
    let names = weft_e2e::get(&format!("http://{}/stats/plugin_metrics", p.admin()))
        .await
        .json();
    let entry = names
        .as_array()
        .expect("a list")
        .iter()
        .find(|e| {
            e["plugin"] == "telemetry-local"
                && e["sample"] == "weft_wasmcustom_requests_total"
                && e["labels"]["status"] == "401"
        })
        .unwrap_or_else(|| panic!("no 401 entry in {names}"));
    let raw = entry["name"].as_str().unwrap_or_default();
    assert!(
        raw.starts_with("requests_total;") && raw.contains("status=401"),
        "{entry}"
    );
    assert_eq!(entry["type"], "counter");
    assert_eq!(entry["labels"]["plugin"], "telemetry-local");
}
