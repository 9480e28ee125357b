//! The running proxy: the live generation, the listener sockets, the admin server, watchers,
//! and shutdown. Every change of configuration goes through the reload actor
//! ([`crate::reload`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_config::Config;
use weft_config::schema::AcceptMode;
use weft_extensions::{PluginContext, PluginError, PluginMetrics, PluginRegistry};
use weft_observe::{AccessLog, Metrics};
use weft_transport::{Acceptors, ListenerGen, Shared, Workers};

use crate::commands::ReloadError;
use crate::generation::Generation;
use crate::signals::Signals;
use crate::source::{ConfigSource, ProxyError};
use crate::state::State;

/// A handle on the running proxy; cheap to clone.
#[derive(Clone, Debug)]
pub struct Proxy {
    pub(crate) inner: Arc<State>,
}

/// Options for [`Proxy::start`].
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Watch the configuration file and the plugin files, and reload on change.
    pub watch: bool,
    /// Override the admin address (tests use port 0).
    pub admin_address: Option<SocketAddr>,
    /// Override `identity.spiffe_id`: one mesh configuration then serves every workload, each
    /// sidecar asking for its own identity (`weft run` takes it from `WEFT_SPIFFE_ID`, which
    /// `weft inject` sets from the pod's namespace and service account).
    pub spiffe_id: Option<String>,
    /// Compile plugins in a child process running this executable's `plugin compile` (`weft
    /// run` passes its own path): the compiler's memory then never enters the proxy. `None`:
    /// compile on a thread of the proxy.
    pub plugin_compiler: Option<std::path::PathBuf>,
}

impl Proxy {
    /// Loads the configuration, binds every listener and the admin server, and starts serving.
    pub async fn start(source: ConfigSource, options: StartOptions) -> Result<Proxy, ProxyError> {
        let config = source.load()?;
        if let Some(identity) = &config.identity {
            let mut identity = identity.clone();
            if let Some(id) = &options.spiffe_id {
                identity.spiffe_id.clone_from(id);
            }
            // The workload certificate must be in place before listeners load it.
            crate::identity::start_agent(&identity, &source.base_dir())
                .await
                .map_err(ProxyError::Identity)?;
        }
        let mut registry = PluginRegistry::with_engine_options(weft_wasm::EngineOptions {
            compiler: options.plugin_compiler.clone(),
            ..weft_wasm::EngineOptions::default()
        });
        if config.runtime.accept == AcceptMode::Reuseport {
            // Plugins load here, on the control runtime: one instance per worker runtime.
            registry = registry.with_default_instances(Workers::count(config.workers));
        }
        let plugins = Arc::new(registry);
        let access_log = log_format(&config)
            .and_then(|f| AccessLog::open(&config.access_log.path, f))
            .map_err(|error| ProxyError::AccessLog {
                path: config.access_log.path.clone(),
                error,
            })?;
        let span_stats = Arc::new(weft_observe::trace::ExportStats::default());
        let tracer = crate::spans::exporter(
            config.tracing.as_ref(),
            config.node.id.as_deref(),
            span_stats.clone(),
        );
        let mut metrics = Metrics::new();
        metrics.register_collector(Box::new(weft_observe::reporters::ReporterMetrics {
            spans: span_stats,
            access_log: access_log.clone(),
        }));
        // Once per process: the plugin families are read from the live handles at each scrape.
        metrics.register_collector(Box::new(PluginMetrics::new(plugins.clone())));
        let metrics = Arc::new(metrics);
        let label = source.label();
        let base_dir = source.base_dir();
        let ctx = PluginContext {
            registry: &plugins,
            base_dir: &base_dir,
            strict: false,
        };
        let generation = Generation::build(1, label.clone(), config, None, &metrics, ctx)
            .await
            .map_err(|error| ProxyError::Build {
                source_label: label,
                error,
            })?;
        let generation = Arc::new(generation);
        let drain_timeout = generation.config.drain_timeout;
        let admin_address = options
            .admin_address
            .unwrap_or(generation.config.admin.address);
        let acceptors = match generation.config.runtime.accept {
            AcceptMode::Shared => Acceptors::Shared,
            AcceptMode::Reuseport => Acceptors::Reuseport(Arc::new(
                Workers::start(generation.config.workers, &metrics).map_err(ProxyError::Workers)?,
            )),
        };
        let (commands, inbox) = tokio::sync::mpsc::channel(64);
        let overload = Arc::new(weft_http::overload::Overload::new(metrics.overload.clone()));
        let proxy = Proxy {
            inner: Arc::new(State {
                source,
                generation: ArcSwap::new(generation.clone()),
                slots: Mutex::new(HashMap::new()),
                shared: Arc::new(Shared {
                    metrics,
                    http: Arc::new(weft_http::Shared {
                        access_log,
                        tracer,
                        overload: overload.clone(),
                    }),
                }),
                tracker: TaskTracker::new(),
                acceptors,
                shutdown: CancellationToken::new(),
                ready: AtomicBool::new(false),
                last_error: Mutex::new(None),
                admin_addr: Mutex::new(None),
                sidecar_addrs: Mutex::new(HashMap::new()),
                drain_timeout,
                plugins,
                commands,
                published: tokio::sync::watch::Sender::new(0),
                file_config: Mutex::new(generation.config.clone()),
                dynamic: Mutex::new(Arc::default()),
                dynamic_status: Mutex::new(None),
            }),
        };
        crate::reload::publish(&proxy.inner, generation).await?;
        crate::reload::spawn_actor(proxy.inner.clone(), inbox);
        overload.spawn_sampler(proxy.inner.shutdown.clone());
        let api: Arc<dyn weft_admin::AdminApi> =
            Arc::new(crate::admin_api::Api(proxy.inner.clone()));
        let admin = weft_admin::start(api.clone(), admin_address)
            .await
            .map_err(|error| ProxyError::Bind {
                what: "admin".into(),
                address: admin_address,
                error,
            })?;
        *proxy.inner.admin_addr.lock() = Some(admin);
        if let Some(sidecar) = proxy.inner.generation().config.sidecar.clone() {
            start_sidecar_ports(&proxy, &api, &sidecar).await?;
        }
        if options.watch {
            crate::watch::spawn(&proxy.inner);
        }
        proxy.inner.ready.store(true, Ordering::SeqCst);
        Ok(proxy)
    }

