//! Weft end to end: real listeners on 127.0.0.1, real upstreams, real clients.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail loudly on unexpected input"
)]

mod admin;
mod balancing;
mod differential;
mod errors;
mod examples;
mod framing;
mod metrics;
mod mtls;
mod plugin_authz;
mod plugin_header_rewrite;
mod plugin_telemetry;
mod plugins;
mod protocols;
mod reload;
mod resilience;
mod routing;
mod shutdown;
mod streaming;
