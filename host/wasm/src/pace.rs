//! Keeping a slow plugin from stalling the other requests of its worker.
//!
//! A guest callback runs on the tokio worker thread that polls the request. One that burns
//! milliseconds of CPU would hold up every other connection of that worker meanwhile, on other
//! routes too. So each plugin keeps a pace: once one of its callbacks has taken
//! [`SLOW_CALL`] of CPU or more twice within [`STRIKE_WINDOW`] (or once [`VERY_SLOW_CALL`]), its
//! callbacks for the next [`STAY_SLOW`] run off the worker. One callback between the two bounds
//! alone is not enough: the kernel charges the work it does on an interrupt (network softirqs,
//! page faults) to the thread it interrupts, and under load a trivial callback now and then
//! shows a few hundred µs; marking the plugin slow on that would send all its callbacks to the
//! low-priority offload threads for 10 s (measured: a trivial plugin at 0.32× the req/s). For
//! the same reason a slow period ends early after [`RECOVER`] fast callbacks in a row (every
//! callback is timed while slow): a plugin slow in one callback (say `on_request_headers`) has a
//! slow one among every few, a plugin marked slow by the kernel's noise recovers within a few
//! requests.
//!
//! - on a multi-threaded runtime (`runtime.accept: shared` with `workers` > 1) under
//!   [`tokio::task::block_in_place`], which hands the worker's other tasks to another thread
//!   while the guest runs on this one;
//! - on a current-thread runtime (every `runtime.accept: reuseport` worker, and `workers: 1`),
//!   where `block_in_place` is impossible, the async call sites of the HTTP exchange ask
//!   [`Pace::offload_now`] and, when it says so, hand the one callback to an offload thread
//!   with [`off_worker`] ([`crate::offload`]: threads at the lowest CPU priority, so the slow
//!   callback gets only the CPU the workers leave) and await it: the worker keeps serving its
//!   other connections meanwhile. The stream's data is owned by the stream (headers are moved into it
//!   for the callback), so nothing is copied for the hand-off. Synchronous call sites (body
//!   callbacks inside a body poll, trailers, `on_log`/`on_done`/`on_delete` at the end, context
//!   creation, root callbacks such as `on_tick`) run inline, timed like any other.
//!   `WEFT_OFFLOAD=pool` in the environment uses the offload threads on multi-threaded runtimes
//!   too, `WEFT_OFFLOAD=off` times callbacks but never marks a plugin slow (benchmark switches:
//!   comparing the two hand-offs; measuring a fast plugin's cost under callgrind, where every
//!   callback takes long enough to look slow).
//!
//! While an offloaded callback runs, it holds its instance (the instance's gate and lock): other
//! streams of that instance wait for the gate asynchronously at their async call sites; their
//! synchronous ones wait on the instance lock for at most that one callback, as on a
//! multi-threaded runtime. Bound: a stream only hands a callback over once it holds its
//! instance's gate, so at most one callback per instance is offloaded (queued for or running on
//! an offload thread) at any time, whatever the load, and nothing is queued unboundedly
//! (waiters wait for the gate).
//!
//! Fast plugins barely pay for it: a random one callback in [`SAMPLE`] is timed on the
//! monotonic clock (no system call: the vDSO), so a slow plugin is caught within a few of its
//! callbacks. Wall time only screens: a sampled callback that took [`SLOW_CALL`] of wall time
//! may have been descheduled, so it marks nothing but makes the plugin *suspect*, and then every
//! callback reads the thread's CPU clock (two system calls) until [`RECOVER`] in a row were
//! fast. (Reading the CPU clock on every sampled callback cost a fast plugin one system call per
//! request: `clock_gettime(CLOCK_THREAD_CPUTIME_ID)` has no vDSO path.) A plugin's first
//! callback is always timed on the CPU clock.
//!
//! Random, not every `SAMPLE`-th: with four callbacks per request (a bodiless response) a
//! fixed stride of 8 timed only `proxy_on_context_create` and never caught a slow
//! `on_request_headers`. The CPU clock decides, not wall time: on a busy machine a trivial
//! callback is often descheduled for longer than [`SLOW_CALL`], and wall time marked such
//! plugins slow for good (every callback then paid a `block_in_place` hand-off: a trivial plugin
//! cost 2.5x the proxy's CPU with two workers).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A callback using this much CPU marks its plugin slow.
pub const SLOW_CALL: Duration = Duration::from_micros(250);
/// A callback using this much CPU marks its plugin slow at once.
pub const VERY_SLOW_CALL: Duration = Duration::from_millis(1);
/// Two [`SLOW_CALL`]s this close mark the plugin slow.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(1);
/// This many fast callbacks in a row end a slow period.
pub const RECOVER: u64 = 16;
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
    /// When (ms on [`clock_ms`]; 0 is never) the last [`SLOW_CALL`] ended.
    last_strike_ms: AtomicU64,
    /// Fast callbacks in a row while slow.
    fast_streak: AtomicU64,
    /// A sampled callback took [`SLOW_CALL`] of wall time: every callback is timed on the
    /// CPU clock until [`RECOVER`] in a row were fast.
    suspect: std::sync::atomic::AtomicBool,
    /// Fast CPU-timed callbacks in a row while suspect.
    suspect_streak: AtomicU64,
}

