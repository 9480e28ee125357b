//! Native tracing across two Weft hops: client → Weft A → Weft B → echo upstream, with an OTLP
//! collector stand-in that decodes the protobuf requests (OTLP/gRPC from A, OTLP/HTTP from B).
//! The upstream continues the trace: the `traceparent` it receives names Weft B's span.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use prost::Message;
use weft_e2e::{TestProxy, get_with, metric_value, upstream};

/// A received span with the transport it came over and its resource's `service.name`.
#[derive(Debug, Clone)]
struct Got {
    transport: &'static str,
    service: String,
    span: Span,
}

impl Got {
    fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| match &v.value {
                Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
    }
    fn span_hex(&self) -> String {
        hex(&self.span.span_id)
    }
    fn parent_hex(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    fn trace_hex(&self) -> String {
        hex(&self.span.trace_id)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The collector stand-in: OTLP/HTTP (`POST /v1/traces`, protobuf) and OTLP/gRPC (h2c,
/// `TraceService/Export`, length-prefixed protobuf) on one port.
#[derive(Clone)]
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Got>>>,
}

impl Collector {
    async fn start() -> Collector {
        let spans: Arc<Mutex<Vec<Got>>> = Arc::default();
        let store = spans.clone();
        let addr = upstream::serve_incoming(move |req: http::Request<hyper::body::Incoming>| {
            let store = store.clone();
            async move {
                let path = req.uri().path().to_owned();
                let ctype = req
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let (transport, message) =
                    if path == "/opentelemetry.proto.collector.trace.v1.TraceService/Export" {
                        assert_eq!(ctype, "application/grpc");
                        assert_eq!(body[0], 0, "uncompressed");
                        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
                        assert_eq!(len, body.len() - 5, "one length-prefixed message");
                        ("grpc", body.slice(5..))
                    } else {
                        assert_eq!(path, "/v1/traces");
                        assert_eq!(ctype, "application/x-protobuf");
                        ("http", body)
                    };
                let request = ExportTraceServiceRequest::decode(message).expect("OTLP protobuf");
                for rs in request.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref())
                        .and_then(|v| match &v.value {
                            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            store.lock().push(Got {
                                transport,
                                service: service.clone(),
                                span,
                            });
                        }
                    }
                }
                let mut resp = if transport == "grpc" {
                    // An empty ExportTraceServiceResponse, then the status (trailers-only
                    // would do too; the exporter reads headers and trailers).
                    let mut r = Response::new(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])));
                    r.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    r.headers_mut().insert("grpc-status", "0".parse().unwrap());
                    r
                } else {
                    Response::new(Full::new(Bytes::new()))
                };
                *resp.status_mut() = StatusCode::OK;
                resp
            }
        })
        .await;
        Collector { addr, spans }
    }

    /// The spans of trace `trace` (hex), waiting until there are `n` (10 s at most).
    async fn trace(&self, trace: &str, n: usize) -> Vec<Got> {
        let spans = self.spans.clone();
        let trace = trace.to_owned();
        let ok = weft_e2e::eventually(Duration::from_secs(10), || {
            let spans = spans.clone();
            let trace = trace.clone();
            async move {
                spans
                    .lock()
                    .iter()
                    .filter(|g| g.trace_hex() == trace)
                    .count()
                    >= n
            }
        })
        .await;
        assert!(ok, "{n} spans of trace {trace} reached the collector");
        self.spans
            .lock()
            .iter()
            .filter(|g| g.trace_hex() == trace)
            .cloned()
            .collect()
    }
}

