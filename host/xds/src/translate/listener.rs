//! One LDS filter chain → a [`weft_config::schema::Listener`] (`lds.rs` reads the listener
//! around it). The chain ends in one terminal network filter: the HTTP connection manager
//! (routes from RDS or inline; Wasm HTTP filters, then the router) or the TCP proxy, which
//! network Wasm filters may precede.

use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use weft_config::schema::{Listener, ListenerProtocol};

use super::{ads_only, duration};
use crate::fields::reject_rest;
use crate::resources::type_url;

/// A translated listener: Weft's form, and the route configuration it waits for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Translated {
    /// Weft's listener; with `rds`, its virtual hosts come from that route configuration.
    pub listener: Listener,
    /// The RDS route configuration name, when routes are not inline.
    pub rds: Option<String>,
    /// The Wasm plugins its HTTP filters define, in filter order (attached by name).
    pub plugins: Vec<super::wasm::WasmPlugin>,
    /// A capture listener's filter chains, each a listener (`bind_to_port: false`) of its own
    /// (moved into the store beside it, leaving their names in `chain_names`).
    pub chains: Vec<Translated>,
    /// The names of its chains' listeners, once in the store.
    pub chain_names: Vec<String>,
    /// SDS secrets its TLS refers to.
    pub secrets: Vec<String>,
    /// A listener with `bind_to_port: false`, reached by address through a capture listener
    /// with `use_original_dst`: not a Weft listener itself, but these chains (pointing at its
    /// chains' listeners, matching its port and address) added to those capture listeners.
    pub by_address: Option<Vec<weft_config::schema::FilterChain>>,
    /// A capture listener with `use_original_dst: true`: it hands connections to the
    /// `by_address` listeners.
    pub hands_off: bool,
    /// HTTP filters whose configuration comes by ECDS: (position among the listener's
    /// plugins, extension configuration name). The listener warms until they arrive.
    pub ecds: Vec<(usize, String)>,
}

fn decode<M: Message + Default>(path: &str, any: &Any, want: &str) -> Result<M, String> {
    if any.type_url != want {
        return Err(format!(
            "{path}.typed_config: `{}` is unimplemented (expected `{want}`)",
            any.type_url
        ));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("{path}.typed_config: {e}"))
}

