//! Route tables: which virtual host serves a request's Host, which route of it matches, and what
//! that route does. Pure code with no I/O: compiled once per configuration generation, then
//! shared read-only by every request.
#![forbid(unsafe_code)]

mod matcher;
mod rewrite;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use weft_config::schema;

pub use matcher::RouteMatcher;
pub use rewrite::PathRewrite;

/// Why a route table could not be built (the configuration was not validated first).
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// A regular expression did not compile.
    #[error("{path}: invalid regular expression `{pattern}`: {source}")]
    Regex {
        /// Field path of the pattern.
        path: String,
        /// The pattern.
        pattern: String,
        /// The compiler's complaint.
        #[source]
        source: regex::Error,
    },
    /// A header name or value is not valid HTTP.
    #[error("{path}: invalid header `{value}`")]
    Header {
        /// Field path.
        path: String,
        /// The offending text.
        value: String,
    },
    /// A route names a cluster that does not exist.
    #[error("{path}: unknown cluster `{name}`")]
    UnknownCluster {
        /// Field path.
        path: String,
        /// The cluster name.
        name: String,
    },
}

/// What routing looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Host without the port, lower-cased or not (matching is case-insensitive).
    pub host: &'a str,
    /// The path, without the query string.
    pub path: &'a str,
    /// The query string without `?`, if any.
    pub query: Option<&'a str>,
    /// The method.
    pub method: &'a Method,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

/// The routes of one HTTP listener, by virtual host.
#[derive(Debug)]
pub struct RouteTable {
    exact: HashMap<String, usize>,
    /// `(".suffix", vhost)`, longest suffix first.
    suffixes: Vec<(String, usize)>,
    wildcard: Option<usize>,
    virtual_hosts: Vec<VirtualHost>,
    route_count: usize,
}

/// One virtual host's routes.
#[derive(Debug)]
pub struct VirtualHost {
    /// Its name.
    pub name: Arc<str>,
    /// Its routes, in match order.
    pub routes: Vec<Route>,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Unique within the listener; used in metrics and logs.
    pub name: Arc<str>,
    /// Index of the route within the listener's table (0..route_count), for per-route state.
    pub id: usize,
    /// The match conditions.
    pub matcher: RouteMatcher,
    /// What to do.
    pub action: Action,
    /// Changes to the request headers.
    pub request_headers: HeaderMutations,
    /// Changes to the response headers.
    pub response_headers: HeaderMutations,
}

/// A route's action.
#[derive(Debug)]
pub enum Action {
    /// Forward upstream.
    Forward(Forward),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly.
    Direct {
        /// Status code.
        status: http::StatusCode,
        /// Body.
        body: Arc<str>,
    },
}

/// Forwarding to one cluster or a weighted split.
#[derive(Debug)]
pub struct Forward {
    /// The cluster(s) as indexes into the configuration's `clusters`.
    pub target: Target,
    /// Whole-request deadline; `None` when disabled.
    pub timeout: Option<Duration>,
    /// How the path changes.
    pub rewrite: PathRewrite,
    /// The new Host/authority.
    pub host_rewrite: Option<HeaderValue>,
    /// Ring-hash key sources, in order.
    pub hash_policy: Vec<HashPolicy>,
    /// The route's stream idle timeout, replacing the listener's (zero: disabled).
    pub idle_timeout: Option<Duration>,
    /// `upgrade_configs`: lowercased upgrade types and whether each is allowed.
    pub upgrades: Vec<(String, bool)>,
}

impl Forward {
    /// Whether an `Upgrade: token` request may go through this route: `websocket` unless
    /// disabled, any other type only when enabled (Envoy's `upgrade_configs`).
    pub fn allows_upgrade(&self, token: &str) -> bool {
        match self
            .upgrades
            .iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(token))
        {
            Some((_, enabled)) => *enabled,
            None => token.eq_ignore_ascii_case("websocket"),
        }
    }
}

/// Which cluster(s) a forward goes to.
#[derive(Debug)]
pub enum Target {
    /// One cluster.
    Cluster(usize),
    /// `(cluster, cumulative weight)`, in order; the last cumulative weight is the total.
    Weighted(Vec<(usize, u64)>),
}

/// A source of a ring-hash key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashPolicy {
    /// A request header's value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The downstream source IP.
    SourceIp,
}

/// A redirect.
#[derive(Debug)]
pub struct Redirect {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    prefix_rewrite: Option<(String, String)>,
    strip_query: bool,
    /// The status code.
    pub status: http::StatusCode,
}

