//! CDS: `envoy.config.cluster.v3.Cluster` → [`weft_config::schema::Cluster`].

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XCluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbPolicy,
};
use weft_config::resilience::CircuitBreakers;
use weft_config::schema::{Cluster, ClusterService, LbPolicy as WeftLb};

use super::{ads_only, duration};
use crate::fields::reject_rest;

/// A translated cluster: Weft's form, and where its endpoints come from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Translated {
    /// Weft's cluster; an EDS cluster's `endpoints` are filled from its assignment.
    pub cluster: Cluster,
    /// For an EDS cluster, the assignment's name (`service_name`, else the cluster's name).
    pub eds_name: Option<String>,
    /// SDS secrets its TLS refers to.
    pub secrets: Vec<String>,
}

/// Istio's service of a cluster, `metadata.filter_metadata.istio.services[0]` (`host`, `name`,
/// `namespace`), which istiod sets on every service cluster.
fn istio_service(
    metadata: Option<&envoy_types::pb::envoy::config::core::v3::Metadata>,
) -> Option<ClusterService> {
    let istio = super::wasm::struct_json(metadata?.filter_metadata.get("istio")?);
    let svc = istio.get("services")?.get(0)?;
    let text = |k: &str| {
        svc.get(k)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    Some(ClusterService {
        host: text("host")?,
        name: text("name"),
        namespace: text("namespace"),
    })
}

/// Translates one cluster.
pub(crate) fn translate(c: XCluster) -> Result<Translated, String> {
    let name = c.name.clone();
    if name.is_empty() {
        return Err("cluster: name must not be empty".into());
    }
    let path = format!("cluster \"{name}\"");
    let mut rest = c;
    rest.name.clear();
    // Istio's service metadata names the `destination_service*` labels; the rest of the
    // metadata, and the names, change no behaviour.
    let service = istio_service(rest.metadata.take().as_ref());
    rest.alt_stat_name.clear();
    rest.stats_matcher = None;
    rest.track_cluster_stats = None;

    let base = |endpoints| -> Result<Cluster, String> {
        let mut out: Cluster = serde_json::from_value(serde_json::json!({
            "name": name,
            "endpoints": endpoints,
        }))
        .map_err(|e| format!("{path}: {e}"))?;
        out.name = name.clone();
        Ok(out)
    };
    let kind = match rest.cluster_discovery_type.take() {
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t)
            .map_err(|_| format!("{path}.type: unknown discovery type {t}"))?,
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return Err(format!(
                "{path}.cluster_type: custom cluster types are unimplemented"
            ));
        }
    };
    let mut eds_name = None;
    let mut cluster = match kind {
        DiscoveryType::Eds => {
            let eds = rest.eds_cluster_config.take().unwrap_or_default();
            ads_only(
                &format!("{path}.eds_cluster_config.eds_config"),
                eds.eds_config.as_ref(),
            )?;
            eds_name = Some(if eds.service_name.is_empty() {
                name.clone()
            } else {
                eds.service_name
            });
            base(Vec::<String>::new())?
        }
        DiscoveryType::Static | DiscoveryType::StrictDns => {
            let cla = rest.load_assignment.take().unwrap_or_default();
            let endpoints = super::endpoint::endpoints(&format!("{path}.load_assignment"), cla)?;
            let mut c = base(Vec::<String>::new())?;
            c.endpoints = endpoints;
            if kind == DiscoveryType::Static
                && c.endpoints
                    .iter()
                    .any(|e| e.address.parse::<std::net::SocketAddr>().is_err())
            {
                return Err(format!(
                    "{path}.load_assignment: a STATIC cluster needs IP addresses (use STRICT_DNS for names)"
                ));
            }
            #[expect(
                deprecated,
                reason = "Envoy still reads the cluster-level refresh rate"
            )]
            let rate = rest.dns_refresh_rate.take();
            if let Some(rate) = rate {
                c.dns_refresh_rate = duration(&format!("{path}.dns_refresh_rate"), &rate)?;
            }
            c
        }
        DiscoveryType::OriginalDst => {
            let mut c = base(Vec::<String>::new())?;
            c.kind = weft_config::schema::ClusterType::OriginalDst;
            let mut options = weft_config::schema::OriginalDstOptions::default();
            if let Some(
                envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig::OriginalDstLbConfig(
                    o,
                ),
            ) = rest.lb_config.take()
            {
                let opath = format!("{path}.original_dst_lb_config");
                let mut o = o;
                options.use_http_header = std::mem::take(&mut o.use_http_header);
                if o.http_header_name == weft_config::capture::ORIGINAL_DST_HEADER {
                    o.http_header_name.clear();
                }
                reject_rest(&opath, &o)?;
            }
            if options != Default::default() {
                c.original_dst = Some(options);
            }
            // The only policy of an ORIGINAL_DST cluster.
            if rest.lb_policy == LbPolicy::ClusterProvided as i32 {
                rest.lb_policy = 0;
            }
            c
        }
        DiscoveryType::LogicalDns => {
            return Err(format!(
                "{path}.type: {} clusters are unimplemented",
                kind.as_str_name()
            ));
        }
    };
    if let Some(t) = rest.connect_timeout.take() {
        cluster.connect_timeout = duration(&format!("{path}.connect_timeout"), &t)?;
    }
    cluster.lb_policy = match LbPolicy::try_from(rest.lb_policy) {
        Ok(LbPolicy::RoundRobin) => WeftLb::RoundRobin,
        Ok(LbPolicy::LeastRequest) => WeftLb::LeastRequest,
        Ok(LbPolicy::Random) => WeftLb::Random,
        Ok(LbPolicy::RingHash) => WeftLb::RingHash,
        Ok(other) => {
            return Err(format!(
                "{path}.lb_policy: {} is unimplemented",
                other.as_str_name()
            ));
        }
        Err(_) => {
            return Err(format!(
                "{path}.lb_policy: unknown value {}",
                rest.lb_policy
            ));
        }
    };
    rest.lb_policy = 0;
    if let Some(cb) = rest.circuit_breakers.take() {
        cluster.circuit_breakers = circuit_breakers(&format!("{path}.circuit_breakers"), cb)?;
    }
    if let Some(od) = rest.outlier_detection.take() {
        cluster.outlier_detection = Some(outlier(&format!("{path}.outlier_detection"), od)?);
    }
    // The deprecated `http2_protocol_options` is how simple control planes ask for h2.
    #[expect(
        deprecated,
        reason = "the deprecated field is still what many control planes send"
    )]
    if rest.http2_protocol_options.take().is_some() {
        cluster.protocol = weft_config::schema::UpstreamProtocol::Http2;
    }
    let mut secrets = Vec::new();
    if let Some(socket) = rest.transport_socket.take()
        && let Some((tls, names)) =
            super::tls::upstream(&format!("{path}.transport_socket"), socket)?
    {
        cluster.tls = Some(tls);
        secrets = names;
    }
    reject_rest(&path, &rest)?;
    cluster.service = service;
    Ok(Translated {
        cluster,
        eds_name,
        secrets,
    })
}

