//! The plugin configuration: parsed with field paths in errors, checked, and compiled
//! (templates parsed, defaults filled) once in `on_configure`.

use std::fmt;
use std::time::Duration;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, de};
use weft_sdk::config::ConfigError;
use weft_sdk::prelude::LogLevel;
use weft_sdk::template::{Template, Var};

/// Most metrics a configuration may define.
pub const MAX_METRICS: usize = 64;
/// Most labels per metric.
pub const MAX_LABELS: usize = 16;
/// Most entries in any string map (`labels`, `fields`, `headers`, …).
pub const MAX_MAP_ENTRIES: usize = 64;
/// Most spans the queue may be configured to hold.
pub const MAX_QUEUED_SPANS: usize = 100_000;

/// The variable that renders the request duration in milliseconds (computed by the plugin).
pub const DURATION_MS: &str = "request.duration_ms";

/// Counters the plugin keeps about itself; user metrics may not reuse these names.
pub const OWN_METRICS: &[&str] = &[
    "telemetry_spans_exported_total",
    "telemetry_spans_dropped_total",
    "telemetry_export_failures_total",
    "telemetry_label_overflow_total",
];

/// The whole configuration, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    metrics: Option<Vec<RawMetric>>,
    #[serde(default = "default_max_label_sets")]
    max_label_sets: usize,
    #[serde(default)]
    access_log: Option<RawAccessLog>,
    #[serde(default)]
    tracing: Option<RawTracing>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    name: String,
    #[serde(rename = "type")]
    kind: MetricKind,
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "documentation only: the proxy-wasm ABI has no descriptions"
    )]
    description: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    labels: Ordered,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    level: Level,
    #[serde(default)]
    fields: Option<Ordered>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTracing {
    collector_cluster: String,
    #[serde(default = "default_collector_path")]
    collector_path: String,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default = "default_service_name")]
    service_name: String,
    #[serde(default = "default_sample_rate")]
    sample_rate: f64,
    #[serde(default = "default_batch_size")]
    batch_size: usize,
    #[serde(default = "default_flush_interval_ms")]
    flush_interval_ms: u64,
    #[serde(default = "default_max_queued_spans")]
    max_queued_spans: usize,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default)]
    span_name: Option<String>,
    #[serde(default = "yes")]
    propagate: bool,
    #[serde(default)]
    resource_attributes: Ordered,
    #[serde(default)]
    headers: Ordered,
}

fn yes() -> bool {
    true
}
fn default_max_label_sets() -> usize {
    1000
}
fn default_collector_path() -> String {
    "/v1/traces".into()
}
fn default_service_name() -> String {
    "weft".into()
}
fn default_sample_rate() -> f64 {
    1.0
}
fn default_batch_size() -> usize {
    64
}
fn default_flush_interval_ms() -> u64 {
    1000
}
fn default_max_queued_spans() -> usize {
    2048
}
fn default_timeout_ms() -> u64 {
    5000
}

/// A metric's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// Incremented per request (by 1, or by `value`).
    Counter,
    /// One observation of `value` per request.
    Histogram,
}

/// `level` of the access log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// `trace`.
    Trace,
    /// `debug`.
    Debug,
    /// `info` (the default).
    #[default]
    Info,
    /// `warn`.
    Warn,
    /// `error`.
    Error,
    /// `critical`.
    Critical,
}

impl Level {
    /// The proxy-wasm level.
    pub fn log_level(self) -> LogLevel {
        match self {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
            Level::Critical => LogLevel::Critical,
        }
    }
}

/// A JSON object of strings, in document order, duplicates refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ordered(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ordered, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut out: Vec<(String, String)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if out.len() >= MAX_MAP_ENTRIES {
                        return Err(de::Error::custom(format!(
                            "more than {MAX_MAP_ENTRIES} entries"
                        )));
                    }
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(de::Error::custom(format!("duplicate key `{k}`")));
                    }
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// What a metric records per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    /// 1 (counters without `value`).
    One,
    /// The request duration in milliseconds (`request.duration_ms`, histograms' default).
    DurationMs,
    /// An integer attribute such as `response.size` (requests without it record nothing).
    Attribute(String),
}

/// A checked metric.
#[derive(Debug, Clone)]
pub struct Metric {
    /// Base name (labels are appended per request).
    pub name: String,
    /// Counter or histogram.
    pub kind: MetricKind,
    /// What is recorded.
    pub value: ValueSource,
    /// Label names and their templates, sorted by name.
    pub labels: Vec<(String, Template)>,
}

