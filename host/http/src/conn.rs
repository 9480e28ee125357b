//! A downstream connection as the HTTP layer sees it: addresses, security, the listener it
//! belongs to, and its activity (for the idle timeout).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;
use weft_framing::GuardHandle;
use weft_observe::AccessLog;

use crate::security::ConnSecurity;

/// Requests in flight on a connection and when the last one ended, for the idle timeout.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    last_end_ms: AtomicU64,
    /// When a request or response body last moved (for the stalled-connection check).
    last_progress_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity::new()
    }
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(0),
        }
    }

    /// A body moved on this connection.
    pub fn touch(&self) {
        self.last_progress_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long requests have been in flight without any body moving (zero when idle: the
    /// idle timeout covers that).
    pub fn stalled_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            return Duration::ZERO;
        }
        let last = self
            .last_progress_ms
            .load(Ordering::Relaxed)
            .max(self.last_end_ms.load(Ordering::Relaxed));
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(last))
    }

    pub(crate) fn begin(&self) {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            self.touch();
        }
    }

    pub(crate) fn end(&self) {
        self.last_end_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// How long the connection has been without a request in flight (zero while busy).
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

impl weft_body::Progress for Activity {
    fn moved(&self) {
        self.touch();
    }

    fn ended(&self) {
        self.touch();
    }
}

/// What every connection shares: the access log, the span exporter and the overload manager.
#[derive(Debug)]
pub struct Shared {
    /// The access log.
    pub access_log: AccessLog,
    /// The span exporter (`None`: tracing is off).
    pub tracer: Option<weft_observe::trace::Exporter>,
    /// The overload manager.
    pub overload: Arc<crate::overload::Overload>,
}

/// What a request handler knows about its connection.
pub struct ConnCtx {
    /// The downstream peer's address.
    pub peer: SocketAddr,
    /// Our address on the connection (the original destination when it was captured).
    pub local: SocketAddr,
    /// The original destination, when a capture listener handed the connection over.
    pub original_dst: Option<SocketAddr>,
    /// The listener it was accepted on.
    pub listener_name: Arc<str>,
    /// What every connection shares.
    pub shared: Arc<Shared>,
    /// Requests in flight, for the idle timeout.
    pub activity: Arc<Activity>,
    /// The HTTP/1 framing guard (`None` on HTTP/2).
    pub guard: Option<GuardHandle>,
    /// HTTP/2.
    pub h2: bool,
    /// Process-wide connection id (`connection.id`).
    pub id: u64,
    /// The peer's IP as a header value (for `x-forwarded-for`).
    pub peer_ip: HeaderValue,
    /// TLS and the verified peer identity (`None`: plaintext).
    pub security: Option<Arc<ConnSecurity>>,
}

/// Process-wide connection ids (`connection.id`).
pub fn next_connection_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `peer`'s IP as a header value.
pub fn peer_ip_value(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_time_runs_on_tokios_clock_only_while_nothing_is_in_flight() {
        let a = Activity::new();
        a.begin();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(a.idle_for(), Duration::ZERO, "busy: never idle");
        a.end();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(a.idle_for(), Duration::from_secs(3));
        a.begin();
        assert_eq!(a.idle_for(), Duration::ZERO);
    }
}
