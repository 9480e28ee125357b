//! Accept loops: each listener slot accepts until it is stopped or the proxy drains, and each
//! connection goes to the HTTP layer (after TLS termination and protocol detection) or to the
//! TCP proxy, per the listener's configuration in the live generation.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::slot::{Bound, ListenerGen, ListenerSlot, Shared};

/// Runs the accept loops of `bound` (one per socket: on the calling runtime, or each on its
/// worker's) until its slot is stopped or the proxy shuts down.
pub fn serve(bound: Bound, shared: Arc<Shared>, tracker: TaskTracker, shutdown: CancellationToken) {
    let Bound { slot, sockets } = bound;
    for (listener, worker) in sockets {
        let counter = worker.as_ref().map(|w| w.accepted.clone());
        let task = accept_loop(
            slot.clone(),
            listener,
            counter,
            shared.clone(),
            tracker.clone(),
            shutdown.clone(),
        );
        match worker {
            Some(w) => tracker.spawn_on(task, &w.handle),
            None => tracker.spawn(task),
        };
    }
}

/// Accepts on `listener` until `slot` is stopped or the proxy shuts down; each connection is
/// served in a task of its own on the same runtime.
async fn accept_loop(
    slot: Arc<ListenerSlot>,
    listener: TcpListener,
    worker_cx: Option<Counter>,
    shared: Arc<Shared>,
    conns: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut overload = shared.http.overload.subscribe();
    loop {
        // Above the memory watermark: accept nothing until it clears (new connections wait
        // in the kernel's backlog). A change of state interrupts a pending accept.
        if *overload.borrow_and_update() {
            tokio::select! {
                _ = slot.stop.cancelled() => break,
                _ = shutdown.cancelled() => break,
                cleared = overload.wait_for(|over| !over) => {
                    if cleared.is_err() {
                        break;
                    }
                }
            }
            continue;
        }
        let accepted = tokio::select! {
            _ = slot.stop.cancelled() => break,
            _ = shutdown.cancelled() => break,
            changed = overload.changed() => {
                if changed.is_err() {
                    // The manager is gone: the proxy is stopping.
                    break;
                }
                continue;
            }
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Some(c) = &worker_cx {
                    c.inc();
                }
                let lgen = slot.current();
                let metrics = lgen.metrics().clone();
                let Some(open) = OpenConnection::admit(&slot, lgen.config().max_connections) else {
                    // Over `max_connections`: closed at once (Envoy's
                    // `downstream_cx_overflow`).
                    metrics.cx_overflow.inc();
                    drop(stream);
                    continue;
                };
                let slot = slot.clone();
                let shared = shared.clone();
                let shutdown = shutdown.clone();
                conns.spawn(async move {
                    let _open = open;
                    metrics.cx_total.inc();
                    metrics.cx_active.inc();
                    match &*lgen {
                        ListenerGen::Http(h) => {
                            let addrs = crate::http_conn::Addrs {
                                peer,
                                local: stream.local_addr().unwrap_or(slot.local_addr),
                                original_dst: None,
                            };
                            let tls = h.tls.clone();
                            drop(lgen);
                            crate::http_conn::serve_http(stream, addrs, slot, tls, shared, shutdown)
                                .await
                        }
                        ListenerGen::Tcp(t) => {
                            crate::tcp::serve(stream, peer, t, &shared.http, shutdown, None).await
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
}

/// A connection counted against its listener's `max_connections` until dropped.
struct OpenConnection(Arc<ListenerSlot>);

impl OpenConnection {
    fn admit(slot: &Arc<ListenerSlot>, max: Option<u32>) -> Option<OpenConnection> {
        let before = slot.open.fetch_add(1, Ordering::AcqRel);
        if max.is_some_and(|m| before >= m) {
            slot.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(OpenConnection(slot.clone()))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}
