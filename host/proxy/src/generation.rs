//! Configuration generations: a validated configuration compiled into everything the data path
//! needs (clusters, listeners with their route tables and phase chains, metric handles),
//! immutable once built. The reload actor builds one per accepted configuration.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use weft_config::Config;
use weft_config::schema::ListenerProtocol;
use weft_extensions::{PluginContext, PluginHandle};
use weft_http::{BuildContext, HttpListener};
use weft_observe::Metrics;
use weft_transport::{CaptureChain, CaptureEntry, HttpEntry, ListenerGen, ListenerTls, TcpTarget};
use weft_upstream::Cluster;
use weft_upstream::tls::UpstreamTls;

/// Why a configuration could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An HTTP listener failed to build (routes, matchers, plugins).
    #[error(transparent)]
    Http(#[from] weft_http::BuildError),
    /// A plugin could not be loaded.
    #[error(transparent)]
    Plugin(#[from] weft_extensions::PluginError),
    /// A reference that validation should have caught.
    #[error("{0}")]
    Invalid(String),
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
    /// This generation with `config` in place of its configuration, everything compiled kept
    /// (same id, listeners and clusters): after an in-place endpoint update, whose new
    /// endpoint lists `config` shows.
    pub(crate) fn with_config(&self, config: Config) -> Generation {
        Generation {
            id: self.id,
            loaded_at: self.loaded_at,
            source: self.source.clone(),
            config: Arc::new(config),
            clusters: self.clusters.clone(),
            listeners: self.listeners.clone(),
        }
    }

    /// The HTTP listener `name`, if it is one.
    pub fn http_listener(&self, name: &str) -> Option<&Arc<HttpListener>> {
        match self.listeners.get(name).map(|l| &**l) {
            Some(ListenerGen::Http(h)) => Some(&h.http),
            _ => None,
        }
    }

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
                ListenerGen::Http(h) => h.http.plugin_handles().for_each(&mut add),
                ListenerGen::Tcp(t) => t.wasm.iter().for_each(&mut add),
                ListenerGen::Capture(_) => {}
            }
        }
        out
    }
}

