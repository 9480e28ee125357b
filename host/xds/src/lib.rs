//! Weft as an xDS client: an ADS stream to a control plane (Istio's istiod, or any
//! go-control-plane / java-control-plane server), whose clusters, endpoints, listeners and
//! routes are translated into Weft's configuration model ([`translate`]), composed with the
//! file's static resources and published through the proxy's one reload actor, exactly like a
//! file reload: validated as a whole, compiled, bound, swapped atomically, or refused with the
//! last good configuration still serving.
//!
//! The bootstrap is the `xds:` section of the file ([`weft_config::xds::Xds`]). What is
//! implemented, and every field read or ignored, is in `docs/xds.md`.
#![forbid(unsafe_code)]

mod client;
mod delta;
mod fields;
pub mod node;
mod remote;
pub mod resources;
mod status;
mod store;
mod subscription;
mod tls;
mod translate;

use std::sync::Arc;

pub use status::Status;
use weft_proxy::Proxy;

/// Why the client could not start.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The `xds.cluster` has no endpoint to dial.
    #[error("xds.cluster `{0}`: no endpoint")]
    NoEndpoint(String),
    /// The `xds.cluster`'s TLS material could not be loaded.
    #[error("xds.cluster `{0}`: tls: {1}")]
    Tls(String, String),
}

/// The running client; dropping it stops the stream (the configuration it set keeps serving).
#[derive(Debug)]
pub struct XdsClient {
    task: tokio::task::JoinHandle<()>,
    status: Arc<Status>,
}

impl XdsClient {
    /// The client's status (also in `/config_dump` under `dynamic`).
    pub fn status(&self) -> &Arc<Status> {
        &self.status
    }
}

impl Drop for XdsClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the xDS client when the proxy's file has an `xds` section.
pub fn start(proxy: &Proxy) -> Result<Option<XdsClient>, XdsError> {
    let file = proxy.file_config();
    let Some(config) = file.xds.clone() else {
        return Ok(None);
    };
    // Validation guarantees the cluster exists and speaks h2.
    let endpoint = file
        .clusters
        .iter()
        .find(|c| c.name == config.cluster)
        .and_then(|c| c.endpoints.first())
        .map(|e| e.address.clone())
        .ok_or_else(|| XdsError::NoEndpoint(config.cluster.clone()))?;
    // Validation guarantees absolute paths for the control plane's TLS files.
    let tls = file
        .clusters
        .iter()
        .find(|c| c.name == config.cluster)
        .and_then(|c| c.tls.as_ref())
        .map(|t| {
            weft_upstream::tls::UpstreamTls::build(
                t,
                weft_config::schema::UpstreamProtocol::Http2,
                std::path::Path::new("/"),
            )
        })
        .transpose()
        .map_err(|e| XdsError::Tls(config.cluster.clone(), e.to_string()))?;
    let node = node::node(&config.node, std::env::vars());
    let status = Arc::new(Status::new(
        endpoint.clone(),
        config.node.id.clone(),
        proxy.metrics().xds.clone(),
    ));
    proxy.set_dynamic_status(status.clone());
    let client = client::Client::new(proxy.clone(), config, endpoint, node, status.clone(), tls);
    let task = tokio::spawn(client.run());
    Ok(Some(XdsClient { task, status }))
}
