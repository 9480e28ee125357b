//! Where the configuration comes from, and why starting or reloading can fail.

use std::net::SocketAddr;
use std::path::PathBuf;

use weft_config::{Config, ConfigError};

use crate::generation::BuildError;

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
    /// The worker runtimes (`runtime.accept: reuseport`) could not be started.
    #[error("runtime.accept reuseport: cannot start the workers: {0}")]
    Workers(std::io::Error),
    /// The certificate agent could not obtain a workload certificate.
    #[error("identity: {0}")]
    Identity(weft_tls::TlsError),
    /// The proxy is shutting down: the reload actor no longer takes requests.
    #[error("the proxy is shutting down")]
    Stopped,
    /// The access log could not be opened.
    #[error("access_log.path {path}: {error}")]
    AccessLog {
        /// The path.
        path: String,
        /// The OS error.
        error: std::io::Error,
    },
}

/// Loads every plugin of `config` as `weft run` would (read, compile, link, `on_vm_start`,
/// `on_configure` with each plugin's base configuration) and returns one line per plugin that
/// does not load, naming it and why. `weft validate --load-plugins` refuses a configuration with
/// any, as Envoy refuses to start on a Wasm filter that fails to load (`weft run` keeps serving
/// with each plugin's failure policy). Route-level configuration overrides are not loaded.
pub async fn check_plugins(config: &Config, base_dir: &std::path::Path) -> Vec<String> {
    let registry = weft_extensions::PluginRegistry::new();
    let mut errors = Vec::new();
    for plugin in &config.plugins {
        if let Err(e) = registry.resolve(base_dir, plugin, None, true).await {
            errors.push(e.to_string());
        }
    }
    errors
}
