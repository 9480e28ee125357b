//! What the data path reports, shared by every layer: the metric families (registered once per
//! process, resolved into per-listener, per-route and per-cluster handles by each generation),
//! Envoy's response flags, and the access log.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod exposition;
pub mod flags;
pub mod istio;
pub mod metrics;
pub mod reporters;
pub mod sharded;
pub mod trace;
pub mod xds;

pub use access_log::{AccessLog, Entry};
pub use metrics::Metrics;
