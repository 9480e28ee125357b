//! The TCP proxy: bytes both ways between a downstream connection and an endpoint of the
//! listener's cluster, optionally through proxy-wasm network filters ([`filters`]).

pub mod filters;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use weft_observe::access_log::{self, Entry};
use weft_observe::flags;
use weft_observe::istio::{Reporter, TcpReport};
use weft_upstream::tls::UpstreamIo;
use weft_wasm::PeerType;
use weft_wasm::bytes::BytesMut;

use crate::slot::TcpTarget;
use filters::{Close, ConnectionProperties, NetFilters, NetPipe};

/// When bytes last moved on a TCP connection (for its idle timeout), and how many moved each
/// way so far (for Istio's periodic reports while it is open).
struct IdleClock {
    epoch: Instant,
    last_ms: AtomicU64,
    /// Bytes read from the downstream.
    received: AtomicU64,
    /// Bytes read from the upstream.
    sent: AtomicU64,
}

impl IdleClock {
    fn new() -> IdleClock {
        IdleClock {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
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

    fn moved(&self) -> (u64, u64) {
        (
            self.received.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed),
        )
    }
}

/// Istio's TCP byte counters for one open connection: what has been reported so far, so each
/// report (every `interval`, and the last at close) adds only the bytes since the previous one.
struct TcpReporting<'a> {
    reporting: &'a weft_observe::istio::Reporting,
    reporter: Reporter,
    interval: Duration,
    reported: (u64, u64),
}

impl TcpReporting<'_> {
    /// Reports the bytes moved since the last report (`closed`: the connection ended).
    fn report(&mut self, moved: (u64, u64), closed: bool) {
        let received = moved.0.saturating_sub(self.reported.0);
        let sent = moved.1.saturating_sub(self.reported.1);
        self.reported = (self.reported.0.max(moved.0), self.reported.1.max(moved.1));
        if received == 0 && sent == 0 && !closed {
            return;
        }
        self.reporting.record_tcp(
            &tcp_report(self.reporter, flags::NONE),
            false,
            closed,
            sent,
            received,
        );
    }
}

/// Runs `work` to its end, unless the proxy shuts down or nothing moves for `idle` (then
/// `None`, with the reason in the access-log entry). Meanwhile, reports the bytes moved to
/// Istio's metrics every reporting interval.
async fn until_idle<R>(
    work: impl std::future::Future<Output = R>,
    clock: &IdleClock,
    idle: Duration,
    shutdown: &CancellationToken,
    entry: &mut Entry,
    istio: &mut Option<TcpReporting<'_>>,
) -> Option<R> {
    let mut work = std::pin::pin!(work);
    let every = istio
        .as_ref()
        .map_or(Duration::from_secs(3600), |r| r.interval);
    let mut report = tokio::time::interval_at(Instant::now() + every, every);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            _ = report.tick(), if istio.is_some() => {
                if let Some(r) = istio.as_mut() {
                    r.report(clock.moved(), false);
                }
            }
        }
    }
}

/// Counts activity on a TCP stream for the idle timeout, and the bytes read from it.
struct Metered<'a, S> {
    inner: S,
    clock: &'a IdleClock,
    read: &'a AtomicU64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<'_, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.clock.touch();
            self.read.fetch_add(n as u64, Ordering::Relaxed);
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

/// How a TCP connection is watched while it is copied: its idle timeout, the proxy's
/// shutdown, Istio's periodic byte reports, and its access-log entry.
struct Watch<'a, 'r> {
    clock: IdleClock,
    idle: Duration,
    shutdown: &'a CancellationToken,
    entry: &'a mut Entry,
    istio: Option<TcpReporting<'r>>,
}

/// Bytes both ways, untouched, until either side closes or the connection idles out; returns
/// (received from downstream, sent to downstream).
async fn copy_plain(
    downstream: &mut TcpStream,
    upstream: &mut UpstreamIo,
    w: &mut Watch<'_, '_>,
) -> (u64, u64) {
    let mut down = Metered {
        inner: downstream,
        clock: &w.clock,
        read: &w.clock.received,
    };
    let mut up = Metered {
        inner: upstream,
        clock: &w.clock,
        read: &w.clock.sent,
    };
    let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
    match until_idle(copy, &w.clock, w.idle, w.shutdown, w.entry, &mut w.istio).await {
        Some(Ok(totals)) => totals,
        // Cut short: what moved until then.
        _ => w.clock.moved(),
    }
}

