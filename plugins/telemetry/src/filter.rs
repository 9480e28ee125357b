//! The proxy-wasm glue: a root context that owns the export queue and a stream context per
//! request that records metrics, writes the log line and produces the span.
//!
//! Spans travel from stream contexts to the exporter through a proxy-wasm shared queue, so
//! whichever instance (Weft) or worker (Envoy) gets the timer exports the spans of all of
//! them; when the queue cannot be used the stream hands its span to its own root directly.
//!
//! The queue lives in the host. A root that drains it stamps the time in shared data
//! (`<queue>/drained`); a stream that finds the stamp stale (nobody has drained for
//! [`stall_after`]) keeps its span in its own bounded queue instead, so a stalled drainer can
//! never grow the host's queue without bound (Weft caps it at 10 000 items, and the Rust SDK
//! traps on the status it returns beyond).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use weft_sdk::metrics::Metrics;
use weft_sdk::prelude::*;
use weft_sdk::proxy_wasm::hostcalls;
use weft_sdk::proxy_wasm::types::MapType;
use weft_sdk::template::{self, Template, Var};

use crate::batch::{Exporter, Outcome};
use crate::config::{Config, DURATION_MS, MetricKind, Tracing, ValueSource};
use crate::ids::Ids;
use crate::labels::{LabelLimiter, clean_value};
use crate::otlp::{self, AttrValue, Span};
use crate::traceparent::{self, hex};

/// Longest access-log value (bytes).
const MAX_LOG_VALUE: usize = 1024;
/// Longest span attribute value or name (bytes).
const MAX_SPAN_VALUE: usize = 512;
/// Spans larger than this once encoded are dropped.
const MAX_SPAN_BYTES: usize = 16 * 1024;
/// Most spans moved from the shared queue per callback (bounds its CPU time).
const MAX_DRAIN: usize = 1024;
/// Most distinct variables a request caches.
const MAX_CACHED: usize = 64;

const EXPORTED: &str = "telemetry_spans_exported_total";
const DROPPED: &str = "telemetry_spans_dropped_total";
const FAILURES: &str = "telemetry_export_failures_total";
const OVERFLOW: &str = "telemetry_label_overflow_total";

/// State shared by the root context and the stream contexts of one instance.
struct Shared {
    config: Rc<Config>,
    metrics: Metrics,
    limiter: LabelLimiter,
    ids: Ids,
    queue: Option<Queue>,
    exporter: Option<Exporter>,
    failing: bool,
}

/// The shared queue and its drain stamp.
struct Queue {
    id: u32,
    stamp_key: String,
    stall_ns: u64,
}

impl Queue {
    /// Records that the queue was drained at `now`.
    fn stamp(&self, now: u64) {
        let _ = hostcalls::set_shared_data(&self.stamp_key, Some(&now.to_le_bytes()), None);
    }

    /// True when a drainer stamped the queue recently.
    fn drained_recently(&self, now: u64) -> bool {
        let Ok((Some(bytes), _)) = hostcalls::get_shared_data(&self.stamp_key) else {
            return false;
        };
        weft_sdk::properties::decode_u64(&bytes)
            .is_some_and(|at| now.saturating_sub(at) < self.stall_ns)
    }
}

/// How long the shared queue may go undrained before streams stop feeding it: ten flush
/// intervals, at least five seconds.
fn stall_after(flush_interval: Duration) -> Duration {
    (flush_interval * 10).max(Duration::from_secs(5))
}

impl Shared {
    fn record_outcome(&mut self, o: Outcome) {
        if o.exported > 0 {
            self.metrics.increment(EXPORTED, o.exported as i64);
        }
        if o.dropped > 0 {
            self.metrics.increment(DROPPED, o.dropped as i64);
        }
        if o.failed > 0 {
            self.metrics.increment(FAILURES, o.failed as i64);
        }
    }

