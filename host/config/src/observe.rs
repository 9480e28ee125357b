//! The observability sections of the schema: native tracing (`tracing:`, a listener's
//! `tracing:`, a route's `decorator:`) and the access-log format (`access_log:` and a
//! listener's `access_log:`). `docs/tracing.md` and `docs/config.md` document them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Native tracing: a span per request, exported to an OTLP collector.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// The collector: `http://host:port` (gRPC), or the full URL such as
    /// `http://host:4318/v1/traces` (HTTP). Read at start; a change needs a restart.
    pub collector: String,
    /// `grpc` (default) or `http` (OTLP/HTTP with protobuf bodies).
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// `service.name` of the exported resource.
    #[serde(default = "defaults::service_name")]
    pub service_name: String,
    /// Percentage of requests that start a trace and are sampled (Istio's default: 1).
    #[serde(default = "defaults::random_sampling")]
    pub random_sampling: f64,
    /// Percentage of requests with `x-client-trace-id` that are sampled (default 100).
    #[serde(default = "defaults::hundred")]
    pub client_sampling: f64,
    /// Cap applied after the two above (default 100).
    #[serde(default = "defaults::hundred")]
    pub overall_sampling: f64,
    /// Finished spans waiting for export at most; more are dropped and counted.
    #[serde(default = "defaults::max_queue")]
    pub max_queue: usize,
    /// Spans per export at most.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Longest a span waits for its batch to fill.
    #[serde(default = "defaults::batch_interval", with = "humantime_serde")]
    pub batch_interval: Duration,
    /// Longest one export may take.
    #[serde(default = "defaults::export_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC.
    #[default]
    Grpc,
    /// OTLP/HTTP, protobuf.
    Http,
}

/// A listener's tracing settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTracing {
    /// `ingress` (server spans named `ingress`) or `egress` (client spans named
    /// `egress <host>`), Envoy's `operation_name`.
    #[serde(default)]
    pub operation: TraceOperation,
    /// No spans for this listener (trace headers pass through untouched).
    #[serde(default)]
    pub disabled: bool,
}

impl Default for ListenerTracing {
    fn default() -> Self {
        ListenerTracing {
            operation: TraceOperation::Ingress,
            disabled: false,
        }
    }
}

/// Envoy's tracing operation name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceOperation {
    /// Inbound traffic: server spans.
    #[default]
    Ingress,
    /// Outbound traffic: client spans.
    Egress,
}

/// A route's span name, as Envoy's route `decorator`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Decorator {
    /// The span name for requests of this route.
    pub operation: String,
}

/// How access-log lines look. At most one of `format`, `text_format`, `json_format`; none
/// means Weft's JSON line.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogFormat {
    /// A named format: `json` (Weft's JSON line), `envoy` (Envoy's default text line) or
    /// `istio` (Istio's default text line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<LogPreset>,
    /// A line of Envoy command operators (`%START_TIME%`, `%REQ(X-REQUEST-ID)%`, …), as
    /// Envoy's `text_format`; a newline is added when it does not end with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_format: Option<String>,
    /// A JSON object whose string values are command-operator templates, as Envoy's
    /// `json_format` (nested objects allowed; other values written as they are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_format: Option<BTreeMap<String, serde_json::Value>>,
}

/// A named access-log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogPreset {
    /// Weft's JSON line (the default).
    Json,
    /// Envoy's default text format.
    Envoy,
    /// Istio's default text format.
    Istio,
}

/// A listener's access-log settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerAccessLog {
    /// No access-log lines for this listener.
    #[serde(default)]
    pub disabled: bool,
    /// A named format (see [`LogFormat`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<LogPreset>,
    /// Command operators, as Envoy's `text_format`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_format: Option<String>,
    /// Command operators as JSON values, as Envoy's `json_format`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_format: Option<BTreeMap<String, serde_json::Value>>,
}

impl ListenerAccessLog {
    /// The format fields, when any is set.
    pub fn log_format(&self) -> Option<LogFormat> {
        let f = LogFormat {
            format: self.format,
            text_format: self.text_format.clone(),
            json_format: self.json_format.clone(),
        };
        (f != LogFormat::default()).then_some(f)
    }
}

/// Defaults of this module's fields.
pub mod defaults {
    use std::time::Duration;

    /// `weft`.
    pub fn service_name() -> String {
        "weft".to_owned()
    }
    /// 1 %, Istio's default.
    pub fn random_sampling() -> f64 {
        1.0
    }
    /// 100 %.
    pub fn hundred() -> f64 {
        100.0
    }
    /// 2048, OpenTelemetry's batch span processor default.
    pub fn max_queue() -> usize {
        2048
    }
    /// 512, OpenTelemetry's default.
    pub fn batch_size() -> usize {
        512
    }
    /// 5 s, OpenTelemetry's default.
    pub fn batch_interval() -> Duration {
        Duration::from_secs(5)
    }
    /// 10 s.
    pub fn export_timeout() -> Duration {
        Duration::from_secs(10)
    }
}
