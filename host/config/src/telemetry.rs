//! The `node:` and `telemetry:` sections: who this sidecar is (Istio's node metadata) and
//! how Istio's standard metrics are reported (a subset of Istio's Telemetry API).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// This workload, as Istio's node metadata describes it. Every field is optional; an unset
/// field is taken from the environment as Istio's sidecar reads it (`POD_NAME`,
/// `POD_NAMESPACE`, `ISTIO_META_*`, …; see `docs/metrics.md`). Where both are set, the
/// environment wins, as Istio's `proxyMetadata` does not override variables already set.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Envoy's node id, sent as `x-envoy-peer-metadata-id`
    /// (default `sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`).
    #[serde(default)]
    pub id: Option<String>,
    /// The pod (instance) name (`NAME`; env `POD_NAME`).
    #[serde(default)]
    pub name: Option<String>,
    /// Kubernetes namespace (`NAMESPACE`; env `POD_NAMESPACE`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The cluster this workload runs in (`CLUSTER_ID`; env `ISTIO_META_CLUSTER_ID`).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Workload name, e.g. the Deployment (`WORKLOAD_NAME`; env `ISTIO_META_WORKLOAD_NAME`).
    #[serde(default)]
    pub workload_name: Option<String>,
    /// The `app` label.
    #[serde(default)]
    pub app: Option<String>,
    /// The `version` label.
    #[serde(default)]
    pub version: Option<String>,
    /// The `service.istio.io/canonical-name` label (default: app, then workload name).
    #[serde(default)]
    pub canonical_service: Option<String>,
    /// The `service.istio.io/canonical-revision` label (default: version, then `latest`).
    #[serde(default)]
    pub canonical_revision: Option<String>,
    /// The mesh id (`MESH_ID`; env `ISTIO_META_MESH_ID`).
    #[serde(default)]
    pub mesh_id: Option<String>,
    /// Further pod labels (env `ISTIO_METAJSON_LABELS`, a JSON object).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Further node metadata (env `ISTIO_META_<KEY>`).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Telemetry settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// Istio's standard metrics (`istio_requests_total`, …).
    #[serde(default)]
    pub metrics: IstioMetrics,
}

/// Istio's standard metrics: on by default.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IstioMetrics {
    /// `false` turns every `istio_*` family and the metadata exchange off.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Exchange workload metadata with peer sidecars (`x-envoy-peer-metadata` headers).
    #[serde(default = "yes")]
    pub metadata_exchange: bool,
    /// Per-metric changes, applied in order, as Istio's Telemetry `metrics[].overrides`.
    #[serde(default)]
    pub overrides: Vec<MetricOverride>,
    /// How often an open TCP connection reports the bytes it moved so far (Istio's
    /// `tcp_reporting_duration`, 5 s): a long-lived connection shows on dashboards before it
    /// closes.
    #[serde(default = "tcp_reporting_interval", with = "humantime_serde")]
    pub tcp_reporting_interval: std::time::Duration,
}

fn tcp_reporting_interval() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}

impl Default for IstioMetrics {
    fn default() -> Self {
        IstioMetrics {
            enabled: true,
            metadata_exchange: true,
            overrides: Vec::new(),
            tcp_reporting_interval: tcp_reporting_interval(),
        }
    }
}

/// One override: which metrics, then disable them or change their labels.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricOverride {
    /// Which metric and which reporter (default: every metric, both reporters).
    #[serde(default, rename = "match")]
    pub matcher: MetricSelector,
    /// Stop reporting the matched metrics.
    #[serde(default)]
    pub disabled: bool,
    /// Label changes, by label name (Istio's `tagOverrides`).
    #[serde(default, alias = "tagOverrides")]
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

/// Istio's `MetricSelector`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSelector {
    /// The metric, by Istio's name.
    #[serde(default)]
    pub metric: IstioMetric,
    /// Which reporter's series.
    #[serde(default)]
    pub mode: WorkloadMode,
}

/// Istio's standard metric names (`IstioMetric`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IstioMetric {
    /// Every metric.
    #[default]
    AllMetrics,
    /// `istio_requests_total`.
    RequestCount,
    /// `istio_request_duration_milliseconds`.
    RequestDuration,
    /// `istio_request_bytes`.
    RequestSize,
    /// `istio_response_bytes`.
    ResponseSize,
    /// `istio_tcp_connections_opened_total`.
    TcpOpenedConnections,
    /// `istio_tcp_connections_closed_total`.
    TcpClosedConnections,
    /// `istio_tcp_sent_bytes_total`.
    TcpSentBytes,
    /// `istio_tcp_received_bytes_total`.
    TcpReceivedBytes,
}

/// Istio's `WorkloadMode`: which reporter an override applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    /// Both.
    #[default]
    ClientAndServer,
    /// `reporter="source"` (outbound listeners).
    Client,
    /// `reporter="destination"` (inbound listeners).
    Server,
}

/// A label change.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TagOverride {
    /// `UPSERT` (default) or `REMOVE`.
    #[serde(default)]
    pub operation: TagOperation,
    /// For `UPSERT`: the label's value. Istio takes a CEL expression here; Weft takes a
    /// literal string (a quoted CEL string literal such as `"'v1'"` is unquoted).
    #[serde(default)]
    pub value: Option<String>,
}

/// Istio's tag override operations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagOperation {
    /// Set (or add) the label.
    #[default]
    Upsert,
    /// Drop the label.
    Remove,
}

/// The standard label names, in Istio's order.
pub const ISTIO_LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// Problems in `telemetry:` (field path, message).
pub(crate) fn validate(t: &Telemetry) -> Vec<(String, String)> {
    let mut found = Vec::new();
    if t.metrics.tcp_reporting_interval.is_zero() {
        found.push((
            "telemetry.metrics.tcp_reporting_interval".to_owned(),
            "must be more than 0".to_owned(),
        ));
    }
    for (i, o) in t.metrics.overrides.iter().enumerate() {
        for (name, tag) in &o.tag_overrides {
            let path = format!("telemetry.metrics.overrides[{i}].tag_overrides.{name}");
            if !valid_label_name(name) {
                found.push((
                    path.clone(),
                    "not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)".to_owned(),
                ));
            }
            match (tag.operation, &tag.value) {
                (TagOperation::Upsert, None) => {
                    found.push((format!("{path}.value"), "UPSERT needs a value".to_owned()))
                }
                (TagOperation::Remove, Some(_)) => {
                    found.push((format!("{path}.value"), "REMOVE takes no value".to_owned()))
                }
                (TagOperation::Remove, None) if !ISTIO_LABELS.contains(&name.as_str()) => found
                    .push((
                        path.clone(),
                        format!("`{name}` is not a standard label; nothing to remove"),
                    )),
                _ => {}
            }
        }
    }
    found
}

/// Problems in `node:`.
pub(crate) fn validate_node(n: &Node) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (field, value) in [
        ("id", &n.id),
        ("name", &n.name),
        ("namespace", &n.namespace),
        ("cluster", &n.cluster),
        ("workload_name", &n.workload_name),
        ("app", &n.app),
        ("version", &n.version),
        ("canonical_service", &n.canonical_service),
        ("canonical_revision", &n.canonical_revision),
        ("mesh_id", &n.mesh_id),
    ] {
        if let Some(v) = value
            && (v.is_empty() || v.chars().any(char::is_control))
        {
            found.push((
                format!("node.{field}"),
                "must be non-empty, without control characters".to_owned(),
            ));
        }
    }
    found
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

fn yes() -> bool {
    true
}
