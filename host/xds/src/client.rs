//! The ADS session: one bidirectional gRPC stream carrying CDS, EDS, LDS and RDS
//! (state of the world), with ACK/NACK, warming-ordered subscriptions, and reconnection with
//! jittered exponential back-off. Accepted resources outlive a stream: while disconnected the
//! last good configuration keeps serving, and on reconnection the versions held are sent so the
//! control plane can tell what this proxy has.
//!
//! Every response is translated, composed with the file's resources and published through the
//! proxy's reload actor ([`weft_proxy::Proxy::apply_dynamic`]) before it is ACKed; a response
//! that fails any step is NACKed with the reason as `error_detail`, and nothing of it is kept.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use weft_config::xds::{Xds, XdsApiType};
use weft_proxy::Proxy;

use crate::resources::Kind;
use crate::status::Status;
use crate::store::Store;
use crate::translate::tls::SDS_PREFIX;
use crate::translate::wasm::REMOTE_PREFIX;

/// gRPC `INVALID_ARGUMENT`, the code Envoy puts in a NACK's `error_detail`.
pub(crate) const INVALID_ARGUMENT: i32 = 3;

/// Per type: what was accepted, and what this stream has seen and asked for.
#[derive(Debug, Default, Clone)]
struct Subscription {
    /// The last accepted `version_info` (kept across streams).
    version: String,
    /// The last nonce received on this stream.
    nonce: String,
    /// Resource names asked for (empty: wildcard, for LDS and CDS).
    names: Vec<String>,
    /// A request was sent on this stream.
    sent: bool,
}

/// The client's state across streams.
pub(crate) struct Client {
    pub proxy: Proxy,
    pub config: Xds,
    pub endpoint: String,
    pub node: Node,
    pub status: Arc<Status>,
    /// mTLS to the control plane (the `xds.cluster`'s `tls`).
    pub tls: Option<Arc<weft_upstream::tls::UpstreamTls>>,
    pub(crate) store: Store,
    subs: BTreeMap<Kind, Subscription>,
    /// Incremental (delta) subscriptions, kept across streams.
    pub(crate) delta: BTreeMap<Kind, crate::subscription::DeltaSubscription>,
    /// What was last published (so an unchanged composition is not published again).
    published: Option<weft_config::DynamicResources>,
    /// Remote Wasm code fetched and checked: SHA-256 → cached file.
    fetched: std::collections::HashMap<String, String>,
}

/// Why a response was not accepted.
pub(crate) enum Refused {
    /// Invalid, or refused by the reload actor: NACKed with this message.
    Invalid(String),
    /// The proxy is shutting down.
    Stopped,
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("connect to {0}: {1}")]
    Connect(String, tonic::transport::Error),
    #[error("stream: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("the control plane closed the stream")]
    Closed,
    #[error("the proxy is shutting down")]
    Stopped,
}

impl Client {
    pub(crate) fn new(
        proxy: Proxy,
        config: Xds,
        endpoint: String,
        node: Node,
        status: Arc<Status>,
        tls: Option<Arc<weft_upstream::tls::UpstreamTls>>,
    ) -> Client {
        Client {
            proxy,
            config,
            endpoint,
            node,
            status,
            tls,
            store: Store::default(),
            subs: BTreeMap::new(),
            delta: BTreeMap::new(),
            published: None,
            fetched: std::collections::HashMap::new(),
        }
    }

    /// Runs streams forever, reconnecting with jittered exponential back-off.
    pub(crate) async fn run(mut self) {
        let mut failures: u32 = 0;
        loop {
            let result = match self.config.api_type {
                XdsApiType::Grpc => self.stream(&mut failures).await,
                XdsApiType::DeltaGrpc => self.delta_stream(&mut failures).await,
            };
            self.status.connected(false);
            match result {
                Err(StreamError::Stopped) => return,
                Err(e) => tracing::warn!(control_plane = %self.endpoint, "xds: {e}; reconnecting"),
                Ok(()) => {}
            }
            failures = failures.saturating_add(1);
            tokio::time::sleep(backoff(
                self.config.reconnect_base,
                self.config.reconnect_max,
                failures,
            ))
            .await;
        }
    }