/// Translates one filter chain (its match aside) into a listener `name` on `address`.
pub(crate) fn chain(
    cpath: &str,
    name: &str,
    address: std::net::SocketAddr,
    chain: envoy_types::pb::envoy::config::listener::v3::FilterChain,
) -> Result<Translated, String> {
    let mut crest = chain;
    crest.filter_chain_match = None;
    crest.name.clear();
    crest.metadata = None;
    let (tls, secrets) = match crest.transport_socket.take() {
        Some(socket) => {
            match super::tls::downstream(&format!("{cpath}.transport_socket"), socket)? {
                Some((tls, secrets)) => (Some(tls), secrets),
                None => (None, Vec::new()),
            }
        }
        None => (None, Vec::new()),
    };
    let mut filters = std::mem::take(&mut crest.filters);
    reject_rest(cpath, &crest)?;
    // The last network filter terminates the chain (HTTP connection manager or TCP proxy);
    // before a TCP proxy, network Wasm filters (`envoy.filters.network.wasm`) may run.
    let Some(filter) = filters.pop() else {
        return Err(format!(
            "{cpath}.filters: a network filter (HTTP connection manager or TCP proxy) is required"
        ));
    };
    let last = filters.len();
    let mut network_plugins: Vec<super::wasm::WasmPlugin> = Vec::new();
    for (i, f) in filters.into_iter().enumerate() {
        let fpath = format!("{cpath}.filters[{i}]");
        let any = match f.config_type {
            Some(ConfigType::TypedConfig(any)) => any,
            Some(ConfigType::ConfigDiscovery(_)) => {
                return Err(format!("{fpath}.config_discovery: ECDS is unimplemented"));
            }
            None => return Err(format!("{fpath}.typed_config: required")),
        };
        if any.type_url != super::wasm::NETWORK_WASM {
            return Err(format!(
                "{fpath}: network filter `{}` ({}) is unimplemented (before the terminal filter \
                 only envoy.filters.network.wasm is)",
                f.name, any.type_url
            ));
        }
        let p = super::wasm::network_wasm(&fpath, &f.name, &any)?;
        if network_plugins
            .iter()
            .any(|q| q.plugin.name == p.plugin.name)
        {
            return Err(format!(
                "{fpath}.typed_config.config.name: `{}` twice in one filter chain",
                p.plugin.name
            ));
        }
        network_plugins.push(p);
    }
    let fpath = format!("{cpath}.filters[{last}]");
    let any = match filter.config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        Some(ConfigType::ConfigDiscovery(_)) => {
            return Err(format!("{fpath}.config_discovery: ECDS is unimplemented"));
        }
        None => return Err(format!("{fpath}.typed_config: required")),
    };
    let mut out: Listener = serde_json::from_value(serde_json::json!({
        "name": name,
        "address": address.to_string(),
    }))
    .map_err(|e| format!("{cpath}: {e}"))?;
    out.tls = tls;
    if any.type_url == type_url::TCP_PROXY {
        let tcp: TcpProxy = decode(&fpath, &any, type_url::TCP_PROXY)?;
        out.protocol = ListenerProtocol::Tcp;
        out.tcp = Some(tcp_proxy(&format!("{fpath}.tcp_proxy"), tcp)?);
        out.plugins = plugin_refs(&network_plugins);
        return Ok(Translated {
            listener: out,
            rds: None,
            plugins: network_plugins,
            chains: Vec::new(),
            chain_names: Vec::new(),
            secrets,
            by_address: None,
            hands_off: false,
            ecds: Vec::new(),
        });
    }
    if !network_plugins.is_empty() {
        return Err(format!(
            "{cpath}.filters[0]: a network Wasm filter before the HTTP connection manager is \
             unimplemented (Weft runs network Wasm filters on TCP proxy chains; use \
             envoy.filters.http.wasm on HTTP)"
        ));
    }
    let hcm: HttpConnectionManager = decode(&fpath, &any, type_url::HCM)?;
    let hpath = format!("{fpath}.http_connection_manager");
    let mut hrest = hcm;
    hrest.stat_prefix.clear();
    // AUTO, HTTP1 and HTTP2: Weft serves HTTP/1.1 and h2c on every HTTP listener.
    if hrest.codec_type > 2 {
        return Err(format!(
            "{hpath}.codec_type: only AUTO, HTTP1 and HTTP2 are implemented"
        ));
    }
    hrest.codec_type = 0;
    super::hcm::settings(&hpath, &mut hrest, &mut out)?;
    if let Some(g) = hrest.generate_request_id.take() {
        out.http.generate_request_id = g.value;
    }
    if let Some(kb) = hrest.max_request_headers_kb.take() {
        out.http.max_request_headers_bytes = kb.value as usize * 1024;
    }
    if let Some(t) = hrest.request_headers_timeout.take() {
        out.http.request_header_timeout =
            duration(&format!("{hpath}.request_headers_timeout"), &t)?;
    }
    if let Some(opts) = hrest.common_http_protocol_options.take() {
        let mut orest = opts;
        if let Some(t) = orest.idle_timeout.take() {
            out.http.idle_timeout = duration(
                &format!("{hpath}.common_http_protocol_options.idle_timeout"),
                &t,
            )?;
        }
        if let Some(n) = orest.max_headers_count.take() {
            out.http.max_request_headers = n.value as usize;
        }
        reject_rest(&format!("{hpath}.common_http_protocol_options"), &orest)?;
    }
    let filters = std::mem::take(&mut hrest.http_filters);
    let (plugins, ecds) = http_filters(&format!("{hpath}.http_filters"), filters)?;
    out.plugins = plugin_refs(&plugins);
    let mut rds = None;
    match hrest.route_specifier.take() {
        Some(RouteSpecifier::Rds(r)) => {
            ads_only(
                &format!("{hpath}.rds.config_source"),
                r.config_source.as_ref(),
            )?;
            if r.route_config_name.is_empty() {
                return Err(format!("{hpath}.rds.route_config_name: required"));
            }
            rds = Some(r.route_config_name);
        }
        Some(RouteSpecifier::RouteConfig(rc)) => {
            out.virtual_hosts =
                super::route::route_configuration(&format!("{hpath}.route_config"), rc)?;
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(format!("{hpath}.scoped_routes: unimplemented"));
        }
        None => return Err(format!("{hpath}: rds or route_config is required")),
    }
    reject_rest(&hpath, &hrest)?;
    Ok(Translated {
        listener: out,
        rds,
        plugins,
        chains: Vec::new(),
        chain_names: Vec::new(),
        secrets,
        by_address: None,
        hands_off: false,
        ecds,
    })
}

/// The Wasm filters of an HTTP connection manager: inline ones, and (position among them all,
/// extension configuration name) of those discovered by ECDS.
type HttpFilters = (Vec<super::wasm::WasmPlugin>, Vec<(usize, String)>);

/// The listener's references to its Wasm filters' plugins, in filter order.
fn plugin_refs(plugins: &[super::wasm::WasmPlugin]) -> Vec<weft_config::schema::PluginRef> {
    plugins
        .iter()
        .map(|p| weft_config::schema::PluginRef {
            name: p.plugin.name.clone(),
            configuration: None,
            disabled: false,
        })
        .collect()
}