/// One access-log field.
#[derive(Debug, Clone)]
pub struct Field {
    /// JSON key.
    pub name: String,
    /// Its value.
    pub template: Template,
    /// True when the template is a single integer-typed variable: the value is written as a
    /// JSON number (or `null` when missing).
    pub numeric: bool,
}

/// The checked access-log settings.
#[derive(Debug, Clone)]
pub struct AccessLog {
    /// Level of the line.
    pub level: LogLevel,
    /// Fields, in order.
    pub fields: Vec<Field>,
}

/// The checked tracing settings.
#[derive(Debug, Clone)]
pub struct Tracing {
    /// Cluster the collector is reached through.
    pub collector_cluster: String,
    /// `:path` of the export request.
    pub collector_path: String,
    /// `:authority` of the export request.
    pub authority: String,
    /// `service.name` resource attribute.
    pub service_name: String,
    /// Share of new traces sampled, 0..=1.
    pub sample_rate: f64,
    /// Spans per export request.
    pub batch_size: usize,
    /// Tick period: a partial batch is sent at least this often.
    pub flush_interval: Duration,
    /// Most spans kept waiting.
    pub max_queued_spans: usize,
    /// Export request timeout.
    pub timeout: Duration,
    /// Span name.
    pub span_name: Template,
    /// Whether `traceparent` is set towards the upstream.
    pub propagate: bool,
    /// Extra resource attributes.
    pub resource_attributes: Vec<(String, String)>,
    /// Extra export request headers (e.g. a collector API key).
    pub headers: Vec<(String, String)>,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Metrics recorded per request.
    pub metrics: Vec<Metric>,
    /// Distinct label sets per metric before overflow.
    pub max_label_sets: usize,
    /// The access log, when enabled.
    pub access_log: Option<AccessLog>,
    /// Tracing, when configured.
    pub tracing: Option<Tracing>,
}

impl Config {
    /// Parses and checks a configuration (empty → all defaults).
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let raw: Raw = weft_sdk::config::parse(bytes)?;
        compile(raw)
    }
}

fn compile(raw: Raw) -> Result<Config, ConfigError> {
    if raw.max_label_sets == 0 || raw.max_label_sets > 100_000 {
        return Err(ConfigError::invalid(
            "max_label_sets",
            "must be between 1 and 100000",
        ));
    }
    let metrics = match raw.metrics {
        None => default_metrics(),
        Some(list) => {
            if list.len() > MAX_METRICS {
                return Err(ConfigError::invalid(
                    "metrics",
                    format!("at most {MAX_METRICS} metrics"),
                ));
            }
            let mut out: Vec<Metric> = Vec::with_capacity(list.len());
            for (i, m) in list.into_iter().enumerate() {
                let metric = compile_metric(m).map_err(|e| e.within(&format!("metrics[{i}]")))?;
                if out.iter().any(|o| o.name == metric.name) {
                    return Err(ConfigError::invalid(
                        format!("metrics[{i}].name"),
                        format!("duplicate metric `{}`", metric.name),
                    ));
                }
                out.push(metric);
            }
            out
        }
    };
    let access_log = match raw.access_log {
        Some(a) if a.enabled => Some(compile_access_log(a).map_err(|e| e.within("access_log"))?),
        _ => None,
    };
    let tracing = match raw.tracing {
        Some(t) => Some(compile_tracing(t).map_err(|e| e.within("tracing"))?),
        None => None,
    };
    Ok(Config {
        metrics,
        max_label_sets: raw.max_label_sets,
        access_log,
        tracing,
    })
}

