//! The span export queue: bounded, with at most one export in flight. Pure — the filter feeds
//! it encoded spans and callout results and does what it answers.
//!
//! Memory is bounded whatever the collector does: the queue never holds more than
//! `max_queued` spans (the oldest are dropped first and counted), and a failed batch goes
//! back to the front of the queue under the same bound.

use std::collections::VecDeque;

/// A batch handed to the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The encoded spans, oldest first.
    pub spans: Vec<String>,
}

/// What happened to an export, for the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Spans the collector accepted.
    pub exported: u64,
    /// 1 when the export failed.
    pub failed: u64,
    /// Spans dropped to keep the bound.
    pub dropped: u64,
}

#[derive(Debug)]
struct InFlight {
    token: u32,
    spans: Vec<String>,
    since_ns: u64,
}

/// Queued spans and the export in flight.
#[derive(Debug)]
pub struct Exporter {
    queue: VecDeque<String>,
    max_queued: usize,
    batch_size: usize,
    stale_after_ns: u64,
    in_flight: Option<InFlight>,
}

impl Exporter {
    /// A queue of at most `max_queued` spans sent `batch_size` at a time; an export without an
    /// answer after `stale_after_ns` counts as failed.
    pub fn new(max_queued: usize, batch_size: usize, stale_after_ns: u64) -> Exporter {
        let max_queued = max_queued.max(1);
        Exporter {
            queue: VecDeque::with_capacity(max_queued.min(1024)),
            max_queued,
            batch_size: batch_size.clamp(1, max_queued),
            stale_after_ns,
            in_flight: None,
        }
    }

    /// Spans waiting (not counting the batch in flight).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// True while an export is awaiting its answer.
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Queues a span; returns how many spans were dropped (the oldest) to make room.
    pub fn push(&mut self, span: String) -> u64 {
        let mut dropped = 0;
        while self.queue.len() >= self.max_queued {
            self.queue.pop_front();
            dropped += 1;
        }
        self.queue.push_back(span);
        dropped
    }

    /// The next batch to send, if one is due: `force` (a flush tick) sends whatever is queued,
    /// otherwise only a full batch goes. Nothing while an export is in flight — unless it is
    /// stale, in which case it counts as failed (reported in the outcome) and its spans are
    /// queued again.
    pub fn poll(&mut self, now_ns: u64, force: bool) -> (Option<Batch>, Outcome) {
        let mut outcome = Outcome::default();
        if let Some(f) = &self.in_flight {
            if now_ns.saturating_sub(f.since_ns) < self.stale_after_ns {
                return (None, outcome);
            }
            if let Some(f) = self.in_flight.take() {
                outcome.failed = 1;
                outcome.dropped = self.restore(f.spans);
            }
        }
        if self.queue.is_empty() || (!force && self.queue.len() < self.batch_size) {
            return (None, outcome);
        }
        let n = self.batch_size.min(self.queue.len());
        let spans: Vec<String> = self.queue.drain(..n).collect();
        (Some(Batch { spans }), outcome)
    }

    /// The transport accepted `batch` as callout `token`.
    pub fn sent(&mut self, token: u32, batch: Batch, now_ns: u64) {
        if let Some(old) = self.in_flight.take() {
            // Never two in flight: a caller that sends again gets the old batch re-queued.
            self.restore(old.spans);
        }
        self.in_flight = Some(InFlight {
            token,
            spans: batch.spans,
            since_ns: now_ns,
        });
    }

    /// The transport refused `batch` before sending it.
    pub fn send_failed(&mut self, batch: Batch) -> Outcome {
        Outcome {
            failed: 1,
            dropped: self.restore(batch.spans),
            ..Outcome::default()
        }
    }

    /// Callout `token` finished; `ok` when the collector answered 2xx. An unknown token (a
    /// stale export already given up) changes nothing.
    pub fn completed(&mut self, token: u32, ok: bool) -> Outcome {
        match self.in_flight.take() {
            Some(f) if f.token == token => {
                if ok {
                    Outcome {
                        exported: f.spans.len() as u64,
                        ..Outcome::default()
                    }
                } else {
                    Outcome {
                        failed: 1,
                        dropped: self.restore(f.spans),
                        ..Outcome::default()
                    }
                }
            }
            other => {
                self.in_flight = other;
                Outcome::default()
            }
        }
    }

