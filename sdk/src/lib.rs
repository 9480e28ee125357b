//! The crate Weft plugin authors depend on.
//!
//! It re-exports the [`proxy_wasm`] SDK unchanged — a plugin built with `weft-sdk` is a plain
//! proxy-wasm (ABI 0.2.1) plugin that also loads in Envoy — and adds what every filter ends up
//! writing by hand:
//!
//! - [`config`]: typed `on_configure` parsing whose errors name the bad field
//!   (`rules[2].action: unknown variant "alow"`), logged for the operator;
//! - [`host`]: header and callout reads that cannot trap on non-UTF-8 input;
//! - [`http`]: paths, query parameters, cookies, bearer tokens, case-insensitive header lookup;
//! - [`properties`]: Envoy attribute paths (`source.address`, `request.path`, …) decoded to
//!   strings and integers;
//! - [`template`]: `%{request.path}`-style templates rendered from properties and headers;
//! - [`metrics`]: counters, gauges and histograms defined once by name (labels in the name);
//! - [`reply`]: JSON local replies with a reason header.
//!
//! Functions that call the host (`host`, `properties`, `reply`, `metrics`, [`config::log_error`]) only
//! do something inside a proxy; the rest is pure and unit-testable natively. Test the whole
//! plugin with the `weft-plugin-test` harness, which runs its real `.wasm` in Weft's host.
#![forbid(unsafe_code)]

pub mod config;
pub mod host;
pub mod http;
pub mod metrics;
pub mod properties;
pub mod reply;
pub mod template;

pub use proxy_wasm;
pub use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
pub use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

/// The `proxy_wasm` items a filter module usually needs: `use weft_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::config::ConfigError;
    pub use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
    pub use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};
}
