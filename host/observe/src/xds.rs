//! `weft_xds_*`: the xDS client's connection and updates.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of a per-resource-type series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XdsTypeLabels {
    /// The resource type URL (`type.googleapis.com/envoy.config.cluster.v3.Cluster`).
    pub type_url: String,
}

/// Labels of update counts: the type and `accepted` or `rejected`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XdsUpdateLabels {
    /// The resource type URL.
    pub type_url: String,
    /// `accepted` (ACK) or `rejected` (NACK).
    pub result: String,
}

/// The xDS families.
#[derive(Debug, Default, Clone)]
pub struct XdsMetrics {
    /// 1 while the ADS stream is up.
    pub connected: Gauge,
    /// Discovery responses by type and result.
    pub updates: Family<XdsUpdateLabels, Counter>,
    /// Unix time of the last accepted update, by type.
    pub last_update: Family<XdsTypeLabels, Gauge<f64, AtomicU64>>,
    /// Resources received but not live yet (clusters waiting for endpoints, listeners for routes).
    pub warming: Gauge,
}

impl XdsMetrics {
    pub(crate) fn register(&self, reg: &mut Registry) {
        reg.register(
            "xds_connected",
            "1 while the ADS stream to the control plane is up",
            self.connected.clone(),
        );
        reg.register(
            "xds_updates",
            "xDS discovery responses by type_url and result (accepted: ACK, rejected: NACK)",
            self.updates.clone(),
        );
        reg.register(
            "xds_last_update_timestamp_seconds",
            "Unix time of the last accepted xDS update, by type_url",
            self.last_update.clone(),
        );
        reg.register(
            "xds_warming_resources",
            "xDS resources received but not live yet (waiting for their endpoints or routes)",
            self.warming.clone(),
        );
    }
}
