//! `telemetry`: Weft's shipped telemetry plugin — the role Istio's Mixer adapters and the
//! New Relic adapter played, as one proxy-wasm filter that also loads in Envoy.
//!
//! - **Metrics** defined in the configuration (counters and histograms, labels rendered from
//!   attributes and headers, cardinality bounded), emitted through the proxy-wasm metrics ABI;
//!   Istio's `requests_total` / `request_duration_milliseconds` when none are configured.
//! - **An access log line** per request: one JSON object with configurable fields.
//! - **Tracing**: W3C `traceparent` continued (or a trace started) and propagated upstream; a
//!   server span per request, batched and exported as OTLP/HTTP JSON with `proxy_http_call`
//!   to a collector cluster, with a bounded queue when the collector is down.
//!
//! The configuration schema is in `docs/plugins/telemetry.md`. Pure logic lives in
//! [`config`], [`traceparent`], [`otlp`], [`batch`], [`labels`] and [`ids`]; the proxy-wasm
//! glue in `filter`.
#![forbid(unsafe_code)]

pub mod batch;
pub mod config;
pub mod ids;
pub mod labels;
pub mod otlp;
pub mod traceparent;

mod filter;

use weft_sdk::prelude::*;
use weft_sdk::proxy_wasm;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(filter::Root::new()) });
}}
