//! Accept loops: each listener slot accepts until it is stopped or the proxy drains, and each
//! connection goes to the HTTP layer (after TLS termination and protocol detection) or to the
//! TCP proxy, per the listener's configuration in the live generation.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::slot::{ListenerGen, ListenerSlot, Shared};

/// Runs the accept loop of `slot` until it is stopped or the proxy shuts down.
pub fn serve(
    slot: Arc<ListenerSlot>,
    listener: TcpListener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let conns = tracker.clone();
    tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = slot.stop.cancelled() => break,
                _ = shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let slot = slot.clone();
                    let shared = shared.clone();
                    let shutdown = shutdown.clone();
                    conns.spawn(async move {
                        let lgen = slot.current();
                        let metrics = lgen.metrics().clone();
                        metrics.cx_total.inc();
                        metrics.cx_active.inc();
                        match &*lgen {
                            ListenerGen::Http(h) => {
                                let addrs = crate::handoff::Addrs {
                                    peer,
                                    local: stream.local_addr().unwrap_or(slot.local_addr),
                                    original_dst: None,
                                };
                                let tls = h.tls.clone();
                                crate::handoff::serve_http(
                                    stream, addrs, slot, tls, shared, shutdown,
                                )
                                .await
                            }
                            ListenerGen::Tcp(t) => {
                                crate::tcp::serve(stream, peer, t, &shared.http, shutdown, None)
                                    .await
                            }
                            ListenerGen::Capture(c) => {
                                crate::capture::serve(stream, peer, slot, c, shared, shutdown).await
                            }
                        }
                        metrics.cx_active.dec();
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(listener = %slot.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tracing::debug!(listener = %slot.name, "accept loop stopped");
    });
}
