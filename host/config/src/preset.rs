//! The `sidecar` preset: what `sidecar.capture: true` adds to a configuration (Istio's 15001 /
//! 15006 capture listeners and its Passthrough / BlackHole clusters).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::capture::{
    BLACKHOLE_CLUSTER, ClusterType, FilterChain, INBOUND_PASSTHROUGH_CLUSTER, OriginalDstOptions,
    OutboundTrafficPolicy, PASSTHROUGH_CLUSTER,
};
use crate::schema::{Cluster, Config, Listener, TrafficDirection};

/// Writes what `sidecar.capture` asks for into `config`: the two capture listeners and the
/// three clusters, each unless the configuration already declares one of that name.
pub(crate) fn expand(config: &mut Config) {
    let Some(sidecar) = config.sidecar.clone() else {
        return;
    };
    if !sidecar.capture {
        return;
    }
    let has_cluster = |c: &Config, name: &str| c.clusters.iter().any(|x| x.name == name);
    let original_dst = |name: &str, address: Option<IpAddr>| Cluster {
        kind: ClusterType::OriginalDst,
        original_dst: Some(OriginalDstOptions {
            address,
            use_http_header: false,
        }),
        ..Cluster::named(name)
    };
    if !has_cluster(config, PASSTHROUGH_CLUSTER) {
        config
            .clusters
            .push(original_dst(PASSTHROUGH_CLUSTER, None));
    }
    if !has_cluster(config, INBOUND_PASSTHROUGH_CLUSTER) {
        let mut inbound = original_dst(
            INBOUND_PASSTHROUGH_CLUSTER,
            sidecar.inbound_delivery_address,
        );
        if sidecar.inbound_delivery_address.is_none() {
            // Delivering to the pod's own IP goes over loopback as the proxy user, which the
            // capture rules send back to inbound capture unless the source is 127.0.0.6.
            inbound.source_address = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)));
        }
        config.clusters.push(inbound);
    }
    if !has_cluster(config, BLACKHOLE_CLUSTER) {
        config.clusters.push(Cluster::named(BLACKHOLE_CLUSTER));
    }
    let has_listener = |c: &Config, name: &str| c.listeners.iter().any(|x| x.name == name);
    let capture = |name: &str,
                   address: SocketAddr,
                   chains: Vec<FilterChain>,
                   policy: OutboundTrafficPolicy,
                   fallback: &str| {
        let mut l = Listener::named(name, address);
        // Istio's reporter: the inbound capture reports as the destination, the outbound one
        // as the source (and sends the metadata exchange).
        l.traffic_direction = if name == "virtual_inbound" {
            TrafficDirection::Inbound
        } else {
            TrafficDirection::Outbound
        };
        l.original_dst = true;
        l.filter_chains = chains;
        l.outbound_traffic_policy = policy;
        l.passthrough_cluster = Some(fallback.to_owned());
        l.protocol_detection_timeout = sidecar.protocol_detection_timeout;
        l
    };
    if !has_listener(config, "virtual_outbound") {
        config.listeners.push(capture(
            "virtual_outbound",
            sidecar.outbound_address,
            sidecar.outbound.clone(),
            sidecar.outbound_traffic_policy,
            PASSTHROUGH_CLUSTER,
        ));
    }
    if !has_listener(config, "virtual_inbound") {
        config.listeners.push(capture(
            "virtual_inbound",
            sidecar.inbound_address,
            sidecar.inbound.clone(),
            OutboundTrafficPolicy::AllowAny,
            INBOUND_PASSTHROUGH_CLUSTER,
        ));
    }
}
