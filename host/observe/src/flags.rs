//! Envoy response flags (`%RESPONSE_FLAGS%`) this proxy sets.

/// No route matched.
pub const NO_ROUTE: &str = "NR";
/// No healthy endpoint.
pub const NO_HEALTHY_UPSTREAM: &str = "UH";
/// Upstream connection failure.
pub const UPSTREAM_CONNECT_FAILURE: &str = "UF";
/// Upstream request timeout.
pub const UPSTREAM_TIMEOUT: &str = "UT";
/// Upstream reset before response headers.
pub const UPSTREAM_RESET: &str = "UR";
/// Downstream protocol error (framing guard).
pub const DOWNSTREAM_PROTOCOL_ERROR: &str = "DPE";
/// Circuit breaker overflow.
pub const UPSTREAM_OVERFLOW: &str = "UO";
/// The last allowed retry failed too.
pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: &str = "URX";
/// Aborted by fault injection.
pub const FAULT_INJECTED: &str = "FI";
/// Delayed by fault injection.
pub const DELAY_INJECTED: &str = "DI";
/// Delayed, then aborted, by fault injection.
pub const DELAY_AND_FAULT_INJECTED: &str = "DI,FI";
/// Refused by a local rate limit.
pub const RATE_LIMITED: &str = "RL";

/// `flag` with `URX` added, for a request whose retries were exhausted.
pub fn with_retry_limit(flag: &'static str) -> &'static str {
    match flag {
        UPSTREAM_CONNECT_FAILURE => "UF,URX",
        UPSTREAM_RESET => "UR,URX",
        UPSTREAM_TIMEOUT => "UT,URX",
        _ => UPSTREAM_RETRY_LIMIT_EXCEEDED,
    }
}
/// Refused by the overload manager (Envoy's `OM`).
pub const OVERLOAD_MANAGER: &str = "OM";
/// The stream idle timeout ended the request (Envoy's `SI`).
pub const STREAM_IDLE_TIMEOUT: &str = "SI";
/// The upstream's response was not valid HTTP (Envoy's `UPE`).
pub const UPSTREAM_PROTOCOL_ERROR: &str = "UPE";
/// No flag.
pub const NONE: &str = "-";
/// The downstream went away before a response (Envoy's `DC`).
pub const DOWNSTREAM_CONNECTION_TERMINATION: &str = "DC";
