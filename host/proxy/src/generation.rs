//! Configuration generations: a validated configuration compiled into everything the data path
//! needs (route tables, clusters, filter chains, metric handles), immutable once built.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use weft_config::Config;
use weft_config::schema::{self, ListenerProtocol};
use weft_routing::RouteTable;

use crate::cluster::Cluster;
use crate::filter::{FilterChain, HeaderMutationFilter, HttpFilter};
use crate::metrics::{ListenerMetrics, Metrics, RouteMetrics};
use crate::plugins::{PluginHandle, PluginRegistry};

/// Where a generation's plugins come from and how strictly failures count.
#[derive(Debug, Clone, Copy)]
pub struct PluginContext<'a> {
    /// The plugin registry.
    pub registry: &'a PluginRegistry,
    /// Plugin files are relative to this directory.
    pub base_dir: &'a std::path::Path,
    /// A plugin that fails to load refuses the generation (reloads); without it (startup) the
    /// plugin's failure policy applies to requests.
    pub strict: bool,
}

/// The effective plugin chain for `route_refs` on a listener with `listener_refs`.
async fn plugin_chain(
    plugins: PluginContext<'_>,
    config: &Config,
    listener_refs: &[schema::PluginRef],
    route_refs: &[schema::PluginRef],
) -> Result<Vec<Arc<PluginHandle>>, BuildError> {
    let disabled: Vec<&str> = route_refs
        .iter()
        .filter(|r| r.disabled)
        .map(|r| r.name.as_str())
        .collect();
    let mut refs: Vec<&schema::PluginRef> = listener_refs
        .iter()
        .filter(|r| !disabled.contains(&r.name.as_str()))
        .collect();
    refs.extend(route_refs.iter().filter(|r| !r.disabled));
    let mut chain = Vec::with_capacity(refs.len());
    for r in refs {
        let plugin = config
            .plugins
            .iter()
            .find(|p| p.name == r.name)
            .ok_or_else(|| BuildError::Invalid(format!("unknown plugin `{}`", r.name)))?;
        let handle = plugins
            .registry
            .resolve(
                plugins.base_dir,
                plugin,
                r.configuration.as_ref(),
                plugins.strict,
            )
            .await?;
        chain.push(handle);
    }
    // Istio's order: phase, then priority (higher first); stable within equal keys.
    chain.sort_by_key(|h| (h.config.phase, std::cmp::Reverse(h.config.priority)));
    Ok(chain)
}

