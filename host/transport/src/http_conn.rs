//! One downstream connection of an HTTP listener (bound, or reached through a capture
//! listener's filter chain): TLS where the listener's mode asks for it, the HTTP/2 preface
//! sniff on plaintext, then the HTTP server of weft-http.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use weft_config::schema::TlsMode;
use weft_http::security::{ConnSecurity, policy};
use weft_http::{Accepted, ListenerSource, serve_connection};

use crate::slot::Shared;
use crate::sniff::{Prefixed, Sniffed};
use crate::tls::ListenerTls;

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
