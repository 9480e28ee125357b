//! Traffic management and resilience settings, named as Istio's VirtualService and
//! DestinationRule (and Envoy's) so that their users recognise them: retries with budgets,
//! health checks, outlier detection, circuit breakers, fault injection, mirroring and local rate
//! limits. `docs/config.md` documents each field.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::matching::HeaderMatch;

/// A route's retry policy (Envoy's `retry_policy`, Istio's `retries`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first try (Istio calls it `attempts`).
    #[serde(default = "defaults::num_retries", alias = "attempts")]
    pub num_retries: u32,
    /// Deadline of each try; the route `timeout` still bounds all tries together.
    #[serde(default, with = "humantime_serde::option")]
    pub per_try_timeout: Option<Duration>,
    /// Comma-separated conditions, as Envoy's `x-envoy-retry-on` and Istio's `retryOn`:
    /// `5xx`, `gateway-error`, `reset`, `connect-failure`, `retriable-4xx`, `refused-stream`,
    /// `retriable-status-codes`, gRPC `cancelled`, `deadline-exceeded`, `internal`,
    /// `resource-exhausted`, `unavailable`, and bare status codes (`503`).
    #[serde(default = "defaults::retry_on")]
    pub retry_on: String,
    /// Statuses retried under `retriable-status-codes`.
    #[serde(default)]
    pub retriable_status_codes: Vec<u16>,
    /// Exponential back-off between tries, with full jitter.
    #[serde(default)]
    pub retry_back_off: Option<RetryBackOff>,
    /// Request bodies up to this size are buffered so that they can be replayed; a larger body
    /// (or one of unknown length) is streamed and its request is not retried.
    #[serde(default = "defaults::per_request_buffer_limit_bytes")]
    pub per_request_buffer_limit_bytes: usize,
}

/// Back-off between retries: try `n` waits a random time in `[0, min(base × 2^(n-1), max)]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBackOff {
    /// First back-off interval (default 25ms).
    #[serde(default = "defaults::base_interval", with = "humantime_serde")]
    pub base_interval: Duration,
    /// Longest back-off (default ten times `base_interval`).
    #[serde(default, with = "humantime_serde::option")]
    pub max_interval: Option<Duration>,
}

/// A cluster's retry budget: retries in flight may be at most `budget_percent` of the
/// requests in flight, or `min_retry_concurrency`, whichever is larger.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Percentage of active requests that may be retries (default 20).
    #[serde(default = "defaults::budget_percent")]
    pub budget_percent: f64,
    /// Retries always allowed concurrently (default 3).
    #[serde(default = "defaults::min_retry_concurrency")]
    pub min_retry_concurrency: u32,
}

/// A cluster's circuit-breaker thresholds (Envoy's default priority thresholds).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    /// Upstream connections (HTTP/1: requests in flight, one per connection); unlimited when
    /// unset.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection when all `max_connections` are busy (default
    /// unlimited, as Istio); needs `max_connections`.
    #[serde(default)]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight to the cluster (default unlimited, as Istio).
    #[serde(default = "defaults::breaker_limit")]
    pub max_requests: u32,
    /// Retries in flight to the cluster (default unlimited, as Istio); a `retry_budget` replaces it.
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,
}

/// Passive health checking: endpoints that fail are ejected for a while.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses (and local-origin failures) that eject (default 5; 0 off).
    #[serde(default = "defaults::consecutive_5xx")]
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 (and local-origin failures) that eject (default 0, off).
    #[serde(default)]
    pub consecutive_gateway_errors: u32,
    /// Consecutive connect failures, resets and timeouts that eject (default 0, off).
    #[serde(default)]
    pub consecutive_local_origin_failures: u32,
    /// How often success rates are computed and ejection counts decay (default 10s).
    #[serde(default = "defaults::outlier_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Ejection time is this times the number of times the endpoint was ejected (default 30s).
    #[serde(default = "defaults::base_ejection_time", with = "humantime_serde")]
    pub base_ejection_time: Duration,
    /// Longest ejection (default 300s).
    #[serde(default = "defaults::max_ejection_time", with = "humantime_serde")]
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, in percent (default 10; at least one may always be).
    #[serde(default = "defaults::max_ejection_percent")]
    pub max_ejection_percent: f64,
    /// Success-rate ejection needs this many endpoints with enough requests (default 5).
    #[serde(default = "defaults::success_rate_minimum_hosts")]
    pub success_rate_minimum_hosts: u32,
    /// Requests an endpoint needs in an interval to take part (default 100).
    #[serde(default = "defaults::success_rate_request_volume")]
    pub success_rate_request_volume: u32,
    /// Ejected below mean − (factor / 1000) × stdev (default 1900; 0 disables success rate).
    #[serde(default = "defaults::success_rate_stdev_factor")]
    pub success_rate_stdev_factor: u32,
}

