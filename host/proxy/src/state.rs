//! The proxy's shared state: the live generation, listener slots, metrics, plugins, and the
//! reload actor's inbox. The reload actor, the admin API and the watchers work on it; the
//! public [`crate::Proxy`] handle wraps it.

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
use weft_extensions::{PluginError, PluginRegistry};
use weft_observe::Metrics;
use weft_transport::{Acceptors, ListenerGen, ListenerSlot, Shared};

use crate::commands::{Command, ReloadError};
use crate::generation::Generation;
use crate::source::ConfigSource;

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) source: ConfigSource,
    pub(crate) generation: ArcSwap<Generation>,
    /// Listener slots by name; only the reload actor changes them.
    pub(crate) slots: Mutex<HashMap<String, Arc<ListenerSlot>>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) tracker: TaskTracker,
    /// Where listeners are accepted (fixed at start).
    pub(crate) acceptors: Acceptors,
    pub(crate) shutdown: CancellationToken,
    pub(crate) ready: AtomicBool,
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) admin_addr: Mutex<Option<SocketAddr>>,
    /// The sidecar ports' bound addresses: `health`, `prometheus`, `merged`.
    pub(crate) sidecar_addrs: Mutex<HashMap<&'static str, SocketAddr>>,
    pub(crate) drain_timeout: Duration,
    pub(crate) plugins: Arc<PluginRegistry>,
    pub(crate) commands: tokio::sync::mpsc::Sender<Command>,
    /// The file's half of the live configuration (what a dynamic update is composed with).
    pub(crate) file_config: Mutex<Arc<Config>>,
    /// The dynamic (xDS) half of the live configuration.
    pub(crate) dynamic: Mutex<Arc<weft_config::DynamicResources>>,
    /// What a dynamic source shows in `/config_dump` (its resources, versions, errors).
    pub(crate) dynamic_status: Mutex<Option<Arc<dyn crate::dynamic::DynamicStatus>>>,
    /// The id of the last published generation (watchers follow it).
    pub(crate) published: tokio::sync::watch::Sender<u64>,
}

impl State {
    async fn command<T>(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> Command,
        closed: T,
    ) -> T {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.commands.send(make(tx)).await.is_err() {
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
        self.generation.load_full()
    }

    /// The bound address of listener `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.slots.lock().get(name).map(|s| s.local_addr)
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        *self.admin_addr.lock()
    }

    /// Metric families.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// True once started and until draining begins.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The last reload error, if the last reload failed.
    pub fn last_reload_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    /// Starts a graceful shutdown.
    pub fn shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
        self.shutdown.cancel();
    }

    /// The listeners' bound addresses by name.
    pub fn listener_addrs(&self) -> HashMap<String, SocketAddr> {
        self.slots
            .lock()
            .iter()
            .map(|(n, s)| (n.clone(), s.local_addr))
            .collect()
    }

    /// The plugin registry.
    pub fn plugins(&self) -> &PluginRegistry {
        &self.plugins
    }

    /// The listener's generation by name (for admin).
    pub fn listener(&self, name: &str) -> Option<Arc<ListenerGen>> {
        self.generation().listeners.get(name).cloned()
    }
}