/// Why a configuration could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A route table failed to build.
    #[error(transparent)]
    Routing(#[from] weft_routing::RoutingError),
    /// A reference that validation should have caught.
    #[error("{0}")]
    Invalid(String),
    /// A plugin could not be loaded.
    #[error(transparent)]
    Plugin(#[from] crate::plugins::PluginError),
    /// TLS material was refused.
    #[error("{path}: {error}")]
    Tls {
        /// The configuration field path (`listeners[0].tls`).
        path: String,
        /// Why (names the file).
        error: weft_tls::TlsError,
    },
}

/// One compiled configuration.
#[derive(Debug)]
pub struct Generation {
    /// Monotonic number, 1 for the first.
    pub id: u64,
    /// When it was published.
    pub loaded_at: SystemTime,
    /// Where it came from (a path or `<embedded default>`).
    pub source: String,
    /// The configuration it was built from.
    pub config: Arc<Config>,
    /// Its clusters, in configuration order.
    pub clusters: Arc<Vec<Arc<Cluster>>>,
    /// Its listeners by name.
    pub listeners: HashMap<String, Arc<ListenerGen>>,
}

impl Generation {
    /// Every plugin handle any route uses.
    pub fn plugin_handles(&self) -> Vec<Arc<PluginHandle>> {
        let mut out: Vec<Arc<PluginHandle>> = Vec::new();
        let mut add = |p: &Arc<PluginHandle>| {
            if !out.iter().any(|o| Arc::ptr_eq(o, p)) {
                out.push(p.clone());
            }
        };
        for l in self.listeners.values() {
            match &**l {
                ListenerGen::Http(h) => h
                    .route_state
                    .iter()
                    .flat_map(|r| r.wasm.iter())
                    .for_each(&mut add),
                ListenerGen::Tcp(t) => t.wasm.iter().for_each(&mut add),
            }
        }
        out
    }
}

/// A listener's share of a generation.
#[derive(Debug)]
pub enum ListenerGen {
    /// An HTTP listener.
    Http(HttpListener),
    /// A TCP listener.
    Tcp(TcpListener),
}

impl ListenerGen {
    /// The listener's configuration.
    pub fn config(&self) -> &schema::Listener {
        match self {
            ListenerGen::Http(h) => &h.config,
            ListenerGen::Tcp(t) => &t.config,
        }
    }

    /// The listener's metrics.
    pub fn metrics(&self) -> &Arc<ListenerMetrics> {
        match self {
            ListenerGen::Http(h) => &h.metrics,
            ListenerGen::Tcp(t) => &t.metrics,
        }
    }
}

/// An HTTP listener's routes and the clusters they reach.
#[derive(Debug)]
pub struct HttpListener {
    /// Listener name.
    pub name: Arc<str>,
    /// The generation this belongs to.
    pub generation: u64,
    /// Its configuration.
    pub config: schema::Listener,
    /// Route table.
    pub routes: RouteTable,
    /// Per-route state, indexed by route id.
    pub route_state: Vec<RouteState>,
    /// The generation's clusters (route targets index into this).
    pub clusters: Arc<Vec<Arc<Cluster>>>,
    /// Metric handles.
    pub metrics: Arc<ListenerMetrics>,
    /// TLS (`None`: plaintext only).
    pub tls: Option<Arc<crate::tls::ListenerTls>>,
    /// The listener-wide token bucket and its metrics.
    pub local_rate_limit: Option<(
        Arc<crate::ratelimit::TokenBucket>,
        crate::resilience::RouteResilienceMetrics,
    )>,
}

/// Per-route runtime state.
#[derive(Debug)]
pub struct RouteState {
    /// Metric handles.
    pub metrics: Arc<RouteMetrics>,
    /// The native filter chain.
    pub filters: FilterChain,
    /// The effective proxy-wasm chain (listener and route plugins, by phase and priority).
    pub wasm: Vec<Arc<PluginHandle>>,
    /// The largest body any plugin of the chain may buffer.
    pub wasm_max_body: usize,
    /// Retries, faults, rate limit, mirrors.
    pub resilience: crate::resilience::RouteResilience,
}

/// A TCP listener's target.
#[derive(Debug)]
pub struct TcpListener {
    /// Listener name.
    pub name: Arc<str>,
    /// The generation this belongs to.
    pub generation: u64,
    /// Its configuration.
    pub config: schema::Listener,
    /// The cluster connections go to.
    pub cluster: Arc<Cluster>,
    /// Metric handles.
    pub metrics: Arc<ListenerMetrics>,
    /// proxy-wasm network filters, in order.
    pub wasm: Vec<Arc<PluginHandle>>,
}

impl Generation {
    /// Compiles `config`. Clusters whose configuration is unchanged from `previous` are reused,
    /// keeping their connection pools and endpoint statistics.
    pub async fn build(
        id: u64,
        source: String,
        config: Config,
        previous: Option<&Generation>,
        metrics: &Metrics,
        plugins: PluginContext<'_>,
    ) -> Result<Generation, BuildError> {
        let mut clusters = Vec::with_capacity(config.clusters.len());
        for (i, c) in config.clusters.iter().enumerate() {
            let reused = previous
                .and_then(|p| p.clusters.iter().find(|old| old.config == *c))
                .cloned();
            clusters.push(match reused {
                Some(old) => old,
                None => {
                    let tls = match &c.tls {
                        Some(t) => Some(
                            crate::tls::UpstreamTls::build(t, c.protocol, plugins.base_dir)
                                .map_err(|error| BuildError::Tls {
                                    path: format!("clusters[{i}].tls"),
                                    error,
                                })?,
                        ),
                        None => None,
                    };
                    let fresh = Arc::new(Cluster::with_tls(c, metrics, tls).await);
                    // Same name, new settings: endpoints keep their health and ejections.
                    if let Some(old) =
                        previous.and_then(|p| p.clusters.iter().find(|old| old.name == fresh.name))
                    {
                        fresh.adopt_endpoint_state(old);
                    }
                    fresh
                }
            });
        }
        let clusters = Arc::new(clusters);
        let mut listeners = HashMap::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let path = format!("listeners[{i}]");
            let lmetrics = metrics.listener(&l.name);
            let listener_gen = match l.protocol {
                ListenerProtocol::Http => {
                    let routes = RouteTable::build(&path, l, &config.clusters)?;
                    let route_configs: Vec<&schema::Route> = l
                        .virtual_hosts
                        .iter()
                        .flat_map(|v| v.routes.iter())
                        .collect();
                    let mut route_state = Vec::with_capacity(routes.route_count());
                    let route_paths: Vec<String> = l
                        .virtual_hosts
                        .iter()
                        .enumerate()
                        .flat_map(|(v, vh)| {
                            let path = &path;
                            (0..vh.routes.len())
                                .map(move |i| format!("{path}.virtual_hosts[{v}].routes[{i}]"))
                        })
                        .collect();
                    for ((r, rc), rpath) in routes.routes().zip(route_configs).zip(route_paths) {
                        let mut filters: Vec<Arc<dyn HttpFilter>> = Vec::new();
                        if !r.request_headers.is_empty() || !r.response_headers.is_empty() {
                            filters.push(Arc::new(HeaderMutationFilter::new(
                                r.request_headers.clone(),
                                r.response_headers.clone(),
                            )));
                        }
                        let wasm = plugin_chain(plugins, &config, &l.plugins, &rc.plugins).await?;
                        let wasm_max_body = wasm
                            .iter()
                            .map(|h| h.config.max_body_bytes)
                            .max()
                            .unwrap_or(0);
                        let resilience = crate::resilience::RouteResilience::build(
                            &rpath, rc, &clusters, metrics, &l.name, &r.name, previous,
                        )?;
                        route_state.push(RouteState {
                            resilience,
                            metrics: metrics.route(&l.name, &r.name),
                            filters: FilterChain::new(filters),
                            wasm,
                            wasm_max_body,
                        });
                    }
                    let tls = match &l.tls {
                        Some(t) => crate::tls::ListenerTls::build(t, plugins.base_dir).map_err(
                            |error| BuildError::Tls {
                                path: format!("{path}.tls"),
                                error,
                            },
                        )?,
                        None => None,
                    };
                    ListenerGen::Http(HttpListener {
                        name: l.name.as_str().into(),
                        generation: id,
                        config: l.clone(),
                        routes,
                        route_state,
                        clusters: clusters.clone(),
                        metrics: lmetrics,
                        tls,
                        local_rate_limit: l.local_rate_limit.as_ref().map(|rl| {
                            (
                                crate::resilience::listener_bucket(previous, &l.name, rl),
                                metrics.route_resilience(&l.name, ""),
                            )
                        }),
                    })
                }
                ListenerProtocol::Tcp => {
                    let wasm = plugin_chain(plugins, &config, &l.plugins, &[]).await?;
                    let target = l
                        .tcp
                        .as_ref()
                        .ok_or_else(|| BuildError::Invalid(format!("{path}.tcp: required")))?;
                    let cluster = clusters
                        .iter()
                        .find(|c| *c.name == *target.cluster)
                        .cloned()
                        .ok_or_else(|| {
                            BuildError::Invalid(format!(
                                "{path}.tcp.cluster: unknown cluster `{}`",
                                target.cluster
                            ))
                        })?;
                    ListenerGen::Tcp(TcpListener {
                        name: l.name.as_str().into(),
                        generation: id,
                        config: l.clone(),
                        cluster,
                        metrics: lmetrics,
                        wasm,
                    })
                }
            };
            listeners.insert(l.name.clone(), Arc::new(listener_gen));
        }
        Ok(Generation {
            id,
            loaded_at: SystemTime::now(),
            source,
            config: Arc::new(config),
            clusters,
            listeners,
        })
    }
}