    /// The gRPC client of the control plane.
    pub(crate) async fn connect(
        &self,
    ) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>, StreamError> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.endpoint))
            .map_err(|e| StreamError::Connect(self.endpoint.clone(), e))?
            .connect_timeout(Duration::from_secs(5));
        let channel = match &self.tls {
            None => endpoint.connect().await,
            Some(tls) => {
                endpoint
                    .connect_with_connector(crate::tls::Connector {
                        address: self.endpoint.clone(),
                        tls: tls.clone(),
                    })
                    .await
            }
        }
        .map_err(|e| StreamError::Connect(self.endpoint.clone(), e))?;
        Ok(AggregatedDiscoveryServiceClient::new(channel))
    }

    /// One ADS stream, until it fails.
    async fn stream(&mut self, failures: &mut u32) -> Result<(), StreamError> {
        let mut grpc = self.connect().await?;
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
        for sub in self.subs.values_mut() {
            sub.nonce.clear();
            sub.sent = false;
        }
        // CDS first; on a reconnection, everything held so far, with its version.
        self.subscribe(&tx, Kind::Cluster, Vec::new()).await?;
        if !self.store.clusters.is_empty() || self.subs.contains_key(&Kind::Listener) {
            self.follow_up(&tx).await?;
        }
        let response = grpc
            .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?;
        let mut inbound = response.into_inner();
        self.status.connected(true);
        tracing::info!(control_plane = %self.endpoint, "xds: connected");
        while let Some(message) = inbound.next().await {
            let response = message?;
            *failures = 0;
            self.on_response(&tx, response).await?;
        }
        Err(StreamError::Closed)
    }

    /// Sends a request for `kind` with `names`, the accepted version and the last nonce.
    async fn subscribe(
        &mut self,
        tx: &mpsc::Sender<DiscoveryRequest>,
        kind: Kind,
        names: Vec<String>,
    ) -> Result<(), StreamError> {
        let sub = self.subs.entry(kind).or_default();
        sub.names = names;
        sub.sent = true;
        let request = DiscoveryRequest {
            version_info: sub.version.clone(),
            node: Some(self.node.clone()),
            resource_names: sub.names.clone(),
            type_url: kind.type_url().into(),
            response_nonce: sub.nonce.clone(),
            error_detail: None,
            ..DiscoveryRequest::default()
        };
        tx.send(request).await.map_err(|_| StreamError::Closed)
    }

    /// Subscriptions that follow from what is held: EDS for the clusters' assignments, LDS once
    /// every cluster is warm, RDS for the listeners' route configurations.
    async fn follow_up(&mut self, tx: &mpsc::Sender<DiscoveryRequest>) -> Result<(), StreamError> {
        let sds: Vec<String> = self.store.sds_names().into_iter().collect();
        let sds_sub = self.subs.get(&Kind::Secret);
        if !sds.is_empty() && sds_sub.is_none_or(|s| !s.sent || s.names != sds) {
            self.subscribe(tx, Kind::Secret, sds).await?;
        }
        let eds: Vec<String> = self.store.eds_names().into_iter().collect();
        let eds_sub = self.subs.get(&Kind::Endpoint);
        if !eds.is_empty() && eds_sub.is_none_or(|s| !s.sent || s.names != eds) {
            self.subscribe(tx, Kind::Endpoint, eds).await?;
        }
        let lds_sent = self.subs.get(&Kind::Listener).is_some_and(|s| s.sent);
        if !lds_sent && self.store.clusters_warm() {
            self.subscribe(tx, Kind::Listener, Vec::new()).await?;
        }
        let rds: Vec<String> = self.store.rds_names().into_iter().collect();
        let rds_sub = self.subs.get(&Kind::Route);
        if !rds.is_empty() && rds_sub.is_none_or(|s| !s.sent || s.names != rds) {
            self.subscribe(tx, Kind::Route, rds).await?;
        }
        let ecds: Vec<String> = self.store.ecds_names().into_iter().collect();
        let ecds_sub = self.subs.get(&Kind::Extension);
        if !ecds.is_empty() && ecds_sub.is_none_or(|s| !s.sent || s.names != ecds) {
            self.subscribe(tx, Kind::Extension, ecds).await?;
        }
        Ok(())
    }

    async fn on_response(
        &mut self,
        tx: &mpsc::Sender<DiscoveryRequest>,
        response: DiscoveryResponse,
    ) -> Result<(), StreamError> {
        let Some(kind) = Kind::from_type_url(&response.type_url) else {
            let error = format!("resource type `{}` is unimplemented", response.type_url);
            self.status
                .rejected(None, &response.type_url, &response.nonce, &error);
            let nack = DiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: response.type_url.clone(),
                response_nonce: response.nonce.clone(),
                error_detail: Some(RpcStatus {
                    code: INVALID_ARGUMENT,
                    message: error,
                    details: Vec::new(),
                }),
                ..DiscoveryRequest::default()
            };
            return tx.send(nack).await.map_err(|_| StreamError::Closed);
        };
        let sub = self.subs.entry(kind).or_default();
        sub.nonce = response.nonce.clone();
        match self.accept(kind, &response).await {
            Err(Refused::Stopped) => Err(StreamError::Stopped),
            Ok(()) => {
                let sub = self.subs.entry(kind).or_default();
                sub.version = response.version_info.clone();
                let names = match kind {
                    Kind::Cluster => self.store.clusters.keys().cloned().collect(),
                    Kind::Secret => self.store.secrets.keys().cloned().collect(),
                    Kind::Endpoint => self.store.endpoints.keys().cloned().collect(),
                    Kind::Listener => self.store.listeners.keys().cloned().collect(),
                    Kind::Route => self.store.routes.keys().cloned().collect(),
                    Kind::Extension => self.store.extensions.keys().cloned().collect(),
                };
                self.status
                    .accepted(kind, &response.version_info, &response.nonce, names);
                let names = sub.names.clone();
                self.subscribe(tx, kind, names).await?; // the ACK
                self.follow_up(tx).await
            }
            Err(Refused::Invalid(error)) => {
                tracing::warn!(type_url = %response.type_url, version = %response.version_info,
                    "xds: rejected, the last good configuration keeps serving: {error}");
                self.status
                    .rejected(Some(kind), kind.type_url(), &response.nonce, &error);
                let sub = self.subs.entry(kind).or_default();
                let nack = DiscoveryRequest {
                    version_info: sub.version.clone(),
                    node: Some(self.node.clone()),
                    resource_names: sub.names.clone(),
                    type_url: kind.type_url().into(),
                    response_nonce: response.nonce.clone(),
                    error_detail: Some(RpcStatus {
                        code: INVALID_ARGUMENT,
                        message: error,
                        details: Vec::new(),
                    }),
                    ..DiscoveryRequest::default()
                };
                tx.send(nack).await.map_err(|_| StreamError::Closed)
            }
        }
    }

    /// Translates, composes and publishes one response; on success the store moves on.
    async fn accept(&mut self, kind: Kind, response: &DiscoveryResponse) -> Result<(), Refused> {
        if self.store.unchanged(kind, &response.resources) {
            // What is held, byte for byte (a resend after a change of another type, or on
            // reconnection): nothing to translate or publish.
            return Ok(());
        }
        let next = self
            .store
            .with(kind, &response.resources)
            .map_err(Refused::Invalid)?;
        self.publish(kind, next, &response.version_info).await
    }

    /// Composes `next` with the file's resources and publishes it through the reload actor
    /// (unless the composition is unchanged); on success `next` becomes the store.
    pub(crate) async fn publish(
        &mut self,
        kind: Kind,
        mut next: Store,
        version: &str,
    ) -> Result<(), Refused> {
        if kind == Kind::Endpoint
            && self.published.is_some()
            && let Some(changes) = self.store.endpoint_changes(&next)
        {
            return self.publish_endpoints(next, changes, version).await;
        }
        let statics: HashSet<String> = self
            .proxy
            .file_config()
            .clusters
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let mut composed = next.compose(&statics);
        self.fetch_remote_code(&mut composed)
            .await
            .map_err(Refused::Invalid)?;
        self.write_secrets(&mut composed)
            .map_err(Refused::Invalid)?;
        if self.published.as_ref() != Some(&composed.resources) {
            match self.proxy.apply_dynamic(composed.resources.clone()).await {
                Ok(generation) => {
                    tracing::info!(
                        generation,
                        type_url = kind.type_url(),
                        version,
                        "xds: update published"
                    );
                }
                Err(e) if matches!(*e.0, weft_proxy::ProxyError::Stopped) => {
                    return Err(Refused::Stopped);
                }
                Err(e) => return Err(Refused::Invalid(e.to_string())),
            }
            self.published = Some(composed.resources.clone());
        }
        next.mark_live(&composed.resources);
        self.status.warming(composed.warming);
        self.store = next;
        Ok(())
    }
}