/// Header changes: remove, then set, then add.
#[derive(Debug, Default, Clone)]
pub struct HeaderMutations {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

// === impl RouteTable ===

impl RouteTable {
    /// Compiles the routes of `listener`; cluster names are resolved against `clusters`.
    pub fn build(
        listener_path: &str,
        listener: &schema::Listener,
        clusters: &[schema::Cluster],
    ) -> Result<RouteTable, RoutingError> {
        let cluster_index: HashMap<&str, usize> = clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), i))
            .collect();
        let mut table = RouteTable {
            exact: HashMap::new(),
            suffixes: Vec::new(),
            wildcard: None,
            virtual_hosts: Vec::new(),
            route_count: 0,
        };
        for (vi, vh) in listener.virtual_hosts.iter().enumerate() {
            let vpath = format!("{listener_path}.virtual_hosts[{vi}]");
            for d in &vh.domains {
                let d = d.to_ascii_lowercase();
                if d == "*" {
                    table.wildcard.get_or_insert(vi);
                } else if let Some(suffix) = d.strip_prefix('*') {
                    table.suffixes.push((suffix.to_owned(), vi));
                } else {
                    table.exact.entry(d).or_insert(vi);
                }
            }
            let mut routes = Vec::with_capacity(vh.routes.len());
            for (ri, r) in vh.routes.iter().enumerate() {
                let rpath = format!("{vpath}.routes[{ri}]");
                let name: Arc<str> = match &r.name {
                    Some(n) => n.as_str().into(),
                    None => format!("{}/{ri}", vh.name).into(),
                };
                routes.push(Route {
                    name,
                    id: table.route_count,
                    matcher: RouteMatcher::build(&rpath, &r.matcher)?,
                    action: build_action(&rpath, r, &cluster_index)?,
                    request_headers: HeaderMutations::build(
                        &format!("{rpath}.request_headers"),
                        &r.request_headers,
                    )?,
                    response_headers: HeaderMutations::build(
                        &format!("{rpath}.response_headers"),
                        &r.response_headers,
                    )?,
                });
                table.route_count += 1;
            }
            table.virtual_hosts.push(VirtualHost {
                name: vh.name.as_str().into(),
                routes,
            });
        }
        table.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        Ok(table)
    }

    /// The number of routes across all virtual hosts (route ids are `0..route_count`).
    pub fn route_count(&self) -> usize {
        self.route_count
    }

    /// All routes, in id order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.virtual_hosts.iter().flat_map(|v| v.routes.iter())
    }

    /// The virtual host serving `host` (port already removed): exact match first, then the
    /// longest `*.suffix`, then `*`.
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        let index = self.vhost_index(host)?;
        self.virtual_hosts.get(index)
    }

    fn vhost_index(&self, host: &str) -> Option<usize> {
        if !self.exact.is_empty() || !self.suffixes.is_empty() {
            let lower;
            let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                lower = host.to_ascii_lowercase();
                lower.as_str()
            } else {
                host
            };
            if let Some(i) = self.exact.get(host) {
                return Some(*i);
            }
            for (suffix, i) in &self.suffixes {
                // `*.example.com` needs at least one character before the suffix.
                if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                    return Some(*i);
                }
            }
        }
        self.wildcard
    }

    /// The first route matching `req`, or `None` (404 `NR`).
    pub fn route(&self, req: &RequestView<'_>) -> Option<&Route> {
        let vh = self.virtual_host(req.host)?;
        vh.routes.iter().find(|r| r.matcher.matches(req))
    }
}

/// Splits a Host header value or authority into host and port, handling `[v6]:port`.
pub fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let port = rest[end + 1..].strip_prefix(':');
            return (&authority[..end + 2], port);
        }
        return (authority, None);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (authority, None),
    }
}

