//! The request's span (`docs/tracing.md`). At the start of a request, before any phase runs,
//! [`start`] reads the caller's context (W3C or B3), makes the sampling decision, and writes
//! this proxy's span onto the request as it will go upstream, so every later phase (plugins
//! included) and the upstream see Weft's span as their parent. When the request is accounted
//! for, [`Active::finish`] turns the span into a record with Envoy's tags and hands it to the
//! exporter (a `try_send`; the exporter's queue is bounded).
//!
//! Unsampled requests are still propagated (with the sampled flag off) but record nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, request};
use weft_config::schema::{self, TraceOperation};
use weft_observe::trace::{self, Exporter, Sampling, SpanRecord};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_CLIENT_TRACE_ID: HeaderName = HeaderName::from_static("x-client-trace-id");
static X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER: HeaderName =
    HeaderName::from_static("x-envoy-downstream-service-cluster");

/// Envoy truncates `http.url`'s path to this many bytes (`max_path_tag_length`).
const MAX_PATH_TAG: usize = 256;

/// A listener's tracing, compiled once per generation.
#[derive(Debug)]
pub struct TraceSettings {
    sampling: Sampling,
    egress: bool,
    node_id: Option<Arc<str>>,
}

impl TraceSettings {
    /// Tracing for listener `l` under the configuration's `tracing` (`None`: no spans);
    /// `node_id` (the `node` section's id) tags every span.
    pub fn build(
        config: Option<&schema::Tracing>,
        node_id: Option<&str>,
        l: &schema::Listener,
    ) -> Option<Arc<Self>> {
        let t = config?;
        let lt = l.tracing.clone().unwrap_or_default();
        if lt.disabled {
            return None;
        }
        Some(Arc::new(TraceSettings {
            sampling: Sampling {
                random: t.random_sampling,
                client: t.client_sampling,
                overall: t.overall_sampling,
            },
            egress: lt.operation == TraceOperation::Egress,
            node_id: node_id.map(Arc::from),
        }))
    }
}

/// A sampled request's span, until the request is over.
#[derive(Debug)]
pub struct Active {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    trace_state: Option<String>,
    /// The span name: Envoy's operation (`ingress`, `egress <host>`) or the route's decorator.
    pub name: String,
    server: bool,
    start: SystemTime,
    exporter: Exporter,
    node_id: Option<Arc<str>>,
    url: String,
    method: String,
    protocol: &'static str,
    user_agent: Option<String>,
    peer: String,
    client_trace_id: Option<String>,
    downstream_cluster: Option<String>,
    /// `x-request-id` (set once the forward phase knows it).
    pub request_id: Option<String>,
    /// The cluster the request went to.
    pub upstream_cluster: Option<Arc<str>>,
}

/// Where a request came from, for its span's tags (the request context fills it in).
pub struct Origin<'a> {
    /// The request's authority, as received.
    pub authority: &'a str,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The downstream protocol (`HTTP/1.1`, `HTTP/2`, …).
    pub protocol: &'static str,
    /// The downstream peer's address.
    pub peer: std::net::IpAddr,
}

/// Starts the request's span under the listener's `settings`: decides, propagates (writing
/// the context into `head`), and returns the span when sampled.
pub fn start(
    settings: &TraceSettings,
    exporter: &Exporter,
    head: &mut request::Parts,
    origin: Origin<'_>,
) -> Option<Box<Active>> {
    let headers = &head.headers;
    let incoming = trace::extract(headers);
    let client_trace_id = header_str(headers, &X_CLIENT_TRACE_ID).map(str::to_owned);
    let reason = settings.sampling.decide(
        incoming.as_ref().and_then(|e| e.sampled),
        client_trace_id.is_some(),
        trace::sampling::roll,
    );
    let parent = incoming.as_ref().and_then(|e| e.parent);
    let trace_id = parent.map_or_else(trace::new_trace_id, |p| p.trace_id);
    let span_id = trace::new_span_id();
    let sampled = reason.sampled();
    trace::inject(
        &mut head.headers,
        &trace_id,
        &span_id,
        sampled,
        incoming.as_ref(),
    );
    if !sampled {
        return None;
    }
    let headers = &head.headers;
    let path = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let path = truncate(path, MAX_PATH_TAG);
    let name = if settings.egress {
        format!("egress {}", origin.authority)
    } else {
        "ingress".to_owned()
    };
    Some(Box::new(Active {
        trace_id,
        span_id,
        parent: parent.map(|p| p.span_id),
        trace_state: (incoming.is_some_and(|e| e.format == trace::Format::W3c))
            .then(|| header_str(headers, &trace::context::TRACESTATE).map(str::to_owned))
            .flatten(),
        name,
        server: !settings.egress,
        start: SystemTime::now(),
        exporter: exporter.clone(),
        node_id: settings.node_id.clone(),
        url: format!("{}://{}{}", origin.scheme, origin.authority, path),
        method: head.method.as_str().to_owned(),
        protocol: origin.protocol,
        user_agent: header_str(headers, &http::header::USER_AGENT).map(str::to_owned),
        peer: origin.peer.to_string(),
        client_trace_id,
        downstream_cluster: header_str(headers, &X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER)
            .map(str::to_owned),
        request_id: header_str(headers, &X_REQUEST_ID).map(str::to_owned),
        upstream_cluster: None,
    }))
}

/// What the request ended with, for the span's tags.
pub(crate) struct Outcome<'a> {
    pub status: u16,
    pub flag: &'a str,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub upstream_address: Option<String>,
    pub elapsed: Duration,
}

impl Active {
    /// Ends the span with Envoy's tags and queues it for export.
    pub(crate) fn finish(self: Box<Self>, o: Outcome<'_>) {
        let a = *self;
        let mut tags: Vec<(&'static str, String)> = Vec::with_capacity(20);
        tags.push(("component", "proxy".to_owned()));
        if let Some(n) = &a.node_id {
            tags.push(("node_id", n.to_string()));
        }
        if let Some(id) = a.request_id {
            tags.push(("guid:x-request-id", id));
        }
        if let Some(id) = a.client_trace_id {
            tags.push(("guid:x-client-trace-id", id));
        }
        tags.push(("http.url", a.url));
        tags.push(("http.method", a.method));
        tags.push((
            "downstream_cluster",
            a.downstream_cluster.unwrap_or_else(|| "-".to_owned()),
        ));
        tags.push(("user_agent", a.user_agent.unwrap_or_else(|| "-".to_owned())));
        tags.push(("http.protocol", a.protocol.to_owned()));
        tags.push(("peer.address", a.peer));
        tags.push(("request_size", o.request_bytes.to_string()));
        tags.push(("response_size", o.response_bytes.to_string()));
        if let Some(c) = &a.upstream_cluster {
            tags.push(("upstream_cluster", c.to_string()));
            tags.push(("upstream_cluster.name", c.to_string()));
        }
        if let Some(addr) = o.upstream_address {
            tags.push(("upstream_address", addr));
        }
        tags.push(("http.status_code", o.status.to_string()));
        tags.push(("response_flags", o.flag.to_owned()));
        let error = o.status >= 500 || o.status == 0;
        if error {
            tags.push(("error", "true".to_owned()));
        }
        a.exporter.submit(SpanRecord {
            trace_id: a.trace_id,
            span_id: a.span_id,
            parent_span_id: a.parent,
            trace_state: a.trace_state,
            name: a.name,
            server: a.server,
            start: a.start,
            end: a.start + o.elapsed,
            attributes: tags,
            error,
        });
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}
