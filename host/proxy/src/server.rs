//! Listeners: sockets that outlive configuration generations, their accept loops, and the
//! serving of each downstream connection (HTTP/1.1 behind the framing guard, HTTP/2 with prior
//! knowledge, or a TCP proxy).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_framing::{GuardedIo, Limits};

use crate::access_log::{self, AccessLog, Entry};
use crate::generation::{ListenerGen, TcpListener as TcpTarget};
use crate::http_proxy::{self, Activity, ConnCtx, flags};
use crate::metrics::Metrics;
use crate::tcp_filter::{Close, ConnectionProperties, NetFilters};
use crate::tls::ConnSecurity;
use weft_config::schema::TlsMode;
use weft_wasm::PeerType;

/// What every connection shares: metrics and the access log.
#[derive(Debug)]
pub struct Shared {
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// The access log.
    pub access_log: AccessLog,
}

/// A bound listener socket and the configuration its connections use now.
#[derive(Debug)]
pub struct ListenerSlot {
    /// Listener name.
    pub name: Arc<str>,
    /// The address it is bound to (the real port when the configuration said 0).
    pub local_addr: SocketAddr,
    /// The address as configured, to notice a change on reload.
    pub configured_addr: SocketAddr,
    current: ArcSwap<ListenerGen>,
    stop: CancellationToken,
}

impl ListenerSlot {
    /// The listener's configuration in the live generation.
    pub fn current(&self) -> Arc<ListenerGen> {
        self.current.load_full()
    }

    /// Switches new requests and connections to `next`.
    pub fn publish(&self, next: Arc<ListenerGen>) {
        self.current.store(next);
    }

    /// Stops accepting (connections already accepted carry on).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Binds `lgen`'s address and returns its slot; the accept loop starts with [`serve`].
pub async fn bind(lgen: Arc<ListenerGen>) -> std::io::Result<(Arc<ListenerSlot>, TcpListener)> {
    let cfg = lgen.config();
    let socket = match cfg.address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(cfg.address)?;
    let listener = socket.listen(1024)?;
    let slot = Arc::new(ListenerSlot {
        name: cfg.name.as_str().into(),
        local_addr: listener.local_addr()?,
        configured_addr: cfg.address,
        current: ArcSwap::new(lgen),
        stop: CancellationToken::new(),
    });
    Ok((slot, listener))
}

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
                            ListenerGen::Http(_) => {
                                serve_http(stream, peer, slot, shared, shutdown).await
                            }
                            ListenerGen::Tcp(t) => {
                                serve_tcp(stream, peer, t, &shared, shutdown).await
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

fn peer_ip_value(peer: SocketAddr) -> http::HeaderValue {
    http::HeaderValue::from_str(&peer.ip().to_string())
        .unwrap_or(http::HeaderValue::from_static("unknown"))
}

/// Process-wide connection ids (`connection.id`).
fn next_connection_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads ahead (without consuming) until the bytes either start the HTTP/2 preface or cannot.
async fn is_h2_prior_knowledge(stream: &TcpStream, deadline: Duration) -> bool {
    let mut buf = [0u8; 24];
    let probe = async {
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            if buf[..n] != H2_PREFACE[..n] {
                return false;
            }
            if n == H2_PREFACE.len() {
                return true;
            }
            // A partial preface: wait for more bytes.
            if stream.readable().await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(deadline, probe).await.unwrap_or(false)
}

/// Waits (up to `deadline`) for the first byte: a TLS handshake record starts with 0x16, which
/// no HTTP/1 method or HTTP/2 preface does (permissive mode's detection).
async fn starts_with_tls(stream: &TcpStream, deadline: Duration) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(deadline, stream.peek(&mut first)).await,
        Ok(Ok(1))
    ) && first[0] == 0x16
}

async fn serve_http(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<ListenerSlot>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let lgen = slot.current();
    let settings = lgen.config().http.clone();
    let local = stream.local_addr().unwrap_or(slot.local_addr);
    let tls = match &*lgen {
        ListenerGen::Http(h) => h.tls.clone(),
        ListenerGen::Tcp(_) => None,
    };
    if let Some(tls) = tls {
        let use_tls = match tls.mode {
            TlsMode::Strict => true,
            TlsMode::Permissive => starts_with_tls(&stream, settings.request_header_timeout).await,
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
            let conn = Conn {
                peer,
                local,
                security: Some(Arc::new(security)),
            };
            serve_http_io(stream, h2, conn, slot, shared, shutdown).await;
            return;
        }
    }
    shared
        .metrics
        .tls
        .connection(&slot.name, crate::tls::policy::NONE);
    let h2 = is_h2_prior_knowledge(&stream, settings.request_header_timeout).await;
    let conn = Conn {
        peer,
        local,
        security: None,
    };
    serve_http_io(stream, h2, conn, slot, shared, shutdown).await;
}

/// Addresses and security of an accepted downstream connection.
struct Conn {
    peer: SocketAddr,
    local: SocketAddr,
    security: Option<Arc<ConnSecurity>>,
}

async fn serve_http_io<IO>(
    stream: IO,
    h2: bool,
    conn: Conn,
    slot: Arc<ListenerSlot>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        peer,
        local,
        security,
    } = conn;
    let lgen = slot.current();
    let settings = lgen.config().http.clone();
    let activity = Arc::new(Activity::new());
    let id = next_connection_id();
    let idle = settings.idle_timeout;