fn circuit_breakers(
    path: &str,
    cb: envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers,
) -> Result<Option<CircuitBreakers>, String> {
    let mut rest = cb;
    let thresholds = std::mem::take(&mut rest.thresholds);
    reject_rest(path, &rest)?;
    let mut out = None;
    for (i, t) in thresholds.into_iter().enumerate() {
        let path = format!("{path}.thresholds[{i}]");
        if t.priority != 0 {
            return Err(format!("{path}.priority: only DEFAULT is implemented"));
        }
        let mut rest = t;
        // Envoy's defaults: 1024 connections, pending and requests, 3 retries.
        let mut b: CircuitBreakers =
            serde_json::from_value(serde_json::json!({})).map_err(|e| format!("{path}: {e}"))?;
        b.max_connections = Some(rest.max_connections.take().map_or(1024, |v| v.value));
        b.max_pending_requests = Some(rest.max_pending_requests.take().map_or(1024, |v| v.value));
        b.max_requests = rest.max_requests.take().map_or(1024, |v| v.value);
        b.max_retries = rest.max_retries.take().map_or(3, |v| v.value);
        rest.track_remaining = false;
        reject_rest(&path, &rest)?;
        out = Some(b);
    }
    Ok(out)
}

/// Envoy's outlier detection: consecutive 5xx, consecutive gateway failures (when enforced),
/// success rate (enforced or not); partial enforcement percentages, failure-percentage
/// ejection and split local-origin accounting are unimplemented.
fn outlier(
    path: &str,
    od: envoy_types::pb::envoy::config::cluster::v3::OutlierDetection,
) -> Result<weft_config::resilience::OutlierDetection, String> {
    let mut rest = od;
    let all_or_nothing = |field: &str, v: Option<u32>| -> Result<bool, String> {
        match v {
            None | Some(100) => Ok(true),
            Some(0) => Ok(false),
            Some(n) => Err(format!(
                "{path}.{field}: {n}% is unimplemented (only 0 or 100)"
            )),
        }
    };
    let enforce_5xx = all_or_nothing(
        "enforcing_consecutive_5xx",
        rest.enforcing_consecutive_5xx.take().map(|v| v.value),
    )?;
    let enforce_sr = all_or_nothing(
        "enforcing_success_rate",
        rest.enforcing_success_rate.take().map(|v| v.value),
    )?;
    // Envoy's default for gateway failures is not enforced (0).
    let enforce_gw = match rest
        .enforcing_consecutive_gateway_failure
        .take()
        .map(|v| v.value)
    {
        None | Some(0) => false,
        Some(100) => true,
        Some(n) => {
            return Err(format!(
                "{path}.enforcing_consecutive_gateway_failure: {n}% is unimplemented (only 0 or 100)"
            ));
        }
    };
    let mut out: weft_config::resilience::OutlierDetection =
        serde_json::from_value(serde_json::json!({})).map_err(|e| format!("{path}: {e}"))?;
    let c5 = rest.consecutive_5xx.take().map_or(5, |v| v.value);
    out.consecutive_5xx = if enforce_5xx { c5 } else { 0 };
    let gw = rest
        .consecutive_gateway_failure
        .take()
        .map_or(5, |v| v.value);
    out.consecutive_gateway_errors = if enforce_gw { gw } else { 0 };
    if let Some(d) = rest.interval.take() {
        out.interval = duration(&format!("{path}.interval"), &d)?;
    }
    if let Some(d) = rest.base_ejection_time.take() {
        out.base_ejection_time = duration(&format!("{path}.base_ejection_time"), &d)?;
    }
    if let Some(d) = rest.max_ejection_time.take() {
        out.max_ejection_time = duration(&format!("{path}.max_ejection_time"), &d)?;
    }
    if let Some(p) = rest.max_ejection_percent.take() {
        out.max_ejection_percent = f64::from(p.value);
    }
    if let Some(v) = rest.success_rate_minimum_hosts.take() {
        out.success_rate_minimum_hosts = v.value;
    }
    if let Some(v) = rest.success_rate_request_volume.take() {
        out.success_rate_request_volume = v.value;
    }
    if let Some(v) = rest.success_rate_stdev_factor.take() {
        out.success_rate_stdev_factor = v.value;
    }
    if !enforce_sr {
        out.success_rate_stdev_factor = 0;
    }
    // Only meaningful with split local-origin errors (rejected below when set).
    rest.consecutive_local_origin_failure = None;
    rest.enforcing_consecutive_local_origin_failure = None;
    rest.enforcing_local_origin_success_rate = None;
    reject_rest(path, &rest)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};

    use super::*;

    fn text(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.into())),
        }
    }

    #[test]
    fn istio_service_metadata_names_the_cluster_service() {
        let service = Struct {
            fields: [
                ("host".to_owned(), text("reviews.prod.svc.cluster.local")),
                ("name".to_owned(), text("reviews")),
                ("namespace".to_owned(), text("prod")),
            ]
            .into(),
        };
        let istio = Struct {
            fields: [(
                "services".to_owned(),
                Value {
                    kind: Some(Kind::ListValue(ListValue {
                        values: vec![Value {
                            kind: Some(Kind::StructValue(service)),
                        }],
                    })),
                },
            )]
            .into(),
        };
        let c = XCluster {
            name: "outbound|9080||reviews.prod.svc.cluster.local".into(),
            metadata: Some(Metadata {
                filter_metadata: [("istio".to_owned(), istio)].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = translate(c).expect("translates");
        assert_eq!(
            t.cluster.service,
            Some(ClusterService {
                host: "reviews.prod.svc.cluster.local".into(),
                name: Some("reviews".into()),
                namespace: Some("prod".into()),
            })
        );
        let plain = translate(XCluster {
            name: "plain".into(),
            ..Default::default()
        })
        .expect("translates");
        assert_eq!(plain.cluster.service, None);
    }
}
