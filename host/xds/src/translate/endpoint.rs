//! EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment` → Weft endpoints.
//!
//! Each locality's `priority` becomes its endpoints' priority level. Endpoints whose health
//! status is `UNKNOWN` or `HEALTHY` take traffic; `UNHEALTHY`,
//! `DRAINING`, `TIMEOUT` and `DEGRADED` ones are left out (Envoy uses degraded endpoints only
//! when too few healthy ones remain; Weft does not, see docs/xds.md).

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use weft_config::schema::Endpoint;

use crate::fields::reject_rest;

/// The endpoint metadata key Envoy's `transport_socket_matches` read.
const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// A metadata `Struct` as labels: strings as they are, other values as their JSON.
pub(crate) fn labels(
    s: &envoy_types::pb::google::protobuf::Struct,
) -> std::collections::BTreeMap<String, String> {
    match super::wasm::struct_json(s) {
        serde_json::Value::Object(m) => m
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect(),
        _ => Default::default(),
    }
}

/// The endpoints of an assignment (also a STATIC/STRICT_DNS cluster's `load_assignment`).
pub(crate) fn endpoints(path: &str, cla: ClusterLoadAssignment) -> Result<Vec<Endpoint>, String> {
    let mut rest = cla;
    rest.cluster_name.clear();
    let localities = std::mem::take(&mut rest.endpoints);
    if let Some(policy) = rest.policy.take() {
        let mut p = policy;
        // Weft spreads load across priorities with Envoy's default factor (140 %).
        if p.overprovisioning_factor
            .take()
            .is_some_and(|f| f.value != 140)
        {
            return Err(format!(
                "{path}.policy.overprovisioning_factor: only the default, 140, is implemented"
            ));
        }
        reject_rest(&format!("{path}.policy"), &p)?;
    }
    reject_rest(path, &rest)?;
    let mut out = Vec::new();
    for (i, l) in localities.into_iter().enumerate() {
        let lpath = format!("{path}.endpoints[{i}]");
        let mut lrest = l;
        let priority = std::mem::take(&mut lrest.priority);
        // Locality and its weight only matter with locality-weighted balancing (not offered).
        lrest.locality = None;
        lrest.load_balancing_weight = None;
        lrest.metadata = None;
        let list = std::mem::take(&mut lrest.lb_endpoints);
        if lrest.lb_config.take().is_some() {
            return Err(format!(
                "{lpath}: load_balancer_endpoints and leds_cluster_locality_config are unimplemented (use lb_endpoints)"
            ));
        }
        reject_rest(&lpath, &lrest)?;
        for (j, e) in list.into_iter().enumerate() {
            let epath = format!("{lpath}.lb_endpoints[{j}]");
            let mut erest = e;
            let status = erest.health_status;
            erest.health_status = 0;
            // The labels a cluster's transport_socket_matches select on (Istio: `tlsMode`);
            // the rest of the metadata changes nothing.
            let labels = erest
                .metadata
                .take()
                .and_then(|m| m.filter_metadata.get(TRANSPORT_SOCKET_MATCH).cloned())
                .map(|s| labels(&s))
                .unwrap_or_default();
            let weight = erest.load_balancing_weight.take().map_or(1, |w| w.value);
            if weight == 0 {
                return Err(format!("{epath}.load_balancing_weight: must be at least 1"));
            }
            let endpoint = match erest.host_identifier.take() {
                Some(HostIdentifier::Endpoint(ep)) => ep,
                Some(HostIdentifier::EndpointName(_)) => {
                    return Err(format!("{epath}.endpoint_name: unimplemented"));
                }
                None => return Err(format!("{epath}.endpoint: required")),
            };
            reject_rest(&epath, &erest)?;
            let mut ep = endpoint;
            let (host, port) =
                super::socket_address(&format!("{epath}.endpoint.address"), ep.address.as_ref())?;
            ep.address = None;
            ep.hostname.clear();
            reject_rest(&format!("{epath}.endpoint"), &ep)?;
            // 0 UNKNOWN, 1 HEALTHY take traffic.
            if status > 1 {
                continue;
            }
            let address = match host.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
                _ => format!("{host}:{port}"),
            };
            weft_config::EndpointAddress::parse(&address)
                .map_err(|why| format!("{epath}.endpoint.address: {why}"))?;
            out.push(Endpoint {
                address,
                weight,
                priority,
                labels,
            });
        }
    }
    Ok(out)
}