/// Milliseconds since the first call, plus one: 0 never reads as a time, so it can mean "never".
fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// What this thread runs tasks of (see [`FLAVOR`]).
const UNKNOWN: u8 = 0;
const CURRENT_THREAD: u8 = 1;
const MULTI_THREAD: u8 = 2;

thread_local! {
    /// The flavor of the runtime this thread was seen running tasks of: 0 unknown (or none),
    /// 1 current-thread, 2 multi-thread. A tokio thread serves one runtime for its life in the
    /// proxy; should a thread be reused by another runtime (tests), a stale flavor only picks
    /// the wrong hand-off for a slow plugin: "multi-thread" is checked again before
    /// `block_in_place` (which panics on a current-thread runtime), and a stale
    /// "current-thread" hands slow callbacks to the offload threads, which works on both.
    static FLAVOR: std::cell::Cell<u8> = const { std::cell::Cell::new(UNKNOWN) };
    /// Set while [`off_worker`] runs a callback on an offload thread.
    static OFFLOADED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The flavor of the runtime whose task this thread runs (cached per thread).
fn flavor() -> u8 {
    FLAVOR.with(|c| {
        let known = c.get();
        if known != UNKNOWN {
            return known;
        }
        let flavor = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => CURRENT_THREAD,
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => MULTI_THREAD,
            _ => UNKNOWN,
        };
        c.set(flavor);
        flavor
    })
}

/// Runs `call` (one guest callback of a slow plugin, see [`Pace::offload_now`]) on one of the
/// low-priority offload threads ([`crate::offload`]) and waits for it without blocking the
/// worker. A panic in `call` is resumed here; `None` when it could not run.
pub async fn off_worker<R: Send + 'static>(call: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    crate::offload::run(move || {
        OFFLOADED.with(|c| c.set(true));
        // Reset even when `call` unwinds: the thread goes on with other jobs.
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                OFFLOADED.with(|c| c.set(false));
            }
        }
        let _reset = Reset;
        call()
    })
    .await
}

/// The `WEFT_OFFLOAD` environment variable (read once; a benchmark switch, see
/// docs/performance.md): unset, the hand-offs above; `pool`, the offload threads on
/// multi-threaded runtimes too, instead of `block_in_place`, to compare the two; `off`,
/// callbacks are sampled and timed as a fast plugin's are, but never mark the plugin slow
/// (callgrind: it measures what a fast plugin pays; under callgrind every callback would
/// otherwise look slow and go off the worker).
fn switch() -> u8 {
    static SWITCH: OnceLock<u8> = OnceLock::new();
    *SWITCH.get_or_init(|| match std::env::var("WEFT_OFFLOAD").as_deref() {
        Ok("pool") => POOL,
        Ok("off") => OFF,
        _ => DEFAULT,
    })
}

const DEFAULT: u8 = 0;
const POOL: u8 = 1;
const OFF: u8 = 2;

fn pool_everywhere() -> bool {
    switch() == POOL
}

impl Pace {
    fn slow(&self) -> bool {
        let until = self.slow_until_ms.load(Ordering::Relaxed);
        until != 0 && clock_ms() < until
    }

