//! Capture listeners (`original_dst: true`): each connection was redirected here by iptables
//! (`weft iptables`). Its original destination is read back ([`original_dst`]), refused when
//! it is one of Weft's own capture ports (a loop), its first bytes are sniffed when a chain
//! matches on the protocol, and it is handed to the listener of the matching filter chain
//! ([`matcher`]) — an HTTP listener (routes, mTLS, plugins) or a TCP one — or, when none
//! matches, to the passthrough cluster (`allow_any`) or the black hole (`registry_only`).

pub mod matcher;
pub mod original_dst;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use weft_config::schema::FilterChainMatch;
use weft_http::{HttpListener, ListenerSource};
use weft_observe::access_log::{self, Entry};
use weft_observe::flags;
use weft_observe::metrics::ListenerMetrics;

pub use crate::slot::{CaptureChain, CaptureEntry};
use crate::slot::{ListenerGen, ListenerSlot, Shared};

/// The source of a listener reached through a capture listener: each request reads the
/// target's configuration in the capture slot's live generation, so reloads apply to
/// connections already open, as on a bound listener.
struct Chained {
    capture: Arc<ListenerSlot>,
    name: Arc<str>,
    fallback_metrics: Arc<ListenerMetrics>,
}

impl Chained {
    fn target(&self) -> Option<Arc<ListenerGen>> {
        match &*self.capture.current() {
            ListenerGen::Capture(c) => c.targets.get(&*self.name).cloned(),
            _ => None,
        }
    }
}

impl ListenerSource for Chained {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn http(&self) -> Option<Arc<HttpListener>> {
        match self.target().as_deref() {
            Some(ListenerGen::Http(h)) => Some(h.http.clone()),
            _ => None,
        }
    }

    fn metrics(&self) -> Arc<ListenerMetrics> {
        self.target()
            .map_or_else(|| self.fallback_metrics.clone(), |t| t.metrics().clone())
    }
}

/// Serves one connection accepted by capture listener `slot`.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<ListenerSlot>,
    entry: &CaptureEntry,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let local = stream.local_addr().unwrap_or(slot.local_addr);
    // Not redirected (a client that connected to the capture port itself): its destination
    // is the capture port, refused below.
    let dst = original_dst::of(&stream).unwrap_or(local);
    if entry.own_ports.contains(&dst.port()) || dst.port() == slot.local_addr.port() {
        refuse(
            entry,
            &shared,
            peer,
            dst,
            "original destination is a Weft port",
        );
        return;
    }
    let matchers: Vec<&FilterChainMatch> = entry.chains.iter().map(|c| &c.matcher).collect();
    let candidates = matcher::by_destination(&matchers, dst);
    let seen = if candidates.iter().any(|&i| matchers[i].needs_sniffing()) {
        crate::sniff::detect(&stream, entry.config.protocol_detection_timeout).await
    } else {
        crate::sniff::Detected::default()
    };
    let chosen = matcher::select(&matchers, candidates, &seen).and_then(|i| {
        let chain = &entry.chains[i];
        entry
            .targets
            .get(&*chain.target)
            .map(|t| (chain.target.clone(), t.clone()))
    });
    tracing::debug!(
        listener = %entry.name, %peer, original_dst = %dst, tls = seen.tls,
        sni = ?seen.server_name, protocols = ?seen.application_protocols,
        chain = ?chosen.as_ref().map(|(n, _)| n.clone()),
        "captured connection"
    );
    let Some((name, target)) = chosen else {
        crate::tcp::serve(
            stream,
            peer,
            &entry.fallback,
            &shared.http,
            shutdown,
            Some(dst),
        )
        .await;
        return;
    };
    let metrics = target.metrics().clone();
    metrics.cx_total.inc();
    metrics.cx_active.inc();
    match &*target {
        ListenerGen::Http(h) => {
            let source: Arc<dyn ListenerSource> = Arc::new(Chained {
                capture: slot.clone(),
                name,
                fallback_metrics: entry.metrics.clone(),
            });
            let addrs = crate::http_conn::Addrs {
                peer,
                // Envoy's original_dst filter restores the local address to the original
                // destination: what `destination.address` and the access log show.
                local: dst,
                original_dst: Some(dst),
            };
            crate::http_conn::serve_http(stream, addrs, source, h.tls.clone(), shared, shutdown)
                .await;
        }
        ListenerGen::Tcp(t) => {
            crate::tcp::serve(stream, peer, t, &shared.http, shutdown, Some(dst)).await;
        }
        ListenerGen::Capture(_) => {
            refuse(
                entry,
                &shared,
                peer,
                dst,
                "a filter chain names a capture listener",
            );
        }
    }
    metrics.cx_active.dec();
}

/// Closes a connection that must not be served, counted (`NR`) and logged.
fn refuse(entry: &CaptureEntry, shared: &Shared, peer: SocketAddr, dst: SocketAddr, why: &str) {
    entry.metrics.flag(flags::NO_ROUTE);
    tracing::debug!(listener = %entry.name, %peer, original_dst = %dst, "{why}: refused");
    shared.http.access_log.log(Entry {
        start_time: access_log::rfc3339(SystemTime::now()),
        listener: entry.name.clone(),
        protocol: "TCP",
        downstream_remote_address: peer.to_string(),
        response_flags: flags::NO_ROUTE,
        details: Some(format!("{why} ({dst})")),
        ..Entry::default()
    });
}
