//! One callback at a time per instance: the gate async callers wait at, without blocking
//! their worker thread, before they take the instance's lock.
//!
//! It replaces a one-permit `tokio::sync::Semaphore`, whose release takes the semaphore's
//! waiter-list mutex every time, waiter or not: once per guest callback, several per request.
//! Here entering is one compare-and-swap and leaving one store and one load; the [`Notify`] is
//! touched only when someone waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// An instance's gate (shared through an `Arc`).
#[derive(Debug, Default)]
pub struct Gate {
    busy: AtomicBool,
    /// Callers inside [`Gate::enter`] that may be waiting for a wake-up.
    waiting: AtomicUsize,
    wake: Notify,
}

/// The right to run a callback on the instance; leaving the gate when dropped.
#[derive(Debug)]
pub struct Pass {
    gate: Arc<Gate>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.gate.busy.store(false, Ordering::SeqCst);
        if self.gate.waiting.load(Ordering::SeqCst) > 0 {
            self.gate.wake.notify_one();
        }
    }
}

impl Gate {
    /// A free gate.
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    /// True when nobody holds the gate now.
    pub fn is_free(&self) -> bool {
        !self.busy.load(Ordering::Relaxed)
    }

    /// The pass, if the gate is free now.
    pub fn try_enter(self: &Arc<Self>) -> Option<Pass> {
        self.busy
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::Relaxed)
            .ok()
            .map(|_| Pass { gate: self.clone() })
    }

    /// Waits, without blocking the thread, until the gate is free, and enters it. Cancel-safe:
    /// a wake-up meant for a dropped waiter goes to the next one (`Notify` forwards it).
    pub async fn enter(self: &Arc<Self>) -> Pass {
        loop {
            if let Some(pass) = self.try_enter() {
                return pass;
            }
            let notified = self.wake.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before announcing the wait and checking again: a pass dropped in
            // between either sees `waiting` and wakes this waiter, or is seen free below.
            notified.as_mut().enable();
            let _waiting = Waiting::announce(&self.waiting);
            if let Some(pass) = self.try_enter() {
                return pass;
            }
            notified.await;
        }
    }
}

/// One caller counted in [`Gate::waiting`] for as long as it lives (also when its future is
/// dropped mid-wait).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn announce(count: &'a AtomicUsize) -> Waiting<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_at_a_time() {
        let gate = Gate::new();
        let pass = gate.try_enter();
        assert!(pass.is_some());
        assert!(!gate.is_free());
        assert!(gate.try_enter().is_none());
        drop(pass);
        assert!(gate.is_free());
        assert!(gate.try_enter().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_enter_one_by_one_as_passes_are_dropped() {
        let gate = Gate::new();
        let first = gate.try_enter();
        assert!(first.is_some());
        let inside = Arc::new(AtomicUsize::new(0));
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..8 {
            let (gate, inside, done) = (gate.clone(), inside.clone(), done_tx.clone());
            tokio::spawn(async move {
                let _pass = gate.enter().await;
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "alone in the gate"
                );
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                let _ = done.send(());
            });
        }
        drop(done_tx);
        assert_eq!(
            inside.load(Ordering::SeqCst),
            0,
            "nobody passes while it is held"
        );
        drop(first);
        let mut finished = 0;
        while done_rx.recv().await.is_some() {
            finished += 1;
        }
        assert_eq!(finished, 8);
        assert!(gate.is_free());
    }

    #[tokio::test]
    async fn a_dropped_waiter_does_not_keep_the_wake_up() {
        let gate = Gate::new();
        let held = gate.try_enter();
        // A waiter that gives up, and one that stays.
        let mut abandoned = Box::pin(gate.enter());
        assert!(futures_poll_once(abandoned.as_mut()).await.is_none());
        let stays = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter().await }
        });
        tokio::task::yield_now().await;
        drop(held);
        drop(abandoned);
        let pass = stays.await.map_err(|_| "waiter panicked").unwrap();
        assert!(!gate.is_free());
        assert_eq!(
            gate.waiting.load(Ordering::SeqCst),
            0,
            "the dropped waiter left"
        );
        drop(pass);
        assert!(gate.is_free());
    }

    /// Polls `f` once: `Some` if it finished.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = Some(f);
        std::future::poll_fn(move |cx| {
            let Some(inner) = f.as_mut() else {
                return std::task::Poll::Ready(None);
            };
            match std::pin::Pin::new(inner).poll(cx) {
                std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
                std::task::Poll::Pending => std::task::Poll::Ready(None),
            }
        })
        .await
    }
}
