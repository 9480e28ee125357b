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

/// Why a configuration could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A route table failed to build.
    #[error(transparent)]
    Routing(#[from] weft_routing::RoutingError),
    /// A reference that validation should have caught.
    #[error("{0}")]
    Invalid(String),
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
    pub fn metrics(&self) -> &ListenerMetrics {
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
    pub metrics: ListenerMetrics,
}

/// Per-route runtime state.
#[derive(Debug)]
pub struct RouteState {
    /// Metric handles.
    pub metrics: RouteMetrics,
    /// The effective filter chain.
    pub filters: FilterChain,
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
    pub metrics: ListenerMetrics,
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
    ) -> Result<Generation, BuildError> {
        let mut clusters = Vec::with_capacity(config.clusters.len());
        for c in &config.clusters {
            let reused = previous
                .and_then(|p| p.clusters.iter().find(|old| old.config == *c))
                .cloned();
            clusters.push(match reused {
                Some(old) => old,
                None => Arc::new(Cluster::new(c, metrics).await),
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
                    let route_state = routes
                        .routes()
                        .map(|r| {
                            let mut filters: Vec<Arc<dyn HttpFilter>> = Vec::new();
                            if !r.request_headers.is_empty() || !r.response_headers.is_empty() {
                                filters.push(Arc::new(HeaderMutationFilter::new(
                                    r.request_headers.clone(),
                                    r.response_headers.clone(),
                                )));
                            }
                            RouteState {
                                metrics: metrics.route(&l.name, &r.name),
                                filters: FilterChain::new(filters),
                            }
                        })
                        .collect();
                    ListenerGen::Http(HttpListener {
                        name: l.name.as_str().into(),
                        generation: id,
                        config: l.clone(),
                        routes,
                        route_state,
                        clusters: clusters.clone(),
                        metrics: lmetrics,
                    })
                }
                ListenerProtocol::Tcp => {
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