    /// Re-reads the configuration source and applies it (through the reload actor); on any
    /// error the live generation keeps serving and the error is logged, counted and returned.
    pub async fn reload(&self) -> Result<u64, ReloadError> {
        self.inner.reload().await
    }

    /// Compiles and publishes `config` as a new generation (through the reload actor).
    pub async fn apply(&self, config: Config) -> Result<u64, ReloadError> {
        self.inner.apply(config).await
    }

    /// Replaces the dynamic listeners and clusters (through the reload actor). On error the
    /// live generation, and the previous dynamic resources, keep serving.
    pub async fn apply_dynamic(
        &self,
        resources: weft_config::DynamicResources,
    ) -> Result<u64, ReloadError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let command = crate::commands::Command::Dynamic {
            resources: Box::new(resources),
            reply: tx,
        };
        if self.inner.commands.send(command).await.is_err() {
            return Err(ReloadError::stopped());
        }
        rx.await.unwrap_or_else(|_| Err(ReloadError::stopped()))
    }

    /// Replaces the endpoint lists of dynamic clusters (by name) in place, through the reload
    /// actor: an xDS endpoint (EDS) update. The lists are checked as a full reload checks them;
    /// then each cluster's endpoint set is swapped (pools, statistics and the health of
    /// unchanged endpoints kept) and the live generation shows the new lists, with no rebuild
    /// of listeners or routes. A cluster that cannot be updated in place (one resolving DNS
    /// names) makes the whole update a full rebuild, as [`Proxy::apply_dynamic`]. On error
    /// nothing changes. Returns the live generation's id.
    pub async fn apply_endpoints(
        &self,
        changes: Vec<(String, Vec<weft_config::schema::Endpoint>)>,
    ) -> Result<u64, ReloadError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let command = crate::commands::Command::Endpoints { changes, reply: tx };
        if self.inner.commands.send(command).await.is_err() {
            return Err(ReloadError::stopped());
        }
        rx.await.unwrap_or_else(|_| Err(ReloadError::stopped()))
    }

    /// Shows `status` in `/config_dump` (under `dynamic`).
    pub fn set_dynamic_status(&self, status: Arc<dyn crate::dynamic::DynamicStatus>) {
        *self.inner.dynamic_status.lock() = Some(status);
    }

    /// The file's half of the live configuration (the `xds` bootstrap lives there).
    pub fn file_config(&self) -> Arc<weft_config::Config> {
        self.inner.file_config.lock().clone()
    }

    /// Hot-swaps plugin `name` from its file (through the reload actor; the old version keeps
    /// serving on failure).
    pub async fn reload_plugin(&self, name: &str) -> Result<usize, Arc<PluginError>> {
        self.inner.reload_plugin(name).await
    }

    /// The live generation.
    pub fn generation(&self) -> Arc<Generation> {
        self.inner.generation()
    }

    /// The bound address of listener `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.inner.listener_addr(name)
    }

    /// The listeners' bound addresses by name.
    pub fn listener_addrs(&self) -> HashMap<String, SocketAddr> {
        self.inner.listener_addrs()
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.inner.admin_addr()
    }

    /// The bound address of sidecar port `name`: `health` (15021), `prometheus` (15090) or
    /// `merged` (15020).
    pub fn sidecar_addr(&self, name: &str) -> Option<SocketAddr> {
        self.inner.sidecar_addrs.lock().get(name).copied()
    }

    /// Metric families.
    pub fn metrics(&self) -> &Metrics {
        self.inner.metrics()
    }

    /// True once started and until draining begins.
    pub fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    /// The last reload error, if the last reload failed.
    pub fn last_reload_error(&self) -> Option<String> {
        self.inner.last_reload_error()
    }

    /// Starts a graceful shutdown.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// The plugin registry.
    pub fn plugins(&self) -> &PluginRegistry {
        self.inner.plugins()
    }

    /// The listener's generation by name (for admin).
    pub fn listener(&self, name: &str) -> Option<Arc<ListenerGen>> {
        self.inner.listener(name)
    }

    /// Waits for the shutdown signal, then drains: stops accepting, asks every connection to
    /// finish (GOAWAY on HTTP/2, `Connection: close` on HTTP/1.1) and waits for in-flight
    /// requests up to the drain timeout. Returns true when everything finished in time.
    pub async fn wait(&self) -> bool {
        self.inner.shutdown.cancelled().await;
        self.inner.tracker.close();
        let drained = tokio::time::timeout(self.inner.drain_timeout, self.inner.tracker.wait())
            .await
            .is_ok();
        if drained {
            tracing::info!("drained");
        } else {
            tracing::warn!(timeout = ?self.inner.drain_timeout, "drain deadline passed with requests in flight");
        }
        drained
    }

    /// Runs until SIGTERM, SIGINT or `POST /quitquitquit`, reloading on SIGHUP; then drains.
    /// `signals` must be installed before the proxy starts listening, so that a signal that
    /// arrives during start-up drains instead of killing the process.
    pub async fn run_until_signalled(&self, mut signals: Signals) -> bool {
        loop {
            tokio::select! {
                _ = signals.term.recv() => { tracing::info!("SIGTERM: draining"); self.shutdown(); }
                _ = signals.int.recv() => { tracing::info!("SIGINT: draining"); self.shutdown(); }
                _ = signals.hup.recv() => { let _ = self.reload().await; continue; }
                _ = self.inner.shutdown.cancelled() => {}
            }
            break;
        }
        self.wait().await
    }
}

