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
    let mut localities_weighted = false;
    for (i, l) in localities.into_iter().enumerate() {
        let lpath = format!("{path}.endpoints[{i}]");
        let mut lrest = l;
        let priority = std::mem::take(&mut lrest.priority);
        lrest.locality = None;
        let locality_weight = lrest.load_balancing_weight.take().map(|w| w.value);
        let first = out.len();
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
        match locality_weight {
            Some(lw) => {
                localities_weighted = true;
                fold_locality_weight(&mut out[first..], lw);
            }
            None => {
                for e in &mut out[first..] {
                    e.weight = e.weight.saturating_mul(LOCALITY_SCALE);
                }
            }
        }
    }
    if localities_weighted {
        reduce_weights(&mut out);
    } else {
        for e in &mut out {
            e.weight /= LOCALITY_SCALE;
        }
    }
    Ok(out)
}

/// Weights are scaled by this while localities are folded in, then reduced again.
const LOCALITY_SCALE: u32 = 1000;

/// Locality-weighted balancing, folded into endpoint weights: a locality of weight `lw` takes
/// `lw` parts of the traffic, spread over its endpoints by their own weights (the shares
/// Envoy's locality-weighted pick gives while every endpoint is healthy).
fn fold_locality_weight(endpoints: &mut [Endpoint], lw: u32) {
    let sum: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
    if sum == 0 {
        return;
    }
    for e in endpoints {
        let w = u64::from(lw) * u64::from(e.weight) * u64::from(LOCALITY_SCALE) / sum;
        e.weight = u32::try_from(w.max(1)).unwrap_or(u32::MAX);
    }
}

/// Divides every weight by their greatest common divisor (keeps them small for the balancers).
fn reduce_weights(endpoints: &mut [Endpoint]) {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let g = endpoints.iter().fold(0, |g, e| gcd(g, e.weight));
    if g > 1 {
        for e in endpoints {
            e.weight /= g;
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::config::endpoint::v3 as e;
    use envoy_types::pb::google::protobuf::UInt32Value;

    use super::*;

    fn locality(weight: Option<u32>, ports: &[(u16, u32)]) -> e::LocalityLbEndpoints {
        e::LocalityLbEndpoints {
            load_balancing_weight: weight.map(|value| UInt32Value { value }),
            lb_endpoints: ports
                .iter()
                .map(|&(port, w)| e::LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(e::Endpoint {
                        address: Some(core::Address {
                            address: Some(core::address::Address::SocketAddress(
                                core::SocketAddress {
                                    address: "127.0.0.1".into(),
                                    port_specifier: Some(
                                        core::socket_address::PortSpecifier::PortValue(port.into()),
                                    ),
                                    ..Default::default()
                                },
                            )),
                        }),
                        ..Default::default()
                    })),
                    load_balancing_weight: Some(UInt32Value { value: w }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn weights(localities: Vec<e::LocalityLbEndpoints>) -> Vec<u32> {
        let cla = ClusterLoadAssignment {
            cluster_name: "c".into(),
            endpoints: localities,
            ..Default::default()
        };
        endpoints("a", cla)
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|e| e.weight)
            .collect()
    }

    #[test]
    fn locality_weights_fold_into_endpoint_weights() {
        // 80 / 20 between two localities, the first with two endpoints.
        assert_eq!(
            weights(vec![
                locality(Some(80), &[(1, 1), (2, 1)]),
                locality(Some(20), &[(3, 1)])
            ]),
            vec![2, 2, 1]
        );
        // istiod's usual form: a locality's weight is the sum of its endpoints' weights.
        assert_eq!(
            weights(vec![
                locality(Some(3), &[(1, 1), (2, 2)]),
                locality(Some(1), &[(3, 1)])
            ]),
            vec![1, 2, 1]
        );
        // No locality weights: the endpoints' own.
        assert_eq!(weights(vec![locality(None, &[(1, 3), (2, 5)])]), vec![3, 5]);
    }
}
