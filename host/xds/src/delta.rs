//! Incremental ADS (`DeltaAggregatedResources`, Envoy's `api_type: DELTA_GRPC`): responses carry
//! only the resources that changed and the names of those removed. CDS and LDS are wildcard
//! subscriptions; EDS and RDS subscribe to the names the clusters and listeners need, and
//! unsubscribe from those no longer needed, as the store changes. On reconnection the versions
//! of the resources held are sent (`initial_resource_versions`) so the control plane sends only
//! what changed meanwhile.
//!
//! Every response goes through the same translation, composition and reload-actor publish as a
//! state-of-the-world one ([`Client::publish`]), is ACKed (its nonce, no error) once published,
//! or NACKed with the reason as `error_detail`, keeping nothing of it.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::client::{Client, INVALID_ARGUMENT, Refused, StreamError};
use crate::resources::Kind;

impl Client {
    /// One incremental ADS stream, until it fails.
    pub(crate) async fn delta_stream(&mut self, failures: &mut u32) -> Result<(), StreamError> {
        let mut grpc = self.connect().await?;
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
        for sub in self.delta.values_mut() {
            sub.sent = false;
        }
        self.delta_wildcard(&tx, Kind::Cluster).await?;
        if !self.store.clusters.is_empty() || self.delta.contains_key(&Kind::Listener) {
            self.delta_follow_up(&tx).await?;
        }
        let response = grpc
            .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?;
        let mut inbound = response.into_inner();
        self.status.connected(true);
        tracing::info!(control_plane = %self.endpoint, "xds: connected (delta)");
        while let Some(message) = inbound.next().await {
            let response = message?;
            *failures = 0;
            self.on_delta(&tx, response).await?;
        }
        Err(StreamError::Closed)
    }

