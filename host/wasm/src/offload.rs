//! The threads that run a slow plugin's callbacks once they are handed off the worker of a
//! current-thread runtime (`runtime.accept: reuseport`, `workers: 1`; see [`crate::pace`]).
//!
//! They run at the lowest CPU priority (Linux's `SCHED_IDLE`, and nice 19), so a plugin that
//! burns CPU competes with the proxy's workers only for what they leave idle: when a worker
//! wakes up with a request of another route, the kernel preempts the slow callback for it at
//! once (nice 19 alone let the callback finish its time slice first: about 2 ms more on the
//! other route's p99), and the other route's latency does not depend on the slow plugin. The price is the slow plugin's own route: under a load
//! that keeps every core busy its callbacks wait (bounded by the route timeout), which is where
//! the cost of a slow plugin belongs. Priority is per thread on Linux; a system that refuses
//! the change (logged once) runs them at normal priority.
//!
//! The threads (as many as the machine has cores, at least two) are started on the first
//! hand-off and live as long as the process; jobs wait in a queue. The queue is bounded by its
//! callers: a stream hands a callback over only while it holds its instance's gate, so at most
//! one callback per plugin instance is queued or running. A job that panics has its panic
//! resumed in the caller; the thread goes on.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

/// The nice value of the offload threads (the lowest; they are `SCHED_IDLE` too on Linux).
pub const NICE: i32 = 19;

type Job = Box<dyn FnOnce() + Send>;

/// The process's offload threads: where jobs are sent.
struct Pool {
    jobs: mpsc::Sender<Job>,
}

fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<Pool>> = OnceLock::new();
    POOL.get_or_init(start).as_ref()
}

/// Starts the threads; `None` when none could be started (hand-offs then use tokio's blocking
/// pool at normal priority).
fn start() -> Option<Pool> {
    let threads = std::thread::available_parallelism()
        .map_or(2, std::num::NonZeroUsize::get)
        .max(2);
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let mut started = 0;
    for i in 0..threads {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("weft-wasm-slow-{i}"))
            .spawn(move || {
                lower_priority();
                loop {
                    // One thread waits in `recv`, the others for the lock: each job goes to
                    // exactly one of them.
                    let job = rx.lock().recv();
                    match job {
                        Ok(job) => job(),
                        Err(mpsc::RecvError) => return,
                    }
                }
            });
        match spawned {
            Ok(_) => started += 1,
            Err(e) => tracing::warn!(error = %e, "could not start a wasm offload thread"),
        }
    }
    (started > 0).then(|| Pool { jobs: tx })
}

/// Gives the calling thread the lowest priority: Linux's `SCHED_IDLE` policy (a thread of any
/// other policy that wakes up preempts it at once, and a core running only such threads counts
/// as idle when the kernel places a waking thread), and nice 19 where that is refused.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };
        let idle = set_thread_priority_and_policy(
            thread_native_id(),
            thread_priority::ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        );
        if let Err(e) = idle {
            static LOGGED: std::sync::Once = std::sync::Once::new();
            LOGGED.call_once(|| {
                tracing::warn!(error = ?e, "slow plugin callbacks run at nice {NICE}: SCHED_IDLE refused");
            });
        }
    }
    if let Err(e) = rustix::process::setpriority_process(None, NICE) {
        static LOGGED: std::sync::Once = std::sync::Once::new();
        LOGGED.call_once(|| {
            tracing::warn!(error = %e, "slow plugin callbacks run at normal priority: setpriority refused");
        });
    }
}

/// Runs `call` on an offload thread and waits for it without blocking the caller's thread. A
/// panic in `call` is resumed here; `None` when it could not run (its thread went away, or the
/// fallback blocking pool is shutting down).
pub async fn run<R: Send + 'static>(call: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let r = std::panic::catch_unwind(AssertUnwindSafe(call));
        let _ = tx.send(r);
    });
    match pool() {
        Some(pool) => {
            if pool.jobs.send(job).is_err() {
                return None;
            }
        }
        None => {
            // No thread of our own: tokio's blocking pool, at normal priority.
            drop(tokio::task::spawn_blocking(job));
        }
    }
    match rx.await {
        Ok(Ok(r)) => Some(r),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn jobs_run_on_another_thread_at_the_lowest_priority() {
        let caller = std::thread::current().id();
        let before = rustix::process::getpriority_process(None).ok();
        let seen = run(|| {
            (
                std::thread::current().id(),
                rustix::process::getpriority_process(None).ok(),
            )
        })
        .await;
        let Some((thread, nice)) = seen else {
            panic!("the job did not run");
        };
        assert_ne!(thread, caller, "ran off the caller's thread");
        assert_eq!(nice, Some(NICE), "the offload thread runs at nice {NICE}");
        #[cfg(target_os = "linux")]
        {
            use thread_priority::unix::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
            let policy = run(thread_priority::unix::thread_schedule_policy).await;
            assert!(
                matches!(
                    policy,
                    Some(Ok(ThreadSchedulePolicy::Normal(
                        NormalThreadSchedulePolicy::Idle
                    )))
                ),
                "the offload thread is SCHED_IDLE: {policy:?}"
            );
        }
        assert_eq!(
            rustix::process::getpriority_process(None).ok(),
            before,
            "the caller's own priority is unchanged"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_job_reaches_its_caller_and_the_threads_go_on() {
        let caught = tokio::spawn(run(|| -> u8 { panic!("guest host bug") })).await;
        assert!(caught.is_err_and(|e| e.is_panic()));
        // Every thread still serves jobs (more jobs than threads, each waits for its result).
        for i in 0..8u32 {
            assert_eq!(run(move || i * 2).await, Some(i * 2));
        }
    }
}
