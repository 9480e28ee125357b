//! Accept loops: each listener slot accepts until it is stopped or the proxy drains, and each
//! connection goes to the HTTP layer (after TLS termination and protocol detection) or to the
//! TCP proxy, per the listener's configuration in the live generation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_config::schema::TlsMode;
use weft_http::security::{ConnSecurity, policy};
use weft_http::{Accepted, HttpListener, ListenerSource, serve_connection};

use crate::slot::{ListenerGen, ListenerSlot, Shared};
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
                                let (http, tls) = (h.http.clone(), h.tls.clone());
                                serve_http(stream, peer, slot, http, tls, shared, shutdown).await
                            }
                            ListenerGen::Tcp(t) => {
                                crate::tcp::serve(stream, peer, t, &shared.http, shutdown).await
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

/// Terminates TLS where the listener's mode asks for it (permissive: when the first byte is a
/// TLS handshake), detects HTTP/2 prior knowledge, and hands the connection to the HTTP layer.
async fn serve_http(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<ListenerSlot>,
    http: Arc<HttpListener>,
    tls: Option<Arc<ListenerTls>>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let settings = http.settings.config.http.clone();
    drop(http);
    let local = stream.local_addr().unwrap_or(slot.local_addr);
    let source: Arc<dyn ListenerSource> = slot.clone();
    if let Some(tls) = tls {
        let use_tls = match tls.mode {
            TlsMode::Strict => true,
            TlsMode::Permissive => {
                crate::sniff::starts_with_tls(&stream, settings.request_header_timeout).await
            }
            TlsMode::Disable => false,
        };
        if use_tls {
            let handshake =
                tokio::time::timeout(settings.request_header_timeout, tls.acceptor.accept(stream))
                    .await;
            let stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    shared.metrics.tls.handshake_failed(&slot.name);
                    tracing::debug!(listener = %slot.name, %peer, error = %e, "downstream TLS handshake failed");
                    return;
                }
                Err(_) => {
                    shared.metrics.tls.handshake_failed(&slot.name);
                    tracing::debug!(listener = %slot.name, %peer, "downstream TLS handshake timed out");
                    return;
                }
            };
            let (_, conn) = stream.get_ref();
            let security = ConnSecurity::from_server(conn, &tls.creds);
            let h2 = conn.alpn_protocol() == Some(b"h2");
            shared.metrics.tls.connection(&slot.name, security.policy());
            let conn = Accepted {
                peer,
                local,
                security: Some(Arc::new(security)),
            };
            serve_connection(stream, h2, conn, source, shared.http.clone(), shutdown).await;
            return;
        }
    }
    shared.metrics.tls.connection(&slot.name, policy::NONE);
    let h2 = crate::sniff::is_h2_prior_knowledge(&stream, settings.request_header_timeout).await;
    let conn = Accepted {
        peer,
        local,
        security: None,
    };
    serve_connection(stream, h2, conn, source, shared.http.clone(), shutdown).await;
}