    if h2 {
        let ctx = Arc::new(ConnCtx {
            peer,
            slot: slot.clone(),
            shared: shared.clone(),
            activity: activity.clone(),
            guard: None,
            h2: true,
            local,
            id,
            peer_ip: peer_ip_value(peer),
            security: security.clone(),
        });
        let service = service_fn(move |req| http_proxy::handle(req, ctx.clone()));
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(settings.max_request_headers_bytes as u32)
            .max_concurrent_streams(1024)
            .serve_connection(TokioIo::new(stream), service);
        drive(conn, &activity, idle, &shutdown, |c| c.graceful_shutdown()).await;
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
        slot: slot.clone(),
        shared: shared.clone(),
        activity: activity.clone(),
        guard: Some(guard.clone()),
        h2: false,
        local,
        id,
        peer_ip: peer_ip_value(peer),
        security,
    });
    let service = service_fn(move |req| http_proxy::handle(req, ctx.clone()));
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
        let lgen = slot.current();
        lgen.metrics().rejected(rejection.reason());
        lgen.metrics().rq[crate::metrics::class_index(rejection.status())].inc();
        lgen.metrics().flag(flags::DOWNSTREAM_PROTOCOL_ERROR);
        shared.access_log.log(Entry {
            start_time: access_log::rfc3339(SystemTime::now()),
            listener: slot.name.clone(),
            protocol: "HTTP/1.1",
            status: Some(rejection.status()),
            response_flags: flags::DOWNSTREAM_PROTOCOL_ERROR,
            downstream_remote_address: peer.to_string(),
            details: Some(rejection.reason().to_owned()),
            ..Entry::default()
        });
    }
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

/// When bytes last moved on a TCP connection, for its idle timeout.
struct IdleClock {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl IdleClock {
    fn new() -> IdleClock {
        IdleClock {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Runs `work` to its end, unless the proxy shuts down or nothing moves for `idle` (then
/// `None`, with the reason in the access-log entry).
async fn until_idle<R>(
    work: impl std::future::Future<Output = R>,
    clock: &IdleClock,
    idle: Duration,
    shutdown: &CancellationToken,
    entry: &mut Entry,
) -> Option<R> {
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            r = work.as_mut() => return Some(r),
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(idle) => {
                if clock.idle_for() >= idle {
                    entry.details = Some("idle timeout".to_owned());
                    return None;
                }
            }
        }
    }
}

/// Counts activity on a TCP stream for the idle timeout.
struct Metered<'a, S> {
    inner: S,
    clock: &'a IdleClock,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<'_, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.touch();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<'_, S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Bytes both ways, untouched, until either side closes or the connection idles out.
async fn copy_plain(
    downstream: &mut TcpStream,
    upstream: &mut TcpStream,
    idle: Duration,
    shutdown: &CancellationToken,
    entry: &mut Entry,
) -> (u64, u64) {
    let clock = IdleClock::new();
    let mut down = Metered {
        inner: downstream,
        clock: &clock,
    };
    let mut up = Metered {
        inner: upstream,
        clock: &clock,
    };
    let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
    match until_idle(copy, &clock, idle, shutdown, entry).await {
        Some(Ok(totals)) => totals,
        _ => (0, 0),
    }
}

/// One direction through the network filters until the sender closes; returns bytes sent.
async fn pump(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    pipe: &mut crate::tcp_filter::NetPipe,
    clock: &IdleClock,
) -> Result<u64, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).await.map_err(|e| e.to_string())?;
        clock.touch();
        let out = pipe.push(&buf[..n], n == 0).map_err(|c| c.0)?;
        total += out.len() as u64;
        to.write_all(&out).await.map_err(|e| e.to_string())?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(total);
        }
    }
}

