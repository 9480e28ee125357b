//! Handing an accepted connection to the HTTP layer: TLS termination per the listener's mode,
//! HTTP/2 prior-knowledge detection, then `weft_http::serve_connection`. Used by the accept
//! loops of HTTP listeners and by capture listeners for their HTTP filter chains.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use weft_config::schema::TlsMode;
use weft_http::security::{ConnSecurity, policy};
use weft_http::{Accepted, ListenerSource, serve_connection};

use crate::slot::Shared;
use crate::tls::ListenerTls;

/// A connection's addresses.
pub struct Addrs {
    /// The peer.
    pub peer: SocketAddr,
    /// Ours (the original destination when captured).
    pub local: SocketAddr,
    /// The original destination, when a capture listener handed the connection over.
    pub original_dst: Option<SocketAddr>,
}

/// Terminates TLS where the listener's mode asks for it (permissive: when the first byte is a
/// TLS handshake), detects HTTP/2 prior knowledge, and hands the connection to the HTTP layer.
pub async fn serve_http(
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
            let handshake =
                tokio::time::timeout(settings.request_header_timeout, tls.acceptor.accept(stream))
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
            serve_connection(stream, h2, conn, source, shared.http.clone(), shutdown).await;
            return;
        }
    }
    shared.metrics.tls.connection(&name, policy::NONE);
    let h2 = crate::sniff::is_h2_prior_knowledge(&stream, settings.request_header_timeout).await;
    let conn = Accepted {
        peer,
        local,
        original_dst,
        security: None,
    };
    serve_connection(stream, h2, conn, source, shared.http.clone(), shutdown).await;
}
