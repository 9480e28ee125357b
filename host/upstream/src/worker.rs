//! Which per-worker runtime (`runtime.accept: reuseport`) the current thread is, so that a
//! cluster hands each worker its own connection pools ([`crate::Cluster::client_for`]).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The most workers any proxy of this process started.
static COUNT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Marks the current thread as worker `index` of `count` (called once by each worker thread).
pub fn enter(index: usize, count: usize) {
    COUNT.fetch_max(count, Ordering::Relaxed);
    WORKER.with(|w| w.set(Some(index)));
}

/// The current thread's worker index (`None`: not a per-worker runtime's thread).
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// The most workers any proxy of this process started (how many pools a cluster sets aside).
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}