    /// Hands a span to the exporter: through the shared queue, else to this instance's root.
    fn enqueue(&mut self, span: String) {
        if let Some(q) = &self.queue
            && q.drained_recently(now_ns())
            && hostcalls::enqueue_shared_queue(q.id, Some(span.as_bytes())).is_ok()
        {
            return;
        }
        if let Some(e) = self.exporter.as_mut() {
            let dropped = e.push(span);
            self.record_outcome(Outcome {
                dropped,
                ..Outcome::default()
            });
        }
    }
}

/// The root context.
pub struct Root {
    shared: Option<Rc<RefCell<Shared>>>,
}

impl Root {
    /// A root context before `on_configure`.
    pub fn new() -> Root {
        Root { shared: None }
    }

    /// Moves spans from the shared queue into the exporter (bounded per call).
    fn drain(&self) {
        let Some(shared) = &self.shared else { return };
        let Ok(mut s) = shared.try_borrow_mut() else {
            return;
        };
        let Some(q) = s.queue.as_ref() else { return };
        let q = q.id;
        let mut dropped = 0;
        for _ in 0..MAX_DRAIN {
            let Ok(Some(bytes)) = hostcalls::dequeue_shared_queue(q) else {
                break;
            };
            let Ok(span) = String::from_utf8(bytes) else {
                continue;
            };
            if let Some(e) = s.exporter.as_mut() {
                dropped += e.push(span);
            }
        }
        s.record_outcome(Outcome {
            dropped,
            ..Outcome::default()
        });
        if let Some(q) = &s.queue {
            q.stamp(now_ns());
        }
    }

    /// Sends the next batch when one is due (`force`: whatever is queued).
    fn flush(&self, force: bool) {
        let Some(shared) = &self.shared else { return };
        let Ok(mut s) = shared.try_borrow_mut() else {
            return;
        };
        let config = s.config.clone();
        let Some(tracing) = config.tracing.as_ref() else {
            return;
        };
        let now = now_ns();
        let Some(exporter) = s.exporter.as_mut() else {
            return;
        };
        let (batch, outcome) = exporter.poll(now, force);
        s.record_outcome(outcome);
        let Some(batch) = batch else { return };
        let body = otlp::encode_request(
            &tracing.service_name,
            &tracing.resource_attributes,
            &batch.spans,
        );
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", "POST"),
            (":path", &tracing.collector_path),
            (":authority", &tracing.authority),
            ("content-type", "application/json"),
        ];
        headers.extend(
            tracing
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        match hostcalls::dispatch_http_call(
            &tracing.collector_cluster,
            headers,
            Some(body.as_bytes()),
            vec![],
            tracing.timeout,
        ) {
            Ok(token) => {
                if let Some(e) = s.exporter.as_mut() {
                    e.sent(token, batch, now);
                }
            }
            Err(status) => {
                let outcome = match s.exporter.as_mut() {
                    Some(e) => e.send_failed(batch),
                    None => Outcome::default(),
                };
                s.record_outcome(outcome);
                s.export_failed(&format!(
                    "cannot call collector cluster `{}`: {status:?}",
                    tracing.collector_cluster
                ));
            }
        }
    }
}

impl Default for Root {
    fn default() -> Self {
        Root::new()
    }
}

