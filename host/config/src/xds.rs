//! The `xds:` section: the bootstrap of Weft as an xDS client. Checked in `validate/xds.rs`;
//! the composition of the file's resources with the control plane's is `compose.rs`.
//!
//! ```yaml
//! xds:
//!   cluster: xds-grpc              # a static cluster: the control plane (gRPC, so `protocol: http2`)
//!   node:
//!     id: sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local
//!     cluster: reviews.ns
//!     locality: { region: eu, zone: eu-1a }
//!     metadata: { NAMESPACE: ns }
//!   api_type: GRPC                 # or DELTA_GRPC (incremental xDS)
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How Weft reaches its control plane, and who it says it is.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Xds {
    /// The static cluster (in `clusters`) of the control plane; its first endpoint is dialled
    /// with gRPC over HTTP/2 cleartext.
    pub cluster: String,
    /// The node this proxy presents in every discovery request.
    pub node: XdsNode,
    /// First delay before reconnecting after the stream fails; doubles (with jitter) per failure.
    #[serde(default = "defaults::reconnect_base", with = "humantime_serde")]
    pub reconnect_base: Duration,
    /// Longest delay between reconnection attempts.
    #[serde(default = "defaults::reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// The ADS variant, as Envoy's `ads_config.api_type`: state of the world (`GRPC`, the
    /// default) or incremental (`DELTA_GRPC`).
    #[serde(default)]
    pub api_type: XdsApiType,
    /// Where Wasm modules of `vm_config.code.remote` are kept once fetched and checked
    /// (`<sha256>.wasm`); default `<temp dir>/weft-xds-wasm`.
    #[serde(default)]
    pub wasm_cache_dir: Option<std::path::PathBuf>,
    /// Where SDS secrets are written (`<name>/cert.pem`, `key.pem`, `bundle.pem`) for the TLS
    /// of dynamic clusters and listeners; default `<temp dir>/weft-xds-secrets-<pid>`.
    #[serde(default)]
    pub secrets_dir: Option<std::path::PathBuf>,
}

/// Envoy's `ApiConfigSource.api_type`, for ADS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum XdsApiType {
    /// `StreamAggregatedResources`: every response carries the whole set of its type (LDS,
    /// CDS) or of the names asked for (EDS, RDS).
    #[default]
    #[serde(rename = "GRPC", alias = "grpc")]
    Grpc,
    /// `DeltaAggregatedResources`: responses carry only what changed, and what was removed.
    #[serde(rename = "DELTA_GRPC", alias = "delta_grpc")]
    DeltaGrpc,
}

/// Envoy's `Node`: the identity a control plane renders configuration for.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct XdsNode {
    /// Node id; Istio's form is `sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`.
    pub id: String,
    /// Service cluster (Istio: `<app>.<namespace>`).
    #[serde(default)]
    pub cluster: String,
    /// Where this proxy runs.
    #[serde(default)]
    pub locality: XdsLocality,
    /// Node metadata (a protobuf `Struct`); Istio reads e.g. `NAMESPACE`, `CLUSTER_ID`, `LABELS`.
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Also take every `ISTIO_META_<NAME>` environment variable as metadata `<NAME>` (a string),
    /// as Istio's agent does; the file's `metadata` wins on a clash.
    #[serde(default = "defaults::yes")]
    pub istio_meta_env: bool,
}

/// Envoy's `Locality`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct XdsLocality {
    /// Region.
    #[serde(default)]
    pub region: String,
    /// Zone.
    #[serde(default)]
    pub zone: String,
    /// Sub-zone.
    #[serde(default)]
    pub sub_zone: String,
}

mod defaults {
    use std::time::Duration;

    pub(super) fn reconnect_base() -> Duration {
        Duration::from_millis(500)
    }
    pub(super) fn reconnect_max() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn yes() -> bool {
        true
    }
}
