//! Weft end to end: real listeners on 127.0.0.1, real upstreams, real clients.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] functions fail loudly on unexpected input"
)]

mod access_log_formats;
mod admin;
mod balancing;
mod config_dump;
mod differential;
mod errors;
mod examples;
mod framing;
mod h2_conformance;
mod hardening;
mod istio_metrics;
mod metrics;
mod mtls;
mod phases;
mod plugin_authz;
mod plugin_header_rewrite;
mod plugin_soak;
mod plugin_swap;
mod plugin_telemetry;
mod plugins;
mod prometheus;
mod protocols;
mod reload;
mod reload_actor;
mod resilience;
mod routing;
mod shutdown;
mod sidecar;
mod smuggling;
mod streaming;
mod trace_spans;
mod upstream_pool;
mod upstream_tls;
mod workers;
mod xds;
