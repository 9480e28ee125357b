//! Istio's standard metrics on the request path, and the metadata exchange between sidecars.
//!
//! At the request's start ([`on_request`]): an inbound listener reads the caller's workload
//! from `x-envoy-peer-metadata` (and its node id header); every listener removes both headers
//! so they never reach the application or leave the mesh; an outbound listener adds this
//! sidecar's headers to the request it sends upstream. On the response ([`on_response`]): an
//! outbound listener reads the server's workload from the response's headers and removes
//! them; an inbound listener answers with its own headers when the request carried the
//! caller's (as Istio's `peer_metadata` filter does). At the end, the completion reports one
//! sample to every `istio_*` HTTP family ([`IstioCall::report`]).

use std::sync::Arc;

use http::HeaderMap;
use http::header::{self, HeaderValue};
use weft_config::schema::TrafficDirection;
use weft_observe::istio::{
    HttpReport, PEER_METADATA, PEER_METADATA_ID, Reporter, Reporting, Workload,
};

use crate::conn::ConnCtx;
use crate::security::ConnSecurity;
use crate::settings::ListenerSettings;

/// A request's share of Istio reporting, carried by its completion.
pub struct IstioCall {
    reporting: Arc<Reporting>,
    direction: TrafficDirection,
    peer: Option<Arc<Workload>>,
    /// The caller sent exchange headers (an inbound listener answers with its own).
    caller_exchanged: bool,
    host: String,
    grpc: bool,
    grpc_status: Option<u16>,
    security: Option<Arc<ConnSecurity>>,
    /// The upstream connection's identities (the source side's principals).
    upstream: Option<weft_upstream::tls::UpstreamIdentity>,
    /// The cluster the request went to (its `service` names `destination_service`).
    cluster: Option<Arc<weft_upstream::Cluster>>,
    request_head_bytes: u64,
    response_head_bytes: u64,
}

/// The size of a header section as HTTP/1.1 writes it (`name: value\r\n` each, and the blank
/// line), which is what Envoy's wire byte meters count on HTTP/1.
fn head_bytes(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
        .sum::<u64>()
        + 2
}

/// Starts Istio reporting for a request (`head`, as received on `listener`): reads and removes
/// the exchange headers, and adds this sidecar's on an outbound listener. `None`: reporting
/// is off for the listener.
pub fn on_request(
    listener: &ListenerSettings,
    conn: &ConnCtx,
    head: &mut http::request::Parts,
    authority: &str,
) -> Option<Box<IstioCall>> {
    let reporting = listener.istio.clone()?;
    let direction = listener.config.traffic_direction;
    let headers = &mut head.headers;
    let caller = headers.remove(&PEER_METADATA);
    let caller_id = headers.remove(&PEER_METADATA_ID);
    let exchanging = reporting.exchange().is_some();
    let mut peer = None;
    if direction == TrafficDirection::Inbound
        && exchanging
        && let Some(v) = &caller
    {
        peer = reporting.peers.get(v.as_bytes());
    }
    let caller_exchanged = caller.is_some() || caller_id.is_some();
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    // The request line: method, target, version and the separators.
    let request_line = (head.method.as_str().len()
        + head.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + 12) as u64;
    let request_head_bytes = request_line + head_bytes(headers);
    if direction == TrafficDirection::Outbound
        && let Some(x) = reporting.exchange()
    {
        headers.insert(&PEER_METADATA_ID, x.id.clone());
        headers.insert(&PEER_METADATA, x.metadata.clone());
    }
    Some(Box::new(IstioCall {
        reporting,
        direction,
        peer,
        caller_exchanged,
        host: authority.to_owned(),
        grpc,
        grpc_status: None,
        security: conn.security.clone(),
        upstream: None,
        cluster: None,
        request_head_bytes,
        response_head_bytes: 0,
    }))
}

/// Reads, removes and (inbound) answers the exchange headers on the downstream response;
/// `upstream`: the identities of the TLS connection it came over, if any.
pub fn on_response(
    call: &mut IstioCall,
    headers: &mut HeaderMap,
    upstream: Option<&weft_upstream::tls::UpstreamIdentity>,
) {
    call.upstream = upstream.cloned();
    let server = headers.remove(&PEER_METADATA);
    headers.remove(&PEER_METADATA_ID);
    match call.direction {
        TrafficDirection::Outbound => {
            if let Some(v) = &server
                && call.reporting.exchange().is_some()
            {
                call.peer = call.reporting.peers.get(v.as_bytes());
            }
        }
        TrafficDirection::Inbound => {
            if call.caller_exchanged
                && let Some(x) = call.reporting.exchange()
            {
                headers.insert(&PEER_METADATA_ID, x.id.clone());
                headers.insert(&PEER_METADATA, x.metadata.clone());
            }
        }
        TrafficDirection::Unspecified => {}
    }
    read_grpc_status(call, headers);
    // The status line ("HTTP/1.1 200 OK\r\n") and the header section.
    call.response_head_bytes = 17 + head_bytes(headers);
}

/// Reads the gRPC status from the response's trailers, where a gRPC server normally sends it
/// (a "trailers-only" response carries it in the headers instead: [`on_response`]).
pub fn on_trailers(call: &mut IstioCall, trailers: &HeaderMap) {
    read_grpc_status(call, trailers);
}

fn read_grpc_status(call: &mut IstioCall, headers: &HeaderMap) {
    if !call.grpc {
        return;
    }
    if let Some(status) = headers
        .get("grpc-status")
        .and_then(|v: &HeaderValue| v.to_str().ok()?.parse().ok())
    {
        call.grpc_status = Some(status);
    }
}

impl IstioCall {
    /// The request is sent to `cluster`.
    pub fn routed_to(&mut self, cluster: &Arc<weft_upstream::Cluster>) {
        if cluster.config.service.is_some() {
            self.cluster = Some(cluster.clone());
        }
    }

    /// Reports the finished request.
    pub fn report(
        &self,
        code: u16,
        flags: &str,
        duration_ms: u64,
        request_body: u64,
        response_body: u64,
    ) {
        let reporter = Reporter::of(self.direction);
        let (peer_principal, local_principal) = match reporter {
            // The downstream connection's identities are the caller's and ours.
            Reporter::Destination => {
                let security = self.security.as_ref();
                (
                    security
                        .and_then(|s| s.peer.as_ref())
                        .map(|p| p.uri_san.as_str()),
                    security.and_then(|s| s.local_uri.as_deref()),
                )
            }
            // The upstream connection's: the server's and ours.
            Reporter::Source => {
                let upstream = self.upstream.as_ref();
                (
                    upstream.and_then(|u| u.peer.as_deref()),
                    upstream.and_then(|u| u.local.as_deref()),
                )
            }
        };
        let peer_principal = peer_principal.filter(|s| !s.is_empty());
        let local_principal = local_principal.filter(|s| !s.is_empty());
        self.reporting.record_http(&HttpReport {
            reporter,
            peer: self.peer.as_deref(),
            peer_principal,
            local_principal,
            host: &self.host,
            service: self
                .cluster
                .as_ref()
                .and_then(|c| c.config.service.as_ref()),
            grpc: self.grpc,
            grpc_status: self.grpc_status,
            code,
            flags,
            duration_ms,
            request_bytes: self.request_head_bytes + request_body,
            response_bytes: self.response_head_bytes + response_body,
        });
    }
}
