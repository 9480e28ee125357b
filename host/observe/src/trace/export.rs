//! The span exporter: a bounded queue in front of one task that batches spans and sends them
//! to an OTLP collector, over OTLP/HTTP (protobuf, `POST /v1/traces`) or OTLP/gRPC
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export` over HTTP/2 prior knowledge).
//!
//! A worker only does a `try_send` of a finished [`SpanRecord`]: when the queue is full the
//! span is dropped and counted, never waited for. The task sends one batch at a time (a batch
//! is at most `batch_size` spans, sent when full or `batch_interval` after its first span);
//! while a batch is in flight the queue absorbs new spans up to its bound. A batch the
//! collector refuses or that times out is dropped and counted too: spans are telemetry, and
//! retrying would only grow the backlog behind a collector that is down.
//!
//! The protobuf messages are `opentelemetry-proto`'s (prost); the transports are the proxy's
//! own hyper client, so the exporter adds no second HTTP stack and no gRPC framework.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message;
use tokio::sync::mpsc;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    Http,
}

/// What the exporter needs to start.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// The collector's URI: `http://host:port` for gRPC, `http://host:port/v1/traces` for HTTP.
    pub endpoint: Uri,
    /// The transport.
    pub protocol: Protocol,
    /// `service.name` of the resource.
    pub service_name: String,
    /// More resource attributes (`node_id`, …).
    pub resource: Vec<(String, String)>,
    /// Spans queued at most; more are dropped and counted.
    pub max_queue: usize,
    /// Spans per export at most.
    pub batch_size: usize,
    /// Longest a span waits for its batch to fill.
    pub batch_interval: Duration,
    /// Longest one export may take.
    pub timeout: Duration,
}

/// A finished span, as the request path hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// This span.
    pub span_id: [u8; 8],
    /// The caller's span, if any.
    pub parent_span_id: Option<[u8; 8]>,
    /// W3C `tracestate` as received.
    pub trace_state: Option<String>,
    /// Operation name.
    pub name: String,
    /// Server (ingress) or client (egress).
    pub server: bool,
    /// Start and end.
    pub start: SystemTime,
    /// End.
    pub end: SystemTime,
    /// Attributes (Envoy sets every tag as a string).
    pub attributes: Vec<(&'static str, String)>,
    /// The request failed (a 5xx): the span's status is `ERROR`.
    pub error: bool,
}

/// The exporter's counters (exported as `weft_tracing_*` metrics).
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans accepted by the collector.
    pub exported: AtomicU64,
    /// Spans dropped: queue full, or their batch failed.
    pub dropped: AtomicU64,
    /// Batches that failed (refused, unreachable, timed out).
    pub failed_batches: AtomicU64,
}

/// The sending side of the exporter; cheap to clone.
#[derive(Debug, Clone)]
pub struct Exporter {
    tx: mpsc::Sender<SpanRecord>,
    stats: Arc<ExportStats>,
}

impl Exporter {
    /// Starts the export task on the current tokio runtime. It ends when every [`Exporter`]
    /// clone is dropped, after sending what is queued.
    pub fn start(config: ExportConfig, stats: Arc<ExportStats>) -> Exporter {
        let (tx, rx) = mpsc::channel(config.max_queue.max(1));
        tokio::spawn(run(config, rx, stats.clone()));
        Exporter { tx, stats }
    }

    /// Queues a finished span; never waits (a full queue drops it and counts it).
    pub fn submit(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<ExportStats> {
        &self.stats
    }
}

async fn run(config: ExportConfig, mut rx: mpsc::Receiver<SpanRecord>, stats: Arc<ExportStats>) {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let mut builder = Client::builder(TokioExecutor::new());
    if config.protocol == Protocol::Grpc {
        builder.http2_only(true);
    }
    let client: Client<HttpConnector, Full<Bytes>> = builder.build(http);
    let resource = resource(&config);
    let batch_size = config.batch_size.max(1);
    let mut batch: Vec<SpanRecord> = Vec::with_capacity(batch_size);
    loop {
        // Wait for a first span, then up to `batch_interval` for the batch to fill.
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + config.batch_interval;
        while batch.len() < batch_size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let body = encode(&resource, batch.drain(..));
        match tokio::time::timeout(config.timeout, send(&client, &config, body)).await {
            Ok(Ok(())) => {
                stats.exported.fetch_add(n, Ordering::Relaxed);
            }
            Ok(Err(why)) => {
                fail(&stats, n, &why);
            }
            Err(_) => fail(&stats, n, "timed out"),
        }
    }
}

fn fail(stats: &ExportStats, n: u64, why: &str) {
    stats.dropped.fetch_add(n, Ordering::Relaxed);
    stats.failed_batches.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(spans = n, error = why, "span export failed");
}

fn resource(config: &ExportConfig) -> Resource {
    let mut attributes = vec![kv("service.name", config.service_name.clone())];
    attributes.extend(config.resource.iter().map(|(k, v)| kv(k, v.clone())));
    Resource {
        attributes,
        ..Resource::default()
    }
}

fn kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..KeyValue::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// One `ExportTraceServiceRequest` for `spans`, encoded.
pub fn encode(resource: &Resource, spans: impl Iterator<Item = SpanRecord>) -> Bytes {
    let spans = spans
        .map(|s| Span {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            trace_state: s.trace_state.unwrap_or_default(),
            parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            // W3C trace flags: sampled (only sampled spans are exported).
            flags: 0x1,
            name: s.name,
            kind: if s.server {
                span::SpanKind::Server as i32
            } else {
                span::SpanKind::Client as i32
            },
            start_time_unix_nano: nanos(s.start),
            end_time_unix_nano: nanos(s.end),
            attributes: s.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
            status: Some(Status {
                code: if s.error {
                    status::StatusCode::Error as i32
                } else {
                    status::StatusCode::Unset as i32
                },
                ..Status::default()
            }),
            ..Span::default()
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "weft".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..InstrumentationScope::default()
                }),
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    Bytes::from(request.encode_to_vec())
}

/// The gRPC path of the trace service's `Export` method.
pub const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    config: &ExportConfig,
    body: Bytes,
) -> Result<(), String> {
    let request = match config.protocol {
        Protocol::Http => Request::builder()
            .method(Method::POST)
            .uri(config.endpoint.clone())
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(body)),
        Protocol::Grpc => {
            // gRPC's length-prefixed message: no compression flag, then the length.
            let mut framed = BytesMut::with_capacity(body.len() + 5);
            framed.put_u8(0);
            framed.put_u32(u32::try_from(body.len()).map_err(|_| "batch too large")?);
            framed.put_slice(&body);
            let mut parts = config.endpoint.clone().into_parts();
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static(GRPC_EXPORT_PATH));
            let uri = Uri::from_parts(parts).map_err(|e| e.to_string())?;
            Request::builder()
                .method(Method::POST)
                .uri(uri)
                .header(header::CONTENT_TYPE, "application/grpc")
                .header(header::TE, "trailers")
                .body(Full::new(framed.freeze()))
        }
    }
    .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let (head, body) = response.into_parts();
    if head.status != StatusCode::OK {
        return Err(format!("collector answered {}", head.status));
    }
    // Read the body to its end (and the trailers, where gRPC puts its status).
    let collected = body.collect().await.map_err(|e| e.to_string())?;
    if config.protocol == Protocol::Grpc {
        let status = head
            .headers
            .get("grpc-status")
            .or_else(|| collected.trailers().and_then(|t| t.get("grpc-status")))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if status != "0" {
            return Err(format!("collector answered grpc-status {status:?}"));
        }
    }
    Ok(())
}