/// An active health check.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// An HTTP check. Exactly one of `http` and `tcp`.
    #[serde(default)]
    pub http: Option<HttpHealthCheck>,
    /// A TCP connect check.
    #[serde(default)]
    pub tcp: Option<TcpHealthCheck>,
    /// Time between checks of an endpoint (default 5s).
    #[serde(default = "defaults::hc_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// A check not answered in this time failed (default 1s).
    #[serde(default = "defaults::hc_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Up to this much random time is added to each interval (default 0).
    #[serde(default, with = "humantime_serde")]
    pub interval_jitter: Duration,
    /// Consecutive passes that bring an unhealthy endpoint back (default 1).
    #[serde(default = "defaults::healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures that take an endpoint out (default 3).
    #[serde(default = "defaults::unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

/// An HTTP health check: `GET path`, passing on an expected status.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheck {
    /// Request path (default `/healthz`).
    #[serde(default = "defaults::hc_path")]
    pub path: String,
    /// Host header (default: the cluster name).
    #[serde(default)]
    pub host: Option<String>,
    /// Passing statuses: codes (`200`) or inclusive ranges (`"200-299"`); default `200`.
    #[serde(default = "defaults::expected_statuses")]
    pub expected_statuses: Vec<StatusSpec>,
}

/// A status code or an inclusive range `"low-high"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum StatusSpec {
    /// One code.
    Code(u16),
    /// `"200-299"`, or a code as text.
    Range(String),
}

impl StatusSpec {
    /// The inclusive range, or why the text is not one.
    pub fn range(&self) -> Result<(u16, u16), String> {
        match self {
            StatusSpec::Code(c) => Ok((*c, *c)),
            StatusSpec::Range(text) => {
                let parse = |s: &str| {
                    s.trim()
                        .parse::<u16>()
                        .map_err(|_| format!("`{text}` is not a status or `low-high` range"))
                };
                match text.split_once('-') {
                    Some((lo, hi)) => Ok((parse(lo)?, parse(hi)?)),
                    None => parse(text).map(|c| (c, c)),
                }
            }
        }
    }
}

/// A TCP health check: the connect succeeding is a pass.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheck {}

/// Fault injection on a route (Istio's `fault`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Delay a share of requests.
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    /// Abort a share of requests.
    #[serde(default)]
    pub abort: Option<FaultAbort>,
    /// Only requests matching all these header conditions are faulted.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

/// Delay injection.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// How long.
    #[serde(with = "humantime_serde")]
    pub fixed_delay: Duration,
    /// Share of requests delayed, 0–100 (default 100).
    #[serde(default = "defaults::hundred")]
    pub percentage: f64,
}

/// Abort injection: exactly one of `http_status` and `grpc_status`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status to answer with (200–599).
    #[serde(default)]
    pub http_status: Option<u16>,
    /// gRPC status to answer with (HTTP 200, `grpc-status` header; 0–16).
    #[serde(default)]
    pub grpc_status: Option<u32>,
    /// Share of requests aborted, 0–100 (default 100).
    #[serde(default = "defaults::hundred")]
    pub percentage: f64,
}

/// Mirror a share of a route's requests to a shadow cluster.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorPolicy {
    /// The shadow cluster.
    pub cluster: String,
    /// Share of requests mirrored, 0–100 (Istio's `mirrorPercentage`; default 100).
    #[serde(default)]
    pub percentage: Option<f64>,
    /// Envoy's form of the share: `{default_value: {numerator, denominator}}`; at most one of
    /// `percentage` and `runtime_fraction`.
    #[serde(default)]
    pub runtime_fraction: Option<RuntimeFraction>,
}

impl MirrorPolicy {
    /// The share mirrored, in percent.
    pub fn effective_percentage(&self) -> f64 {
        match (&self.runtime_fraction, self.percentage) {
            (Some(f), _) => f.default_value.percent(),
            (None, Some(p)) => p,
            (None, None) => 100.0,
        }
    }
}

/// Envoy's `RuntimeFractionalPercent` (only its default value: Weft has no runtime layer).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFraction {
    /// The fraction.
    pub default_value: FractionalPercent,
}

/// `numerator / denominator`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FractionalPercent {
    /// Numerator.
    pub numerator: u32,
    /// `HUNDRED` (default), `TEN_THOUSAND` or `MILLION`.
    #[serde(default)]
    pub denominator: Denominator,
}

/// Envoy's `FractionalPercent.DenominatorType`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Denominator {
    /// 100.
    #[default]
    Hundred,
    /// 10 000.
    TenThousand,
    /// 1 000 000.
    Million,
}

impl FractionalPercent {
    /// The fraction in percent (above 100 when the numerator exceeds the denominator).
    pub fn percent(&self) -> f64 {
        let denominator = match self.denominator {
            Denominator::Hundred => 100.0,
            Denominator::TenThousand => 10_000.0,
            Denominator::Million => 1_000_000.0,
        };
        f64::from(self.numerator) * 100.0 / denominator
    }
}