impl Generation {
    /// Compiles `config`. Clusters whose configuration is unchanged from `previous` are reused,
    /// keeping their connection pools and endpoint statistics; token buckets carry over.
    pub async fn build(
        id: u64,
        source: String,
        config: Config,
        previous: Option<&Generation>,
        metrics: &Metrics,
        plugins: PluginContext<'_>,
    ) -> Result<Generation, BuildError> {
        let mut clusters = Vec::with_capacity(config.clusters.len());
        let by_name: HashMap<&str, &Arc<Cluster>> = previous
            .map(|p| p.clusters.iter().map(|c| (&*c.name, c)).collect())
            .unwrap_or_default();
        for (i, c) in config.clusters.iter().enumerate() {
            let old = by_name.get(c.name.as_str()).copied();
            let reused = old.filter(|old| old.same_config(c)).cloned();
            clusters.push(match reused {
                Some(old) => old,
                None => {
                    let tls = match &c.tls {
                        Some(t) => {
                            Some(UpstreamTls::build(t, c.protocol, plugins.base_dir).map_err(
                                |error| BuildError::Tls {
                                    path: format!("clusters[{i}].tls"),
                                    error,
                                },
                            )?)
                        }
                        None => None,
                    };
                    let fresh = Arc::new(Cluster::with_tls(c, metrics, tls).await);
                    // Same name, new settings: endpoints keep their health and ejections.
                    if let Some(old) = old {
                        fresh.adopt_endpoint_state(old);
                    }
                    fresh
                }
            });
        }
        let clusters = Arc::new(clusters);
        let mut listeners = HashMap::new();
        // Capture listeners last: their filter chains point at the others.
        for (i, l) in config.listeners.iter().enumerate() {
            if l.original_dst {
                continue;
            }
            let path = format!("listeners[{i}]");
            let listener_gen = match l.protocol {
                ListenerProtocol::Http => {
                    let tls = match &l.tls {
                        Some(t) => ListenerTls::build(t, plugins.base_dir).map_err(|error| {
                            BuildError::Tls {
                                path: format!("{path}.tls"),
                                error,
                            }
                        })?,
                        None => None,
                    };
                    let ctx = BuildContext {
                        generation: id,
                        config: &config,
                        clusters: &clusters,
                        metrics,
                        plugins,
                        previous: previous
                            .and_then(|p| p.http_listener(&l.name))
                            .map(|h| &**h),
                    };
                    let http = HttpListener::build(&path, l, tls.is_some(), ctx).await?;
                    ListenerGen::Http(HttpEntry {
                        http: Arc::new(http),
                        tls,
                    })
                }
                ListenerProtocol::Tcp => {
                    let wasm = plugins.chain(&config, &l.plugins, &[]).await?;
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
                    ListenerGen::Tcp(Box::new(TcpTarget {
                        name: l.name.as_str().into(),
                        generation: id,
                        config: l.clone(),
                        cluster,
                        metrics: metrics.listener(&l.name),
                        wasm,
                        istio: config
                            .telemetry
                            .metrics
                            .enabled
                            .then(|| metrics.istio.reporting(&config.node, &config.telemetry)),
                    }))
                }
            };
            listeners.insert(l.name.clone(), Arc::new(listener_gen));
        }
        for l in config.listeners.iter().filter(|l| l.original_dst) {
            let entry = capture_entry(id, l, &config, &clusters, &listeners, metrics).await?;
            listeners.insert(
                l.name.clone(),
                Arc::new(ListenerGen::Capture(Box::new(entry))),
            );
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

/// Ports a captured connection's original destination must not have: every capture listener's,
/// the admin's and the sidecar ports (a connection to one of them would loop through Weft).
fn own_ports(config: &Config) -> Vec<u16> {
    let mut ports: Vec<u16> = config
        .listeners
        .iter()
        .filter(|l| l.original_dst)
        .map(|l| l.address.port())
        .collect();
    ports.push(config.admin.address.port());
    if let Some(s) = &config.sidecar {
        ports.extend([
            s.health_address.port(),
            s.prometheus_address.port(),
            s.merged_metrics_address.port(),
        ]);
    }
    ports.retain(|p| *p != 0);
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Compiles capture listener `l`: its chains, their target listeners, and where unmatched
/// connections go (the passthrough cluster, or `BlackHoleCluster` under `registry_only`).
async fn capture_entry(
    id: u64,
    l: &weft_config::schema::Listener,
    config: &Config,
    clusters: &Arc<Vec<Arc<Cluster>>>,
    listeners: &HashMap<String, Arc<ListenerGen>>,
    metrics: &Metrics,
) -> Result<CaptureEntry, BuildError> {
    use weft_config::capture::{BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER};
    use weft_config::schema::{Cluster as ClusterConfig, ClusterType, OutboundTrafficPolicy};

    let mut chains = Vec::new();
    let mut targets = HashMap::new();
    for chain in &l.filter_chains {
        let target = listeners.get(&chain.listener).cloned().ok_or_else(|| {
            BuildError::Invalid(format!(
                "listener {}: filter chain names unknown listener `{}`",
                l.name, chain.listener
            ))
        })?;
        targets.insert(chain.listener.clone(), target);
        chains.push(CaptureChain {
            name: chain.name.as_deref().unwrap_or(&chain.listener).into(),
            matcher: chain.matcher.clone(),
            target: chain.listener.as_str().into(),
        });
    }
    let fallback_name = match l.outbound_traffic_policy {
        OutboundTrafficPolicy::AllowAny => l
            .passthrough_cluster
            .clone()
            .unwrap_or_else(|| PASSTHROUGH_CLUSTER.to_owned()),
        OutboundTrafficPolicy::RegistryOnly => BLACKHOLE_CLUSTER.to_owned(),
    };
    let cluster = match clusters.iter().find(|c| *c.name == *fallback_name) {
        Some(c) => c.clone(),
        None => {
            // The built-in Passthrough (original destination) or BlackHole (no endpoint).
            let mut c = ClusterConfig::named(&fallback_name);
            if fallback_name != BLACKHOLE_CLUSTER {
                c.kind = ClusterType::OriginalDst;
            }
            Arc::new(Cluster::new(&c, metrics).await)
        }
    };
    let listener_metrics = metrics.listener(&l.name);
    Ok(CaptureEntry {
        name: l.name.as_str().into(),
        config: l.clone(),
        metrics: listener_metrics.clone(),
        chains,
        targets,
        fallback: Arc::new(TcpTarget {
            name: l.name.as_str().into(),
            generation: id,
            config: l.clone(),
            cluster,
            metrics: listener_metrics,
            wasm: Vec::new(),
            istio: config
                .telemetry
                .metrics
                .enabled
                .then(|| metrics.istio.reporting(&config.node, &config.telemetry)),
        }),
        own_ports: own_ports(config),
    })
}
