//! Capture listeners: an LDS listener with `use_original_dst` (or the `original_dst` listener
//! filter), as istiod renders `virtualInbound` / `virtualOutbound`, onto Weft's capture
//! listener (`original_dst: true`). Each filter chain becomes a listener of its own
//! (`<listener>/<chain name or index>`, `bind_to_port: false`) that the capture listener hands
//! matching connections to; `filter_chain_match` becomes the chain's match; the default filter
//! chain (a TCP proxy to an `ORIGINAL_DST` cluster, or to `BlackHoleCluster`) becomes the
//! capture listener's passthrough.

use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain as XChain, FilterChainMatch as XMatch, Listener as XListener, filter,
    listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use prost::Message;
use weft_config::schema::{
    FilterChain, FilterChainMatch, Listener, OutboundTrafficPolicy, TransportProtocol,
};

use super::duration;
use super::listener::Translated;
use crate::fields::reject_rest;
use crate::resources::type_url;

/// The listener filters Weft's capture listener does itself: reading the original destination,
/// and sniffing TLS (SNI, ALPN) and HTTP when a chain matches on them.
const LISTENER_FILTERS: [&str; 3] = [
    "envoy.filters.listener.original_dst",
    "envoy.filters.listener.tls_inspector",
    "envoy.filters.listener.http_inspector",
];

fn listener_filter_name(
    f: &envoy_types::pb::envoy::config::listener::v3::ListenerFilter,
) -> String {
    match &f.config_type {
        Some(listener_filter::ConfigType::TypedConfig(any)) => {
            let t = any.type_url.rsplit('/').next().unwrap_or_default();
            match t {
                "envoy.extensions.filters.listener.original_dst.v3.OriginalDst" => {
                    LISTENER_FILTERS[0].into()
                }
                "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" => {
                    LISTENER_FILTERS[1].into()
                }
                "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector" => {
                    LISTENER_FILTERS[2].into()
                }
                _ => f.name.clone(),
            }
        }
        _ => f.name.clone(),
    }
}

/// True for a capture listener; takes the fields that make it one (and those of its listener
/// filters), refusing what Weft cannot do.
pub(crate) fn is_capture(path: &str, l: &mut XListener) -> Result<bool, String> {
    l.bind_to_port = None;
    let mut capture = l.use_original_dst.take().is_some_and(|b| b.value);
    let mut sniffs = false;
    for (i, f) in std::mem::take(&mut l.listener_filters).iter().enumerate() {
        let name = listener_filter_name(f);
        let fpath = format!("{path}.listener_filters[{i}]");
        if f.filter_disabled.is_some() {
            return Err(format!("{fpath}.filter_disabled: unimplemented"));
        }
        match LISTENER_FILTERS.iter().position(|n| *n == name) {
            Some(0) => capture = true,
            Some(_) => sniffs = true,
            None => {
                return Err(format!(
                    "{fpath}: listener filter `{name}` is unimplemented (original_dst, \
                     tls_inspector and http_inspector are)"
                ));
            }
        }
    }
    if !capture {
        if sniffs {
            return Err(format!(
                "{path}.listener_filters: TLS and HTTP inspection are only implemented on a \
                 capture listener (use_original_dst or the original_dst listener filter)"
            ));
        }
        return Ok(false);
    }
    // Weft's capture listener treats a connection whose first bytes do not arrive in time as
    // opaque TCP: Envoy's `continue_on_listener_filters_timeout: true` (what istiod sets).
    if sniffs && !l.continue_on_listener_filters_timeout {
        return Err(format!(
            "{path}.continue_on_listener_filters_timeout: false is unimplemented (Weft \
             continues as opaque TCP when protocol detection times out)"
        ));
    }
    l.continue_on_listener_filters_timeout = false;
    Ok(true)
}