/// A local token bucket (Envoy's `local_ratelimit`): `max_tokens`, refilled with
/// `tokens_per_fill` every `fill_interval`; a request without a token gets 429.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRateLimit {
    /// Bucket size (and initial content).
    pub max_tokens: u32,
    /// Tokens added per fill (default 1).
    #[serde(default = "defaults::tokens_per_fill")]
    pub tokens_per_fill: u32,
    /// Time between fills.
    #[serde(with = "humantime_serde")]
    pub fill_interval: Duration,
}

/// Default values.
pub mod defaults {
    use std::time::Duration;

    use super::StatusSpec;

    /// 1 retry.
    pub fn num_retries() -> u32 {
        1
    }
    /// Istio's default conditions.
    pub fn retry_on() -> String {
        "connect-failure,refused-stream,503".to_owned()
    }
    /// 64 KiB.
    pub fn per_request_buffer_limit_bytes() -> usize {
        64 * 1024
    }
    /// 25 ms, Envoy's default.
    pub fn base_interval() -> Duration {
        Duration::from_millis(25)
    }
    /// 20 %.
    pub fn budget_percent() -> f64 {
        20.0
    }
    /// 3.
    pub fn min_retry_concurrency() -> u32 {
        3
    }
    /// Unlimited (`u32::MAX`), Istio's default.
    pub fn breaker_limit() -> u32 {
        u32::MAX
    }
    /// Unlimited (`u32::MAX`), Istio's default (Envoy's is 3).
    pub fn max_retries() -> u32 {
        u32::MAX
    }
    /// 5.
    pub fn consecutive_5xx() -> u32 {
        5
    }
    /// 10 s.
    pub fn outlier_interval() -> Duration {
        Duration::from_secs(10)
    }
    /// 30 s.
    pub fn base_ejection_time() -> Duration {
        Duration::from_secs(30)
    }
    /// 300 s.
    pub fn max_ejection_time() -> Duration {
        Duration::from_secs(300)
    }
    /// 10 %.
    pub fn max_ejection_percent() -> f64 {
        10.0
    }
    /// 5.
    pub fn success_rate_minimum_hosts() -> u32 {
        5
    }
    /// 100.
    pub fn success_rate_request_volume() -> u32 {
        100
    }
    /// 1900 (1.9 standard deviations).
    pub fn success_rate_stdev_factor() -> u32 {
        1900
    }
    /// 5 s.
    pub fn hc_interval() -> Duration {
        Duration::from_secs(5)
    }
    /// 1 s.
    pub fn hc_timeout() -> Duration {
        Duration::from_secs(1)
    }
    /// 1.
    pub fn healthy_threshold() -> u32 {
        1
    }
    /// 3.
    pub fn unhealthy_threshold() -> u32 {
        3
    }
    /// `/healthz`.
    pub fn hc_path() -> String {
        "/healthz".to_owned()
    }
    /// `[200]`.
    pub fn expected_statuses() -> Vec<StatusSpec> {
        vec![StatusSpec::Code(200)]
    }
    /// 100 %.
    pub fn hundred() -> f64 {
        100.0
    }
    /// 1.
    pub fn tokens_per_fill() -> u32 {
        1
    }
    /// 50 %, Envoy's healthy panic threshold.
    pub fn panic_threshold() -> f64 {
        50.0
    }
}

/// The `retry_on` conditions a policy names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`.
    pub server_error: bool,
    /// `gateway-error` (502, 503, 504).
    pub gateway_error: bool,
    /// `reset`.
    pub reset: bool,
    /// `connect-failure`.
    pub connect_failure: bool,
    /// `retriable-4xx` (409).
    pub retriable_4xx: bool,
    /// `refused-stream`.
    pub refused_stream: bool,
    /// `retriable-status-codes`.
    pub retriable_status_codes: bool,
    /// Bare status codes named in the list.
    pub statuses: Vec<u16>,
    /// gRPC statuses (from `cancelled`, `deadline-exceeded`, …).
    pub grpc_statuses: Vec<u32>,
}

impl RetryOn {
    /// Parses a comma-separated list; the error names the unknown condition.
    pub fn parse(text: &str) -> Result<RetryOn, String> {
        let mut on = RetryOn::default();
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match token {
                "5xx" => on.server_error = true,
                "gateway-error" => on.gateway_error = true,
                "reset" => on.reset = true,
                "connect-failure" => on.connect_failure = true,
                "retriable-4xx" => on.retriable_4xx = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-status-codes" => on.retriable_status_codes = true,
                "cancelled" => on.grpc_statuses.push(1),
                "deadline-exceeded" => on.grpc_statuses.push(4),
                "resource-exhausted" => on.grpc_statuses.push(8),
                "internal" => on.grpc_statuses.push(13),
                "unavailable" => on.grpc_statuses.push(14),
                other => match other.parse::<u16>() {
                    Ok(code) if (100..=599).contains(&code) => on.statuses.push(code),
                    _ => return Err(format!("unknown retry condition `{other}`")),
                },
            }
        }
        Ok(on)
    }
}