    /// True when the caller, an async call site on a current-thread runtime, should run the
    /// plugin's next callback through [`off_worker`]: the plugin has been slow lately. Always
    /// false on a multi-threaded runtime ([`Pace::run`] uses `block_in_place` there) and off a
    /// runtime. One relaxed load while the plugin is fast.
    pub fn offload_now(&self) -> bool {
        self.slow_until_ms.load(Ordering::Relaxed) != 0
            && switch() != OFF
            && match flavor() {
                CURRENT_THREAD => true,
                MULTI_THREAD => pool_everywhere(),
                _ => false,
            }
            && self.slow()
    }

    /// Runs one guest callback, timing a sample of them; on a multi-threaded runtime off the
    /// worker (`block_in_place`) when the plugin has been slow lately.
    pub fn run<R>(&self, call: impl FnOnce() -> R) -> R {
        if OFFLOADED.with(|c| c.get()) {
            // Already on an offload thread (`off_worker`): count and time it.
            self.offloaded.fetch_add(1, Ordering::Relaxed);
            return self.timed(call);
        }
        let slow = self.slow();
        let cpu_timed = slow
            || self.suspect.load(Ordering::Relaxed)
            || (!self.started.load(Ordering::Relaxed)
                && !self.started.swap(true, Ordering::Relaxed));
        if !cpu_timed {
            if fastrand::u32(..SAMPLE) == 0 {
                return self.screened(call);
            }
            return call();
        }
        if slow && flavor() == MULTI_THREAD && switch() == DEFAULT && on_multi_thread_runtime() {
            self.offloaded.fetch_add(1, Ordering::Relaxed);
            // Under `block_in_place` the callback still runs on this thread.
            return self.timed(|| tokio::task::block_in_place(call));
        }
        self.timed(call)
    }

    /// Runs a sampled callback timed on the monotonic clock: one that took [`SLOW_CALL`] of
    /// wall time makes the plugin suspect (its next callbacks are timed on the CPU clock).
    fn screened<R>(&self, call: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let r = call();
        if start.elapsed() >= SLOW_CALL && switch() != OFF {
            self.suspect_streak.store(0, Ordering::Relaxed);
            self.suspect.store(true, Ordering::Relaxed);
        }
        r
    }