/// The capture listener `name` and its chains.
pub(crate) fn translate(
    path: &str,
    name: &str,
    address: std::net::SocketAddr,
    chains: Vec<XChain>,
    default_chain: Option<XChain>,
) -> Result<Translated, String> {
    let mut out: Listener = serde_json::from_value(serde_json::json!({
        "name": name,
        "address": address.to_string(),
        "original_dst": true,
    }))
    .map_err(|e| format!("{path}: {e}"))?;
    let mut targets = Vec::new();
    for (i, chain) in chains.into_iter().enumerate() {
        let cpath = format!("{path}.filter_chains[{i}]");
        let label = if chain.name.is_empty() {
            i.to_string()
        } else {
            chain.name.clone()
        };
        let matcher = chain_match(
            &format!("{cpath}.filter_chain_match"),
            chain.filter_chain_match.clone().unwrap_or_default(),
        )?;
        let target = format!("{name}/{label}");
        if targets
            .iter()
            .any(|t: &Translated| t.listener.name == target)
        {
            return Err(format!("{cpath}.name: `{label}` twice"));
        }
        let mut t = super::listener::chain(&cpath, &target, address, chain)?;
        t.listener.bind_to_port = false;
        out.filter_chains.push(FilterChain {
            name: Some(label),
            matcher,
            listener: target,
        });
        targets.push(t);
    }
    match default_chain {
        None => out.outbound_traffic_policy = OutboundTrafficPolicy::RegistryOnly,
        Some(d) => {
            let dpath = format!("{path}.default_filter_chain");
            out.passthrough_cluster = Some(passthrough(&dpath, d)?);
        }
    }
    Ok(Translated {
        listener: out,
        rds: None,
        plugins: Vec::new(),
        chains: targets,
        chain_names: Vec::new(),
        secrets: Vec::new(),
        by_address: None,
        hands_off: false,
        ecds: Vec::new(),
    })
}

