//! The telemetry plugin's real `.wasm` in Weft's host: metrics, the log line, trace
//! propagation and span export (scripted collector), collector outages.

use std::time::Duration;

use serde_json::{Value, json};
use weft_plugin_test::{CannedResponse, TestPlugin};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn incoming(flags: &str) -> String {
    format!("00-{TRACE}-{PARENT}-{flags}")
}

fn load(config: Value) -> TestPlugin {
    TestPlugin::builder(weft_plugin_test::this_plugin!())
        .configuration_json(config)
        .property("xds.route_name", "api")
        .callout("otel", CannedResponse::new(200).json(&json!({})))
        .load()
        .unwrap_or_else(|e| panic!("loads: {e}"))
}

fn tracing(extra: Value) -> Value {
    let mut t = json!({ "collector_cluster": "otel", "service_name": "checkout", "authority": "collector.local" });
    if let (Some(t), Some(extra)) = (t.as_object_mut(), extra.as_object()) {
        t.extend(extra.clone());
    }
    json!({ "tracing": t })
}

/// One request through the plugin: `status` from the upstream after `took`.
fn exchange(
    plugin: &TestPlugin,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    status: u16,
    took: Duration,
) -> Option<String> {
    let mut ex = plugin
        .request()
        .method(method)
        .path(path)
        .authority("shop.local");
    for (k, v) in headers {
        ex = ex.header(k, v);
    }
    assert!(ex.send_request().is_continue());
    let upstream_traceparent = ex.request_header("traceparent");
    plugin.clock().advance(took);
    assert!(
        ex.send_response(
            CannedResponse::new(status)
                .header("content-length", "11")
                .body("hello world")
        )
        .is_continue()
    );
    ex.finish();
    upstream_traceparent
}

