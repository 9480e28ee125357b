//! proxy-wasm plugins in the proxy: the [`registry`] that loads plugin files into hot-swappable
//! handles (one per plugin and configuration), the embedder that lets plugins call out to
//! clusters, built-in modules, and the plugins' [`metrics`] (a prometheus-client collector the
//! proxy registers once). The HTTP layer runs a handle's current version as a phase; the
//! transport layer runs network plugins on TCP listeners.
#![forbid(unsafe_code)]

pub mod chain;
pub mod metrics;
pub mod registry;

pub use chain::PluginContext;
pub use metrics::PluginMetrics;
pub use registry::{
    BUILTIN_PREFIX, PluginError, PluginHandle, PluginRegistry, PluginVersion, config_bytes,
    is_builtin, register_builtin_plugins, sha256_hex, variant_digest,
};