/// Bytes both ways through the network filters.
async fn copy_filtered(
    downstream: &mut TcpStream,
    upstream: &mut TcpStream,
    filters: &NetFilters,
    idle: Duration,
    shutdown: &CancellationToken,
    entry: &mut Entry,
) -> (u64, u64) {
    let (mut dr, mut dw) = downstream.split();
    let (mut ur, mut uw) = upstream.split();
    let mut to_up = filters.pipe(true);
    let mut to_down = filters.pipe(false);
    let clock = IdleClock::new();
    let both = async {
        tokio::try_join!(
            pump(&mut dr, &mut uw, &mut to_up, &clock),
            pump(&mut ur, &mut dw, &mut to_down, &clock)
        )
    };
    match until_idle(both, &clock, idle, shutdown, entry).await {
        Some(Ok(totals)) => totals,
        Some(Err(why)) => {
            entry.details = Some(why);
            (0, 0)
        }
        None => (0, 0),
    }
}

async fn serve_tcp(
    mut downstream: TcpStream,
    peer: SocketAddr,
    target: &TcpTarget,
    shared: &Shared,
    shutdown: CancellationToken,
) {
    let start = Instant::now();
    let cluster = &target.cluster;
    let mut entry = Entry {
        start_time: access_log::rfc3339(SystemTime::now()),
        listener: target.name.clone(),
        protocol: "TCP",
        upstream_cluster: Some(cluster.name.clone()),
        downstream_remote_address: peer.to_string(),
        response_flags: flags::NONE,
        ..Entry::default()
    };
    let endpoint = cluster.endpoints().pick(None).cloned();
    let Some(endpoint) = endpoint else {
        entry.response_flags = flags::NO_HEALTHY_UPSTREAM;
        target.metrics.flag(flags::NO_HEALTHY_UPSTREAM);
        shared.access_log.log(entry);
        return;
    };
    entry.upstream_host = Some(endpoint.addr.to_string());
    endpoint.active.fetch_add(1, Ordering::Relaxed);
    endpoint.rq_total.fetch_add(1, Ordering::Relaxed);
    let connect = tokio::time::timeout(
        cluster.config.connect_timeout,
        TcpStream::connect(endpoint.addr),
    )
    .await;
    let mut upstream = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => {
            cluster.metrics.cx_connect_fail.inc();
            endpoint.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
            endpoint.active.fetch_sub(1, Ordering::Relaxed);
            entry.response_flags = flags::UPSTREAM_CONNECT_FAILURE;
            target.metrics.flag(flags::UPSTREAM_CONNECT_FAILURE);
            shared.access_log.log(entry);
            return;
        }
    };
    cluster.metrics.cx_total.inc();
    let _ = upstream.set_nodelay(true);
    let idle = target
        .config
        .tcp
        .as_ref()
        .map_or(Duration::from_secs(3600), |t| t.idle_timeout);
    let (received, sent) = if target.wasm.is_empty() {
        copy_plain(&mut downstream, &mut upstream, idle, &shutdown, &mut entry).await
    } else {
        let local = downstream.local_addr().unwrap_or(peer);
        let props = Arc::new(ConnectionProperties::new(peer, local, next_connection_id()));
        match NetFilters::start(&target.wasm, props) {
            Ok(filters) => {
                let r = copy_filtered(
                    &mut downstream,
                    &mut upstream,
                    &filters,
                    idle,
                    &shutdown,
                    &mut entry,
                )
                .await;
                filters.finish(PeerType::Remote);
                r
            }
            Err(Close(why)) => {
                entry.details = Some(why);
                (0, 0)
            }
        }
    };
    endpoint.active.fetch_sub(1, Ordering::Relaxed);
    entry.bytes_received = received;
    entry.bytes_sent = sent;
    entry.duration_ms = start.elapsed().as_secs_f64() * 1000.0;
    shared.access_log.log(entry);
}
