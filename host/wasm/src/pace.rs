//! Keeping a slow plugin from stalling the other requests of its worker.
//!
//! A guest callback runs on the tokio worker thread that polls the request. One that burns
//! milliseconds of CPU would hold up every other connection of that worker meanwhile, on other
//! routes too. So each plugin keeps a pace: once one of its callbacks has taken
//! [`SLOW_CALL`] of CPU or more, its callbacks for the next [`STAY_SLOW`] run under
//! [`tokio::task::block_in_place`], which hands the worker's other tasks to another thread
//! while the guest runs (multi-threaded runtimes only, i.e. `workers` > 1). Fast plugins barely
//! pay for it: a random one callback in [`SAMPLE`] (and a plugin's first) reads the thread's CPU
//! clock (twice), so a slow plugin is caught within a few of its callbacks. Random, not every
//! `SAMPLE`-th: with four callbacks per request (a bodiless response) a fixed stride of 8 timed
//! only `proxy_on_context_create` and never caught a slow `on_request_headers`. CPU time, not wall
//! time: on a busy machine a trivial callback is often descheduled for longer than
//! [`SLOW_CALL`], and wall time marked such plugins slow for good (every callback then paid a
//! `block_in_place` hand-off: a trivial plugin cost 2.5x the proxy's CPU with two workers). On a current-thread
//! runtime (`workers: 1`) there is no other thread to hand work to, so nothing is timed at all.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A callback using this much CPU marks its plugin slow.
pub const SLOW_CALL: Duration = Duration::from_micros(250);
/// How long a plugin stays slow after its last slow callback.
pub const STAY_SLOW: Duration = Duration::from_secs(10);
/// One callback in this many (at random) is timed (every one while the plugin is slow).
pub const SAMPLE: u32 = 8;

/// One plugin's pace.
#[derive(Debug, Default)]
pub struct Pace {
    /// Until when (ms on [`clock_ms`]) callbacks are run off the worker; 0: never slow yet.
    slow_until_ms: AtomicU64,
    /// Callbacks run off the worker.
    pub offloaded: AtomicU64,
    /// Set once a callback ran (the first one is always timed).
    started: std::sync::atomic::AtomicBool,
}

fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

thread_local! {
    /// The flavor of the runtime this thread was seen running tasks of: 0 unknown (or none),
    /// 1 current-thread, 2 multi-thread. A tokio thread serves one runtime for its life in the
    /// proxy; should a thread be reused by another runtime (tests), a stale "current-thread"
    /// only leaves it unpaced, and "multi-thread" is checked again before `block_in_place`
    /// (which panics on a current-thread runtime).
    static FLAVOR: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// True when callbacks on this thread can never be offloaded (a current-thread runtime).
fn cannot_offload() -> bool {
    FLAVOR.with(|c| {
        let known = c.get();
        if known != 0 {
            return known == 1;
        }
        let flavor = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => 1,
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => 2,
            _ => 0,
        };
        c.set(flavor);
        flavor == 1
    })
}

impl Pace {
    /// Runs one guest callback, off the worker when the plugin has been slow lately.
    pub fn run<R>(&self, call: impl FnOnce() -> R) -> R {
        if cannot_offload() {
            return call();
        }
        let until = self.slow_until_ms.load(Ordering::Relaxed);
        let slow = until != 0 && clock_ms() < until;
        let timed = slow
            || fastrand::u32(..SAMPLE) == 0
            || (!self.started.load(Ordering::Relaxed)
                && !self.started.swap(true, Ordering::Relaxed));
        if !timed {
            return call();
        }
        let offload = slow && on_multi_thread_runtime();
        let start = cpu_time::ThreadTime::now();
        let r = if offload {
            self.offloaded.fetch_add(1, Ordering::Relaxed);
            tokio::task::block_in_place(call)
        } else {
            call()
        };
        // Under `block_in_place` the callback still runs on this thread.
        if start.elapsed() >= SLOW_CALL {
            let stay = u64::try_from(STAY_SLOW.as_millis()).unwrap_or(u64::MAX);
            self.slow_until_ms
                .store(clock_ms().saturating_add(stay), Ordering::Relaxed);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn burn() {
        let t = cpu_time::ThreadTime::now();
        while t.elapsed() < SLOW_CALL * 2 {
            std::hint::spin_loop();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_call_sends_the_next_ones_off_the_worker() {
        let pace = Pace::default();
        pace.run(burn);
        assert_eq!(
            pace.offloaded.load(Ordering::Relaxed),
            0,
            "the first slow call runs inline"
        );
        pace.run(|| ());
        assert_eq!(
            pace.offloaded.load(Ordering::Relaxed),
            1,
            "then off the worker"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_current_thread_runtime_always_runs_inline() {
        let pace = Pace::default();
        pace.run(burn);
        pace.run(|| ());
        assert_eq!(pace.offloaded.load(Ordering::Relaxed), 0);
    }
}
