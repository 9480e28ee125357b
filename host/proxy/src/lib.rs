//! The assembly: Weft's data plane put together.
//!
//! A configuration is compiled into an immutable [`generation::Generation`] (clusters from
//! `weft-upstream`, HTTP listeners with their phase chains from `weft-http`, TCP targets and
//! listener TLS from `weft-transport`). The [`reload`] actor is the one path by which a new
//! generation is built and published; [`proxy::Proxy`] owns the listener sockets, the admin
//! server (`weft-admin`, through [`admin_api`]), the file [`watch`]ers and shutdown.
//!
//! Layers, each a crate, importing only downward:
//! `weft-proxy` → `weft-admin`, `weft-transport` → `weft-http` → `weft-extensions` →
//! `weft-upstream` → `weft-observe`, `weft-body` (and the pure crates: config, routing,
//! balance, framing, wasm, tls).
#![forbid(unsafe_code)]

pub mod admin_api;
pub mod commands;
pub mod dynamic;
pub mod generation;
pub mod identity;
pub mod proxy;
pub mod reload;
pub mod signals;
pub mod source;
mod spans;
pub mod state;
mod watch;

pub use commands::ReloadError;
pub use dynamic::DynamicStatus;
pub use proxy::{Proxy, StartOptions};
pub use signals::Signals;
pub use source::{ConfigSource, ProxyError, check_plugins};
/// Built-in plugin modules (embedded in the binary).
pub use weft_extensions::register_builtin_plugins;
