//! Which instance of a plugin's pool a worker thread prefers.
//!
//! A guest callback touches its instance's linear memory, stack and store: kilobytes that stay
//! in the cache of the core that ran the last callback. When two worker threads take turns on
//! one instance, every callback first moves those lines across cores, and a callback that finds
//! the instance busy with the other thread's stream waits for it (a task switch and a
//! cross-thread wake-up). So each worker thread has a home instance, `index % instances`: a
//! new stream takes its thread's home instance while that one is free, and the least-loaded
//! instance otherwise (see `Plugin::pick`). With `instances` equal to the worker count (the
//! default) and `runtime.accept: reuseport` (a connection never leaves its worker), each worker
//! then runs its own instance; under work stealing a task may still move to the other thread
//! between callbacks.
//!
//! The embedding names its worker threads with [`enter_worker`]; a thread it did not name
//! (tests, the blocking pool) has no home and takes the least-loaded instance.

use std::cell::Cell;

thread_local! {
    static HOME: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Marks the current thread as worker `index` of the proxy (called once by each worker thread).
pub fn enter_worker(index: usize) {
    HOME.with(|h| h.set(Some(index)));
}

/// The current thread's home slot in a pool of `n` instances (`None`: not a worker thread, or
/// an empty pool).
pub(crate) fn home(n: usize) -> Option<usize> {
    if n == 0 {
        return None;
    }
    HOME.with(Cell::get).map(|i| i % n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_thread_has_a_home_slot_and_other_threads_none() {
        std::thread::spawn(|| {
            assert_eq!(home(2), None);
            enter_worker(3);
            assert_eq!(home(2), Some(1));
            assert_eq!(home(4), Some(3));
            assert_eq!(home(0), None);
        })
        .join()
        .map_err(|_| "thread panicked")
        .unwrap();
    }
}