impl Client {
    /// An EDS update that changes only live clusters' endpoint lists: the lists are swapped
    /// in place by the reload actor ([`Proxy::apply_endpoints`]: checked, then each cluster's
    /// endpoint set replaced, no listener or route rebuilt), as Envoy updates one cluster's
    /// host set. Refused like any update (NACK, nothing kept) if a list is invalid.
    async fn publish_endpoints(
        &mut self,
        mut next: Store,
        changes: Vec<(String, Vec<weft_config::schema::Endpoint>)>,
        version: &str,
    ) -> Result<(), Refused> {
        if !changes.is_empty() {
            match self.proxy.apply_endpoints(changes.clone()).await {
                Ok(generation) => {
                    tracing::info!(
                        generation,
                        clusters = changes.len(),
                        version,
                        "xds: endpoints updated in place"
                    );
                }
                Err(e) if matches!(*e.0, weft_proxy::ProxyError::Stopped) => {
                    return Err(Refused::Stopped);
                }
                Err(e) => return Err(Refused::Invalid(e.to_string())),
            }
            if let Some(published) = &mut self.published {
                let index: std::collections::HashMap<&str, usize> = changes
                    .iter()
                    .enumerate()
                    .map(|(i, (n, _))| (n.as_str(), i))
                    .collect();
                for c in &mut published.clusters {
                    if let Some(&i) = index.get(c.name.as_str()) {
                        c.endpoints = changes[i].1.clone();
                    }
                }
            }
        }
        next.patch_live_endpoints(&changes);
        self.store = next;
        Ok(())
    }