fn build_action(
    rpath: &str,
    r: &schema::Route,
    clusters: &HashMap<&str, usize>,
) -> Result<Action, RoutingError> {
    let lookup = |path: String, name: &str| {
        clusters
            .get(name)
            .copied()
            .ok_or(RoutingError::UnknownCluster {
                path,
                name: name.to_owned(),
            })
    };
    if let Some(f) = &r.route {
        let fpath = format!("{rpath}.route");
        let target = match &f.cluster {
            Some(c) => Target::Cluster(lookup(format!("{fpath}.cluster"), c)?),
            None => {
                let mut total = 0u64;
                let mut split = Vec::new();
                for (i, w) in f.weighted_clusters.iter().enumerate() {
                    let idx = lookup(format!("{fpath}.weighted_clusters[{i}].name"), &w.name)?;
                    if w.weight > 0 {
                        total += u64::from(w.weight);
                        split.push((idx, total));
                    }
                }
                Target::Weighted(split)
            }
        };
        let prefix = r.matcher.path.as_ref().and_then(|p| p.prefix.clone());
        let rewrite = PathRewrite::build(&fpath, prefix.as_deref(), f)?;
        let host_rewrite = match &f.host_rewrite {
            Some(h) => Some(HeaderValue::from_str(h).map_err(|_| RoutingError::Header {
                path: format!("{fpath}.host_rewrite"),
                value: h.clone(),
            })?),
            None => None,
        };
        let mut hash_policy = Vec::new();
        for (i, hp) in f.hash_policy.iter().enumerate() {
            if let Some(h) = &hp.header {
                hash_policy.push(HashPolicy::Header(header_name(
                    &format!("{fpath}.hash_policy[{i}].header"),
                    h,
                )?));
            } else if let Some(c) = &hp.cookie {
                hash_policy.push(HashPolicy::Cookie(c.clone()));
            } else if hp.source_ip {
                hash_policy.push(HashPolicy::SourceIp);
            }
        }
        return Ok(Action::Forward(Forward {
            target,
            timeout: (!f.timeout.is_zero()).then_some(f.timeout),
            rewrite,
            host_rewrite,
            hash_policy,
            idle_timeout: f.idle_timeout,
            upgrades: f
                .upgrade_configs
                .iter()
                .map(|u| (u.upgrade_type.to_ascii_lowercase(), u.enabled))
                .collect(),
        }));
    }
    if let Some(rd) = &r.redirect {
        let prefix = r.matcher.path.as_ref().and_then(|p| p.prefix.clone());
        return Ok(Action::Redirect(Redirect {
            scheme: rd.scheme.clone(),
            host: rd.host.clone(),
            port: rd.port,
            path: rd.path.clone(),
            prefix_rewrite: match (&rd.prefix_rewrite, prefix) {
                (Some(new), Some(old)) => Some((old, new.clone())),
                _ => None,
            },
            strip_query: rd.strip_query,
            status: http::StatusCode::from_u16(rd.response_code)
                .unwrap_or(http::StatusCode::MOVED_PERMANENTLY),
        }));
    }
    let d = r.direct_response.as_ref();
    Ok(Action::Direct {
        status: d
            .and_then(|d| http::StatusCode::from_u16(d.status).ok())
            .unwrap_or(http::StatusCode::OK),
        body: d.and_then(|d| d.body.as_deref()).unwrap_or("").into(),
    })
}

fn header_name(path: &str, name: &str) -> Result<HeaderName, RoutingError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| RoutingError::Header {
        path: path.to_owned(),
        value: name.to_owned(),
    })
}

// === impl Forward ===

impl Forward {
    /// The cluster for this request; `dice` is a uniformly random number (weighted splits).
    pub fn pick_cluster(&self, dice: u64) -> Option<usize> {
        match &self.target {
            Target::Cluster(c) => Some(*c),
            Target::Weighted(split) => {
                let total = split.last()?.1;
                let point = dice % total;
                split.iter().find(|(_, cum)| point < *cum).map(|(c, _)| *c)
            }
        }
    }
}

// === impl Redirect ===

impl Redirect {
    /// The `Location` for a request with this scheme, Host, path and query.
    pub fn location(
        &self,
        scheme: &str,
        authority: &str,
        path: &str,
        query: Option<&str>,
    ) -> String {
        let (req_host, req_port) = split_host_port(authority);
        let scheme_out = self.scheme.as_deref().unwrap_or(scheme);
        let host = self.host.as_deref().unwrap_or(req_host);
        let port = match self.port {
            Some(p) => Some(p.to_string()),
            // Keep the request's port only when neither the host nor the scheme changed.
            None if self.host.is_none() && scheme_out == scheme => req_port.map(str::to_owned),
            None => None,
        };
        let new_path = if let Some(p) = &self.path {
            p.clone()
        } else if let Some((old, new)) = &self.prefix_rewrite {
            match path.strip_prefix(old.as_str()) {
                Some(rest) => format!("{new}{rest}"),
                None => path.to_owned(),
            }
        } else {
            path.to_owned()
        };
        let mut out = format!("{scheme_out}://{host}");
        if let Some(p) = port {
            out.push(':');
            out.push_str(&p);
        }
        out.push_str(&new_path);
        if let (false, Some(q)) = (self.strip_query, query)
            && !new_path.contains('?')
        {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

// === impl HeaderMutations ===

impl HeaderMutations {
    fn build(path: &str, m: &schema::HeaderMutations) -> Result<HeaderMutations, RoutingError> {
        let pair = |field: &str, i: usize, h: &schema::HeaderValueOption| {
            let name = header_name(&format!("{path}.{field}[{i}].name"), &h.name)?;
            let value = HeaderValue::from_str(&h.value).map_err(|_| RoutingError::Header {
                path: format!("{path}.{field}[{i}].value"),
                value: h.value.clone(),
            })?;
            Ok::<_, RoutingError>((name, value))
        };
        Ok(HeaderMutations {
            remove: m
                .remove
                .iter()
                .enumerate()
                .map(|(i, n)| header_name(&format!("{path}.remove[{i}]"), n))
                .collect::<Result<_, _>>()?,
            set: m
                .set
                .iter()
                .enumerate()
                .map(|(i, h)| pair("set", i, h))
                .collect::<Result<_, _>>()?,
            add: m
                .add
                .iter()
                .enumerate()
                .map(|(i, h)| pair("add", i, h))
                .collect::<Result<_, _>>()?,
        })
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies the changes: remove, set, add.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests;