/// A listener with `bind_to_port: false` (istiod's per-port outbound listeners such as
/// `0.0.0.0_8080`, or per-address ones such as `10.0.0.5_3306`), which Envoy reaches only by
/// handing it a connection captured by a `use_original_dst` listener whose original
/// destination is its address. Each filter chain (and the default chain) becomes a listener
/// of its own, `<listener>/<chain name or index>` (`bind_to_port: false`), and a capture chain
/// pointing at it whose match is the chain's, narrowed to the listener's port and (unless it
/// is a wildcard address) its IP. These chains are added to every capture listener with
/// `use_original_dst: true`; Envoy's order, a listener on the exact address before the
/// wildcard one, then that listener's most specific chain, follows from the narrowed matches
/// (a port, then the longest prefix, win).
pub(crate) fn by_address(
    path: &str,
    name: &str,
    address: std::net::SocketAddr,
    l: XListener,
) -> Result<Translated, String> {
    let mut rest = l;
    rest.bind_to_port = None;
    if rest.use_original_dst.take().is_some_and(|b| b.value) {
        return Err(format!(
            "{path}.use_original_dst: not on a listener with bind_to_port: false (it is \
             reached through a capture listener, it does not capture)"
        ));
    }
    for (i, f) in std::mem::take(&mut rest.listener_filters)
        .iter()
        .enumerate()
    {
        let fname = listener_filter_name(f);
        if f.filter_disabled.is_some() {
            return Err(format!(
                "{path}.listener_filters[{i}].filter_disabled: unimplemented"
            ));
        }
        // The capture listener that hands the connection over sniffs TLS and HTTP when a
        // chain's match needs them.
        if fname != LISTENER_FILTERS[1] && fname != LISTENER_FILTERS[2] {
            return Err(format!(
                "{path}.listener_filters[{i}]: listener filter `{fname}` is unimplemented on a \
                 listener with bind_to_port: false (tls_inspector and http_inspector are)"
            ));
        }
    }
    // The capture listener's protocol detection applies (its timeout, opaque TCP after it).
    rest.listener_filters_timeout = None;
    rest.continue_on_listener_filters_timeout = false;
    let chains = std::mem::take(&mut rest.filter_chains);
    let default_chain = rest.default_filter_chain.take();
    reject_rest(path, &rest)?;
    let ip = address.ip();
    let narrow = |cpath: &str, m: FilterChainMatch| -> Result<Option<FilterChainMatch>, String> {
        let mut m = m;
        if address.port() == 0 {
            return Err(format!(
                "{cpath}: a listener with bind_to_port: false needs a port in its address"
            ));
        }
        match m.destination_port {
            Some(p) if p != address.port() => return Ok(None),
            _ => m.destination_port = Some(address.port()),
        }
        if !ip.is_unspecified() {
            if !m.prefix_ranges.is_empty() && !m.prefix_ranges.iter().any(|n| n.contains(&ip)) {
                return Ok(None);
            }
            let host = ipnet::IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 })
                .map_err(|e| format!("{cpath}: {e}"))?;
            m.prefix_ranges = vec![host];
        }
        Ok(Some(m))
    };
    let mut targets: Vec<Translated> = Vec::new();
    let mut handoff = Vec::new();
    let all = chains
        .into_iter()
        .enumerate()
        .map(|(i, c)| (format!("{path}.filter_chains[{i}]"), i.to_string(), c))
        .chain(default_chain.map(|c| {
            (
                format!("{path}.default_filter_chain"),
                "default".to_owned(),
                c,
            )
        }));
    for (cpath, index, chain) in all {
        let label = if chain.name.is_empty() {
            index
        } else {
            chain.name.clone()
        };
        let is_default = cpath.ends_with(".default_filter_chain");
        let given = chain.filter_chain_match.clone().unwrap_or_default();
        if is_default && given != XMatch::default() {
            return Err(format!("{cpath}.filter_chain_match: must be empty"));
        }
        let matcher = chain_match(&format!("{cpath}.filter_chain_match"), given)?;
        let target = format!("{name}/{label}");
        if targets.iter().any(|t| t.listener.name == target) {
            return Err(format!("{cpath}.name: `{label}` twice"));
        }
        let mut t = super::listener::chain(&cpath, &target, address, chain)?;
        t.listener.bind_to_port = false;
        // A chain that can never match this listener's connections (another port, or a
        // range without its address) is left out, as Envoy never selects it.
        let Some(matcher) = narrow(&cpath, matcher)? else {
            continue;
        };
        handoff.push(FilterChain {
            name: Some(target.clone()),
            matcher,
            listener: target,
        });
        targets.push(t);
    }
    let placeholder: Listener = serde_json::from_value(serde_json::json!({
        "name": name,
        "address": address.to_string(),
        "bind_to_port": false,
    }))
    .map_err(|e| format!("{path}: {e}"))?;
    Ok(Translated {
        listener: placeholder,
        rds: None,
        plugins: Vec::new(),
        chains: targets,
        chain_names: Vec::new(),
        secrets: Vec::new(),
        by_address: Some(handoff),
        hands_off: false,
        ecds: Vec::new(),
    })
}

/// The default chain: a TCP proxy to one cluster (an `ORIGINAL_DST` cluster, or
/// `BlackHoleCluster`, checked when the configuration is validated).
fn passthrough(path: &str, chain: XChain) -> Result<String, String> {
    let mut rest = chain;
    rest.name.clear();
    rest.metadata = None;
    if rest
        .filter_chain_match
        .take()
        .is_some_and(|m| m != Default::default())
    {
        return Err(format!("{path}.filter_chain_match: must be empty"));
    }
    let filters = std::mem::take(&mut rest.filters);
    reject_rest(path, &rest)?;
    let only = match <[_; 1]>::try_from(filters) {
        Ok([f]) => f,
        Err(f) => {
            return Err(format!(
                "{path}.filters: exactly one TCP proxy is implemented (got {} filters)",
                f.len()
            ));
        }
    };
    let any = match only.config_type {
        Some(filter::ConfigType::TypedConfig(any)) if any.type_url == type_url::TCP_PROXY => any,
        _ => {
            return Err(format!(
                "{path}.filters[0]: only a TCP proxy (to an ORIGINAL_DST cluster or \
                 BlackHoleCluster) is implemented as the default filter chain"
            ));
        }
    };
    let mut tcp =
        TcpProxy::decode(any.value.as_slice()).map_err(|e| format!("{path}.filters[0]: {e}"))?;
    tcp.stat_prefix.clear();
    let cluster = match tcp.cluster_specifier.take() {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => c,
        _ => return Err(format!("{path}.filters[0].tcp_proxy.cluster: required")),
    };
    reject_rest(&format!("{path}.filters[0].tcp_proxy"), &tcp)?;
    Ok(cluster)
}