impl Shared {
    /// Logs the first failure of a run of failures (the counter counts them all).
    fn export_failed(&mut self, why: &str) {
        if !self.failing {
            self.failing = true;
            let _ = hostcalls::log(
                LogLevel::Warn,
                &format!("telemetry: span export failing: {why}"),
            );
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        let status = weft_sdk::host::call_response_status();
        let ok = matches!(status, Some(200..=299));
        if let Some(shared) = &self.shared
            && let Ok(mut s) = shared.try_borrow_mut()
        {
            let outcome = match s.exporter.as_mut() {
                Some(e) => e.completed(token, ok),
                None => Outcome::default(),
            };
            s.record_outcome(outcome);
            if ok {
                if s.failing {
                    let _ = hostcalls::log(LogLevel::Info, "telemetry: span export recovered");
                }
                s.failing = false;
            } else if outcome.failed > 0 {
                let why = match status {
                    Some(code) => format!("collector answered {code}"),
                    None => "no response from the collector".to_owned(),
                };
                s.export_failed(&why);
            }
        }
        if ok {
            // Keep up with a backlog: the next full batch goes now.
            self.flush(false);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = hostcalls::get_buffer(
            weft_sdk::proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(c) => Rc::new(c),
            Err(e) => {
                weft_sdk::config::log_error(&e);
                return false;
            }
        };
        let mut queue = None;
        let mut exporter = None;
        if let Some(t) = &config.tracing {
            let name = queue_name(&bytes);
            queue = hostcalls::register_shared_queue(&name)
                .ok()
                .map(|id| Queue {
                    id,
                    stamp_key: format!("{name}/drained"),
                    stall_ns: u64::try_from(stall_after(t.flush_interval).as_nanos())
                        .unwrap_or(u64::MAX),
                });
            if let Some(q) = &queue {
                // A fresh plugin counts as drained: its timer is about to start.
                q.stamp(now_ns());
            }
            let stale = t.timeout + t.flush_interval;
            exporter = Some(Exporter::new(
                t.max_queued_spans,
                t.batch_size,
                u64::try_from(stale.as_nanos()).unwrap_or(u64::MAX),
            ));
            let _ = hostcalls::set_tick_period(t.flush_interval);
        }
        let metrics_len = config.metrics.len();
        let max_sets = config.max_label_sets;
        self.shared = Some(Rc::new(RefCell::new(Shared {
            config,
            metrics: Metrics::new(),
            limiter: LabelLimiter::new(metrics_len, max_sets),
            ids: Ids::new(now_ns()),
            queue,
            exporter,
            failing: false,
        })));
        true
    }

    fn on_tick(&mut self) {
        self.drain();
        self.flush(true);
    }

    fn on_queue_ready(&mut self, _queue_id: u32) {
        self.drain();
        self.flush(false);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        let config = shared.try_borrow().ok()?.config.clone();
        Some(Box::new(Stream {
            shared,
            config,
            start_ns: None,
            trace: None,
            logged: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The trace a request belongs to and its own span.
#[derive(Debug, Clone, Copy)]
struct Trace {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    sampled: bool,
}

/// One request.
struct Stream {
    shared: Rc<RefCell<Shared>>,
    config: Rc<Config>,
    start_ns: Option<u64>,
    trace: Option<Trace>,
    logged: bool,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.start_ns.is_some() {
            return Action::Continue;
        }
        self.start_ns = Some(now_ns());
        let tracing = self.config.tracing.as_ref();
        let wants_trace = tracing.is_some() || self.config.access_log.is_some();
        if !wants_trace {
            return Action::Continue;
        }
        let incoming = weft_sdk::host::request_header(traceparent::HEADER)
            .and_then(|v| traceparent::parse(&v));
        let Ok(mut s) = self.shared.try_borrow_mut() else {
            return Action::Continue;
        };
        let trace = match incoming {
            Some(tp) => Trace {
                trace_id: tp.trace_id,
                span_id: s.ids.span_id(),
                parent: Some(tp.parent_id),
                sampled: tp.sampled(),
            },
            // Without tracing nothing would carry a new trace id anywhere: log none.
            None if tracing.is_none() => return Action::Continue,
            None => Trace {
                trace_id: s.ids.trace_id(),
                span_id: s.ids.span_id(),
                parent: None,
                sampled: tracing.is_some_and(|t| s.ids.sample(t.sample_rate)),
            },
        };
        drop(s);
        if tracing.is_some_and(|t| t.propagate) {
            let value = traceparent::format(&trace.trace_id, &trace.span_id, trace.sampled);
            let _ = hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                traceparent::HEADER,
                Some(&value),
            );
        }
        self.trace = Some(trace);
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.logged {
            return;
        }
        self.logged = true;
        let end_ns = now_ns();
        let start_ns = self.start_ns.unwrap_or(end_ns);
        let mut values = Values::new(start_ns, end_ns, self.trace);
        let config = self.config.clone();
        let Ok(mut s) = self.shared.try_borrow_mut() else {
            return;
        };
        record_metrics(&config, &mut s, &mut values);
        if let Some(log) = &config.access_log {
            let line = log_line(&log.fields, &mut values);
            let _ = hostcalls::log(log.level, &line);
        }
        if let (Some(tracing), Some(trace)) = (&config.tracing, self.trace)
            && trace.sampled
        {
            let span =
                otlp::encode_span(&build_span(tracing, &trace, start_ns, end_ns, &mut values));
            if span.len() <= MAX_SPAN_BYTES {
                s.enqueue(span);
            } else {
                s.record_outcome(Outcome {
                    dropped: 1,
                    ..Outcome::default()
                });
            }
        }
    }
}

fn record_metrics(config: &Config, s: &mut Shared, values: &mut Values) {
    for (i, m) in config.metrics.iter().enumerate() {
        let amount = match &m.value {
            ValueSource::One => Some(1),
            ValueSource::DurationMs => Some(values.duration_ms()),
            ValueSource::Attribute(a) => values.integer(a),
        };
        let Some(amount) = amount else { continue };
        let labels: Vec<(&str, String)> = m
            .labels
            .iter()
            .map(|(name, t)| (name.as_str(), clean_value(&values.render(t))))
            .collect();
        let (series, overflow) = s.limiter.series(i, &m.name, &labels);
        if overflow {
            s.metrics.increment(OVERFLOW, 1);
        }
        match m.kind {
            MetricKind::Counter => {
                s.metrics
                    .increment(&series, i64::try_from(amount).unwrap_or(i64::MAX));
            }
            MetricKind::Histogram => s.metrics.record(&series, amount),
        }
    }
}

/// One JSON object on one line, fields in configuration order.
fn log_line(fields: &[crate::config::Field], values: &mut Values) -> String {
    let mut line = String::from("{");
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&serde_json::Value::String(f.name.clone()).to_string());
        line.push(':');
        let rendered = values.render_opt(&f.template);
        match rendered {
            Some(v) if f.numeric && v.parse::<i64>().is_ok() => line.push_str(&v),
            None if f.numeric => line.push_str("null"),
            other => {
                let v = truncate(other.unwrap_or_default(), MAX_LOG_VALUE);
                line.push_str(&serde_json::Value::String(v).to_string());
            }
        }
    }
    line.push('}');
    line
}

fn build_span(
    tracing: &Tracing,
    trace: &Trace,
    start_ns: u64,
    end_ns: u64,
    values: &mut Values,
) -> Span {
    let mut attributes = Vec::with_capacity(7);
    let mut text = |key: &str, var: Var, attrs: &mut Vec<(String, AttrValue)>| {
        if let Some(v) = values.get(&var) {
            attrs.push((key.to_owned(), AttrValue::Str(truncate(v, MAX_SPAN_VALUE))));
        }
    };
    text(
        "http.request.method",
        Var::RequestHeader(":method".into()),
        &mut attributes,
    );
    text(
        "url.path",
        Var::Property("request.url_path".into()),
        &mut attributes,
    );
    text(
        "server.address",
        Var::RequestHeader(":authority".into()),
        &mut attributes,
    );
    text(
        "client.address",
        Var::Property("source.address".into()),
        &mut attributes,
    );
    text(
        "user_agent.original",
        Var::RequestHeader("user-agent".into()),
        &mut attributes,
    );
    let status = values.status();
    if let Some(code) = status {
        attributes.push((
            "http.response.status_code".into(),
            AttrValue::Int(i64::from(code)),
        ));
    }
    let name = truncate(
        clean_value_long(&values.render(&tracing.span_name)),
        MAX_SPAN_VALUE,
    );
    Span {
        trace_id: trace.trace_id,
        span_id: trace.span_id,
        parent_span_id: trace.parent,
        name: if name.trim().is_empty() {
            "request".into()
        } else {
            name
        },
        start_unix_nano: start_ns,
        end_unix_nano: end_ns,
        attributes,
        error: status.filter(|c| *c >= 500).map(|c| format!("HTTP {c}")),
    }
}

/// Per-request values: computed ones (duration, trace ids, status) and host lookups, cached.
struct Values {
    start_ns: u64,
    end_ns: u64,
    trace: Option<Trace>,
    cache: Vec<(Var, Option<String>)>,
}

impl Values {
    fn new(start_ns: u64, end_ns: u64, trace: Option<Trace>) -> Values {
        Values {
            start_ns,
            end_ns,
            trace,
            cache: Vec::new(),
        }
    }

    fn duration_ms(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns) / 1_000_000
    }

    fn status(&mut self) -> Option<u16> {
        self.get(&Var::Property("response.code".into()))
            .and_then(|v| v.parse::<u16>().ok())
    }

    fn render(&mut self, t: &Template) -> String {
        t.render(|v| self.get(v))
    }

    /// `None` when the template is a single variable without a value.
    fn render_opt(&mut self, t: &Template) -> Option<String> {
        let mut missing = false;
        let out = t.render(|v| {
            let r = self.get(v);
            missing |= r.is_none();
            r
        });
        if missing && out.is_empty() {
            None
        } else {
            Some(out)
        }
    }

    /// An integer attribute (sizes fall back to the `content-length` headers).
    fn integer(&mut self, name: &str) -> Option<u64> {
        if name == DURATION_MS {
            return Some(self.duration_ms());
        }
        if let Some(v) = weft_sdk::properties::get(name)
            && let Some(n) = weft_sdk::properties::decode_u64(&v).or_else(|| {
                std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            })
        {
            return Some(n);
        }
        let header = match name {
            "request.size" => Var::RequestHeader("content-length".into()),
            "response.size" => Var::ResponseHeader("content-length".into()),
            _ => return None,
        };
        self.get(&header).and_then(|v| v.trim().parse().ok())
    }

    fn get(&mut self, var: &Var) -> Option<String> {
        if let Some((_, v)) = self.cache.iter().find(|(k, _)| k == var) {
            return v.clone();
        }
        let value = self.lookup(var);
        if self.cache.len() < MAX_CACHED {
            self.cache.push((var.clone(), value.clone()));
        }
        value
    }

    fn lookup(&mut self, var: &Var) -> Option<String> {
        let Var::Property(p) = var else {
            return template::host_value(var);
        };
        match p.as_str() {
            DURATION_MS => Some(self.duration_ms().to_string()),
            "trace_id" => self.trace.map(|t| hex(&t.trace_id)),
            "span_id" => self.trace.map(|t| hex(&t.span_id)),
            "parent_span_id" => self.trace.and_then(|t| t.parent).map(|p| hex(&p)),
            "trace_sampled" => self.trace.map(|t| t.sampled.to_string()),
            "response.code" => weft_sdk::properties::get_u64("response.code")
                .map(|c| c.to_string())
                .or_else(|| template::host_value(&Var::ResponseHeader(":status".into()))),
            "request.method" => template::host_value(var)
                .or_else(|| template::host_value(&Var::RequestHeader(":method".into()))),
            "request.path" => template::host_value(var)
                .or_else(|| template::host_value(&Var::RequestHeader(":path".into()))),
            "request.host" => template::host_value(var)
                .or_else(|| template::host_value(&Var::RequestHeader(":authority".into()))),
            "request.url_path" => template::host_value(var).or_else(|| {
                template::host_value(&Var::RequestHeader(":path".into()))
                    .map(|p| weft_sdk::http::path_only(&p).to_owned())
            }),
            _ => template::host_value(var),
        }
    }
}

fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .unwrap_or(Duration::ZERO)
        .as_nanos()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// The shared queue's name: the plugin's name and a hash of its configuration, so two
/// configurations of the plugin in one VM never mix their spans.
fn queue_name(configuration: &[u8]) -> String {
    let plugin = weft_sdk::properties::get_string("plugin_name").unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in configuration {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("weft-telemetry/{plugin}/{h:016x}")
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn clean_value_long(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect()
}