/// The access log's default line format (validated with the configuration, so a failure here
/// is reported as the access log's error).
fn log_format(config: &Config) -> std::io::Result<weft_observe::access_log::LineFormat> {
    weft_observe::access_log::LineFormat::compile(&config.access_log.log_format())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
}

/// Binds Istio's sidecar ports (read once at start): health, Prometheus, and the merged
/// metrics when the application's metrics URL is known.
async fn start_sidecar_ports(
    proxy: &Proxy,
    api: &Arc<dyn weft_admin::AdminApi>,
    sidecar: &weft_config::schema::Sidecar,
) -> Result<(), ProxyError> {
    use weft_admin::sidecar::SidecarPort;
    let mut ports = vec![
        ("health", sidecar.health_address, SidecarPort::Health),
        (
            "prometheus",
            sidecar.prometheus_address,
            SidecarPort::Prometheus,
        ),
    ];
    if let Some(merged) = sidecar
        .app_metrics_url
        .as_deref()
        .and_then(SidecarPort::merged)
    {
        ports.push(("merged", sidecar.merged_metrics_address, merged));
    }
    for (name, address, port) in ports {
        let bound = weft_admin::sidecar::start(api.clone(), address, port)
            .await
            .map_err(|error| ProxyError::Bind {
                what: format!("sidecar {name} port"),
                address,
                error,
            })?;
        proxy.inner.sidecar_addrs.lock().insert(name, bound);
    }
    Ok(())
}
