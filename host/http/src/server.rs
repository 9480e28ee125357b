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
use weft_framing::{GuardedIo, H2GuardedIo, HeaderBlocks, Limits};
use weft_observe::access_log::{self, Entry};
use weft_observe::flags;
use weft_observe::metrics::class_index;

use crate::conn::{Activity, ConnCtx, Shared, next_connection_id, peer_ip_value};
use crate::listener::ListenerSource;
use crate::overload::Overload;
use crate::security::ConnSecurity;

/// Addresses and security of an accepted downstream connection.
#[derive(Debug)]
pub struct Accepted {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Our address (the original destination when the connection was captured).
    pub local: SocketAddr,
    /// The original destination, when a capture listener handed the connection over (what an
    /// `original_dst` cluster connects to).
    pub original_dst: Option<SocketAddr>,
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
        original_dst,
        security,
    } = conn;
    let Some(http) = listener.http() else {
        return;
    };
    let settings = http.settings.config.http.clone();
    let limit = weft_config::BufferLimit(http.settings.config.per_connection_buffer_limit_bytes);
    drop(http);
    let activity = Arc::new(Activity::new());
    let id = next_connection_id();
    let mut checks = Checks {
        activity: &activity,
        idle: settings.idle_timeout,
        stream_idle: (!settings.stream_idle_timeout.is_zero())
            .then_some(settings.stream_idle_timeout),
        header: None,
        overload: &shared.overload,
    };

    if h2 {
        let ctx = Arc::new(ConnCtx {
            peer,
            listener_name: listener.name().clone(),
            shared: shared.clone(),
            activity: activity.clone(),
            guard: None,
            h2: true,
            local,
            original_dst,
            id,
            peer_ip: peer_ip_value(peer),
            security: security.clone(),
        });
        let source = listener.clone();
        let service = service_fn(move |req| {
            let (ctx, source) = (ctx.clone(), source.clone());
            // Boxed: hyper spawns a task per HTTP/2 stream and the request's future is large
            // (~10 KB); unboxed, it was copied about eight times on its way into and out of
            // the task (half of all instructions per h2 request, docs/performance.md). The box
            // is allocated before the future is built, so that the future can be written
            // into it directly instead of built on the stack and copied (`Box::pin` copied
            // it whole: 11k instructions of memcpy per request).
            boxed_in_place(move || async move {
                // A malformed request is a stream error (RST_STREAM PROTOCOL_ERROR, which
                // hyper takes from the h2 error), never forwarded.
                if let Err(malformed) = crate::h2_semantics::check(&req) {
                    refused(&ctx.shared, source.as_ref(), ctx.peer, malformed.reason());
                    return Err(h2::Error::from(h2::Reason::PROTOCOL_ERROR));
                }
                crate::handle::handle(req, ctx, source)
                    .await
                    .map_err(|never| match never {})
            })
        });
        let (io, frames) = H2GuardedIo::new(stream);
        checks.header = Some((
            frames.header_blocks().clone(),
            settings.request_header_timeout,
        ));
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(settings.max_request_headers_bytes as u32)
            .max_concurrent_streams(1024)
            // Flow control bounds what a client can make us buffer (and a stalled reader's
            // share of our send buffers): per_connection_buffer_limit_bytes.
            .initial_stream_window_size(limit.h2_stream_window())
            .initial_connection_window_size(limit.h2_connection_window())
            .max_send_buf_size(limit.h2_send_buf())
            .serve_connection(TokioIo::new(io), service);
        drive(conn, checks, &shutdown, |c| c.graceful_shutdown()).await;
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
        original_dst,
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
        // Read buffer and write queue: a head must fit; per_connection_buffer_limit_bytes
        // bounds the rest.
        .max_buf_size(limit.http1_buf(settings.max_request_headers_bytes + 8192))
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    drive(conn, checks, &shutdown, |c| c.graceful_shutdown()).await;

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

/// `Box::pin(make())`, with the box allocated first and the value written into it
/// (`Box::write`), which lets the compiler build a large future in place.
#[inline]
fn boxed_in_place<F>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
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

/// How long past the stream idle timeout a stalled connection is left before it is closed.
const STALL_GRACE: Duration = Duration::from_secs(1);

/// What a connection's driver watches besides the connection itself.
struct Checks<'a> {
    activity: &'a Activity,
    /// No request in flight for this long: close gracefully.
    idle: Duration,
    /// Requests in flight but no body moving either way for this long: close (a stalled
    /// reader or writer; Envoy's stream idle timeout, per connection here).
    stream_idle: Option<Duration>,
    /// HTTP/2: the header blocks and `request_header_timeout`.
    header: Option<(Arc<HeaderBlocks>, Duration)>,
    overload: &'a Overload,
}

