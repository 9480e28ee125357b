//! The span exporter of the process: started once from the configuration's `tracing`
//! section. Sampling and per-listener settings follow every reload (they are compiled into
//! each generation); the collector, transport and queue are fixed for the process's life.

use std::sync::Arc;

use weft_config::schema::{OtlpProtocol, Tracing};
use weft_observe::trace::{ExportConfig, ExportStats, Exporter, Protocol};

/// Starts the exporter when `tracing` is configured (on the current tokio runtime).
pub(crate) fn exporter(
    tracing: Option<&Tracing>,
    node_id: Option<&str>,
    stats: Arc<ExportStats>,
) -> Option<Exporter> {
    let t = tracing?;
    // Validation accepted the collector as an `http://` URI.
    let mut endpoint: http::Uri = t.collector.parse().ok()?;
    if t.protocol == OtlpProtocol::Http && matches!(endpoint.path(), "" | "/") {
        // A bare `http://host:port` means the collector's standard traces path.
        let mut parts = endpoint.into_parts();
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/v1/traces"));
        endpoint = http::Uri::from_parts(parts).ok()?;
    }
    let mut resource = Vec::new();
    if let Some(n) = node_id {
        resource.push(("node_id".to_owned(), n.to_owned()));
    }
    Some(Exporter::start(
        ExportConfig {
            endpoint,
            protocol: match t.protocol {
                OtlpProtocol::Grpc => Protocol::Grpc,
                OtlpProtocol::Http => Protocol::Http,
            },
            service_name: t.service_name.clone(),
            resource,
            max_queue: t.max_queue,
            batch_size: t.batch_size,
            batch_interval: t.batch_interval,
            timeout: t.timeout,
        },
        stats,
    ))
}

/// Logs a warning when a reload changes what only a restart applies.
pub(crate) fn warn_on_fixed_changes(old: Option<&Tracing>, new: Option<&Tracing>) {
    let fixed = |t: Option<&Tracing>| {
        t.map(|t| {
            (
                t.collector.clone(),
                t.protocol,
                t.service_name.clone(),
                t.max_queue,
                t.batch_size,
                t.batch_interval,
                t.timeout,
            )
        })
    };
    if fixed(old) != fixed(new) {
        tracing::warn!(
            "tracing: the collector, protocol, service name and queue settings apply at the next restart; sampling and listener settings apply now"
        );
    }
}