/// Wasm filters (`envoy.filters.http.wasm`), then the router, last; any other HTTP filter is
/// NACKed. A `disabled` filter (enabled per route only, which Weft does not implement) is
/// skipped.
fn http_filters(
    path: &str,
    filters: Vec<envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter>,
) -> Result<HttpFilters, String> {
    let n = filters.len();
    let mut plugins: Vec<super::wasm::WasmPlugin> = Vec::new();
    let mut ecds: Vec<(usize, String)> = Vec::new();
    for (i, f) in filters.into_iter().enumerate() {
        let fpath = format!("{path}[{i}]");
        let any = match &f.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => Some(any.clone()),
            Some(http_filter::ConfigType::ConfigDiscovery(d)) => {
                if f.disabled {
                    continue;
                }
                let name = discovered(&fpath, &f.name, d)?;
                if ecds.iter().any(|(_, n)| *n == name) {
                    return Err(format!("{fpath}.name: `{name}` twice in one listener"));
                }
                ecds.push((plugins.len() + ecds.len(), name));
                continue;
            }
            None => None,
        };
        let is_router = f.name == "envoy.filters.http.router"
            || any.as_ref().is_some_and(|a| a.type_url == type_url::ROUTER);
        if !is_router {
            if f.disabled {
                continue;
            }
            if let Some(any) = any
                .as_ref()
                .filter(|a| a.type_url == super::wasm::HTTP_WASM)
            {
                let p = super::wasm::http_wasm(&fpath, &f.name, any)?;
                if plugins.iter().any(|q| q.plugin.name == p.plugin.name) {
                    return Err(format!(
                        "{fpath}.typed_config.config.name: `{}` twice in one listener",
                        p.plugin.name
                    ));
                }
                plugins.push(p);
                continue;
            }
            if let Some(any) = &any
                && super::native::http_filter(&fpath, any)?
            {
                continue;
            }
            return Err(format!(
                "{fpath}: HTTP filter `{}` is unimplemented (envoy.filters.http.wasm, \
                 envoy.filters.http.router and the filters istiod adds are: see docs/xds.md)",
                f.name
            ));
        }
        if i + 1 != n {
            return Err(format!("{fpath}: the router must be the last HTTP filter"));
        }
        if let Some(any) = any {
            let router: Router = decode(&fpath, &any, type_url::ROUTER)?;
            reject_rest(&format!("{fpath}.router"), &router)?;
        }
    }
    if n == 0 {
        return Err(format!("{path}: the router filter is required"));
    }
    Ok((plugins, ecds))
}

/// An HTTP filter whose configuration comes by ECDS (`config_discovery`): a Wasm filter
/// configuration over ADS, named by the filter's name. Returns that name.
fn discovered(
    path: &str,
    name: &str,
    d: &envoy_types::pb::envoy::config::core::v3::ExtensionConfigSource,
) -> Result<String, String> {
    let dpath = format!("{path}.config_discovery");
    if name.is_empty() {
        return Err(format!(
            "{path}.name: required (the extension configuration's name)"
        ));
    }
    ads_only(&format!("{dpath}.config_source"), d.config_source.as_ref())?;
    if d.default_config.is_some() {
        return Err(format!("{dpath}.default_config: unimplemented"));
    }
    if d.apply_default_config_without_warming {
        return Err(format!(
            "{dpath}.apply_default_config_without_warming: unimplemented (the listener warms \
             until the configuration arrives)"
        ));
    }
    if d.type_urls.is_empty() || d.type_urls.iter().any(|t| t != super::wasm::HTTP_WASM) {
        return Err(format!(
            "{dpath}.type_urls: only `{}` is implemented over ECDS",
            super::wasm::HTTP_WASM
        ));
    }
    Ok(name.to_owned())
}

fn tcp_proxy(path: &str, t: TcpProxy) -> Result<weft_config::schema::TcpProxy, String> {
    let mut rest = t;
    rest.stat_prefix.clear();
    let cluster = match rest.cluster_specifier.take() {
        Some(ClusterSpecifier::Cluster(c)) => c,
        Some(ClusterSpecifier::WeightedClusters(_)) => {
            return Err(format!("{path}.weighted_clusters: unimplemented"));
        }
        None => return Err(format!("{path}.cluster: required")),
    };
    let mut out: weft_config::schema::TcpProxy =
        serde_json::from_value(serde_json::json!({ "cluster": cluster }))
            .map_err(|e| format!("{path}: {e}"))?;
    if let Some(t) = rest.idle_timeout.take() {
        out.idle_timeout = duration(&format!("{path}.idle_timeout"), &t)?;
    }
    reject_rest(path, &rest)?;
    Ok(out)
}
