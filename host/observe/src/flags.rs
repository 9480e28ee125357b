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

/// Envoy's `response.flags` attribute: the flags as a bit set, in Envoy's `ResponseFlag` order
/// (`LH` = 0x1, `UH` = 0x2, `UT` = 0x4, `LR` = 0x8, `UR` = 0x10, `UF` = 0x20, `UC` = 0x40,
/// `UO` = 0x80, `NR` = 0x100, `DI` = 0x200, `FI` = 0x400, `RL` = 0x800, `UAEX` = 0x1000,
/// `RLSE` = 0x2000, `DC` = 0x4000, `URX` = 0x8000, `SI` = 0x10000, `IH` = 0x20000,
/// `DPE` = 0x40000).
pub fn envoy_bits(flags: &str) -> u64 {
    const ORDER: [&str; 19] = [
        "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE",
        "DC", "URX", "SI", "IH", "DPE",
    ];
    flags
        .split(',')
        .filter_map(|f| ORDER.iter().position(|o| *o == f))
        .fold(0, |bits, i| bits | (1 << i))
}

/// Envoy's `response.code_details` for a local reply that carries `flag` and no details of
/// its own (`None`: the flag says nothing about the reply).
pub fn code_details(flag: &str) -> Option<&'static str> {
    Some(match flag {
        NO_ROUTE => "route_not_found",
        NO_HEALTHY_UPSTREAM => "no_healthy_upstream",
        UPSTREAM_CONNECT_FAILURE | "UF,URX" => {
            "upstream_reset_before_response_started{connection_failure}"
        }
        UPSTREAM_RESET | "UR,URX" => "upstream_reset_before_response_started{remote_reset}",
        UPSTREAM_TIMEOUT | "UT,URX" => "response_timeout",
        UPSTREAM_OVERFLOW => "upstream_reset_before_response_started{overflow}",
        UPSTREAM_RETRY_LIMIT_EXCEEDED => "upstream_reset_before_response_started{retry_limit}",
        FAULT_INJECTED | DELAY_AND_FAULT_INJECTED => "fault_filter_abort",
        RATE_LIMITED => "local_rate_limited",
        DOWNSTREAM_PROTOCOL_ERROR => "http1.codec_error",
        DOWNSTREAM_CONNECTION_TERMINATION => "downstream_remote_disconnect",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_follow_envoys_order() {
        assert_eq!(envoy_bits(NONE), 0);
        assert_eq!(envoy_bits(NO_ROUTE), 0x100);
        assert_eq!(envoy_bits("UF,URX"), 0x20 | 0x8000);
        assert_eq!(envoy_bits(DOWNSTREAM_PROTOCOL_ERROR), 0x40000);
    }
}