/// Envoy's `filter_chain_match` onto Weft's.
fn chain_match(path: &str, m: XMatch) -> Result<FilterChainMatch, String> {
    let mut rest = m;
    let mut out = FilterChainMatch {
        destination_port: rest
            .destination_port
            .take()
            .map(|p| {
                u16::try_from(p.value)
                    .map_err(|_| format!("{path}.destination_port: {} is not a port", p.value))
            })
            .transpose()?,
        ..Default::default()
    };
    for (i, r) in std::mem::take(&mut rest.prefix_ranges)
        .into_iter()
        .enumerate()
    {
        let ip: std::net::IpAddr = r.address_prefix.parse().map_err(|_| {
            format!(
                "{path}.prefix_ranges[{i}].address_prefix: `{}` is not an IP address",
                r.address_prefix
            )
        })?;
        let len = r
            .prefix_len
            .map_or(if ip.is_ipv4() { 32 } else { 128 }, |l| l.value);
        let net = u8::try_from(len)
            .ok()
            .and_then(|l| ipnet::IpNet::new(ip, l).ok())
            .ok_or_else(|| {
                format!("{path}.prefix_ranges[{i}].prefix_len: {len} is out of range")
            })?;
        out.prefix_ranges.push(net.trunc());
    }
    out.server_names = std::mem::take(&mut rest.server_names);
    out.transport_protocol = match std::mem::take(&mut rest.transport_protocol).as_str() {
        "" => None,
        "tls" => Some(TransportProtocol::Tls),
        "raw_buffer" => Some(TransportProtocol::RawBuffer),
        other => {
            return Err(format!(
                "{path}.transport_protocol: `{other}` is unimplemented (tls, raw_buffer)"
            ));
        }
    };
    out.application_protocols = std::mem::take(&mut rest.application_protocols);
    reject_rest(path, &rest)?;
    Ok(out)
}

/// The timeout of protocol detection on a capture listener.
pub(crate) fn detection_timeout(
    path: &str,
    l: &mut XListener,
) -> Result<Option<std::time::Duration>, String> {
    l.listener_filters_timeout
        .take()
        .map(|d| duration(&format!("{path}.listener_filters_timeout"), &d))
        .transpose()
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::CidrRange;
    use envoy_types::pb::google::protobuf::UInt32Value;

    use super::*;

    #[test]
    fn chain_matches_map_and_source_matches_are_refused_by_name() {
        let m = chain_match(
            "m",
            XMatch {
                destination_port: Some(UInt32Value { value: 443 }),
                prefix_ranges: vec![CidrRange {
                    address_prefix: "10.1.2.3".into(),
                    prefix_len: Some(UInt32Value { value: 16 }),
                }],
                transport_protocol: "tls".into(),
                server_names: vec!["*.example.com".into()],
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.destination_port, Some(443));
        assert_eq!(m.prefix_ranges[0].to_string(), "10.1.0.0/16");
        assert_eq!(m.transport_protocol, Some(TransportProtocol::Tls));
        let err = chain_match(
            "m",
            XMatch {
                source_prefix_ranges: vec![CidrRange::default()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            err.starts_with("m.source_prefix_ranges: unimplemented"),
            "{err}"
        );
        let err = chain_match(
            "m",
            XMatch {
                transport_protocol: "quic".into(),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(
            err,
            "m.transport_protocol: `quic` is unimplemented (tls, raw_buffer)"
        );
        let err = chain_match(
            "m",
            XMatch {
                destination_port: Some(UInt32Value { value: 70_000 }),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err, "m.destination_port: 70000 is not a port");
    }
}
