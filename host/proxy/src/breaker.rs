//! Circuit breakers of a cluster: requests in flight (`max_requests`) and retries in flight
//! (`max_retries`, or a retry budget: a share of the requests in flight with a floor). Overflow
//! is answered at once with 503 and response flag `UO`; nothing queues.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
        }
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