fn spans(call: &weft_plugin_test::RecordedCallout) -> Vec<Value> {
    call.json()["resourceSpans"][0]["scopeSpans"][0]["spans"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn attr(span: &Value, key: &str) -> Value {
    span["attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["key"] == key))
        .map(|x| x["value"].clone())
        .unwrap_or(Value::Null)
}

#[test]
fn default_metrics_count_requests_and_time_them_by_method_status_and_route() {
    let plugin = load(json!({}));
    for _ in 0..3 {
        exchange(
            &plugin,
            "GET",
            "/items?page=2",
            &[],
            200,
            Duration::from_millis(5),
        );
    }
    exchange(
        &plugin,
        "POST",
        "/items",
        &[],
        503,
        Duration::from_millis(40),
    );
    assert_eq!(
        plugin.counter("requests_total;method=GET;route=api;status=200"),
        Some(3)
    );
    assert_eq!(
        plugin.counter("requests_total;method=POST;route=api;status=503"),
        Some(1)
    );
    assert_eq!(
        plugin.histogram("request_duration_milliseconds;method=GET;route=api;status=200"),
        Some((3, 15))
    );
    assert_eq!(
        plugin.histogram("request_duration_milliseconds;method=POST;route=api;status=503"),
        Some((1, 40))
    );
    assert!(
        !plugin
            .metric_names()
            .iter()
            .any(|n| n.starts_with("telemetry_spans")),
        "no tracing configured"
    );
}

#[test]
fn configured_metrics_take_labels_from_headers_and_values_from_attributes() {
    let plugin = load(json!({
        "metrics": [
            {"name": "tenant_requests", "type": "counter",
             "labels": {"tenant": "%{request.header.x-tenant|anonymous}", "code": "%{response.code}"}},
            {"name": "response_bytes", "type": "histogram", "value": "response.size",
             "labels": {"host": "%{request.host}"}},
            {"name": "response_bytes_total", "type": "counter", "value": "response.size"}
        ]
    }));
    exchange(
        &plugin,
        "GET",
        "/",
        &[("x-tenant", "acme")],
        200,
        Duration::ZERO,
    );
    exchange(
        &plugin,
        "GET",
        "/",
        &[("x-tenant", "acme")],
        404,
        Duration::ZERO,
    );
    exchange(&plugin, "GET", "/", &[], 200, Duration::ZERO);
    assert_eq!(
        plugin.counter("tenant_requests;code=200;tenant=acme"),
        Some(1)
    );
    assert_eq!(
        plugin.counter("tenant_requests;code=404;tenant=acme"),
        Some(1)
    );
    assert_eq!(
        plugin.counter("tenant_requests;code=200;tenant=anonymous"),
        Some(1)
    );
    assert_eq!(
        plugin.histogram("response_bytes;host=shop.local"),
        Some((3, 33))
    );
    assert_eq!(plugin.counter("response_bytes_total"), Some(33));
    assert_eq!(
        plugin.counter("requests_total;method=GET;route=api;status=200"),
        None,
        "defaults replaced"
    );
}

#[test]
fn label_cardinality_is_bounded_with_an_overflow_series() {
    let plugin = load(json!({
        "max_label_sets": 2,
        "metrics": [{"name": "by_path", "type": "counter", "labels": {"path": "%{request.url_path}"}}]
    }));
    for p in ["/a", "/b", "/c", "/d", "/a"] {
        exchange(&plugin, "GET", p, &[], 200, Duration::ZERO);
    }
    assert_eq!(plugin.counter("by_path;path=/a"), Some(2));
    assert_eq!(plugin.counter("by_path;path=/b"), Some(1));
    assert_eq!(plugin.counter("by_path;path=/c"), None);
    assert_eq!(plugin.counter("by_path;path=other"), Some(2));
    assert_eq!(plugin.counter("telemetry_label_overflow_total"), Some(2));
}

#[test]
fn the_access_log_line_is_one_json_object_with_the_configured_fields() {
    let plugin = load(json!({
        "metrics": [],
        "access_log": {"fields": {
            "method": "%{request.method}", "path": "%{request.path}", "status": "%{response.code}",
            "duration_ms": "%{request.duration_ms}", "trace_id": "%{trace_id}",
            "tenant": "%{request.header.x-tenant|-}", "size": "%{request.size}",
            "note": "route=%{xds.route_name}"
        }}
    }));
    exchange(
        &plugin,
        "GET",
        "/x?y=1",
        &[("traceparent", &incoming("01")), ("x-tenant", "a\"b")],
        201,
        Duration::from_millis(3),
    );
    let lines: Vec<Value> = plugin
        .logs()
        .iter()
        .filter_map(|(_, l)| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(lines.len(), 1, "{:?}", plugin.logs());
    let keys: Vec<&String> = lines[0]
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert_eq!(keys.len(), 8);
    assert_eq!(
        lines[0],
        json!({"method": "GET", "path": "/x?y=1", "status": 201, "duration_ms": 3, "trace_id": TRACE,
               "tenant": "a\"b", "size": null, "note": "route=api"})
    );
    assert!(plugin.metric_names().is_empty(), "metrics: [] defines none");
}

#[test]
fn an_incoming_traceparent_is_continued_and_propagated_with_a_new_parent() {
    let plugin = load(tracing(json!({})));
    let mut ex = plugin
        .request()
        .path("/orders")
        .header("traceparent", &incoming("01"))
        .header("tracestate", "vendor=opaque");
    assert!(ex.send_request().is_continue());
    let sent = ex.request_header("traceparent").expect("propagated");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE, "01"));
    assert_ne!(parts[2], PARENT, "our span becomes the upstream's parent");
    assert_eq!(parts[2].len(), 16);
    assert_eq!(
        ex.request_header("tracestate").as_deref(),
        Some("vendor=opaque")
    );
    ex.send_response(CannedResponse::new(200));
    ex.finish();
    assert!(plugin.tick());
    let calls = plugin.callouts();
    assert_eq!(calls.len(), 1);
    let s = spans(&calls[0]);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0]["traceId"], TRACE);
    assert_eq!(s[0]["parentSpanId"], PARENT);
    assert_eq!(
        s[0]["spanId"], parts[2],
        "the exported span is the one propagated"
    );
}

#[test]
fn a_missing_or_invalid_traceparent_starts_a_new_trace() {
    let plugin = load(tracing(json!({})));
    let mut seen = Vec::new();
    for header in [
        None,
        Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        Some("garbage"),
    ] {
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("traceparent", *h)).collect();
        let sent =
            exchange(&plugin, "GET", "/", &headers, 200, Duration::ZERO).expect("propagated");
        let parts: Vec<&str> = sent.split('-').collect();
        assert_eq!(parts.len(), 4, "{sent}");
        assert_eq!(parts[1].len(), 32);
        assert_ne!(parts[1], "0".repeat(32));
        assert_eq!(parts[3], "01", "sample_rate 1 samples new traces");
        seen.push(parts[1].to_owned());
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3, "a new trace each time");
    plugin.tick();
    let s = spans(&plugin.callouts()[0]);
    assert_eq!(s.len(), 3);
    assert!(
        s.iter().all(|s| s.get("parentSpanId").is_none()),
        "root spans"
    );
}