/// Writes a buffer's chunks in order: one `write_all` for a single chunk (the usual case: the
/// bytes as read), else vectored writes, so that a chunk a plugin prepended leaves with the data
/// in one segment rather than as a write of its own.
async fn write_chunks(
    to: &mut (impl AsyncWrite + Unpin),
    out: weft_wasm::BodyBuffer,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    use weft_wasm::bytes::Buf;
    if out.chunk_count() <= 1 {
        return to.write_all(&out.into_bytes()).await;
    }
    let mut chunks: std::collections::VecDeque<_> = out.into_chunks().collect();
    while !chunks.is_empty() {
        let slices: Vec<std::io::IoSlice<'_>> =
            chunks.iter().map(|c| std::io::IoSlice::new(c)).collect();
        let mut n = to.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let Some(first) = chunks.front_mut() else {
                break;
            };
            if n >= first.len() {
                n -= first.len();
                chunks.pop_front();
            } else {
                first.advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}

/// Bytes read from a socket at a time by [`pump`].
const READ_SIZE: usize = 16 * 1024;

/// One direction through the network filters until the sender closes; returns bytes sent.
async fn pump(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    pipe: &mut NetPipe,
    clock: &IdleClock,
    moved: &AtomicU64,
) -> Result<u64, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Each read lands in `buf` and goes through the plugins as that same allocation (a
    // `Bytes`), written out chunk by chunk: no copy unless a plugin rewrites the data. Once the
    // chunk has been written and dropped, `reserve` takes the allocation back.
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut total = 0u64;
    loop {
        buf.reserve(READ_SIZE);
        let n = from.read_buf(&mut buf).await.map_err(|e| e.to_string())?;
        clock.touch();
        let out = pipe.push(buf.split().freeze(), n == 0).map_err(|c| c.0)?;
        let len = out.len() as u64;
        write_chunks(to, out).await.map_err(|e| e.to_string())?;
        total += len;
        moved.fetch_add(len, Ordering::Relaxed);
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(total);
        }
    }
}

/// Bytes both ways through the network filters.
async fn copy_filtered(
    downstream: &mut TcpStream,
    upstream: &mut UpstreamIo,
    filters: &NetFilters,
    w: &mut Watch<'_, '_>,
) -> (u64, u64) {
    let (mut dr, mut dw) = downstream.split();
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let mut to_up = filters.pipe(true);
    let mut to_down = filters.pipe(false);
    let clock = &w.clock;
    let both = async {
        tokio::try_join!(
            pump(&mut dr, &mut uw, &mut to_up, clock, &clock.received),
            pump(&mut ur, &mut dw, &mut to_down, clock, &clock.sent)
        )
    };
    match until_idle(both, clock, w.idle, w.shutdown, w.entry, &mut w.istio).await {
        Some(Ok(totals)) => totals,
        Some(Err(why)) => {
            w.entry.details = Some(why);
            clock.moved()
        }
        None => clock.moved(),
    }
}

/// Istio's view of a TCP connection: TCP listeners are plaintext, so no SPIFFE identities.
fn tcp_report(reporter: Reporter, flags: &str) -> TcpReport<'_> {
    TcpReport {
        reporter,
        peer_principal: None,
        local_principal: None,
        flags,
    }
}

/// Proxies one TCP connection to an endpoint of the listener's cluster (over the cluster's
/// TLS when it has one; to `original_dst` for an `original_dst` cluster), through the network
/// plugins if any, until either side closes, the connection idles out, or the proxy drains;
/// then logs it.
pub(crate) async fn serve(
    mut downstream: TcpStream,
    peer: SocketAddr,
    target: &TcpTarget,
    shared: &weft_http::Shared,
    shutdown: CancellationToken,
    original_dst: Option<SocketAddr>,
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
    let reporter = Reporter::of(target.config.traffic_direction);
    // Istio: a connection that never reaches an upstream is opened and closed at once.
    let istio_failed = |flag: &str| {
        if let Some(r) = &target.istio {
            r.record_tcp(&tcp_report(reporter, flag), true, true, 0, 0);
        }
    };
    let endpoint = if cluster.is_original_dst() {
        original_dst.map(|dst| cluster.original_dst_endpoint(dst))
    } else {
        cluster.endpoints().pick(None).cloned()
    };
    let Some(endpoint) = endpoint else {
        entry.response_flags = flags::NO_HEALTHY_UPSTREAM;
        target.metrics.flag(flags::NO_HEALTHY_UPSTREAM);
        istio_failed(flags::NO_HEALTHY_UPSTREAM);
        shared.access_log.log(entry);
        return;
    };
    entry.upstream_host = Some(endpoint.addr.to_string());
    endpoint.active.fetch_add(1, Ordering::Relaxed);
    endpoint.rq_total.fetch_add(1, Ordering::Relaxed);
    let mut upstream = match cluster.connect(&endpoint).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, error = %e, "upstream connect failure");
            cluster.metrics.cx_connect_fail.inc();
            endpoint.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
            endpoint.active.fetch_sub(1, Ordering::Relaxed);
            entry.response_flags = flags::UPSTREAM_CONNECT_FAILURE;
            target.metrics.flag(flags::UPSTREAM_CONNECT_FAILURE);
            istio_failed(flags::UPSTREAM_CONNECT_FAILURE);
            shared.access_log.log(entry);
            return;
        }
    };
    if let Some(r) = &target.istio {
        r.record_tcp(&tcp_report(reporter, flags::NONE), true, false, 0, 0);
    }
    let idle = target
        .config
        .tcp
        .as_ref()
        .map_or(Duration::from_secs(3600), |t| t.idle_timeout);
    let mut watch = Watch {
        clock: IdleClock::new(),
        idle,
        shutdown: &shutdown,
        entry: &mut entry,
        istio: target.istio.as_deref().map(|r| TcpReporting {
            reporting: r,
            reporter,
            interval: r.tcp_reporting_interval(),
            reported: (0, 0),
        }),
    };
    let (received, sent) = if target.wasm.is_empty() {
        copy_plain(&mut downstream, &mut upstream, &mut watch).await
    } else {
        let local = original_dst.unwrap_or_else(|| downstream.local_addr().unwrap_or(peer));
        let props = Arc::new(ConnectionProperties::new(
            peer,
            local,
            weft_http::conn::next_connection_id(),
        ));
        match NetFilters::start(&target.wasm, props) {
            Ok(filters) => {
                let r = copy_filtered(&mut downstream, &mut upstream, &filters, &mut watch).await;
                filters.finish(PeerType::Remote);
                r
            }
            Err(Close(why)) => {
                watch.entry.details = Some(why);
                (0, 0)
            }
        }
    };
    endpoint.active.fetch_sub(1, Ordering::Relaxed);
    // The bytes not reported yet, and the close.
    if let Some(mut r) = watch.istio.take() {
        r.report((received, sent), true);
    }
    entry.bytes_received = received;
    entry.bytes_sent = sent;
    entry.duration_ms = start.elapsed().as_secs_f64() * 1000.0;
    shared.access_log.log(entry);
}