    /// Writes the SDS secrets the composition uses under `xds.secrets_dir` (only files whose
    /// content changed, atomically; keys mode 0600) and points the TLS paths at them. A new
    /// version of a secret rewrites its files, which Weft's certificate watcher takes.
    fn write_secrets(&self, composed: &mut crate::store::Composed) -> Result<(), String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if composed.secrets.is_empty() {
            return Ok(());
        }
        let dir = self.config.secrets_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("weft-xds-secrets-{}", std::process::id()))
        });
        for (name, files) in &composed.secrets {
            let sdir = dir.join(name);
            std::fs::create_dir_all(&sdir)
                .map_err(|e| format!("secret \"{name}\": {}: {e}", sdir.display()))?;
            for (file, bytes) in files {
                let path = sdir.join(file);
                if std::fs::read(&path).is_ok_and(|have| have == *bytes) {
                    continue;
                }
                let tmp = sdir.join(format!(".{file}.{}.tmp", fastrand::u64(..)));
                let write = || -> std::io::Result<()> {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    f.write_all(bytes)?;
                    f.sync_all()?;
                    std::fs::rename(&tmp, &path)
                };
                write().map_err(|e| format!("secret \"{name}\": {}: {e}", path.display()))?;
            }
        }
        let real = |p: &mut String| {
            if let Some(rest) = p.strip_prefix(SDS_PREFIX) {
                *p = dir.join(rest).to_string_lossy().into_owned();
            }
        };
        for c in &mut composed.resources.clusters {
            if let Some(t) = &mut c.tls {
                real(&mut t.cert_file);
                real(&mut t.key_file);
                real(&mut t.trust_bundle_file);
            }
        }
        for l in &mut composed.resources.listeners {
            if let Some(t) = &mut l.tls {
                real(&mut t.cert_file);
                real(&mut t.key_file);
                real(&mut t.trust_bundle_file);
            }
        }
        Ok(())
    }

    /// Points every plugin whose code is remote at its cached file, fetching what is missing.
    async fn fetch_remote_code(
        &mut self,
        composed: &mut crate::store::Composed,
    ) -> Result<(), String> {
        let dir = self
            .config
            .wasm_cache_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("weft-xds-wasm"));
        let file = self.proxy.file_config();
        for i in 0..composed.resources.plugins.len() {
            let plugin = &composed.resources.plugins[i];
            let Some(sha) = plugin.file.strip_prefix(REMOTE_PREFIX) else {
                continue;
            };
            if let Some(path) = self.fetched.get(sha) {
                composed.resources.plugins[i].file = path.clone();
                continue;
            }
            let Some(remote) = composed.remotes.get(sha) else {
                return Err(format!(
                    "plugin `{}`: no remote source for {sha}",
                    plugin.name
                ));
            };
            let address = composed
                .resources
                .clusters
                .iter()
                .chain(file.clusters.iter())
                .find(|c| c.name == remote.cluster)
                .and_then(|c| c.endpoints.first())
                .map(|e| e.address.clone())
                .ok_or_else(|| {
                    format!(
                        "{}.http_uri.cluster: `{}` is not a known cluster with an endpoint",
                        remote.path, remote.cluster
                    )
                })?;
            let path = crate::remote::ensure(&dir, remote, &address)
                .await?
                .to_string_lossy()
                .into_owned();
            self.fetched.insert(sha.to_owned(), path.clone());
            composed.resources.plugins[i].file = path;
        }
        Ok(())
    }
}

/// The delay before reconnection attempt `failures` (1-based): exponential from `base`, capped
/// at `max`, with full jitter over its upper half so that proxies restarted together spread out.
pub(crate) fn backoff(base: Duration, max: Duration, failures: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let cap = exp.min(max);
    cap / 2 + cap.mul_f64(fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..100 {
            let first = backoff(base, max, 1);
            assert!(
                first >= Duration::from_millis(50) && first <= base,
                "{first:?}"
            );
            let third = backoff(base, max, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff(base, max, 30);
            assert!(late >= Duration::from_secs(1) && late <= max, "{late:?}");
        }
    }
}