fn compile_metric(m: RawMetric) -> Result<Metric, ConfigError> {
    if !is_identifier(&m.name, true) || m.name.len() > 128 {
        return Err(ConfigError::invalid(
            "name",
            format!(
                "`{}` is not a metric name (letters, digits, `_` and `:`, not starting with a digit, at most 128)",
                m.name
            ),
        ));
    }
    if OWN_METRICS.contains(&m.name.as_str()) {
        return Err(ConfigError::invalid(
            "name",
            format!("`{}` is one of the plugin's own metrics", m.name),
        ));
    }
    let value = match (m.kind, m.value.as_deref()) {
        (MetricKind::Counter, None) => ValueSource::One,
        (MetricKind::Histogram, None) => ValueSource::DurationMs,
        (_, Some(DURATION_MS)) => ValueSource::DurationMs,
        (_, Some(attr)) if is_attribute(attr) => ValueSource::Attribute(attr.to_owned()),
        (_, Some(other)) => {
            return Err(ConfigError::invalid(
                "value",
                format!(
                    "`{other}` is not `{DURATION_MS}` or an integer attribute such as `response.size`"
                ),
            ));
        }
    };
    if m.labels.0.len() > MAX_LABELS {
        return Err(ConfigError::invalid(
            "labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    let mut labels = Vec::with_capacity(m.labels.0.len());
    for (name, text) in m.labels.0 {
        let field = format!("labels.{name}");
        if !is_identifier(&name, false) || name.starts_with("__") || name == "plugin" {
            return Err(ConfigError::invalid(
                field,
                "not a label name (letters, digits and `_`, not starting with a digit or `__`; `plugin` is reserved)",
            ));
        }
        let template = Template::parse(&text).map_err(|e| e.within(&field))?;
        labels.push((name, template));
    }
    // Sorted, so a series' name does not depend on how the host re-encoded the JSON object.
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Metric {
        name: m.name,
        kind: m.kind,
        value,
        labels,
    })
}

fn compile_access_log(a: RawAccessLog) -> Result<AccessLog, ConfigError> {
    let fields = a.fields.unwrap_or_else(default_fields);
    if fields.0.is_empty() {
        return Err(ConfigError::invalid(
            "fields",
            "must name at least one field",
        ));
    }
    let mut out = Vec::with_capacity(fields.0.len());
    for (name, text) in fields.0 {
        let field = format!("fields.{name}");
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(ConfigError::invalid(
                field,
                "field names must be non-empty text",
            ));
        }
        let template = Template::parse(&text).map_err(|e| e.within(&field))?;
        let numeric = is_numeric(&template);
        out.push(Field {
            name,
            template,
            numeric,
        });
    }
    Ok(AccessLog {
        level: a.level.log_level(),
        fields: out,
    })
}

fn compile_tracing(t: RawTracing) -> Result<Tracing, ConfigError> {
    if t.collector_cluster.trim().is_empty() {
        return Err(ConfigError::invalid(
            "collector_cluster",
            "must name a cluster",
        ));
    }
    if !t.collector_path.starts_with('/') || has_control(&t.collector_path) {
        return Err(ConfigError::invalid(
            "collector_path",
            "must start with `/`",
        ));
    }
    let authority = t.authority.unwrap_or_else(|| t.collector_cluster.clone());
    if authority.is_empty() || has_control(&authority) || authority.contains(' ') {
        return Err(ConfigError::invalid("authority", "not a valid authority"));
    }
    if !(0.0..=1.0).contains(&t.sample_rate) {
        return Err(ConfigError::invalid(
            "sample_rate",
            "must be between 0 and 1",
        ));
    }
    if t.batch_size == 0 || t.batch_size > 10_000 {
        return Err(ConfigError::invalid(
            "batch_size",
            "must be between 1 and 10000",
        ));
    }
    if t.max_queued_spans < t.batch_size || t.max_queued_spans > MAX_QUEUED_SPANS {
        return Err(ConfigError::invalid(
            "max_queued_spans",
            format!(
                "must be between batch_size ({}) and {MAX_QUEUED_SPANS}",
                t.batch_size
            ),
        ));
    }
    if !(10..=3_600_000).contains(&t.flush_interval_ms) {
        return Err(ConfigError::invalid(
            "flush_interval_ms",
            "must be between 10 and 3600000",
        ));
    }
    if !(1..=600_000).contains(&t.timeout_ms) {
        return Err(ConfigError::invalid(
            "timeout_ms",
            "must be between 1 and 600000",
        ));
    }
    let span_name = t
        .span_name
        .as_deref()
        .unwrap_or("%{request.method} %{request.url_path}");
    let span_name = Template::parse(span_name).map_err(|e| e.within("span_name"))?;
    for (name, value) in &t.headers.0 {
        let lower = name.to_ascii_lowercase();
        let reserved = lower.starts_with(':') || lower == "content-type" || lower == "host";
        if name.is_empty() || reserved || !weft_sdk::http::is_token(name) || has_control(value) {
            return Err(ConfigError::invalid(
                format!("headers.{name}"),
                "not a valid header (pseudo-headers, host and content-type are set by the plugin)",
            ));
        }
    }
    Ok(Tracing {
        collector_cluster: t.collector_cluster,
        collector_path: t.collector_path,
        authority,
        service_name: t.service_name,
        sample_rate: t.sample_rate,
        batch_size: t.batch_size,
        flush_interval: Duration::from_millis(t.flush_interval_ms),
        max_queued_spans: t.max_queued_spans,
        timeout: Duration::from_millis(t.timeout_ms),
        span_name,
        propagate: t.propagate,
        resource_attributes: t.resource_attributes.0,
        headers: t
            .headers
            .0
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect(),
    })
}

/// Istio's standard pair: `requests_total` and `request_duration_milliseconds`, labelled by
/// method, response code and route.
fn default_metrics() -> Vec<Metric> {
    let labels = || {
        // In name order, as configured labels are.
        [
            ("method", "%{request.method}"),
            ("route", "%{xds.route_name|none}"),
            ("status", "%{response.code|0}"),
        ]
        .into_iter()
        .filter_map(|(k, t)| Template::parse(t).ok().map(|t| (k.to_owned(), t)))
        .collect::<Vec<_>>()
    };
    vec![
        Metric {
            name: "requests_total".into(),
            kind: MetricKind::Counter,
            value: ValueSource::One,
            labels: labels(),
        },
        Metric {
            name: "request_duration_milliseconds".into(),
            kind: MetricKind::Histogram,
            value: ValueSource::DurationMs,
            labels: labels(),
        },
    ]
}

fn default_fields() -> Ordered {
    Ordered(
        [
            ("method", "%{request.method}"),
            ("path", "%{request.path}"),
            ("authority", "%{request.host}"),
            ("status", "%{response.code}"),
            ("duration_ms", "%{request.duration_ms}"),
            ("source", "%{source.address}"),
            ("user_agent", "%{request.header.user-agent}"),
            ("request_id", "%{request.header.x-request-id}"),
            ("trace_id", "%{trace_id}"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    )
}

/// Attributes whose values are integers (rendered as JSON numbers in the access log).
const NUMERIC: &[&str] = &[
    DURATION_MS,
    "response.code",
    "request.size",
    "request.total_size",
    "response.size",
    "response.total_size",
    "request.duration",
    "source.port",
    "destination.port",
    "upstream.port",
    "connection.id",
    "response.grpc_status",
];

fn is_numeric(t: &Template) -> bool {
    let mut vars = t.vars();
    let single = matches!((vars.next(), vars.next()), (Some(Var::Property(p)), None) if NUMERIC.contains(&p.as_str()));
    single && t.render(|_| Some(String::new())).is_empty()
}

fn is_identifier(s: &str, colon: bool) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || (colon && b == b':'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || (colon && b == b':'))
}

fn is_attribute(s: &str) -> bool {
    s.contains('.')
        && s.len() <= 128
        && s.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> ConfigError {
        Config::parse(json.as_bytes()).expect_err(json)
    }

    #[test]
    fn empty_configuration_gives_the_standard_metrics_only() {
        let c = Config::parse(b"").expect("defaults");
        let names: Vec<_> = c.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["requests_total", "request_duration_milliseconds"]);
        assert_eq!(c.metrics[1].value, ValueSource::DurationMs);
        let labels: Vec<_> = c.metrics[0]
            .labels
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(labels, ["method", "route", "status"]);
        assert_eq!(c.max_label_sets, 1000);
        assert!(c.access_log.is_none());
        assert!(c.tracing.is_none());
    }

    #[test]
    fn a_full_configuration_compiles() {
        let c = Config::parse(
            br#"{
            "metrics": [
              {"name": "rq", "type": "counter", "description": "requests",
               "labels": {"zeta": "%{request.method}", "alpha": "%{request.header.x-tenant|none}"}},
              {"name": "bytes", "type": "histogram", "value": "response.size"},
              {"name": "lat", "type": "histogram"}
            ],
            "max_label_sets": 5,
            "access_log": {"level": "warn", "fields": {"s": "%{response.code}", "p": "at %{request.path}"}},
            "tracing": {"collector_cluster": "otel", "sample_rate": 0.5, "batch_size": 2,
                        "max_queued_spans": 4, "headers": {"Api-Key": "k"},
                        "resource_attributes": {"env": "prod"}}
        }"#,
        )
        .expect("valid");
        let labels: Vec<_> = c.metrics[0]
            .labels
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(labels, ["alpha", "zeta"], "sorted");
        assert_eq!(
            c.metrics[1].value,
            ValueSource::Attribute("response.size".into())
        );
        assert_eq!(c.metrics[2].value, ValueSource::DurationMs);
        let log = c.access_log.expect("log");
        assert_eq!(log.level, LogLevel::Warn);
        assert!(log.fields[0].numeric);
        assert!(!log.fields[1].numeric);
        let t = c.tracing.expect("tracing");
        assert_eq!(t.authority, "otel");
        assert_eq!(t.collector_path, "/v1/traces");
        assert_eq!(t.flush_interval, Duration::from_secs(1));
        assert_eq!(t.headers, vec![("api-key".to_owned(), "k".to_owned())]);
        assert!(t.propagate);
    }

    #[test]
    fn access_log_defaults_and_disabling() {
        let c = Config::parse(br#"{"access_log": {}}"#).expect("valid");
        let log = c.access_log.expect("enabled by default once present");
        let names: Vec<_> = log.fields.iter().map(|f| f.name.as_str()).collect();
        assert!(
            names.contains(&"trace_id") && names.contains(&"duration_ms"),
            "{names:?}"
        );
        let c = Config::parse(br#"{"access_log": {"enabled": false}}"#).expect("valid");
        assert!(c.access_log.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"metrik": []}"#, "metrik"),
            (
                r#"{"metrics": [{"name": "a", "type": "gauge"}]}"#,
                "metrics[0].type",
            ),
            (
                r#"{"metrics": [{"name": "1a", "type": "counter"}]}"#,
                "metrics[0].name",
            ),
            (
                r#"{"metrics": [{"name": "a", "type": "counter"}, {"name": "a", "type": "counter"}]}"#,
                "metrics[1].name",
            ),
            (
                r#"{"metrics": [{"name": "a", "type": "counter", "labels": {"m": "%{request.method"}}]}"#,
                "metrics[0].labels.m",
            ),
            (
                r#"{"metrics": [{"name": "a", "type": "counter", "labels": {"plugin": "x"}}]}"#,
                "metrics[0].labels.plugin",
            ),
            (
                r#"{"metrics": [{"name": "a", "type": "counter", "labels": {"a": 1}}]}"#,
                "metrics[0].labels.a",
            ),
            (
                r#"{"metrics": [{"name": "a", "type": "histogram", "value": "Bogus"}]}"#,
                "metrics[0].value",
            ),
            (
                r#"{"metrics": [{"name": "telemetry_spans_dropped_total", "type": "counter"}]}"#,
                "metrics[0].name",
            ),
            (r#"{"max_label_sets": 0}"#, "max_label_sets"),
            (r#"{"access_log": {"level": "loud"}}"#, "access_log.level"),
            (r#"{"access_log": {"fields": {}}}"#, "access_log.fields"),
            (
                r#"{"access_log": {"fields": {"x": "%{}"}}}"#,
                "access_log.fields.x",
            ),
            (r#"{"tracing": {}}"#, "tracing"),
            (
                r#"{"tracing": {"collector_cluster": ""}}"#,
                "tracing.collector_cluster",
            ),
            (
                r#"{"tracing": {"collector_cluster": "c", "collector_path": "v1"}}"#,
                "tracing.collector_path",
            ),
            (
                r#"{"tracing": {"collector_cluster": "c", "sample_rate": 1.5}}"#,
                "tracing.sample_rate",
            ),
            (
                r#"{"tracing": {"collector_cluster": "c", "batch_size": 0}}"#,
                "tracing.batch_size",
            ),
            (
                r#"{"tracing": {"collector_cluster": "c", "batch_size": 10, "max_queued_spans": 5}}"#,
                "tracing.max_queued_spans",
            ),
            (
                r#"{"tracing": {"collector_cluster": "c", "flush_interval_ms": 1}}"#,
                "tracing.flush_interval_ms",
            ),
            (
                r#"{"tracing": {"collector_cluster": "c", "timeout_ms": 0}}"#,
                "tracing.timeout_ms",
            ),
            (
                r#"{"tracing": {"collector_cluster": "c", "span_name": "%{"}}"#,
                "tracing.span_name",
            ),
            (
                r#"{"tracing": {"collector_cluster": "c", "headers": {":path": "x"}}}"#,
                "tracing.headers.:path",
            ),
            (
                r#"{"tracing": {"collector_cluster": "c", "headers": {"a": "b", "a": "c"}}}"#,
                "tracing.headers",
            ),
            (
                r#"{"tracing": {"collector_cluster": "c", "colector_path": "/x"}}"#,
                "tracing",
            ),
        ];
        for (json, field) in cases {
            let e = err(json);
            assert!(
                e.field() == field || e.field().starts_with(field),
                "{json}: got {e}, want field {field}"
            );
        }
        let e = err(r#"{"tracing": {}}"#);
        assert!(e.message().contains("collector_cluster"), "{e}");
        let e = err(r#"{"tracing": {"collector_cluster": "c", "headers": {"a": "b", "a": "c"}}}"#);
        assert!(e.message().contains("duplicate key `a`"), "{e}");
    }

    #[test]
    fn numeric_fields_are_single_integer_variables() {
        let t = |s: &str| is_numeric(&Template::parse(s).expect("template"));
        assert!(t("%{response.code}"));
        assert!(t("%{request.duration_ms}"));
        assert!(!t("code %{response.code}"));
        assert!(!t("%{request.path}"));
        assert!(!t("%{response.code}%{response.code}"));
    }
}
