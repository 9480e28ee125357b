//! Circuit breakers of a cluster: requests in flight (`max_requests`), retries in flight
//! (`max_retries`, or a retry budget: a share of the requests in flight with a floor), and for
//! HTTP/1 clusters connections (`max_connections`, one request per connection) with a bounded
//! queue of requests waiting for one (`max_pending_requests`). Overflow is answered at once with
//! 503 and response flag `UO`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weft_config::resilience::{CircuitBreakers, RetryBudget};

/// A slot held while a request (or a retry) is in flight; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    counter: Arc<AtomicU64>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a retry was not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDenied {
    /// The retry budget is spent.
    Budget,
    /// `max_retries` retries are in flight.
    CircuitBreaker,
}

impl RetryDenied {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            RetryDenied::Budget => "budget",
            RetryDenied::CircuitBreaker => "circuit_breaker",
        }
    }
}

/// The thresholds and counters of one cluster.
#[derive(Debug)]
pub struct Breaker {
    /// Most requests in flight.
    pub max_requests: u64,
    /// Most retries in flight (when there is no budget).
    pub max_retries: u64,
    budget: Option<RetryBudget>,
    requests: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
    /// Connection slots (`max_connections`), when limited.
    connections: Option<(u64, Arc<Semaphore>)>,
    /// Most requests waiting for a connection slot.
    pub max_pending: u64,
    pending: Arc<AtomicU64>,
}

/// What a request holds while it is in flight: its request slot and, with `max_connections`,
/// its connection slot.
#[derive(Debug)]
pub struct Admitted {
    _request: Permit,
    _connection: Option<OwnedSemaphorePermit>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `max_requests` requests are in flight.
    Requests,
    /// Every connection is busy and `max_pending_requests` requests wait already.
    Pending,
}

impl Overflow {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Overflow::Requests => "max_requests",
            Overflow::Pending => "max_pending_requests",
        }
    }
}