/// Polls a hyper connection to completion, shutting it down gracefully when the proxy drains,
/// when no request has been in flight for the idle timeout, or when the overload manager
/// trips while it is idle; and closing it outright when its requests stall past the stream
/// idle timeout or (HTTP/2) a request head takes longer than the header timeout.
async fn drive<C, E>(
    conn: C,
    checks: Checks<'_>,
    shutdown: &CancellationToken,
    graceful: impl Fn(std::pin::Pin<&mut C>),
) where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    let mut overload = checks.overload.subscribe();
    let mut check = checks.next_check();
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
            changed = overload.changed(), if !draining => {
                if changed.is_err() {
                    // The manager is gone (the proxy is stopping): stop watching it.
                    overload = tokio::sync::watch::channel(false).1;
                    continue;
                }
                let over = *overload.borrow_and_update();
                if over && !checks.activity.idle_for().is_zero() {
                    checks.overload.metrics.cx_idle_closed.inc();
                    draining = true;
                    graceful(conn.as_mut());
                }
            }
            _ = tokio::time::sleep(check) => {
                match checks.verdict() {
                    Verdict::Fine(next) => check = next,
                    Verdict::Idle => {
                        if draining {
                            // Asked to close and still open a check later: close.
                            return;
                        }
                        check = checks.next_check();
                        draining = true;
                        graceful(conn.as_mut());
                    }
                    Verdict::Close(why) => {
                        tracing::debug!(reason = why, "downstream connection closed");
                        return;
                    }
                }
            }
        }
    }
}

enum Verdict {
    /// Nothing to do; look again after this long.
    Fine(Duration),
    /// Idle (or, HTTP/2, no request within the header timeout): close gracefully.
    Idle,
    /// Close now.
    Close(&'static str),
}

impl Checks<'_> {
    fn next_check(&self) -> Duration {
        let mut next = self.idle;
        if let Some(s) = self.stream_idle {
            next = next.min(s.saturating_add(STALL_GRACE));
        }
        if let Some((_, h)) = &self.header {
            next = next.min(*h);
        }
        next
    }

    fn verdict(&self) -> Verdict {
        let mut next = self.idle;
        let idle_for = self.activity.idle_for();
        if !idle_for.is_zero() {
            if idle_for >= self.idle {
                return Verdict::Idle;
            }
            next = self.idle - idle_for;
        }
        if let Some(limit) = self.stream_idle {
            // Before a response, the request's own guard answers 408/504 at `stream_idle`;
            // the connection is closed only if it is still stalled a grace period later (a
            // response that stopped moving, or a client that stopped reading it).
            let limit = limit.saturating_add(STALL_GRACE);
            let stalled = self.activity.stalled_for();
            if stalled >= limit {
                return Verdict::Close("stream idle timeout");
            }
            next = next.min(if stalled.is_zero() {
                limit
            } else {
                limit - stalled
            });
        }
        if let Some((blocks, limit)) = &self.header {
            if let Some(waiting) = blocks.waiting_for() {
                if waiting >= *limit {
                    if blocks.block_open() {
                        return Verdict::Close("HTTP/2 request header timeout");
                    }
                    // No request at all within the header timeout: GOAWAY.
                    return Verdict::Idle;
                }
                next = next.min(*limit - waiting);
            } else {
                next = next.min(*limit);
            }
        }
        Verdict::Fine(next.max(Duration::from_millis(1)))
    }
}