/// Weft B (ingress, OTLP/HTTP) in front of the echo upstream, and Weft A (egress, OTLP/gRPC)
/// in front of B, both exporting to `collector`. `sampling` is A's and B's random sampling.
async fn two_hops(collector: &Collector, sampling: f64) -> (TestProxy, TestProxy) {
    let echo = upstream::echo("app").await;
    let b = TestProxy::start(&format!(
        "node:
  id: sidecar~10.0.0.2~b.ns~ns.svc.cluster.local
tracing:
  collector: http://{c}
  protocol: http
  service_name: weft-b
  random_sampling: {sampling}
  batch_interval: 10ms
listeners:
  - name: in
    address: 127.0.0.1:0
    virtual_hosts:
      - name: v
        domains: [\"*\"]
        routes: [{{ route: {{ cluster: app }} }}]
clusters:
  - name: app
    endpoints: [{{ address: \"{echo}\" }}]
",
        c = collector.addr
    ))
    .await;
    let a = TestProxy::start(&format!(
        "tracing:
  collector: http://{c}
  protocol: grpc
  service_name: weft-a
  random_sampling: {sampling}
  batch_interval: 10ms
listeners:
  - name: out
    address: 127.0.0.1:0
    tracing: {{ operation: egress }}
    virtual_hosts:
      - name: v
        domains: [\"*\"]
        routes:
          - match: {{ path: {{ prefix: /decorated }} }}
            decorator: {{ operation: \"b.ns.svc:80/decorated*\" }}
            route: {{ cluster: b }}
          - route: {{ cluster: b }}
clusters:
  - name: b
    endpoints: [{{ address: \"{b}\" }}]
",
        c = collector.addr,
        b = b.addr("in")
    ))
    .await;
    (a, b)
}

/// The trace id, span id and sampled flag of a `traceparent`.
fn traceparent(v: &str) -> (String, String, String) {
    let p: Vec<&str> = v.split('-').collect();
    assert_eq!(p.len(), 4, "{v}");
    (p[1].to_owned(), p[2].to_owned(), p[3].to_owned())
}

#[tokio::test]
async fn a_w3c_trace_continues_through_two_weft_hops_to_the_upstream() {
    let collector = Collector::start().await;
    let (a, _b) = two_hops(&collector, 0.0).await;
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let r = get_with(
        &a.url("out", "/hello?x=1"),
        &[
            (
                "traceparent",
                &format!("00-{client_trace}-{client_span}-01"),
            ),
            ("tracestate", "vendor=opaque"),
            ("host", "b.ns.svc"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = r.json()["headers"].clone();
    let (trace, upstream_parent, flags) = traceparent(
        seen["traceparent"]
            .as_str()
            .expect("upstream got traceparent"),
    );
    assert_eq!(trace, client_trace, "one trace end to end");
    assert_eq!(flags, "01", "the client's sampled decision is followed");
    assert_eq!(
        seen["tracestate"], "vendor=opaque",
        "tracestate passes through"
    );

    let spans = collector.trace(client_trace, 2).await;
    let a_span = spans
        .iter()
        .find(|g| g.service == "weft-a")
        .expect("A's span");
    let b_span = spans
        .iter()
        .find(|g| g.service == "weft-b")
        .expect("B's span");
    // Parent/child: client → A → B → upstream.
    assert_eq!(a_span.parent_hex(), client_span);
    assert_eq!(b_span.parent_hex(), a_span.span_hex());
    assert_eq!(
        upstream_parent,
        b_span.span_hex(),
        "the upstream's parent is B's span"
    );
    // Transports: A exports over gRPC, B over HTTP.
    assert_eq!(a_span.transport, "grpc");
    assert_eq!(b_span.transport, "http");
    // Envoy's names and kinds: egress client span, ingress server span.
    assert_eq!(a_span.span.name, "egress b.ns.svc");
    assert_eq!(a_span.span.kind, 3, "CLIENT");
    assert_eq!(b_span.span.name, "ingress");
    assert_eq!(b_span.span.kind, 2, "SERVER");
    assert_eq!(a_span.span.trace_state, "vendor=opaque");
    // Envoy's tags.
    assert_eq!(b_span.attr("component").as_deref(), Some("proxy"));
    assert_eq!(b_span.attr("http.method").as_deref(), Some("GET"));
    assert_eq!(
        b_span.attr("http.url").as_deref(),
        Some("http://b.ns.svc/hello?x=1")
    );
    assert_eq!(b_span.attr("http.status_code").as_deref(), Some("200"));
    assert_eq!(b_span.attr("http.protocol").as_deref(), Some("HTTP/1.1"));
    assert_eq!(b_span.attr("upstream_cluster").as_deref(), Some("app"));
    assert_eq!(a_span.attr("upstream_cluster").as_deref(), Some("b"));
    assert_eq!(b_span.attr("response_flags").as_deref(), Some("-"));
    assert_eq!(b_span.attr("peer.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        b_span.attr("node_id").as_deref(),
        Some("sidecar~10.0.0.2~b.ns~ns.svc.cluster.local")
    );
    assert!(b_span.attr("upstream_address").is_some());
    // A generated the request id; B's span carries the same one.
    let rid = seen["x-request-id"]
        .as_str()
        .expect("x-request-id upstream");
    assert_eq!(a_span.attr("guid:x-request-id").as_deref(), Some(rid));
    assert_eq!(b_span.attr("guid:x-request-id").as_deref(), Some(rid));
    assert!(b_span.span.end_time_unix_nano >= b_span.span.start_time_unix_nano);

    // A route decorator names the span.
    let r = get_with(
        &a.url("out", "/decorated/x"),
        &[(
            "traceparent",
            &format!("00-{}-{client_span}-01", "1".repeat(32)),
        )],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let spans = collector.trace(&"1".repeat(32), 2).await;
    let a_span = spans.iter().find(|g| g.service == "weft-a").unwrap();
    assert_eq!(a_span.span.name, "b.ns.svc:80/decorated*");
}

#[tokio::test]
async fn b3_single_and_multi_header_contexts_are_continued_in_their_own_form() {
    let collector = Collector::start().await;
    let (a, _b) = two_hops(&collector, 0.0).await;

    // Multi-header, 64-bit trace id, sampled.
    let r = get_with(
        &a.url("out", "/"),
        &[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let seen = r.json()["headers"].clone();
    assert_eq!(
        seen["x-b3-traceid"], "a3ce929d0e0e4736",
        "same width as received"
    );
    let spans = collector.trace("0000000000000000a3ce929d0e0e4736", 2).await;
    let a_span = spans.iter().find(|g| g.service == "weft-a").unwrap();
    let b_span = spans.iter().find(|g| g.service == "weft-b").unwrap();
    assert_eq!(a_span.parent_hex(), "00f067aa0ba902b7");
    assert_eq!(b_span.parent_hex(), a_span.span_hex());
    assert_eq!(seen["x-b3-spanid"], b_span.span_hex().as_str());
    assert_eq!(seen["x-b3-parentspanid"], a_span.span_hex().as_str());
    assert_eq!(seen["x-b3-sampled"], "1");
    let (trace, parent, _) = traceparent(seen["traceparent"].as_str().unwrap());
    assert_eq!(trace, "0000000000000000a3ce929d0e0e4736");
    assert_eq!(parent, b_span.span_hex());

    // Single header, 128-bit, sampled.
    let trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let r = get_with(
        &a.url("out", "/"),
        &[("b3", &format!("{trace}-e457b5a2e4d86bd1-1"))],
    )
    .await;
    let seen = r.json()["headers"].clone();
    let spans = collector.trace(trace, 2).await;
    let a_span = spans.iter().find(|g| g.service == "weft-a").unwrap();
    let b_span = spans.iter().find(|g| g.service == "weft-b").unwrap();
    assert_eq!(a_span.parent_hex(), "e457b5a2e4d86bd1");
    assert_eq!(b_span.parent_hex(), a_span.span_hex());
    assert_eq!(
        seen["b3"],
        format!("{trace}-{}-1-{}", b_span.span_hex(), a_span.span_hex()).as_str()
    );
}

#[tokio::test]
async fn sampling_off_records_nothing_and_x_client_trace_id_forces_a_trace() {
    let collector = Collector::start().await;
    let (a, b) = two_hops(&collector, 0.0).await;

    // Not sampled: the context still propagates, with the sampled flag off.
    let r = get_with(&a.url("out", "/"), &[]).await;
    let (unsampled_trace, _, flags) =
        traceparent(r.json()["headers"]["traceparent"].as_str().unwrap());
    assert_eq!(flags, "00");
    // A caller's "not sampled" is followed too, even with x-client-trace-id (parent-based).
    let declined = "2".repeat(32);
    let r = get_with(
        &a.url("out", "/"),
        &[
            ("traceparent", &format!("00-{declined}-00f067aa0ba902b7-00")),
            ("x-client-trace-id", "c-0"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    // Forced by the client: both hops record it (B follows A's sampled flag).
    let r = get_with(&a.url("out", "/"), &[("x-client-trace-id", "c-1")]).await;
    let (forced, _, flags) = traceparent(r.json()["headers"]["traceparent"].as_str().unwrap());
    assert_eq!(flags, "01");
    let spans = collector.trace(&forced, 2).await;
    let a_span = spans.iter().find(|g| g.service == "weft-a").unwrap();
    assert_eq!(
        a_span.attr("guid:x-client-trace-id").as_deref(),
        Some("c-1")
    );
    assert!(
        a_span.span.parent_span_id.is_empty(),
        "a new trace: A's span is the root"
    );

    // Spans leave each proxy in order, so the unsampled requests' would have arrived first.
    let all = collector.spans.lock().clone();
    assert!(all.iter().all(|g| g.trace_hex() != unsampled_trace));
    assert!(all.iter().all(|g| g.trace_hex() != declined));
    assert_eq!(all.len(), 2, "only the forced request's two spans: {all:?}");
    for p in [&a, &b] {
        let m = p.metrics().await;
        assert_eq!(metric_value(&m, "weft_tracing_spans_exported_total "), 1.0);
        assert_eq!(metric_value(&m, "weft_tracing_spans_dropped_total "), 0.0);
    }
}

#[tokio::test]
async fn spans_a_collector_refuses_are_dropped_and_counted() {
    let dead = upstream::closed_port().await;
    let echo = upstream::echo("app").await;
    let p = TestProxy::start(&format!(
        "tracing:
  collector: http://{dead}
  random_sampling: 100
  batch_interval: 10ms
  timeout: 2s
listeners:
  - name: in
    address: 127.0.0.1:0
    virtual_hosts:
      - name: v
        domains: [\"*\"]
        routes: [{{ route: {{ cluster: app }} }}]
clusters:
  - name: app
    endpoints: [{{ address: \"{echo}\" }}]
"
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(
            get_with(&p.url("in", "/"), &[]).await.status,
            StatusCode::OK
        );
    }
    let ok = weft_e2e::eventually(Duration::from_secs(10), || async {
        metric_value(&p.metrics().await, "weft_tracing_spans_dropped_total ") >= 3.0
    })
    .await;
    assert!(ok, "the three spans are counted as dropped");
    let m = p.metrics().await;
    assert!(metric_value(&m, "weft_tracing_export_failures_total ") >= 1.0);
    assert_eq!(metric_value(&m, "weft_tracing_spans_exported_total "), 0.0);
}