/// Counts a waiting request until dropped.
struct Waiting(Arc<AtomicU64>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Retries allowed in flight under `budget` with `active_requests` requests in flight:
/// `max(min_retry_concurrency, budget_percent % of active_requests)`.
pub fn budget_limit(budget: &RetryBudget, active_requests: u64) -> u64 {
    let share = (active_requests as f64 * budget.budget_percent / 100.0).floor() as u64;
    share.max(u64::from(budget.min_retry_concurrency))
}

impl Breaker {
    /// Thresholds from the cluster's configuration (unlimited when unset, as Istio).
    pub fn new(breakers: Option<&CircuitBreakers>, budget: Option<&RetryBudget>) -> Breaker {
        Breaker {
            max_requests: breakers.map_or(u64::MAX, |b| u64::from(b.max_requests)),
            max_retries: breakers.map_or(u64::MAX, |b| u64::from(b.max_retries)),
            budget: budget.cloned(),
            requests: Arc::new(AtomicU64::new(0)),
            retries: Arc::new(AtomicU64::new(0)),
            connections: breakers.and_then(|b| b.max_connections).map(|n| {
                let n = (n as usize).min(Semaphore::MAX_PERMITS);
                (n as u64, Arc::new(Semaphore::new(n)))
            }),
            max_pending: breakers
                .and_then(|b| b.max_pending_requests)
                .map_or(u64::MAX, u64::from),
            pending: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Admits a request: a request slot, then (with `max_connections`) a connection slot,
    /// waiting for one in the bounded queue. Only the queue wait suspends.
    pub async fn admit(&self) -> Result<Admitted, Overflow> {
        let request = self.try_request().ok_or(Overflow::Requests)?;
        let Some((_, slots)) = &self.connections else {
            return Ok(Admitted {
                _request: request,
                _connection: None,
            });
        };
        if let Ok(c) = slots.clone().try_acquire_owned() {
            return Ok(Admitted {
                _request: request,
                _connection: Some(c),
            });
        }
        let max = self.max_pending;
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| Overflow::Pending)?;
        let waiting = Waiting(self.pending.clone());
        let c = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Overflow::Pending)?;
        drop(waiting);
        Ok(Admitted {
            _request: request,
            _connection: Some(c),
        })
    }

    /// Admits a request only if it need not wait (mirrors).
    pub fn try_admit(&self) -> Option<Admitted> {
        let request = self.try_request()?;
        let connection = match &self.connections {
            None => None,
            Some((_, slots)) => Some(slots.clone().try_acquire_owned().ok()?),
        };
        Some(Admitted {
            _request: request,
            _connection: connection,
        })
    }

    /// `max_connections`, if set.
    pub fn max_connections(&self) -> Option<u64> {
        self.connections.as_ref().map(|(n, _)| *n)
    }

    /// Requests waiting for a connection slot.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    fn acquire(counter: &Arc<AtomicU64>, limit: u64) -> Option<Permit> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                counter: counter.clone(),
            })
    }

    /// A request slot, or `None` on overflow.
    pub fn try_request(&self) -> Option<Permit> {
        Breaker::acquire(&self.requests, self.max_requests)
    }

    /// A retry slot.
    pub fn try_retry(&self) -> Result<Permit, RetryDenied> {
        match &self.budget {
            Some(b) => {
                let limit = budget_limit(b, self.requests.load(Ordering::Relaxed));
                Breaker::acquire(&self.retries, limit).ok_or(RetryDenied::Budget)
            }
            None => {
                Breaker::acquire(&self.retries, self.max_retries).ok_or(RetryDenied::CircuitBreaker)
            }
        }
    }

    /// Requests in flight.
    pub fn active_requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Retries in flight.
    pub fn active_retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_overflow_at_the_limit_and_slots_come_back_on_drop() {
        let b = Breaker::new(
            Some(&CircuitBreakers {
                max_connections: None,
                max_pending_requests: None,
                max_requests: 2,
                max_retries: 1,
            }),
            None,
        );
        let one = b.try_request().unwrap();
        let _two = b.try_request().unwrap();
        assert!(b.try_request().is_none());
        drop(one);
        assert!(b.try_request().is_some());
        let _r = b.try_retry().unwrap();
        assert_eq!(b.try_retry().unwrap_err(), RetryDenied::CircuitBreaker);
    }

    #[tokio::test]
    async fn connections_queue_up_to_max_pending_then_overflow() {
        let b = Arc::new(Breaker::new(
            Some(&CircuitBreakers {
                max_connections: Some(1),
                max_pending_requests: Some(1),
                max_requests: 100,
                max_retries: 1,
            }),
            None,
        ));
        let first = b.admit().await.unwrap();
        let b2 = b.clone();
        let queued = tokio::spawn(async move { b2.admit().await.map(|_| ()) });
        while b.pending() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(b.admit().await.unwrap_err(), Overflow::Pending);
        assert!(b.try_admit().is_none());
        drop(first);
        assert_eq!(queued.await.unwrap(), Ok(()));
        assert_eq!(b.pending(), 0);
        assert!(b.try_admit().is_some());
    }

    #[test]
    fn the_budget_is_a_share_of_active_requests_with_a_floor() {
        let budget = RetryBudget {
            budget_percent: 20.0,
            min_retry_concurrency: 3,
        };
        assert_eq!(budget_limit(&budget, 0), 3);
        assert_eq!(budget_limit(&budget, 10), 3);
        assert_eq!(budget_limit(&budget, 100), 20);
        let b = Breaker::new(None, Some(&budget));
        let held: Vec<_> = (0..3).map(|_| b.try_retry().unwrap()).collect();
        assert_eq!(b.try_retry().unwrap_err(), RetryDenied::Budget);
        drop(held);
        let none = RetryBudget {
            budget_percent: 0.0,
            min_retry_concurrency: 0,
        };
        assert_eq!(
            Breaker::new(None, Some(&none)).try_retry().unwrap_err(),
            RetryDenied::Budget
        );
    }
}
