//! Transparent capture: listeners that read a connection's original destination and hand it
//! to the filter chain that matches it, `original_dst` clusters, and the `sidecar` preset that
//! writes Istio's 15001 / 15006 listeners and its Passthrough / BlackHole clusters.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Istio's cluster for unmatched outbound traffic under `allow_any`: the original destination.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Istio's cluster for unmatched outbound traffic under `registry_only`: no endpoint.
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// Istio's cluster for inbound traffic no chain matches: the application at the original port.
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";

/// A capture listener's filter chain: which connections it takes, and the listener (declared
/// with `bind_to_port: false`) that serves them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterChain {
    /// Name in logs (defaults to the target listener's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Conditions on the original destination and the sniffed protocol; all given must hold.
    #[serde(default, rename = "match")]
    pub matcher: FilterChainMatch,
    /// The listener (with `bind_to_port: false`) the connection is handed to.
    pub listener: String,
}

/// Envoy's `filter_chain_match` subset. The most specific matching chain wins, compared in
/// Envoy's order: destination port, longest prefix range, server name, transport protocol,
/// application protocols; ties go to the first declared.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterChainMatch {
    /// The original destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u16>,
    /// The original destination address is in one of these CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_ranges: Vec<IpNet>,
    /// `tls` (a TLS ClientHello was seen) or `raw_buffer` (anything else).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_protocol: Option<TransportProtocol>,
    /// TLS SNI: exact names or `*.suffix` wildcards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    /// The sniffed application protocol: `http/1.0`, `http/1.1`, `h2c` (plaintext), or a TLS
    /// ALPN value (`h2`, `http/1.1`, `istio-peer-exchange`, …) offered by the client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub application_protocols: Vec<String>,
}

impl FilterChainMatch {
    /// True when matching needs the first bytes of the connection (TLS or HTTP detection).
    pub fn needs_sniffing(&self) -> bool {
        self.transport_protocol.is_some()
            || !self.server_names.is_empty()
            || !self.application_protocols.is_empty()
    }
}

/// The transport protocol a filter chain matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportProtocol {
    /// A TLS ClientHello.
    Tls,
    /// Anything else.
    RawBuffer,
}

/// What a capture listener does with a connection no filter chain matches (Istio's
/// `outboundTrafficPolicy.mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboundTrafficPolicy {
    /// Proxied as opaque TCP to its original destination (`PassthroughCluster`).
    #[default]
    AllowAny,
    /// Closed and counted (`BlackHoleCluster`).
    RegistryOnly,
}

/// A cluster's kind (Envoy's `type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterType {
    /// The endpoints listed (IP addresses or DNS names).
    #[default]
    Static,
    /// The connection's original destination (Envoy's `ORIGINAL_DST`): no endpoints are listed.
    OriginalDst,
}

/// Options of an `original_dst` cluster.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OriginalDstOptions {
    /// Connect to this address at the original port instead of the original address (an
    /// inbound chain delivering to an application listening on `127.0.0.1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// HTTP: take the destination from the `x-envoy-original-dst-host` request header when it
    /// holds an `ip:port` (Envoy's `use_http_header`; only for trusted clients).
    #[serde(default)]
    pub use_http_header: bool,
}

/// The request header an `original_dst` cluster with `use_http_header` reads.
pub const ORIGINAL_DST_HEADER: &str = "x-envoy-original-dst-host";

/// Istio's sidecar ports and the capture preset.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    /// `GET /healthz/ready` (Istio's 15021): 200 once the configuration, the required plugins
    /// and (with `identity`) a certificate are in place, 503 before and while draining.
    #[serde(default = "defaults::health_address")]
    pub health_address: SocketAddr,
    /// `GET /stats/prometheus` (Istio's 15090): the proxy's metrics.
    #[serde(default = "defaults::prometheus_address")]
    pub prometheus_address: SocketAddr,
    /// `GET /stats/prometheus` (Istio's 15020): the application's metrics (scraped from
    /// `app_metrics_url`) followed by the proxy's. Off unless `app_metrics_url` is set.
    #[serde(default = "defaults::merged_metrics_address")]
    pub merged_metrics_address: SocketAddr,
    /// The application's Prometheus URL (`http://127.0.0.1:8080/metrics`); Istio's
    /// `prometheus.io/port` and `prometheus.io/path` annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_metrics_url: Option<String>,
    /// Write the capture listeners (`virtual_outbound` on 15001, `virtual_inbound` on 15006)
    /// and the Passthrough, BlackHole and InboundPassthrough clusters.
    #[serde(default)]
    pub capture: bool,
    /// The outbound capture listener's address.
    #[serde(default = "defaults::outbound_address")]
    pub outbound_address: SocketAddr,
    /// The inbound capture listener's address.
    #[serde(default = "defaults::inbound_address")]
    pub inbound_address: SocketAddr,
    /// Filter chains of `virtual_outbound`.
    #[serde(default)]
    pub outbound: Vec<FilterChain>,
    /// Filter chains of `virtual_inbound`.
    #[serde(default)]
    pub inbound: Vec<FilterChain>,
    /// Unmatched outbound connections: `allow_any` (default) or `registry_only`.
    #[serde(default)]
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Unmatched inbound connections go to the application at this address and the original
    /// port: `127.0.0.1` by default; `null` keeps the original address (the pod IP).
    #[serde(default = "defaults::inbound_delivery")]
    pub inbound_delivery_address: Option<IpAddr>,
    /// How long a capture listener waits for a connection's first bytes when a chain matches
    /// on the protocol; then the connection is treated as opaque TCP (Istio's 100 ms default
    /// was `protocolDetectionTimeout`).
    #[serde(
        default = "defaults::protocol_detection_timeout",
        with = "humantime_serde"
    )]
    pub protocol_detection_timeout: Duration,
}

impl Default for Sidecar {
    fn default() -> Self {
        Sidecar {
            health_address: defaults::health_address(),
            prometheus_address: defaults::prometheus_address(),
            merged_metrics_address: defaults::merged_metrics_address(),
            app_metrics_url: None,
            capture: false,
            outbound_address: defaults::outbound_address(),
            inbound_address: defaults::inbound_address(),
            outbound: Vec::new(),
            inbound: Vec::new(),
            outbound_traffic_policy: OutboundTrafficPolicy::AllowAny,
            inbound_delivery_address: defaults::inbound_delivery(),
            protocol_detection_timeout: defaults::protocol_detection_timeout(),
        }
    }
}

/// Default values.
pub mod defaults {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::Duration;

    /// `0.0.0.0:15021`.
    pub fn health_address() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15021))
    }
    /// `0.0.0.0:15090`.
    pub fn prometheus_address() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15090))
    }
    /// `0.0.0.0:15020`.
    pub fn merged_metrics_address() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15020))
    }
    /// `0.0.0.0:15001`.
    pub fn outbound_address() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15001))
    }
    /// `0.0.0.0:15006`.
    pub fn inbound_address() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15006))
    }
    /// `127.0.0.1`.
    pub fn inbound_delivery() -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }
    /// 100 ms.
    pub fn protocol_detection_timeout() -> Duration {
        Duration::from_millis(100)
    }
}
