//! Per-request timeouts with Envoy's semantics, on tokio's clock:
//!
//! - `request_timeout` (listener `http.request_timeout`, off by default): the whole request —
//!   headers and body — must have arrived within it, else 408;
//! - the stream idle timeout (listener `http.stream_idle_timeout`, 5 min, or the route's
//!   `idle_timeout`): no bytes moving for that long ends the request, 408 while the request is
//!   incomplete, else 504 with flag `SI`;
//! - the route `timeout` starts only when the request is complete (its whole body received),
//!   so a slow upload is not cut by it; 504 `UT` (counted by the forward phase).
//!
//! The request body reports its progress to a [`StreamWatch`]; [`guard`] races a request's
//! chain against these deadlines.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::Notify;
use tokio::time::Instant;
use weft_body::Progress;
use weft_observe::flags;

use crate::conn::Activity;
use crate::reply::LocalReply;

const NOT_DONE: u64 = u64::MAX;

/// A request's progress: when its body last moved and when it ended.
#[derive(Debug)]
pub struct StreamWatch {
    start: Instant,
    last_ms: AtomicU64,
    done_ms: AtomicU64,
    done: Notify,
    conn: Arc<Activity>,
}

impl StreamWatch {
    /// A request that starts now on the connection whose activity is `conn`.
    pub fn new(conn: Arc<Activity>) -> StreamWatch {
        StreamWatch {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            done_ms: AtomicU64::new(NOT_DONE),
            done: Notify::new(),
            conn,
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// When the request became complete, if it has.
    pub fn completed_at(&self) -> Option<Instant> {
        match self.done_ms.load(Ordering::Acquire) {
            NOT_DONE => None,
            ms => Some(self.start + Duration::from_millis(ms)),
        }
    }

    /// Waits until the request is complete.
    pub async fn completed(&self) -> Instant {
        loop {
            let notified = self.done.notified();
            if let Some(at) = self.completed_at() {
                return at;
            }
            notified.await;
        }
    }

    fn last_moved(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

impl Progress for StreamWatch {
    fn moved(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
        self.conn.touch();
    }

    fn ended(&self) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        if self
            .done_ms
            .compare_exchange(NOT_DONE, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.done.notify_waiters();
        }
    }
}

/// The request-level deadlines of one request (`None`: disabled).
#[derive(Debug, Clone, Copy, Default)]
pub struct Deadlines {
    /// `request_timeout`.
    pub request: Option<Duration>,
    /// The stream idle timeout.
    pub idle: Option<Duration>,
}

impl Deadlines {
    /// From a duration where zero means disabled.
    pub fn enabled(d: Duration) -> Option<Duration> {
        (!d.is_zero()).then_some(d)
    }
}

/// Runs `work` unless a request-level deadline passes first; then the local reply Envoy
/// answers. Once the response has started, the caller no longer guards it (the connection's
/// driver covers a stalled response).
pub fn guard<F: Future>(work: F, watch: &StreamWatch, deadlines: Deadlines) -> Guard<'_, F> {
    Guard {
        work,
        timer: None,
        watch,
        deadlines,
    }
}

pin_project_lite::pin_project! {
    /// [`guard`]'s future: the work and its timer side by side. (As an `async fn` it kept the
    /// work in three places of its state, 16 kB for a 5 kB request chain, and every move of
    /// the request's future copied all of it.)
    pub struct Guard<'a, F> {
        #[pin]
        work: F,
        #[pin]
        timer: Option<tokio::time::Sleep>,
        watch: &'a StreamWatch,
        deadlines: Deadlines,
    }
}

impl<F: Future> Future for Guard<'_, F> {
    type Output = Result<F::Output, LocalReply>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.work.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let (watch, deadlines) = (*this.watch, *this.deadlines);
        loop {
            let now = Instant::now();
            let complete = watch.completed_at().is_some();
            let request_deadline = deadlines
                .request
                .filter(|_| !complete)
                .and_then(|t| watch.start.checked_add(t));
            let idle_deadline = deadlines
                .idle
                .and_then(|t| watch.last_moved().checked_add(t));
            if request_deadline.is_some_and(|d| now >= d) {
                return Poll::Ready(Err(LocalReply::text(
                    StatusCode::REQUEST_TIMEOUT,
                    "request timeout",
                    flags::NONE,
                )
                .detailed("request_overall_timeout")));
            }
            if idle_deadline.is_some_and(|d| now >= d) {
                return Poll::Ready(Err(if complete {
                    LocalReply::text(
                        StatusCode::GATEWAY_TIMEOUT,
                        "stream timeout",
                        flags::STREAM_IDLE_TIMEOUT,
                    )
                } else {
                    LocalReply::text(StatusCode::REQUEST_TIMEOUT, "stream timeout", flags::NONE)
                        .detailed("stream_idle_timeout")
                }));
            }
            // Both deadlines are after `now`: wait for the nearer one (or only for the work).
            let next = match (request_deadline, idle_deadline) {
                (Some(a), Some(b)) => a.min(b),
                (Some(d), None) | (None, Some(d)) => d,
                (None, None) => {
                    this.timer.set(None);
                    return Poll::Pending;
                }
            };
            match this.timer.as_mut().as_pin_mut() {
                Some(timer) if timer.deadline() == next => {}
                Some(timer) => timer.reset(next),
                None => this.timer.set(Some(tokio::time::sleep_until(next))),
            }
            match this.timer.as_mut().as_pin_mut().map(|t| t.poll(cx)) {
                Some(Poll::Ready(())) => continue,
                _ => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch() -> StreamWatch {
        StreamWatch::new(Arc::new(Activity::new()))
    }

    #[tokio::test(start_paused = true)]
    async fn an_incomplete_request_past_request_timeout_gets_408() {
        let w = watch();
        let d = Deadlines {
            request: Some(Duration::from_secs(5)),
            idle: None,
        };
        let r = guard(std::future::pending::<()>(), &w, d).await;
        assert_eq!(r.unwrap_err().status, StatusCode::REQUEST_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_request_is_not_bound_by_request_timeout() {
        let w = watch();
        w.ended();
        let d = Deadlines {
            request: Some(Duration::from_secs(5)),
            idle: None,
        };
        let work = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            7
        };
        assert_eq!(guard(work, &w, d).await.unwrap(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_streams_get_408_before_and_504_si_after_the_request_completed() {
        let d = Deadlines {
            request: None,
            idle: Some(Duration::from_secs(10)),
        };
        let w = watch();
        let r = guard(std::future::pending::<()>(), &w, d)
            .await
            .unwrap_err();
        assert_eq!(r.status, StatusCode::REQUEST_TIMEOUT);
        let w = watch();
        w.ended();
        let r = guard(std::future::pending::<()>(), &w, d)
            .await
            .unwrap_err();
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(r.flag, Some(flags::STREAM_IDLE_TIMEOUT));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_moving_upload_is_not_idle() {
        let w = Arc::new(watch());
        let d = Deadlines {
            request: None,
            idle: Some(Duration::from_secs(10)),
        };
        let mover = w.clone();
        let work = async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                mover.moved();
            }
            mover.ended();
            "done"
        };
        assert_eq!(guard(work, &w, d).await.unwrap(), "done");
        assert!(w.completed_at().is_some());
    }
}
