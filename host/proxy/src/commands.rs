//! What can be asked of the reload actor, and how a refused reload is reported.

use std::sync::Arc;

use tokio::sync::oneshot;
use weft_config::Config;
use weft_extensions::PluginError;

use crate::source::ProxyError;

/// A refused reload (shared by every request coalesced into it).
#[derive(Debug, Clone)]
pub struct ReloadError(pub Arc<ProxyError>);

impl ReloadError {
    pub(crate) fn stopped() -> ReloadError {
        ReloadError(Arc::new(ProxyError::Stopped))
    }
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ReloadError {}

/// A request to the reload actor.
#[derive(Debug)]
pub(crate) enum Command {
    /// Re-read the configuration source and apply it.
    Reload {
        reply: oneshot::Sender<Result<u64, ReloadError>>,
    },
    /// Apply this configuration.
    Apply {
        config: Box<Config>,
        reply: oneshot::Sender<Result<u64, ReloadError>>,
    },
    /// Replace the dynamic (xDS) listeners and clusters, composed with the file's.
    Dynamic {
        resources: Box<weft_config::DynamicResources>,
        reply: oneshot::Sender<Result<u64, ReloadError>>,
    },
    /// Replace the endpoints of these dynamic clusters in place (xDS EDS updates).
    Endpoints {
        changes: Vec<(String, Vec<weft_config::schema::Endpoint>)>,
        reply: oneshot::Sender<Result<u64, ReloadError>>,
    },
    /// Hot-swap every variant of plugin `name` from its file.
    Plugin {
        name: String,
        reply: oneshot::Sender<Result<usize, Arc<PluginError>>>,
    },
}
