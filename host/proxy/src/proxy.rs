//! The running proxy: the live generation, the listener sockets, reloads and shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_config::{Config, ConfigError};

use crate::access_log::AccessLog;
use crate::generation::{BuildError, Generation, ListenerGen, PluginContext};
use crate::metrics::{Metrics, ResultLabels};
use crate::plugins::PluginRegistry;
use crate::server::{self, ListenerSlot, Shared};

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A file, watched and reloadable.
    File(PathBuf),
    /// Built in (the demo); reload re-applies it.
    Embedded {
        /// A label for logs and `/config_dump`.
        label: String,
        /// The YAML text.
        text: String,
    },
}

impl ConfigSource {
    /// The label used in errors and `/config_dump`.
    pub fn label(&self) -> String {
        match self {
            ConfigSource::File(p) => p.display().to_string(),
            ConfigSource::Embedded { label, .. } => label.clone(),
        }
    }

    /// The directory plugin files are relative to.
    pub fn base_dir(&self) -> PathBuf {
        match self {
            ConfigSource::File(p) => p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), PathBuf::from),
            ConfigSource::Embedded { .. } => PathBuf::from("."),
        }
    }

    /// Reads and validates the configuration.
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            ConfigSource::File(p) => weft_config::load(p),
            ConfigSource::Embedded { label, text } => weft_config::parse(text, label),
        }
    }
}

/// Why the proxy could not start or a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configuration could not be compiled.
    #[error("{source_label}: {error}")]
    Build {
        /// The configuration's source.
        source_label: String,
        /// What failed.
        error: BuildError,
    },
    /// A socket could not be bound.
    #[error("{what} {address}: cannot bind: {error}")]
    Bind {
        /// `listener NAME` or `admin`.
        what: String,
        /// The address.
        address: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// The certificate agent could not obtain a workload certificate.
    #[error("identity: {0}")]
    Identity(weft_tls::TlsError),
    /// The access log could not be opened.
    #[error("access_log.path {path}: {error}")]
    AccessLog {
        /// The path.
        path: String,
        /// The OS error.
        error: std::io::Error,
    },
}

/// SIGTERM, SIGINT and SIGHUP handlers; install them before starting the proxy.
#[derive(Debug)]
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside a tokio runtime).
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// A handle on the running proxy; cheap to clone.
#[derive(Clone, Debug)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    source: ConfigSource,
    generation: ArcSwap<Generation>,
    slots: tokio::sync::Mutex<HashMap<String, Arc<ListenerSlot>>>,
    addrs: std::sync::Mutex<HashMap<String, SocketAddr>>,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    next_id: AtomicU64,
    ready: AtomicBool,
    last_error: std::sync::Mutex<Option<String>>,
    admin_addr: std::sync::Mutex<Option<SocketAddr>>,
    drain_timeout: Duration,
    plugins: Arc<PluginRegistry>,
}

/// Options for [`Proxy::start`].
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Watch the configuration file and reload on change.
    pub watch: bool,
    /// Override the admin address (tests use port 0).
    pub admin_address: Option<SocketAddr>,
}

impl Proxy {
    /// Loads the configuration, binds every listener and the admin server, and starts serving.
    pub async fn start(source: ConfigSource, options: StartOptions) -> Result<Proxy, ProxyError> {
        let config = source.load()?;
        if let Some(identity) = &config.identity {
            // The workload certificate must be in place before listeners load it.
            crate::tls::start_agent(identity, &source.base_dir())
                .await
                .map_err(ProxyError::Identity)?;
        }
        let metrics = Arc::new(Metrics::new());
        let access_log =
            AccessLog::open(&config.access_log.path).map_err(|error| ProxyError::AccessLog {
                path: config.access_log.path.clone(),
                error,
            })?;
        let label = source.label();
        let plugins = Arc::new(PluginRegistry::new());
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
        let proxy = Proxy {
            inner: Arc::new(Inner {
                source,
                generation: ArcSwap::new(generation.clone()),
                slots: tokio::sync::Mutex::new(HashMap::new()),
                addrs: std::sync::Mutex::new(HashMap::new()),
                shared: Arc::new(Shared {
                    metrics,
                    access_log,
                }),
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                next_id: AtomicU64::new(2),
                ready: AtomicBool::new(false),
                last_error: std::sync::Mutex::new(None),
                admin_addr: std::sync::Mutex::new(None),
                drain_timeout,
                plugins,
            }),
        };
        proxy.publish(generation).await?;
        let admin = crate::admin::start(proxy.clone(), admin_address)
            .await
            .map_err(|error| ProxyError::Bind {
                what: "admin".into(),
                address: admin_address,
                error,
            })?;
        if let Ok(mut a) = proxy.inner.admin_addr.lock() {
            *a = Some(admin);
        }
        if options.watch
            && let ConfigSource::File(path) = &proxy.inner.source
        {
            crate::watch::spawn(proxy.clone(), path.clone());
        }
        if options.watch {
            crate::watch::spawn_plugin_watcher(proxy.clone());
        }
        proxy.inner.ready.store(true, Ordering::SeqCst);
        Ok(proxy)
    }

