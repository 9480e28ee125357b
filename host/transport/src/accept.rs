//! Accept loops: each listener slot accepts until it is stopped or the proxy drains, and each
//! connection goes to the HTTP layer (after TLS termination and protocol detection) or to the
//! TCP proxy, per the listener's configuration in the live generation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_config::schema::TlsMode;
use weft_http::security::{ConnSecurity, policy};
use weft_http::{Accepted, ListenerSource, serve_connection};

use crate::slot::{ListenerGen, ListenerSlot, Shared};
use crate::sniff::{Prefixed, Sniffed};
use crate::tls::ListenerTls;

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
                    let lgen = slot.current();
                    let metrics = lgen.metrics().clone();
                    let Some(open) = OpenConnection::admit(&slot, lgen.config().max_connections)
                    else {
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
                                let addrs = Addrs {
                                    peer,
                                    local: stream.local_addr().unwrap_or(slot.local_addr),
                                    original_dst: None,
                                };
                                let tls = h.tls.clone();
                                drop(lgen);
                                serve_http(stream, addrs, slot, tls, shared, shutdown).await
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

/// A connection's addresses.
pub(crate) struct Addrs {
    /// The peer.
    pub(crate) peer: SocketAddr,
    /// Ours (the original destination when captured).
    pub(crate) local: SocketAddr,
    /// The original destination, when a capture listener handed the connection over.
    pub(crate) original_dst: Option<SocketAddr>,
}

/// Terminates TLS where the listener's mode asks for it (permissive: when the first byte is a
/// TLS handshake), detects HTTP/2 prior knowledge, and hands the connection to the HTTP layer.
pub(crate) async fn serve_http(
    stream: TcpStream,
    addrs: Addrs,
    source: Arc<dyn ListenerSource>,
    tls: Option<Arc<ListenerTls>>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let Some(http) = source.http() else {
        return;
    };
    let settings = http.settings.config.http.clone();
    drop(http);
    let Addrs {
        peer,
        local,
        original_dst,
    } = addrs;
    let name = source.name().clone();
    if let Some(tls) = tls {
        let use_tls = match tls.mode {
            TlsMode::Strict => true,
            TlsMode::Permissive => {
                crate::sniff::starts_with_tls(&stream, settings.request_header_timeout).await
            }
            TlsMode::Disable => false,
        };
        if use_tls {
            let handshake = tokio::time::timeout(
                settings.request_header_timeout,
                Box::pin(tls.acceptor.accept(stream)),
            )
            .await;
            let stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    shared.metrics.tls.handshake_failed(&name);
                    tracing::debug!(listener = %name, %peer, error = %e, "downstream TLS handshake failed");
                    return;
                }
                Err(_) => {
                    shared.metrics.tls.handshake_failed(&name);
                    tracing::debug!(listener = %name, %peer, "downstream TLS handshake timed out");
                    return;
                }
            };
            let (_, conn) = stream.get_ref();
            let security = ConnSecurity::from_server(conn, &tls.creds);
            let h2 = conn.alpn_protocol() == Some(b"h2");
            shared.metrics.tls.connection(&name, security.policy());
            let conn = Accepted {
                peer,
                local,
                original_dst,
                security: Some(Arc::new(security)),
            };
            Box::pin(serve_connection(
                stream,
                h2,
                conn,
                source,
                shared.http.clone(),
                shutdown,
            ))
            .await;
            return;
        }
    }
    shared.metrics.tls.connection(&name, policy::NONE);
    // An idle connection waits for its first byte holding only its socket and a 24-byte
    // buffer (up to the idle timeout); the rest of an HTTP/2 preface must follow within the
    // header timeout.
    let mut stream = stream;
    let (sniffed, prefix) = crate::sniff::sniff_h2(
        &mut stream,
        settings.idle_timeout,
        settings.request_header_timeout,
    )
    .await;
    let h2 = match sniffed {
        Sniffed::H2 => true,
        Sniffed::Http1 => false,
        Sniffed::Nothing => return,
    };
    let conn = Accepted {
        peer,
        local,
        original_dst,
        security: None,
    };
    // Boxed: the protocol state is allocated only now, not for the connection's whole life.
    Box::pin(serve_connection(
        Prefixed::new(prefix, stream),
        h2,
        conn,
        source,
        shared.http.clone(),
        shutdown,
    ))
    .await;
}
