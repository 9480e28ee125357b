//! Native tracing: one span per request, W3C and B3 propagation, Envoy's sampling, and a
//! bounded OTLP exporter. The request path (`weft-http`'s `trace` module) decides and
//! records; this module knows the wire formats and the collector. See `docs/tracing.md`.

pub mod context;
pub mod export;
pub mod sampling;

pub use context::{Extracted, Format, Parent, extract, inject};
pub use export::{ExportConfig, ExportStats, Exporter, Protocol, SpanRecord};
pub use sampling::{Reason, Sampling};

/// A fresh, random, non-zero span id.
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

/// A fresh, random, non-zero trace id.
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}