    /// Runs `call`, marking the plugin slow when it took [`VERY_SLOW_CALL`] of this thread's
    /// CPU, or [`SLOW_CALL`] within [`STRIKE_WINDOW`] of another such callback.
    fn timed<R>(&self, call: impl FnOnce() -> R) -> R {
        let start = cpu_time::ThreadTime::now();
        let r = call();
        let used = start.elapsed();
        if used < SLOW_CALL {
            if self.suspect.load(Ordering::Relaxed)
                && self.suspect_streak.fetch_add(1, Ordering::Relaxed) + 1 >= RECOVER
            {
                self.suspect.store(false, Ordering::Relaxed);
            }
            if self.slow_until_ms.load(Ordering::Relaxed) != 0
                && self.fast_streak.fetch_add(1, Ordering::Relaxed) + 1 >= RECOVER
            {
                self.fast_streak.store(0, Ordering::Relaxed);
                self.slow_until_ms.store(0, Ordering::Relaxed);
            }
        } else if switch() != OFF {
            self.fast_streak.store(0, Ordering::Relaxed);
            self.suspect_streak.store(0, Ordering::Relaxed);
            let now = clock_ms();
            let window = u64::try_from(STRIKE_WINDOW.as_millis()).unwrap_or(u64::MAX);
            let last = self.last_strike_ms.swap(now, Ordering::Relaxed);
            let again = last != 0 && now.saturating_sub(last) <= window;
            if used >= VERY_SLOW_CALL || again {
                let stay = u64::try_from(STAY_SLOW.as_millis()).unwrap_or(u64::MAX);
                self.slow_until_ms
                    .store(now.saturating_add(stay), Ordering::Relaxed);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn burn() {
        let t = cpu_time::ThreadTime::now();
        while t.elapsed() < VERY_SLOW_CALL * 2 {
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

    #[test]
    fn a_run_of_fast_calls_ends_a_slow_period() {
        let pace = Pace::default();
        pace.timed(burn);
        assert!(pace.slow());
        for _ in 0..RECOVER - 1 {
            pace.timed(|| ());
        }
        assert!(pace.slow(), "fewer than RECOVER fast calls keep it slow");
        pace.timed(burn);
        for _ in 0..RECOVER - 1 {
            pace.timed(|| ());
        }
        assert!(pace.slow(), "a slow call restarts the count");
        pace.timed(|| ());
        assert!(
            !pace.slow(),
            "RECOVER fast calls in a row end the slow period"
        );
    }

    #[test]
    fn one_moderately_slow_call_is_not_enough_two_close_together_are() {
        let moderate = || {
            let t = cpu_time::ThreadTime::now();
            while t.elapsed() < SLOW_CALL + SLOW_CALL / 2 {
                std::hint::spin_loop();
            }
        };
        let pace = Pace::default();
        pace.timed(moderate);
        assert!(
            !pace.slow(),
            "one callback of 375 us may be the kernel's work"
        );
        pace.timed(|| ());
        pace.timed(moderate);
        assert!(
            pace.slow(),
            "a second one within the window marks the plugin slow"
        );
    }

    #[test]
    fn wall_time_only_makes_a_plugin_suspect_and_the_cpu_clock_decides() {
        let pace = Pace::default();
        pace.run(|| ());
        // A sampled callback that took long in wall time (here it burned CPU, as a callback
        // that was descheduled would only have waited): nothing is marked yet.
        pace.screened(burn);
        assert!(pace.suspect.load(Ordering::Relaxed));
        assert!(!pace.slow(), "wall time alone never marks a plugin slow");
        // Suspect: the CPU clock times every callback; fast ones in a row clear it.
        for _ in 0..RECOVER - 1 {
            pace.run(|| ());
        }
        assert!(pace.suspect.load(Ordering::Relaxed), "fewer than RECOVER");
        pace.run(|| ());
        assert!(!pace.suspect.load(Ordering::Relaxed), "RECOVER fast calls");
        assert!(!pace.slow());
        // Suspect again, and the next callback really uses the CPU: slow at once.
        pace.screened(burn);
        pace.run(burn);
        assert!(pace.slow(), "a CPU-timed slow callback of a suspect plugin");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multi_thread_runtime_never_asks_for_the_blocking_pool() {
        let pace = Pace::default();
        pace.run(burn);
        assert!(pace.slow(), "a slow first call marks the plugin slow");
        assert!(!pace.offload_now(), "block_in_place is used there instead");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_current_thread_runtime_times_calls_and_offloads_a_slow_plugin() {
        let pace = Arc::new(Pace::default());
        assert!(!pace.offload_now(), "never slow yet");
        pace.run(|| ());
        assert!(!pace.offload_now(), "a fast first call leaves it fast");
        // A slow call is caught within a bounded number of calls (one in SAMPLE is timed).
        for _ in 0..(SAMPLE * 64) {
            pace.run(burn);
            if pace.offload_now() {
                break;
            }
        }
        assert!(
            pace.offload_now(),
            "a slow plugin is caught on a current-thread runtime"
        );
        assert_eq!(
            pace.offloaded.load(Ordering::Relaxed),
            0,
            "inline calls are not counted as offloaded"
        );
        let worker = std::thread::current().id();
        let p = pace.clone();
        let ran_on = off_worker(move || p.run(std::thread::current)).await;
        assert!(
            ran_on.is_some_and(|t| t.id() != worker),
            "ran on another thread"
        );
        assert_eq!(pace.offloaded.load(Ordering::Relaxed), 1);
        assert!(
            pace.offload_now(),
            "a fast offloaded call does not end the slow period"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_worker_serves_other_tasks_while_an_offloaded_call_runs() {
        let pace = Arc::new(Pace::default());
        // The offloaded call waits for a task that only the (single) worker thread can run: it
        // completes only if the worker is free meanwhile (bounded wait, no deadlock on failure).
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = tokio::spawn(async move {
            let _ = tx.send(());
        });
        let p = pace.clone();
        let served = off_worker(move || {
            p.run(|| rx.recv_timeout(std::time::Duration::from_secs(30)).is_ok())
        })
        .await;
        assert_eq!(served, Some(true), "the worker ran another task meanwhile");
        assert!(other.await.is_ok());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panic_in_an_offloaded_call_reaches_the_caller() {
        let caught = tokio::spawn(off_worker(|| -> u8 { panic!("guest host bug") })).await;
        assert!(caught.is_err_and(|e| e.is_panic()));
    }
}