    /// Subscribes to every resource of `kind` (CDS, LDS), with the versions held.
    async fn delta_wildcard(
        &mut self,
        tx: &mpsc::Sender<DeltaDiscoveryRequest>,
        kind: Kind,
    ) -> Result<(), StreamError> {
        let sub = self.delta.entry(kind).or_default();
        sub.sent = true;
        let request = DeltaDiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: kind.type_url().into(),
            initial_resource_versions: sub.versions.clone().into_iter().collect(),
            ..DeltaDiscoveryRequest::default()
        };
        tx.send(request).await.map_err(|_| StreamError::Closed)
    }

    /// Brings the named subscription of `kind` (EDS, RDS) to `wanted`: the first request of a
    /// stream subscribes to all of it (with the versions held), later ones to what changed.
    async fn delta_names(
        &mut self,
        tx: &mpsc::Sender<DeltaDiscoveryRequest>,
        kind: Kind,
        wanted: BTreeSet<String>,
    ) -> Result<(), StreamError> {
        let sub = self.delta.entry(kind).or_default();
        let (subscribe, unsubscribe): (Vec<String>, Vec<String>) = if sub.sent {
            (
                wanted.difference(&sub.names).cloned().collect(),
                sub.names.difference(&wanted).cloned().collect(),
            )
        } else {
            // An empty first request would be a wildcard subscription: wait for a name.
            (wanted.iter().cloned().collect(), Vec::new())
        };
        if subscribe.is_empty() && unsubscribe.is_empty() {
            return Ok(());
        }
        let initial = if sub.sent {
            Default::default()
        } else {
            sub.versions
                .iter()
                .filter(|(n, _)| wanted.contains(*n))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect()
        };
        for gone in &unsubscribe {
            sub.versions.remove(gone);
        }
        sub.sent = true;
        sub.names = wanted;
        let request = DeltaDiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: kind.type_url().into(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            initial_resource_versions: initial,
            ..DeltaDiscoveryRequest::default()
        };
        tx.send(request).await.map_err(|_| StreamError::Closed)
    }

    /// Subscriptions that follow from what is held, in Envoy's warming order: EDS for the
    /// clusters' assignments, LDS once every cluster is warm, RDS for the listeners' routes.
    async fn delta_follow_up(
        &mut self,
        tx: &mpsc::Sender<DeltaDiscoveryRequest>,
    ) -> Result<(), StreamError> {
        let sds = self.store.sds_names();
        self.delta_names(tx, Kind::Secret, sds).await?;
        let eds = self.store.eds_names();
        self.delta_names(tx, Kind::Endpoint, eds).await?;
        let lds_sent = self.delta.get(&Kind::Listener).is_some_and(|s| s.sent);
        if !lds_sent && self.store.clusters_warm() {
            self.delta_wildcard(tx, Kind::Listener).await?;
        }
        let rds = self.store.rds_names();
        self.delta_names(tx, Kind::Route, rds).await?;
        let ecds = self.store.ecds_names();
        self.delta_names(tx, Kind::Extension, ecds).await
    }

    async fn on_delta(
        &mut self,
        tx: &mpsc::Sender<DeltaDiscoveryRequest>,
        response: DeltaDiscoveryResponse,
    ) -> Result<(), StreamError> {
        let node = self.node.clone();
        let nack = |type_url: &str, message: String| DeltaDiscoveryRequest {
            node: Some(node.clone()),
            type_url: type_url.into(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
            ..DeltaDiscoveryRequest::default()
        };
        let Some(kind) = Kind::from_type_url(&response.type_url) else {
            let error = format!("resource type `{}` is unimplemented", response.type_url);
            self.status
                .rejected(None, &response.type_url, &response.nonce, &error);
            let request = nack(&response.type_url, error);
            return tx.send(request).await.map_err(|_| StreamError::Closed);
        };
        let result = match delta_parts(&response) {
            Err(e) => Err(Refused::Invalid(e)),
            // What is held, byte for byte: nothing to translate or publish.
            Ok(parts)
                if self
                    .store
                    .unchanged_delta(kind, &parts.added, &parts.removed) =>
            {
                Ok(parts)
            }
            Ok(parts) => match self.store.with_delta(kind, &parts.added, &parts.removed) {
                Err(e) => Err(Refused::Invalid(e)),
                Ok(next) => self
                    .publish(kind, next, &response.system_version_info)
                    .await
                    .map(|()| parts),
            },
        };
        match result {
            Err(Refused::Stopped) => Err(StreamError::Stopped),
            Err(Refused::Invalid(error)) => {
                tracing::warn!(type_url = %response.type_url, version = %response.system_version_info,
                    "xds: delta update rejected, the last good configuration keeps serving: {error}");
                self.status
                    .rejected(Some(kind), kind.type_url(), &response.nonce, &error);
                let request = nack(kind.type_url(), error);
                tx.send(request).await.map_err(|_| StreamError::Closed)
            }
            Ok(parts) => {
                let sub = self.delta.entry(kind).or_default();
                for name in &parts.removed {
                    sub.versions.remove(name);
                }
                for ((name, _), version) in parts.added.iter().zip(parts.versions) {
                    sub.versions.insert(name.clone(), version);
                }
                let names = match kind {
                    Kind::Cluster => self.store.clusters.keys().cloned().collect(),
                    Kind::Secret => self.store.secrets.keys().cloned().collect(),
                    Kind::Endpoint => self.store.endpoints.keys().cloned().collect(),
                    Kind::Listener => self.store.listeners.keys().cloned().collect(),
                    Kind::Route => self.store.routes.keys().cloned().collect(),
                    Kind::Extension => self.store.extensions.keys().cloned().collect(),
                };
                self.status
                    .accepted(kind, &response.system_version_info, &response.nonce, names);
                let ack = DeltaDiscoveryRequest {
                    node: Some(self.node.clone()),
                    type_url: kind.type_url().into(),
                    response_nonce: response.nonce.clone(),
                    ..DeltaDiscoveryRequest::default()
                };
                tx.send(ack).await.map_err(|_| StreamError::Closed)?;
                self.delta_follow_up(tx).await
            }
        }
    }
}

/// What a delta response carries.
struct Parts {
    /// Resources added or changed: (name, resource).
    added: Vec<(String, Any)>,
    /// Their versions, in the same order.
    versions: Vec<String>,
    /// Names removed.
    removed: Vec<String>,
}

/// A delta response's parts, or why they are refused: a resource without a body (a TTL
/// heartbeat) or with a TTL is unimplemented.
fn delta_parts(response: &DeltaDiscoveryResponse) -> Result<Parts, String> {
    let mut added = Vec::with_capacity(response.resources.len());
    let mut versions = Vec::with_capacity(response.resources.len());
    for (i, r) in response.resources.iter().enumerate() {
        let name = if r.name.is_empty() {
            r.resource_name
                .as_ref()
                .map(|n| n.name.clone())
                .unwrap_or_default()
        } else {
            r.name.clone()
        };
        if r.ttl.is_some() {
            return Err(format!(
                "resources[{i}] (`{name}`).ttl: unimplemented (resources do not expire in Weft)"
            ));
        }
        let Some(any) = r.resource.clone() else {
            return Err(format!(
                "resources[{i}] (`{name}`): no resource (TTL heartbeats are unimplemented)"
            ));
        };
        added.push((name, any));
        versions.push(r.version.clone());
    }
    let removed = response
        .removed_resources
        .iter()
        .cloned()
        .chain(
            response
                .removed_resource_names
                .iter()
                .map(|n| n.name.clone()),
        )
        .collect();
    Ok(Parts {
        added,
        versions,
        removed,
    })
}
