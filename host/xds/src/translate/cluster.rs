//! CDS: `envoy.config.cluster.v3.Cluster` → [`weft_config::schema::Cluster`].

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XCluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbPolicy,
};
use envoy_types::pb::google::protobuf::Any;
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
    if let Some(common) = rest.common_lb_config.take() {
        common_lb_config(&format!("{path}.common_lb_config"), common, &mut cluster)?;
    }
    for (i, hc) in std::mem::take(&mut rest.health_checks)
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            return Err(format!(
                "{path}.health_checks[{i}]: at most one health check is implemented"
            ));
        }
        cluster
            .health_checks
            .push(health_check(&format!("{path}.health_checks[{i}]"), hc)?);
    }
    let mut options: Vec<_> = std::mem::take(&mut rest.typed_extension_protocol_options)
        .into_iter()
        .collect();
    options.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, any) in options {
        protocol_options(
            &format!("{path}.typed_extension_protocol_options[\"{key}\"]"),
            &any,
            &mut cluster,
        )?;
    }
    for (i, f) in std::mem::take(&mut rest.filters).into_iter().enumerate() {
        let fpath = format!("{path}.filters[{i}]");
        let type_url = f.typed_config.as_ref().map(|a| a.type_url.as_str());
        // istiod's upstream TCP metadata exchange (ALPN `istio-peer-exchange`): Weft labels TCP
        // metrics from the peer's SPIFFE identity instead; nothing to run.
        if type_url == Some(TCP_METADATA_EXCHANGE) {
            continue;
        }
        return Err(format!(
            "{fpath}: upstream network filter `{}` is unimplemented (only istiod's \
             istio.metadata_exchange is accepted)",
            f.name
        ));
    }
    let mut secrets = Vec::new();
    if let Some(socket) = rest.transport_socket.take()
        && let Some((tls, names)) =
            super::tls::upstream(&format!("{path}.transport_socket"), socket)?
    {
        cluster.tls = Some(tls);
        secrets = names;
    }
    let matches = std::mem::take(&mut rest.transport_socket_matches);
    if !matches.is_empty() {
        let (tls, names) = socket_matches(&format!("{path}.transport_socket_matches"), matches)?;
        if cluster.tls.is_some() {
            return Err(format!(
                "{path}.transport_socket: a TLS default beside transport_socket_matches is \
                 unimplemented (Weft reaches unmatched endpoints in plaintext)"
            ));
        }
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

/// `transport_socket_matches` as istiod renders auto mTLS: first a TLS socket for the
/// endpoints whose `envoy.transport_socket_match` metadata has the match's labels (`tlsMode:
/// istio`), then raw-buffer sockets (the others, in plaintext).
fn socket_matches(
    path: &str,
    matches: Vec<envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch>,
) -> Result<(weft_config::schema::ClusterTls, Vec<String>), String> {
    let mut tls = None;
    for (i, m) in matches.into_iter().enumerate() {
        let mpath = format!("{path}[{i}]");
        let criteria = m
            .r#match
            .as_ref()
            .map(super::endpoint::labels)
            .unwrap_or_default();
        let Some(socket) = m.transport_socket else {
            return Err(format!("{mpath}.transport_socket: required"));
        };
        match super::tls::upstream(&format!("{mpath}.transport_socket"), socket)? {
            Some((mut t, names)) => {
                if i != 0 || criteria.is_empty() {
                    return Err(format!(
                        "{mpath}: only a first, labelled TLS match (istiod's `tlsMode: istio`) \
                         followed by plaintext matches is implemented"
                    ));
                }
                t.endpoint_match = Some(criteria);
                tls = Some((t, names));
            }
            // Plaintext for what the TLS match leaves, whatever this match's labels.
            None if i > 0 => {}
            None => {
                return Err(format!(
                    "{mpath}: only a first, labelled TLS match (istiod's `tlsMode: istio`) \
                     followed by plaintext matches is implemented"
                ));
            }
        }
    }
    tls.ok_or_else(|| format!("{path}: a TLS match is required"))
}

/// `common_lb_config` as istiod renders it (present on every cluster, often empty): the panic
/// threshold; locality-weighted balancing (the EDS translation folds a locality's weight into
/// its endpoints' weights); zone-aware routing only when turned off (`routing_enabled: 0`).
fn common_lb_config(
    path: &str,
    c: envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig,
    cluster: &mut Cluster,
) -> Result<(), String> {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::LocalityConfigSpecifier as L;
    let mut rest = c;
    if let Some(p) = rest.healthy_panic_threshold.take() {
        if !(0.0..=100.0).contains(&p.value) {
            return Err(format!(
                "{path}.healthy_panic_threshold: {} is not a percentage",
                p.value
            ));
        }
        cluster.panic_threshold = p.value;
    }
    match rest.locality_config_specifier.take() {
        None | Some(L::LocalityWeightedLbConfig(_)) => {}
        Some(L::ZoneAwareLbConfig(z)) => {
            // istiod sets `routing_enabled: 0 %` to turn Envoy's zone-aware routing off,
            // which Weft never does.
            if z.routing_enabled.is_none_or(|r| r.value != 0.0) {
                return Err(format!(
                    "{path}.zone_aware_lb_config: zone-aware routing is unimplemented \
                     (only routing_enabled: 0 is accepted)"
                ));
            }
        }
    }
    reject_rest(path, &rest)
}

/// The type of istiod's upstream `istio.metadata_exchange` filter.
const TCP_METADATA_EXCHANGE: &str =
    "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange";

/// The key of the HTTP protocol options in `typed_extension_protocol_options`.
const HTTP_PROTOCOL_OPTIONS: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// `typed_extension_protocol_options`: Envoy's `HttpProtocolOptions` with an explicit HTTP/1.1
/// or HTTP/2 (`cluster.protocol`) and the common options' `idle_timeout`.
fn protocol_options(path: &str, any: &Any, cluster: &mut Cluster) -> Result<(), String> {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
        UpstreamProtocolOptions as U, explicit_http_config::ProtocolConfig as P,
    };
    use prost::Message;
    if any.type_url != HTTP_PROTOCOL_OPTIONS {
        return Err(format!(
            "{path}: `{}` is unimplemented (only HttpProtocolOptions is)",
            any.type_url
        ));
    }
    let mut rest =
        HttpProtocolOptions::decode(any.value.as_slice()).map_err(|e| format!("{path}: {e}"))?;
    match rest.upstream_protocol_options.take() {
        None => {}
        Some(U::ExplicitHttpConfig(e)) => match e.protocol_config {
            Some(P::HttpProtocolOptions(o)) => {
                reject_rest(
                    &format!("{path}.explicit_http_config.http_protocol_options"),
                    &o,
                )?;
                cluster.protocol = weft_config::schema::UpstreamProtocol::Http1;
            }
            Some(P::Http2ProtocolOptions(mut o)) => {
                // Weft's client follows the server's SETTINGS; Istio's stream cap changes
                // nothing there.
                o.max_concurrent_streams = None;
                reject_rest(
                    &format!("{path}.explicit_http_config.http2_protocol_options"),
                    &o,
                )?;
                cluster.protocol = weft_config::schema::UpstreamProtocol::Http2;
            }
            Some(P::Http3ProtocolOptions(_)) => {
                return Err(format!(
                    "{path}.explicit_http_config.http3_protocol_options: unimplemented"
                ));
            }
            None => {
                return Err(format!(
                    "{path}.explicit_http_config: a protocol is required"
                ));
            }
        },
        Some(U::UseDownstreamProtocolConfig(d)) => {
            let dpath = format!("{path}.use_downstream_protocol_config");
            if let Some(o) = &d.http_protocol_options {
                reject_rest(&format!("{dpath}.http_protocol_options"), o)?;
            }
            if let Some(o) = &d.http2_protocol_options {
                let mut o = o.clone();
                o.max_concurrent_streams = None;
                reject_rest(&format!("{dpath}.http2_protocol_options"), &o)?;
            }
            if d.http3_protocol_options.is_some() {
                return Err(format!("{dpath}.http3_protocol_options: unimplemented"));
            }
            cluster.protocol = weft_config::schema::UpstreamProtocol::Downstream;
        }
        Some(U::AutoConfig(_)) => {
            return Err(format!(
                "{path}.auto_config: unimplemented (Weft speaks one protocol per cluster: use \
                 explicit_http_config)"
            ));
        }
    }
    if let Some(mut common) = rest.common_http_protocol_options.take() {
        let cpath = format!("{path}.common_http_protocol_options");
        if let Some(t) = common.idle_timeout.take() {
            cluster.idle_timeout = duration(&format!("{cpath}.idle_timeout"), &t)?;
        }
        reject_rest(&cpath, &common)?;
    }
    reject_rest(path, &rest)
}

