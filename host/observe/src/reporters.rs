//! The reporters' own counters, exported through prometheus-client as a [`Collector`] read at
//! each scrape: spans exported and dropped by the tracing exporter, and access-log lines
//! dropped because the writer fell behind. Names are relative to the registry's `weft` prefix
//! (`weft_tracing_spans_dropped_total`, …); `docs/metrics.md` lists them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use crate::access_log::AccessLog;
use crate::trace::ExportStats;

/// The collector; register it once per process.
#[derive(Debug)]
pub struct ReporterMetrics {
    /// The exporter's counters (zeros when tracing is off).
    pub spans: Arc<ExportStats>,
    /// The access log.
    pub access_log: AccessLog,
}

impl Collector for ReporterMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.spans;
        for (name, help, value) in [
            (
                "tracing_spans_exported",
                "Spans the OTLP collector accepted.",
                s.exported.load(Ordering::Relaxed),
            ),
            (
                "tracing_spans_dropped",
                "Spans dropped: the export queue was full, or their batch failed.",
                s.dropped.load(Ordering::Relaxed),
            ),
            (
                "tracing_export_failures",
                "Span batches the collector refused or that failed to reach it.",
                s.failed_batches.load(Ordering::Relaxed),
            ),
            (
                "access_log_dropped",
                "Access-log lines dropped because the writer fell behind.",
                self.access_log.dropped(),
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }
        Ok(())
    }
}
