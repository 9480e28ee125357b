//! Dynamic configuration (xDS): listeners and clusters from a control plane, composed with the
//! file's static ones and published through the same reload actor as a file reload.
//!
//! The actor keeps both halves of the live configuration: a file reload is composed with the
//! last accepted dynamic resources, and a dynamic update with the last accepted file. Either
//! half is replaced only when the composed configuration validates, compiles and binds.

use std::sync::Arc;

use weft_config::DynamicResources;

use crate::commands::{Command, ReloadError};
use crate::proxy::Proxy;

/// What a dynamic source shows under `dynamic` in `/config_dump`.
pub trait DynamicStatus: Send + Sync + std::fmt::Debug {
    /// Its resources, versions, last update times and last error, as JSON.
    fn dump(&self) -> serde_json::Value;
}

impl Proxy {
    /// Replaces the dynamic listeners and clusters (through the reload actor). On error the
    /// live generation, and the previous dynamic resources, keep serving.
    pub async fn apply_dynamic(&self, resources: DynamicResources) -> Result<u64, ReloadError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let command = Command::Dynamic {
            resources: Box::new(resources),
            reply: tx,
        };
        if self.inner.commands.send(command).await.is_err() {
            return Err(ReloadError::stopped());
        }
        rx.await.unwrap_or_else(|_| Err(ReloadError::stopped()))
    }

    /// Shows `status` in `/config_dump` (under `dynamic`).
    pub fn set_dynamic_status(&self, status: Arc<dyn DynamicStatus>) {
        *self.inner.dynamic_status.lock() = Some(status);
    }

    /// The file's half of the live configuration (the `xds` bootstrap lives there).
    pub fn file_config(&self) -> Arc<weft_config::Config> {
        self.inner.file_config.lock().clone()
    }
}
