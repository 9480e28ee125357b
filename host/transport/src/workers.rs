//! Per-worker runtimes for `runtime.accept: reuseport`: each worker is a single-threaded tokio
//! runtime on a thread of its own, and every listener has one `SO_REUSEPORT` socket per worker
//! ([`crate::slot::bind`]), accepted on that worker only. The kernel spreads new connections
//! over the sockets, and a connection, its requests and the upstream connections they open stay
//! on the worker that accepted it: nothing is stolen between workers.
//!
//! The control plane (admin, reloads, xDS, watchers) stays on the runtime that started the
//! proxy. The workers stop when the [`Workers`] is dropped (with the proxy's state); the
//! proxy's drain (its task tracker and shutdown token) covers their connections like any other.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use weft_observe::Metrics;
use weft_observe::metrics::WorkerLabels;

/// One worker: its runtime's handle and its accepted-connections counter.
#[derive(Debug, Clone)]
pub struct Worker {
    /// The worker's runtime.
    pub handle: Handle,
    /// `weft_worker_downstream_cx_total{worker="N"}`.
    pub accepted: Counter,
}

/// The worker runtimes; dropping it stops them (their remaining tasks are dropped).
#[derive(Debug)]
pub struct Workers {
    workers: Vec<Worker>,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `count` workers (`0`: one per core), each a single-threaded runtime on a thread
    /// named `weft-worker-N`.
    pub fn start(count: usize, metrics: &Metrics) -> std::io::Result<Workers> {
        let count = Workers::count(count);
        let stop = CancellationToken::new();
        let mut workers = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let until = stop.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("weft-worker-{i}"))
                .spawn(move || {
                    weft_upstream::worker::enter(i, count);
                    weft_wasm::affinity::enter_worker(i);
                    runtime.block_on(idle_until(until));
                    tracing::debug!(worker = i, "worker stopped");
                });
            if let Err(e) = spawned {
                // The workers already started stop with `stop`.
                stop.cancel();
                return Err(e);
            }
            let accepted = metrics
                .worker_cx
                .get_or_create(&WorkerLabels {
                    worker: i.to_string(),
                })
                .clone();
            workers.push(Worker { handle, accepted });
        }
        Ok(Workers { workers, stop })
    }

    /// How many workers `start(count)` starts: `count`, or one per core for `0`.
    pub fn count(count: usize) -> usize {
        if count == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            count
        }
    }

    /// The workers, in order.
    pub fn all(&self) -> &[Worker] {
        &self.workers
    }
}

/// How far ahead an idle worker's timer driver plans its next wake-up, at most.
///
/// tokio's timer wakes its own driver (an `eventfd` write, and one more turn of the event loop)
/// whenever a timer is registered that expires before the driver's planned wake-up. An idle
/// worker plans it far ahead, so at low load every request's route timeout did that. With a
/// wake-up planned at most this far ahead, timeouts longer than it (route timeouts are seconds)
/// never need it; the cost is one wake-up of an idle worker per period.
const TIMER_HORIZON: std::time::Duration = std::time::Duration::from_secs(1);

/// A worker's main future: idles until `until` is cancelled, keeping the timer driver's
/// planned wake-up within [`TIMER_HORIZON`].
async fn idle_until(until: CancellationToken) {
    let mut horizon = tokio::time::interval(TIMER_HORIZON);
    horizon.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = until.cancelled() => return,
            _ = horizon.tick() => {}
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How listeners are accepted: on the caller's runtime, or on per-worker runtimes.
#[derive(Debug, Clone, Default)]
pub enum Acceptors {
    /// One socket per listener, accepted on the runtime that binds it.
    #[default]
    Shared,
    /// One `SO_REUSEPORT` socket per listener and worker.
    Reuseport(Arc<Workers>),
}
