//! The overload manager (Envoy's idea, reduced to one memory watermark): a task samples the
//! process's resident memory every `overload.refresh_interval`; while it is above
//! `overload.max_rss_bytes`, listeners stop accepting (the transport waits on
//! [`Overload::wait_until_normal`]), idle connections are closed (each connection's driver
//! watches [`Overload::subscribe`]) and new requests are answered 503 with flag `OM`
//! ([`Overload::active`], checked by the request driver).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_config::schema;
use weft_observe::metrics::OverloadMetrics;

/// The process-wide overload state.
#[derive(Debug)]
pub struct Overload {
    state: watch::Sender<bool>,
    max_rss: AtomicU64,
    interval: Mutex<Duration>,
    /// Its metric series.
    pub metrics: OverloadMetrics,
}

impl Overload {
    /// A manager that is off until [`Overload::configure`] gives it a watermark.
    pub fn new(metrics: OverloadMetrics) -> Overload {
        Overload {
            state: watch::Sender::new(false),
            max_rss: AtomicU64::new(0),
            interval: Mutex::new(schema::defaults::overload_refresh_interval()),
            metrics,
        }
    }

    /// Applies a generation's `overload` section (0 turns the manager off).
    pub fn configure(&self, cfg: &schema::Overload) {
        self.max_rss.store(cfg.max_rss_bytes, Ordering::Relaxed);
        *self.interval.lock() = cfg.refresh_interval;
        if cfg.max_rss_bytes == 0 {
            self.set(false);
        }
    }

    /// Whether the process is over its watermark now.
    pub fn active(&self) -> bool {
        *self.state.borrow()
    }

    /// Changes of the state, for connection drivers (close when idle) and accept loops.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }

    /// Returns at once when not overloaded; otherwise when the state clears.
    pub async fn wait_until_normal(&self) {
        let mut rx = self.state.subscribe();
        let _ = rx.wait_for(|over| !over).await;
    }

    fn set(&self, over: bool) {
        let changed = self.state.send_if_modified(|s| {
            let changed = *s != over;
            *s = over;
            changed
        });
        if changed {
            self.metrics.active.set(i64::from(over));
            if over {
                tracing::warn!(
                    "overload: resident memory above overload.max_rss_bytes; shedding load"
                );
            } else {
                tracing::info!("overload: resident memory back under the watermark");
            }
        }
    }

    /// One sample: reads the resident memory and updates the state.
    pub fn sample(&self) {
        let max = self.max_rss.load(Ordering::Relaxed);
        if max == 0 {
            return self.set(false);
        }
        if let Some(rss) = resident_bytes() {
            self.metrics
                .rss_bytes
                .set(i64::try_from(rss).unwrap_or(i64::MAX));
            self.set(rss > max);
        }
    }

    /// Samples until `shutdown`.
    pub fn spawn_sampler(self: &Arc<Self>, shutdown: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let every = *this.interval.lock();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => this.sample(),
                }
            }
        });
    }
}

/// The process's resident memory (`VmRSS` of `/proc/self/status`; `None` where there is no
/// procfs).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_procfs() {
        let rss = resident_bytes().unwrap();
        assert!(rss > 1024 * 1024, "{rss}");
    }

    #[test]
    fn the_watermark_switches_the_state_both_ways() {
        let o = Overload::new(OverloadMetrics::default());
        o.sample();
        assert!(!o.active(), "off without a watermark");
        o.configure(&schema::Overload {
            max_rss_bytes: 1,
            refresh_interval: Duration::from_secs(1),
        });
        o.sample();
        assert!(o.active());
        assert_eq!(o.metrics.active.get(), 1);
        o.configure(&schema::Overload {
            max_rss_bytes: u64::MAX,
            refresh_interval: Duration::from_secs(1),
        });
        o.sample();
        assert!(!o.active());
        assert_eq!(o.metrics.active.get(), 0);
    }
}
