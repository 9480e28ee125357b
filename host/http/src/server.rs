//! Serving HTTP on one downstream connection: hyper's HTTP/1.1 (behind the framing guard) or
//! HTTP/2 server, each request handed to [`crate::handle::handle`], with the idle timeout and
//! graceful drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use weft_framing::{GuardedIo, H2GuardedIo, Limits};
use weft_observe::access_log::{self, Entry};
use weft_observe::flags;
use weft_observe::metrics::class_index;

use crate::conn::{Activity, ConnCtx, Shared, next_connection_id, peer_ip_value};
use crate::listener::ListenerSource;
use crate::security::ConnSecurity;

/// Addresses and security of an accepted downstream connection.
#[derive(Debug)]
pub struct Accepted {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Our address.
    pub local: SocketAddr,
    /// TLS and the peer identity (`None`: plaintext).
    pub security: Option<Arc<ConnSecurity>>,
}

/// Serves HTTP on an accepted (and, where configured, TLS-terminated) connection until it
/// closes, idles out, or the proxy drains: HTTP/2 when `h2`, else HTTP/1.1 behind the strict
/// framing guard (whose rejections are counted and logged here).
pub async fn serve_connection<IO>(
    stream: IO,
    h2: bool,
    conn: Accepted,
    listener: Arc<dyn ListenerSource>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Accepted {
        peer,
        local,
        security,
    } = conn;
    let Some(http) = listener.http() else {
        return;
    };
    let settings = http.settings.config.http.clone();
    drop(http);
    let activity = Arc::new(Activity::new());
    let id = next_connection_id();
    let idle = settings.idle_timeout;

    if h2 {
        let ctx = Arc::new(ConnCtx {
            peer,
            listener_name: listener.name().clone(),
            shared: shared.clone(),
            activity: activity.clone(),
            guard: None,
            h2: true,
            local,
            id,
            peer_ip: peer_ip_value(peer),
            security: security.clone(),
        });
        let source = listener.clone();
        let service = service_fn(move |req| {
            let (ctx, source) = (ctx.clone(), source.clone());
            async move {
                // A malformed request is a stream error (RST_STREAM PROTOCOL_ERROR, which
                // hyper takes from the h2 error), never forwarded.
                if let Err(malformed) = crate::h2_semantics::check(&req) {
                    refused(&ctx.shared, source.as_ref(), ctx.peer, malformed.reason());
                    return Err(h2::Error::from(h2::Reason::PROTOCOL_ERROR));
                }
                crate::handle::handle(req, ctx, source)
                    .await
                    .map_err(|never| match never {})
            }
        });
        let (io, frames) = H2GuardedIo::new(stream);
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(settings.max_request_headers_bytes as u32)
            .max_concurrent_streams(1024)
            .serve_connection(TokioIo::new(io), service);
        drive(conn, &activity, idle, &shutdown, |c| c.graceful_shutdown()).await;
        if let Some(violation) = frames.violation() {
            refused(&shared, listener.as_ref(), peer, violation.reason());
        }
        return;
    }

    let limits = Limits {
        max_header_bytes: settings.max_request_headers_bytes,
        max_headers: settings.max_request_headers,
        header_read_timeout: settings.request_header_timeout,
    };
    let (io, guard) = GuardedIo::new(stream, limits);
    let ctx = Arc::new(ConnCtx {
        peer,
        listener_name: listener.name().clone(),
        shared: shared.clone(),
        activity: activity.clone(),
        guard: Some(guard.clone()),
        h2: false,
        local,
        id,
        peer_ip: peer_ip_value(peer),
        security,
    });
    let source = listener.clone();
    let service = service_fn(move |req| crate::handle::handle(req, ctx.clone(), source.clone()));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        // The framing guard enforces the header timeout from a head's first byte; the idle
        // timeout covers the time between requests.
        .header_read_timeout(None)
        .max_buf_size(settings.max_request_headers_bytes.max(8192) + 8192)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    drive(conn, &activity, idle, &shutdown, |c| c.graceful_shutdown()).await;

    if let Some(rejection) = guard.rejection() {
        let metrics = listener.metrics();
        metrics.rejected(rejection.reason());
        metrics.rq[class_index(rejection.status())].inc();
        metrics.flag(flags::DOWNSTREAM_PROTOCOL_ERROR);
        shared.access_log.log(Entry {
            start_time: access_log::rfc3339(SystemTime::now()),
            listener: listener.name().clone(),
            protocol: "HTTP/1.1",
            status: Some(rejection.status()),
            response_flags: flags::DOWNSTREAM_PROTOCOL_ERROR,
            downstream_remote_address: peer.to_string(),
            details: Some(rejection.reason().to_owned()),
            ..Entry::default()
        });
    }
}

/// Counts and logs an HTTP/2 request or connection refused for a protocol violation
/// (`DPE`, no status: the answer is a stream or connection error).
fn refused(shared: &Shared, listener: &dyn ListenerSource, peer: SocketAddr, reason: &str) {
    let metrics = listener.metrics();
    metrics.rejected(reason);
    metrics.flag(flags::DOWNSTREAM_PROTOCOL_ERROR);
    shared.access_log.log(Entry {
        start_time: access_log::rfc3339(SystemTime::now()),
        listener: listener.name().clone(),
        protocol: "HTTP/2",
        status: None,
        response_flags: flags::DOWNSTREAM_PROTOCOL_ERROR,
        downstream_remote_address: peer.to_string(),
        details: Some(reason.to_owned()),
        ..Entry::default()
    });
}

/// Polls a hyper connection to completion, shutting it down gracefully when the proxy drains
/// or when no request has been in flight for `idle`.
async fn drive<C, E>(
    conn: C,
    activity: &Activity,
    idle: Duration,
    shutdown: &CancellationToken,
    graceful: impl Fn(std::pin::Pin<&mut C>),
) where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    let mut check = idle;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "downstream connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                graceful(conn.as_mut());
            }
            _ = tokio::time::sleep(check), if !draining => {
                let idle_for = activity.idle_for();
                if idle_for >= idle {
                    draining = true;
                    graceful(conn.as_mut());
                } else {
                    check = if idle_for.is_zero() { idle } else { idle - idle_for };
                }
            }
        }
    }
}
