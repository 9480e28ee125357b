//! The running proxy: the live generation, the listener sockets, the admin server, watchers,
//! and shutdown. Every change of configuration goes through the reload actor
//! ([`crate::reload`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_config::Config;
use weft_extensions::{PluginContext, PluginError, PluginRegistry};
use weft_observe::{AccessLog, Metrics};
use weft_transport::{ListenerGen, ListenerSlot, Shared};

use crate::generation::Generation;
use crate::reload::{Command, ReloadError};
use crate::signals::Signals;
use crate::source::{ConfigSource, ProxyError};

/// A handle on the running proxy; cheap to clone.
#[derive(Clone, Debug)]
pub struct Proxy {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) source: ConfigSource,
    pub(crate) generation: ArcSwap<Generation>,
    /// Listener slots by name; only the reload actor changes them.
    pub(crate) slots: Mutex<HashMap<String, Arc<ListenerSlot>>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    ready: AtomicBool,
    pub(crate) last_error: Mutex<Option<String>>,
    admin_addr: Mutex<Option<SocketAddr>>,
    drain_timeout: Duration,
    pub(crate) plugins: Arc<PluginRegistry>,
    pub(crate) commands: tokio::sync::mpsc::Sender<Command>,
}

/// Options for [`Proxy::start`].
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Watch the configuration file and the plugin files, and reload on change.
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
            crate::identity::start_agent(identity, &source.base_dir())
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
        let (commands, inbox) = tokio::sync::mpsc::channel(64);
        let proxy = Proxy {
            inner: Arc::new(Inner {
                source,
                generation: ArcSwap::new(generation.clone()),
                slots: Mutex::new(HashMap::new()),
                shared: Arc::new(Shared {
                    metrics,
                    http: Arc::new(weft_http::Shared { access_log }),
                }),
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                ready: AtomicBool::new(false),
                last_error: Mutex::new(None),
                admin_addr: Mutex::new(None),
                drain_timeout,
                plugins,
                commands,
            }),
        };
        crate::reload::publish(&proxy, generation).await?;
        crate::reload::spawn_actor(proxy.clone(), inbox);
        let api: Arc<dyn weft_admin::AdminApi> = Arc::new(crate::admin_api::Api(proxy.clone()));
        let admin = weft_admin::start(api, admin_address)
            .await
            .map_err(|error| ProxyError::Bind {
                what: "admin".into(),
                address: admin_address,
                error,
            })?;
        *proxy.inner.admin_addr.lock() = Some(admin);
        if options.watch {
            crate::watch::spawn(&proxy);
        }
        proxy.inner.ready.store(true, Ordering::SeqCst);
        Ok(proxy)
    }

    async fn command<T>(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> Command,
        closed: T,
    ) -> T {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.inner.commands.send(make(tx)).await.is_err() {
            return closed;
        }
        rx.await.unwrap_or(closed)
    }

    /// Re-reads the configuration source and applies it (through the reload actor); on any
    /// error the live generation keeps serving and the error is logged, counted and returned.
    pub async fn reload(&self) -> Result<u64, ReloadError> {
        self.command(
            |reply| Command::Reload { reply },
            Err(ReloadError::stopped()),
        )
        .await
    }

    /// Compiles and publishes `config` as a new generation (through the reload actor).
    pub async fn apply(&self, config: Config) -> Result<u64, ReloadError> {
        self.command(
            |reply| Command::Apply {
                config: Box::new(config),
                reply,
            },
            Err(ReloadError::stopped()),
        )
        .await
    }

    /// Hot-swaps plugin `name` from its file (through the reload actor; the old version keeps
    /// serving on failure).
    pub async fn reload_plugin(&self, name: &str) -> Result<usize, Arc<PluginError>> {
        self.command(
            |reply| Command::Plugin {
                name: name.to_owned(),
                reply,
            },
            Ok(0),
        )
        .await
    }

    /// The live generation.
    pub fn generation(&self) -> Arc<Generation> {
        self.inner.generation.load_full()
    }

    /// The bound address of listener `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.inner.slots.lock().get(name).map(|s| s.local_addr)
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        *self.inner.admin_addr.lock()
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
        self.inner.last_error.lock().clone()
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
            .slots
            .lock()
            .iter()
            .map(|(n, s)| (n.clone(), s.local_addr))
            .collect()
    }

    /// The plugin registry.
    pub fn plugins(&self) -> &PluginRegistry {
        &self.inner.plugins
    }

    /// The listener's generation by name (for admin).
    pub fn listener(&self, name: &str) -> Option<Arc<ListenerGen>> {
        self.generation().listeners.get(name).cloned()
    }
}