#[test]
fn spans_are_exported_as_otlp_json_on_the_tick() {
    let plugin = load(tracing(
        json!({"resource_attributes": {"deployment.environment": "test"}, "headers": {"api-key": "secret"}}),
    ));
    assert!(plugin.tick(), "the plugin set a tick period");
    assert!(plugin.callouts().is_empty(), "nothing to export");
    exchange(
        &plugin,
        "GET",
        "/a?q=1",
        &[("traceparent", &incoming("01")), ("user-agent", "curl/8")],
        200,
        Duration::from_millis(7),
    );
    exchange(&plugin, "DELETE", "/b", &[], 503, Duration::from_millis(1));
    assert!(plugin.callouts().is_empty(), "batched until the tick");
    plugin.tick();
    let calls = plugin.callouts();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.cluster, "otel");
    assert_eq!(call.header(":method").as_deref(), Some("POST"));
    assert_eq!(call.header(":path").as_deref(), Some("/v1/traces"));
    assert_eq!(
        call.header(":authority").as_deref(),
        Some("collector.local")
    );
    assert_eq!(
        call.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(call.header("api-key").as_deref(), Some("secret"));
    assert_eq!(call.timeout, Duration::from_secs(5));
    let body = call.json();
    let resource = &body["resourceSpans"][0]["resource"]["attributes"];
    assert_eq!(
        resource[0],
        json!({"key": "service.name", "value": {"stringValue": "checkout"}})
    );
    assert_eq!(resource[1]["value"]["stringValue"], "test");
    assert_eq!(
        body["resourceSpans"][0]["scopeSpans"][0]["scope"]["name"],
        "weft-telemetry"
    );
    let s = spans(call);
    assert_eq!(s.len(), 2);
    let (a, b) = (&s[0], &s[1]);
    assert_eq!(a["name"], "GET /a");
    assert_eq!(a["kind"], 2);
    assert_eq!(a["traceId"], TRACE);
    assert_eq!(
        attr(a, "http.request.method"),
        json!({"stringValue": "GET"})
    );
    assert_eq!(attr(a, "url.path"), json!({"stringValue": "/a"}));
    assert_eq!(
        attr(a, "server.address"),
        json!({"stringValue": "shop.local"})
    );
    assert_eq!(
        attr(a, "user_agent.original"),
        json!({"stringValue": "curl/8"})
    );
    assert_eq!(
        attr(a, "http.response.status_code"),
        json!({"intValue": "200"})
    );
    assert_eq!(a["status"], json!({}));
    let start: u64 = a["startTimeUnixNano"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("start");
    let end: u64 = a["endTimeUnixNano"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("end");
    assert_eq!(end - start, 7_000_000, "the proxy clock");
    assert_eq!(start, 1_767_225_600_000_000_000);
    assert_eq!(b["name"], "DELETE /b");
    assert_eq!(b["status"]["code"], 2, "5xx is an error");
    assert_eq!(plugin.counter("telemetry_spans_exported_total"), Some(2));
    plugin.tick();
    assert_eq!(plugin.callouts().len(), 1, "nothing left to send");
}

#[test]
fn exports_go_in_batches_with_one_in_flight() {
    let plugin = load(tracing(json!({"batch_size": 2})));
    for _ in 0..5 {
        exchange(&plugin, "GET", "/", &[], 200, Duration::ZERO);
    }
    plugin.tick();
    let sizes: Vec<usize> = plugin.callouts().iter().map(|c| spans(c).len()).collect();
    assert!(sizes.iter().all(|n| *n <= 2), "{sizes:?}");
    while plugin.callouts().len() < 3 {
        plugin.tick();
        assert!(plugin.callouts().len() <= 3);
    }
    let sizes: Vec<usize> = plugin.callouts().iter().map(|c| spans(c).len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 5, "{sizes:?}");
    assert_eq!(plugin.counter("telemetry_spans_exported_total"), Some(5));
}

#[test]
fn a_down_collector_keeps_the_queue_bounded_and_counts_drops() {
    let plugin = TestPlugin::builder(weft_plugin_test::this_plugin!())
        .configuration_json(tracing(json!({"batch_size": 2, "max_queued_spans": 4})))
        .failing_callout("otel")
        .load()
        .unwrap_or_else(|e| panic!("loads: {e}"));
    for _ in 0..10 {
        exchange(&plugin, "GET", "/", &[], 200, Duration::ZERO);
    }
    plugin.tick();
    assert_eq!(plugin.callouts().len(), 1);
    assert_eq!(plugin.counter("telemetry_export_failures_total"), Some(1));
    assert_eq!(
        plugin.counter("telemetry_spans_dropped_total"),
        Some(6),
        "10 spans, room for 4"
    );
    assert!(plugin.logged("span export failing"));
    // Still down, answering 503 now: retried every tick, nothing more dropped.
    plugin.set_callout("otel", CannedResponse::new(503));
    plugin.tick();
    assert_eq!(plugin.counter("telemetry_export_failures_total"), Some(2));
    assert_eq!(plugin.counter("telemetry_spans_dropped_total"), Some(6));
    // More traffic while down: the oldest spans make room.
    for _ in 0..3 {
        exchange(&plugin, "GET", "/", &[], 200, Duration::ZERO);
    }
    plugin.tick();
    assert_eq!(plugin.counter("telemetry_spans_dropped_total"), Some(9));
    // Back up: the 4 spans kept are delivered.
    plugin.set_callout("otel", CannedResponse::new(200));
    for _ in 0..4 {
        plugin.tick();
    }
    assert_eq!(plugin.counter("telemetry_spans_exported_total"), Some(4));
    assert!(plugin.logged("span export recovered"));
    let last = plugin.callouts().len();
    plugin.tick();
    assert_eq!(plugin.callouts().len(), last, "queue empty");
}

#[test]
fn unsampled_traces_are_propagated_but_not_exported() {
    let plugin = load(tracing(json!({"sample_rate": 0.0})));
    let sent = exchange(&plugin, "GET", "/", &[], 200, Duration::ZERO).expect("propagated");
    assert!(sent.ends_with("-00"), "{sent}");
    let sent = exchange(
        &plugin,
        "GET",
        "/",
        &[("traceparent", &incoming("00"))],
        200,
        Duration::ZERO,
    )
    .expect("propagated");
    assert!(
        sent.starts_with(&format!("00-{TRACE}-")) && sent.ends_with("-00"),
        "{sent}"
    );
    let sent = exchange(
        &plugin,
        "GET",
        "/",
        &[("traceparent", &incoming("01"))],
        200,
        Duration::ZERO,
    )
    .expect("propagated");
    assert!(sent.ends_with("-01"), "the caller's decision wins: {sent}");
    plugin.tick();
    let calls = plugin.callouts();
    assert_eq!(calls.len(), 1);
    assert_eq!(spans(&calls[0]).len(), 1, "only the sampled request");
}

#[test]
fn propagation_can_be_turned_off_and_is_off_without_tracing() {
    let plugin = load(tracing(json!({"propagate": false})));
    assert_eq!(
        exchange(&plugin, "GET", "/", &[], 200, Duration::ZERO),
        None
    );
    let plugin = load(json!({}));
    assert_eq!(
        exchange(&plugin, "GET", "/", &[], 200, Duration::ZERO),
        None
    );
    assert!(!plugin.tick(), "no timer without tracing");
}

#[test]
fn configuration_errors_name_the_field() {
    for (config, field) in [
        (
            json!({"tracing": {"collector_cluster": "otel", "sample_rate": 2}}),
            "tracing.sample_rate",
        ),
        (
            json!({"metrics": [{"name": "x", "type": "gauge"}]}),
            "metrics[0].type",
        ),
        (
            json!({"metrics": [{"name": "x", "type": "counter", "labels": {"a": "%{bad"}}]}),
            "metrics[0].labels.a",
        ),
        (json!({"access_log": {"levle": "info"}}), "access_log"),
    ] {
        let err = TestPlugin::builder(weft_plugin_test::this_plugin!())
            .configuration_json(config.clone())
            .load()
            .expect_err("refused");
        assert!(
            err.logged(&format!("plugin configuration: {field}")),
            "{config}: {err}"
        );
    }
}

#[test]
fn requests_without_a_response_are_still_counted_and_logged() {
    let plugin = load(json!({"access_log": {"fields": {"status": "%{response.code}"}}}));
    let mut ex = plugin.request().path("/cut");
    assert!(ex.send_request().is_continue());
    ex.finish();
    assert_eq!(
        plugin.counter("requests_total;method=GET;route=api;status=0"),
        Some(1)
    );
    assert!(plugin.logged(r#"{"status":null}"#), "{:?}", plugin.logs());
}

#[test]
fn hostile_requests_are_bounded_and_never_trap_the_plugin() {
    let plugin = load(json!({
        "metrics": [{"name": "by_agent", "type": "counter", "labels": {"agent": "%{request.header.user-agent}"}}],
        "access_log": {"fields": {"path": "%{request.path}"}},
        "tracing": {"collector_cluster": "otel"}
    }));
    let long_path = format!("/{}", "a".repeat(64 * 1024));
    // A tab is the one control byte an HTTP parser lets into a value (a DEL is refused before
    // any plugin, by the proxy and by the harness alike).
    let agent = format!("x;y=z\t{}", "é".repeat(200));
    for tp in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-\u{fffd}",
        "",
    ] {
        exchange(
            &plugin,
            "GET",
            &long_path,
            &[("traceparent", tp), ("user-agent", &agent)],
            200,
            Duration::ZERO,
        );
    }
    assert!(!plugin.is_broken());
    let names = plugin.metric_names();
    let series = names
        .iter()
        .find(|n| n.starts_with("by_agent;"))
        .expect("series");
    assert!(
        series.starts_with("by_agent;agent=x_y_z_é"),
        "separators and controls replaced: {series}"
    );
    assert!(
        series.len() <= "by_agent;agent=".len() + 128,
        "{}",
        series.len()
    );
    assert_eq!(plugin.counter(series), Some(3));
    let line = plugin
        .logs()
        .into_iter()
        .map(|(_, l)| l)
        .find(|l| l.starts_with("{\"path\""))
        .expect("log line");
    assert!(line.len() < 1100, "log values are cut: {}", line.len());
    plugin.tick();
    let s = spans(&plugin.callouts()[0]);
    assert_eq!(s.len(), 3);
    for span in &s {
        assert_ne!(
            span["traceId"],
            TRACE.to_uppercase(),
            "upper-case ids are invalid"
        );
        assert!(span["name"].as_str().is_some_and(|n| n.len() <= 512));
        assert!(
            attr(span, "url.path")["stringValue"]
                .as_str()
                .is_some_and(|p| p.len() <= 512)
        );
    }
}

#[test]
fn when_nobody_drains_the_shared_queue_spans_stay_in_the_bounded_instance_queue() {
    let plugin = load(tracing(json!({"batch_size": 8, "max_queued_spans": 8})));
    exchange(&plugin, "GET", "/before", &[], 200, Duration::ZERO);
    // No timer for longer than the stall limit (10 flush intervals, at least 5 s).
    plugin.clock().advance(Duration::from_secs(11));
    for _ in 0..10 {
        exchange(&plugin, "GET", "/stalled", &[], 200, Duration::ZERO);
    }
    assert_eq!(
        plugin.counter("telemetry_spans_dropped_total"),
        Some(2),
        "the instance queue holds 8"
    );
    plugin.tick();
    plugin.tick();
    let names: Vec<String> = plugin
        .callouts()
        .iter()
        .flat_map(spans)
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect();
    // The timer's drain brings the one span of the shared queue in: still 8 at most.
    assert_eq!(names.len(), 8, "{names:?}");
    assert_eq!(names.iter().filter(|n| *n == "GET /before").count(), 1);
    assert_eq!(plugin.counter("telemetry_spans_dropped_total"), Some(3));
    assert_eq!(plugin.counter("telemetry_spans_exported_total"), Some(8));
}

#[test]
fn a_non_utf8_traceparent_starts_a_new_trace_instead_of_trapping() {
    let plugin = load(tracing(json!({})));
    let mut ex = plugin
        .request()
        .path("/x")
        .header_bytes("traceparent", b"00-\xff\xfe-bad-01");
    assert!(ex.send_request().is_continue(), "the plugin must not trap");
    let sent = ex.request_header("traceparent").expect("a new traceparent");
    assert!(sent.starts_with("00-") && sent.len() == 55, "{sent}");
    assert!(!plugin.is_broken());
}