    /// Puts spans back at the front (they are older than anything queued since), dropping the
    /// oldest beyond the bound; returns how many were dropped.
    fn restore(&mut self, spans: Vec<String>) -> u64 {
        for s in spans.into_iter().rev() {
            self.queue.push_front(s);
        }
        let mut dropped = 0;
        while self.queue.len() > self.max_queued {
            self.queue.pop_front();
            dropped += 1;
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|i| format!("s{i}")).collect()
    }

    #[test]
    fn full_batches_go_at_once_partial_ones_on_a_flush() {
        let mut e = Exporter::new(100, 3, 1_000);
        for s in spans(0..2) {
            assert_eq!(e.push(s), 0);
        }
        assert_eq!(e.poll(0, false).0, None, "not full yet");
        e.push("s2".into());
        let (b, _) = e.poll(0, false);
        assert_eq!(b.map(|b| b.spans), Some(spans(0..3)));
        e.push("s3".into());
        let (b, _) = e.poll(0, true);
        assert_eq!(b.map(|b| b.spans), Some(spans(3..4)));
        assert_eq!(e.poll(0, true).0, None, "empty");
    }

    #[test]
    fn one_export_in_flight_at_a_time() {
        let mut e = Exporter::new(100, 2, 1_000);
        spans(0..6).into_iter().for_each(|s| {
            e.push(s);
        });
        let (b, _) = e.poll(0, true);
        e.sent(7, b.expect("batch"), 0);
        assert!(e.in_flight());
        assert_eq!(e.poll(10, true).0, None);
        assert_eq!(e.completed(8, true), Outcome::default(), "unknown token");
        let o = e.completed(7, true);
        assert_eq!(o.exported, 2);
        assert!(!e.in_flight());
        assert_eq!(e.poll(10, false).0.map(|b| b.spans), Some(spans(2..4)));
    }

    #[test]
    fn a_failed_batch_is_retried_first_within_the_bound() {
        let mut e = Exporter::new(4, 2, 1_000);
        spans(0..4).into_iter().for_each(|s| {
            e.push(s);
        });
        let (b, _) = e.poll(0, true);
        e.sent(1, b.expect("batch"), 0);
        e.push("s4".into());
        e.push("s5".into());
        assert_eq!(e.queued(), 4);
        let o = e.completed(1, false);
        assert_eq!((o.failed, o.dropped, o.exported), (1, 2, 0));
        assert_eq!(e.queued(), 4, "bounded");
        let (b, _) = e.poll(0, true);
        assert_eq!(
            b.map(|b| b.spans),
            Some(spans(2..4)),
            "oldest surviving first"
        );
    }

    #[test]
    fn the_queue_drops_the_oldest_when_full() {
        let mut e = Exporter::new(3, 2, 1_000);
        let dropped: u64 = spans(0..10).into_iter().map(|s| e.push(s)).sum();
        assert_eq!(dropped, 7);
        assert_eq!(e.queued(), 3);
        assert_eq!(e.poll(0, true).0.map(|b| b.spans), Some(spans(7..9)));
    }

    #[test]
    fn a_stale_export_counts_as_failed_and_is_retried() {
        let mut e = Exporter::new(10, 2, 1_000);
        spans(0..2).into_iter().for_each(|s| {
            e.push(s);
        });
        let (b, _) = e.poll(0, true);
        e.sent(1, b.expect("batch"), 0);
        assert_eq!(e.poll(999, true).0, None);
        let (b, o) = e.poll(1_000, true);
        assert_eq!(o.failed, 1);
        assert_eq!(b.map(|b| b.spans), Some(spans(0..2)));
        assert_eq!(
            e.completed(1, true),
            Outcome::default(),
            "late answer ignored"
        );
    }

    #[test]
    fn a_refused_send_requeues() {
        let mut e = Exporter::new(10, 5, 1_000);
        e.push("a".into());
        let (b, _) = e.poll(0, true);
        let o = e.send_failed(b.expect("batch"));
        assert_eq!((o.failed, o.dropped), (1, 0));
        assert_eq!(e.queued(), 1);
    }

    #[test]
    fn degenerate_sizes_are_clamped() {
        let mut e = Exporter::new(0, 0, 0);
        e.push("a".into());
        assert_eq!(e.push("b".into()), 1);
        assert_eq!(
            e.poll(0, false).0.map(|b| b.spans),
            Some(vec!["b".to_owned()])
        );
    }
}