    /// Binds new listeners, then swaps in `generation` and points every listener at it.
    async fn publish(&self, generation: Arc<Generation>) -> Result<(), ProxyError> {
        let mut slots = self.inner.slots.lock().await;
        // 1. Bind what is new (or moved, or changed protocol) before touching anything live.
        let mut fresh = Vec::new();
        let mut replaced = Vec::new();
        for (name, lgen) in &generation.listeners {
            let keep = slots.get(name).is_some_and(|s| {
                s.configured_addr == lgen.config().address
                    && std::mem::discriminant(&*s.current()) == std::mem::discriminant(&**lgen)
            });
            if keep {
                continue;
            }
            if let Some(old) = slots.get(name) {
                // The address or protocol changed: free the old socket first if it is the same
                // address (a protocol change), so the new one can bind.
                if old.configured_addr == lgen.config().address {
                    old.stop();
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                replaced.push(name.clone());
            }
            match server::bind(lgen.clone()).await {
                Ok(bound) => fresh.push(bound),
                Err(error) => {
                    return Err(ProxyError::Bind {
                        what: format!("listener {name}"),
                        address: lgen.config().address,
                        error,
                    });
                }
            }
        }
        // 2. Publish.
        let id = generation.id;
        for (name, lgen) in &generation.listeners {
            if let Some(slot) = slots.get(name)
                && !replaced.contains(name)
            {
                slot.publish(lgen.clone());
            }
        }
        let removed: Vec<String> = slots
            .keys()
            .filter(|n| !generation.listeners.contains_key(*n) || replaced.contains(n))
            .cloned()
            .collect();
        for name in removed {
            if let Some(slot) = slots.remove(&name) {
                slot.stop();
                tracing::info!(listener = %name, "listener closed");
            }
        }
        for (slot, listener) in fresh {
            tracing::info!(listener = %slot.name, address = %slot.local_addr, "listening");
            if let Ok(mut addrs) = self.inner.addrs.lock() {
                addrs.insert(slot.name.to_string(), slot.local_addr);
            }
            slots.insert(slot.name.to_string(), slot.clone());
            server::serve(
                slot,
                listener,
                self.inner.shared.clone(),
                self.inner.tracker.clone(),
                self.inner.shutdown.clone(),
            );
        }
        if let Ok(mut addrs) = self.inner.addrs.lock() {
            addrs.retain(|n, _| generation.listeners.contains_key(n));
        }
        self.inner.plugins.set_clusters(generation.clusters.clone());
        self.inner.plugins.retain(&generation.plugin_handles());
        self.inner.generation.store(generation);
        self.inner.shared.metrics.config_generation.set(id as i64);
        Ok(())
    }

    /// Re-reads the configuration source and applies it; on any error the live generation keeps
    /// serving and the error is logged, counted and returned.
    pub async fn reload(&self) -> Result<u64, ProxyError> {
        let result = match self.inner.source.load() {
            Ok(config) => self.apply(config).await,
            Err(e) => Err(ProxyError::Config(e)),
        };
        let label = if result.is_ok() { "success" } else { "failure" };
        self.inner
            .shared
            .metrics
            .config_reload
            .get_or_create(&ResultLabels {
                result: label.into(),
            })
            .inc();
        match &result {
            Ok(id) => {
                tracing::info!(generation = id, "configuration reloaded");
                if let Ok(mut e) = self.inner.last_error.lock() {
                    *e = None;
                }
            }
            Err(e) => {
                tracing::error!("configuration rejected, the previous one keeps serving: {e}");
                if let Ok(mut last) = self.inner.last_error.lock() {
                    *last = Some(e.to_string());
                }
            }
        }
        result
    }

    /// Compiles and publishes `config` as a new generation.
    pub async fn apply(&self, config: Config) -> Result<u64, ProxyError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::SeqCst);
        let previous = self.inner.generation.load_full();
        let label = self.inner.source.label();
        let base_dir = self.inner.source.base_dir();
        let ctx = PluginContext {
            registry: &self.inner.plugins,
            base_dir: &base_dir,
            strict: true,
        };
        let generation = Generation::build(
            id,
            label.clone(),
            config,
            Some(&previous),
            &self.inner.shared.metrics,
            ctx,
        )
        .await
        .map_err(|error| ProxyError::Build {
            source_label: label,
            error,
        })?;
        self.publish(Arc::new(generation)).await?;
        Ok(id)
    }

    /// The live generation.
    pub fn generation(&self) -> Arc<Generation> {
        self.inner.generation.load_full()
    }

    /// The bound address of listener `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.inner.addrs.lock().ok()?.get(name).copied()
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        *self.inner.admin_addr.lock().ok()?
    }

    /// Metric families.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.shared.metrics
    }

    /// True once started and until draining begins.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    /// The last reload error, if the last reload failed.
    pub fn last_reload_error(&self) -> Option<String> {
        self.inner.last_error.lock().ok()?.clone()
    }

    /// Starts a graceful shutdown.
    pub fn shutdown(&self) {
        self.inner.ready.store(false, Ordering::SeqCst);
        self.inner.shutdown.cancel();
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

    /// The listeners' bound addresses by name.
    pub fn listener_addrs(&self) -> HashMap<String, SocketAddr> {
        self.inner
            .addrs
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// The plugin registry.
    pub fn plugins(&self) -> &PluginRegistry {
        &self.inner.plugins
    }

    /// Hot-swaps plugin `name` from its file (the old version keeps serving on failure).
    pub async fn reload_plugin(&self, name: &str) -> Result<usize, crate::plugins::PluginError> {
        self.inner.plugins.reload(name).await
    }

    /// The listener's generation by name (for admin).
    pub fn listener(&self, name: &str) -> Option<Arc<ListenerGen>> {
        self.generation().listeners.get(name).cloned()
    }
}