/// One active health check: HTTP (`path`, `host`, `expected_statuses`) or TCP connect (no
/// payloads), with Envoy's timing and thresholds.
fn health_check(
    path: &str,
    hc: envoy_types::pb::envoy::config::core::v3::HealthCheck,
) -> Result<weft_config::resilience::HealthCheck, String> {
    use envoy_types::pb::envoy::config::core::v3::health_check::HealthChecker as H;
    use weft_config::resilience::{HealthCheck, HttpHealthCheck, StatusSpec, TcpHealthCheck};
    let mut rest = hc;
    let timeout = rest
        .timeout
        .take()
        .ok_or_else(|| format!("{path}.timeout: required"))?;
    let interval = rest
        .interval
        .take()
        .ok_or_else(|| format!("{path}.interval: required"))?;
    let mut out: HealthCheck = serde_json::from_value(serde_json::json!({ "tcp": {} }))
        .map_err(|e| format!("{path}: {e}"))?;
    out.tcp = None;
    out.timeout = duration(&format!("{path}.timeout"), &timeout)?;
    out.interval = duration(&format!("{path}.interval"), &interval)?;
    if let Some(j) = rest.interval_jitter.take() {
        out.interval_jitter = duration(&format!("{path}.interval_jitter"), &j)?;
    }
    let threshold = |name: &str, v: Option<envoy_types::pb::google::protobuf::UInt32Value>| {
        v.map(|v| v.value)
            .ok_or_else(|| format!("{path}.{name}: required"))
    };
    out.unhealthy_threshold = threshold("unhealthy_threshold", rest.unhealthy_threshold.take())?;
    out.healthy_threshold = threshold("healthy_threshold", rest.healthy_threshold.take())?;
    // Envoy checks an idle cluster only every `no_traffic_interval` (60 s); Weft checks every
    // `interval` whether or not traffic flows, so the field changes nothing worse.
    rest.no_traffic_interval = None;
    // Weft keeps one connection per check anyway; only Envoy's default (reuse) is accepted.
    if rest.reuse_connection.take().is_some_and(|b| !b.value) {
        return Err(format!("{path}.reuse_connection: false is unimplemented"));
    }
    match rest.health_checker.take() {
        Some(H::HttpHealthCheck(h)) => {
            let hpath = format!("{path}.http_health_check");
            let mut h = h;
            let mut http: HttpHealthCheck = serde_json::from_value(serde_json::json!({}))
                .map_err(|e| format!("{hpath}: {e}"))?;
            http.path = std::mem::take(&mut h.path);
            if http.path.is_empty() {
                return Err(format!("{hpath}.path: required"));
            }
            let host = std::mem::take(&mut h.host);
            http.host = (!host.is_empty()).then_some(host);
            let expected = std::mem::take(&mut h.expected_statuses);
            if !expected.is_empty() {
                http.expected_statuses = Vec::new();
            }
            for (i, r) in expected.into_iter().enumerate() {
                // Envoy's ranges are half-open: [start, end).
                if r.start < 100 || r.end > 600 || r.end <= r.start {
                    return Err(format!(
                        "{hpath}.expected_statuses[{i}]: [{}, {}) is not a range of statuses",
                        r.start, r.end
                    ));
                }
                http.expected_statuses.push(StatusSpec::Range(format!(
                    "{}-{}",
                    r.start,
                    r.end - 1
                )));
            }
            reject_rest(&hpath, &h)?;
            out.http = Some(http);
        }
        Some(H::TcpHealthCheck(t)) => {
            reject_rest(&format!("{path}.tcp_health_check"), &t)?;
            out.tcp = Some(TcpHealthCheck {});
        }
        Some(_) => {
            return Err(format!(
                "{path}: only http_health_check and tcp_health_check are implemented"
            ));
        }
        None => return Err(format!("{path}: a health checker is required")),
    }
    reject_rest(path, &rest)?;
    Ok(out)
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

#[cfg(test)]
mod protocol_tests {
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
        UpstreamProtocolOptions, UseDownstreamHttpConfig,
    };
    use envoy_types::pb::envoy::r#type::v3::Int64Range;
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
    use prost::Message;

    use super::*;

    #[test]
    fn downstream_protocol_selection_maps_and_alpn_selection_is_refused() {
        let any = |options: HttpProtocolOptions| Any {
            type_url: HTTP_PROTOCOL_OPTIONS.into(),
            value: options.encode_to_vec(),
        };
        let mut c = Cluster::named("c");
        let downstream = HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                UseDownstreamHttpConfig::default(),
            )),
            ..Default::default()
        };
        protocol_options("o", &any(downstream), &mut c).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.protocol,
            weft_config::schema::UpstreamProtocol::Downstream
        );
        let auto = HttpProtocolOptions {
            upstream_protocol_options: Some(
                UpstreamProtocolOptions::AutoConfig(Default::default()),
            ),
            ..Default::default()
        };
        let err = protocol_options("o", &any(auto), &mut c).unwrap_err();
        assert!(err.starts_with("o.auto_config: unimplemented"), "{err}");
    }

    #[test]
    fn health_check_statuses_are_half_open_ranges() {
        let hc = |expected: Vec<Int64Range>| core::HealthCheck {
            timeout: Some(PbDuration {
                seconds: 1,
                nanos: 0,
            }),
            interval: Some(PbDuration {
                seconds: 2,
                nanos: 0,
            }),
            unhealthy_threshold: Some(UInt32Value { value: 2 }),
            healthy_threshold: Some(UInt32Value { value: 3 }),
            health_checker: Some(core::health_check::HealthChecker::HttpHealthCheck(
                core::health_check::HttpHealthCheck {
                    path: "/ready".into(),
                    expected_statuses: expected,
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let out = health_check(
            "h",
            hc(vec![Int64Range {
                start: 200,
                end: 300,
            }]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let http = out.http.unwrap_or_else(|| panic!("an HTTP check"));
        assert_eq!(http.path, "/ready");
        assert_eq!(
            http.expected_statuses,
            vec![weft_config::resilience::StatusSpec::Range("200-299".into())]
        );
        assert_eq!((out.unhealthy_threshold, out.healthy_threshold), (2, 3));
        let err = health_check(
            "h",
            hc(vec![Int64Range {
                start: 300,
                end: 300,
            }]),
        )
        .unwrap_err();
        assert!(
            err.starts_with("h.http_health_check.expected_statuses[0]"),
            "{err}"
        );
    }
}
