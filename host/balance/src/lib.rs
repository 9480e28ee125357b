//! Load-balancing policies for the Weft sidecar proxy.
//!
//! This crate is pure code: no I/O, no async runtime. The proxy builds one
//! [`Balancer`] per upstream cluster when its configuration is loaded (a
//! reload builds a new one) and calls [`Balancer::pick`] for every request,
//! concurrently from many threads. A `Balancer` is `Send + Sync`, and picking
//! takes no lock: the only shared mutable state is the round-robin cursor, an
//! [`AtomicUsize`](std::sync::atomic::AtomicUsize). All tables (the smooth
//! round-robin schedule, the alias table for weighted sampling, the hash ring)
//! are precomputed by [`Balancer::new`].
//!
//! Live endpoint state (health, outlier ejection, in-flight requests) stays
//! with the proxy and is read through the [`EndpointState`] trait passed in
//! each [`PickContext`].
//!
//! # Policies
//!
//! * [`Policy::RoundRobin`]: smooth weighted round robin (nginx style).
//! * [`Policy::Random`]: weighted random.
//! * [`Policy::LeastRequest`]: power of N choices over weighted samples.
//! * [`Policy::RingHash`]: ketama-style consistent hashing.
//!
//! # Availability and panic mode
//!
//! Every policy skips endpoints for which [`EndpointState::is_available`]
//! returns `false`, and [`Balancer::pick`] returns `None` only when no
//! endpoint is available. "Panic mode" (balancing over *all* endpoints when
//! too few are healthy) is not decided here: the proxy enables it by passing a
//! state whose `is_available` returns `true` for every endpoint (for example
//! [`AllAvailable`]).
//!
//! # Retries
//!
//! When [`PickContext::attempt`] is above 0 and [`PickContext::previous`]
//! names an endpoint, every policy avoids that endpoint as long as another one
//! is available, and returns it again only when it is the last one available.
//!
//! # Example
//!
//! ```
//! use weft_balance::{AllAvailable, Balancer, PickContext, Policy, hash_bytes};
//!
//! let rr = Balancer::new(Policy::RoundRobin, &[5, 1, 1])?;
//! let ctx = PickContext::new(&AllAvailable);
//! let picks: Vec<_> = (0..7).filter_map(|_| rr.pick(&ctx)).collect();
//! assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
//!
//! let ring = Balancer::new(Policy::ring_hash(), &[1, 1, 1])?;
//! let ctx = PickContext::new(&AllAvailable).with_hash(hash_bytes(b"session-42"));
//! let first = ring.pick(&ctx);
//! assert_eq!(ring.pick(&ctx), first);
//! // A retry avoids the endpoint that just failed.
//! assert_ne!(ring.pick(&ctx.retry(1, first.unwrap_or(0))), first);
//! # Ok::<(), weft_balance::BalanceError>(())
//! ```
#![forbid(unsafe_code)]

mod error;
mod least_request;
mod random;
mod ring_hash;
mod round_robin;

#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::fmt;

pub use error::BalanceError;
pub use ring_hash::MAX_RING_SIZE;
pub use round_robin::MAX_SCHEDULE_LEN;

use random::WeightedSampler;
use ring_hash::Ring;
use round_robin::RoundRobin;

/// Default number of candidates sampled by [`Policy::LeastRequest`].
pub const DEFAULT_CHOICE_COUNT: u32 = 2;

/// Default minimum number of entries of a [`Policy::RingHash`] ring.
pub const DEFAULT_MINIMUM_RING_SIZE: usize = 1024;

/// Largest number of endpoints a [`Balancer`] accepts (indices are stored as
/// `u32` to keep the tables compact).
pub const MAX_ENDPOINTS: usize = u32::MAX as usize;

/// A load-balancing policy, chosen per upstream cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Smooth weighted round robin (nginx-style interleaving: weights 5,1,1
    /// give `a a b a c a a`, not `a a a a a b c`). The schedule is computed
    /// once; picks advance a shared atomic cursor.
    #[default]
    RoundRobin,
    /// Weighted random choice (alias method, O(1) per sample).
    Random,
    /// Power of N choices: sample `choice_count` available endpoints at
    /// random (weighted, with replacement) and choose the one with the fewest
    /// active requests; ties go to the first sampled.
    LeastRequest {
        /// Number of candidates sampled per pick; at least 2 (default
        /// [`DEFAULT_CHOICE_COUNT`]).
        choice_count: u32,
    },
    /// Consistent hashing on a ketama-style ring with virtual nodes in
    /// proportion to weight. A request without a hash is balanced at random.
    RingHash {
        /// Minimum number of ring entries; at least 1 (default
        /// [`DEFAULT_MINIMUM_RING_SIZE`], capped at [`MAX_RING_SIZE`]).
        minimum_ring_size: usize,
    },
}

impl Policy {
    /// [`Policy::LeastRequest`] with the default choice count (2).
    pub const fn least_request() -> Policy {
        Policy::LeastRequest {
            choice_count: DEFAULT_CHOICE_COUNT,
        }
    }

    /// [`Policy::RingHash`] with the default minimum ring size (1024).
    pub const fn ring_hash() -> Policy {
        Policy::RingHash {
            minimum_ring_size: DEFAULT_MINIMUM_RING_SIZE,
        }
    }
}

/// Live per-endpoint state, implemented by the proxy over its endpoint stats.
///
/// Indices are positions in the endpoint list the [`Balancer`] was built
/// from, always below [`Balancer::len`]. Implementations are called on the
/// request path and should be cheap (an atomic load).
pub trait EndpointState {
    /// Whether the endpoint may receive traffic: healthy and not ejected.
    /// In panic mode the proxy returns `true` for every endpoint.
    fn is_available(&self, index: usize) -> bool;
    /// Number of requests currently in flight to the endpoint.
    fn active_requests(&self, index: usize) -> u64;
}

/// An [`EndpointState`] in which every endpoint is available and idle.
/// Handy for panic mode and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllAvailable;

impl EndpointState for AllAvailable {
    fn is_available(&self, _index: usize) -> bool {
        true
    }

    fn active_requests(&self, _index: usize) -> u64 {
        0
    }
}

/// Per-request input to [`Balancer::pick`].
#[derive(Clone, Copy)]
pub struct PickContext<'a> {
    /// Request hash for [`Policy::RingHash`] (see [`hash_bytes`]); `None`
    /// falls back to a weighted random pick. Ignored by other policies.
    pub hash: Option<u64>,
    /// Live endpoint state.
    pub state: &'a dyn EndpointState,
    /// 0 for the first try; above 0 on a retry.
    pub attempt: u32,
    /// Endpoint used by the previous attempt; on a retry it is avoided when
    /// another endpoint is available.
    pub previous: Option<usize>,
}

impl<'a> PickContext<'a> {
    /// A first-attempt context without a hash.
    pub fn new(state: &'a dyn EndpointState) -> PickContext<'a> {
        PickContext {
            hash: None,
            state,
            attempt: 0,
            previous: None,
        }
    }

    /// Sets the request hash.
    #[must_use]
    pub fn with_hash(mut self, hash: u64) -> PickContext<'a> {
        self.hash = Some(hash);
        self
    }

    /// Marks this pick as retry number `attempt` after `previous` was used.
    #[must_use]
    pub fn retry(mut self, attempt: u32, previous: usize) -> PickContext<'a> {
        self.attempt = attempt;
        self.previous = Some(previous);
        self
    }

    /// The endpoint to avoid, if this is a retry.
    fn excluded(&self) -> Option<usize> {
        if self.attempt > 0 {
            self.previous
        } else {
            None
        }
    }
}

impl fmt::Debug for PickContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PickContext")
            .field("hash", &self.hash)
            .field("attempt", &self.attempt)
            .field("previous", &self.previous)
            .finish_non_exhaustive()
    }
}

/// Hashes a request key (header value, cookie value, source IP bytes) for
/// [`PickContext::hash`]: xxHash64 with seed 0.
#[inline]
pub fn hash_bytes(key: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(key, 0)
}

/// Which endpoints a pick may return: available, and not the one excluded
/// by a retry.
#[derive(Clone, Copy)]
pub(crate) struct Eligible<'a> {
    state: &'a dyn EndpointState,
    excluded: Option<usize>,
}

impl Eligible<'_> {
    #[inline]
    pub(crate) fn check(&self, index: usize) -> bool {
        self.excluded != Some(index) && self.state.is_available(index)
    }

    #[inline]
    pub(crate) fn active_requests(&self, index: usize) -> u64 {
        self.state.active_requests(index)
    }
}

enum Inner {
    RoundRobin(RoundRobin),
    Random(WeightedSampler),
    LeastRequest {
        sampler: WeightedSampler,
        choice_count: u32,
    },
    RingHash {
        ring: Ring,
        sampler: WeightedSampler,
    },
}

/// The load balancer of one upstream cluster: a policy over a fixed,
/// weighted endpoint list. Build it with [`Balancer::new`]; share it across
/// threads (it is `Send + Sync`) and call [`Balancer::pick`] per request.
pub struct Balancer {
    policy: Policy,
    len: usize,
    inner: Inner,
}

impl Balancer {
    /// Builds a balancer for `policy` over endpoints with the given weights
    /// (one per endpoint, each at least 1).
    ///
    /// Ring-hash virtual nodes are keyed by endpoint index; use
    /// [`Balancer::with_endpoint_keys`] to keep the ring stable across
    /// reloads that add or remove endpoints.
    ///
    /// # Errors
    ///
    /// [`BalanceError`] when `weights` is empty or longer than
    /// [`MAX_ENDPOINTS`], a weight is 0, `choice_count` is below 2 or
    /// `minimum_ring_size` is 0.
    pub fn new(policy: Policy, weights: &[u32]) -> Result<Balancer, BalanceError> {
        Balancer::build(policy, weights, None)
    }

    /// Like [`Balancer::new`], but ring-hash virtual nodes are derived from
    /// `keys[i]` (for example the endpoint's `host:port`) rather than from
    /// its index, so an endpoint keeps its ring positions when others are
    /// added or removed by a config reload. Other policies ignore the keys.
    ///
    /// # Errors
    ///
    /// As [`Balancer::new`], plus [`BalanceError::KeyCountMismatch`] when
    /// `keys` and `weights` differ in length.
    pub fn with_endpoint_keys(
        policy: Policy,
        weights: &[u32],
        keys: &[&[u8]],
    ) -> Result<Balancer, BalanceError> {
        if keys.len() != weights.len() {
            return Err(BalanceError::KeyCountMismatch {
                weights: weights.len(),
                keys: keys.len(),
            });
        }
        Balancer::build(policy, weights, Some(keys))
    }

    fn build(
        policy: Policy,
        weights: &[u32],
        keys: Option<&[&[u8]]>,
    ) -> Result<Balancer, BalanceError> {
        if weights.is_empty() {
            return Err(BalanceError::NoEndpoints);
        }
        if weights.len() > MAX_ENDPOINTS {
            return Err(BalanceError::TooManyEndpoints {
                count: weights.len(),
                max: MAX_ENDPOINTS,
            });
        }
        if let Some(index) = weights.iter().position(|&w| w == 0) {
            return Err(BalanceError::ZeroWeight { index });
        }
        let inner = match policy {
            Policy::RoundRobin => Inner::RoundRobin(RoundRobin::new(weights)),
            Policy::Random => Inner::Random(WeightedSampler::new(weights)),
            Policy::LeastRequest { choice_count } => {
                if choice_count < 2 {
                    return Err(BalanceError::InvalidChoiceCount { choice_count });
                }
                Inner::LeastRequest {
                    sampler: WeightedSampler::new(weights),
                    choice_count,
                }
            }
            Policy::RingHash { minimum_ring_size } => {
                if minimum_ring_size == 0 {
                    return Err(BalanceError::ZeroRingSize);
                }
                Inner::RingHash {
                    ring: Ring::new(weights, keys, minimum_ring_size),
                    sampler: WeightedSampler::new(weights),
                }
            }
        };
        Ok(Balancer {
            policy,
            len: weights.len(),
            inner,
        })
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a balancer has at least one endpoint.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The policy this balancer was built with.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Number of entries in the precomputed table: the round-robin schedule
    /// length, the hash ring size, or the endpoint count for the random
    /// policies.
    pub fn table_len(&self) -> usize {
        match &self.inner {
            Inner::RoundRobin(rr) => rr.schedule_len(),
            Inner::RingHash { ring, .. } => ring.len(),
            Inner::Random(_) | Inner::LeastRequest { .. } => self.len,
        }
    }

    /// Chooses an endpoint for a request and returns its index in the
    /// endpoint list, or `None` when no endpoint is available.
    ///
    /// Random choices use a thread-local generator; see
    /// [`Balancer::pick_with_rng`] for a seedable variant.
    #[inline]
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        match &self.inner {
            // Round robin draws no random numbers: skip the thread-local.
            Inner::RoundRobin(rr) => self.finish(ctx, rr.pick(&eligible(ctx))),
            _ => with_thread_rng(|rng| self.pick_with_rng(ctx, rng)),
        }
    }

    /// Like [`Balancer::pick`], drawing random numbers from `rng` (so a
    /// seeded generator makes picks reproducible).
    pub fn pick_with_rng(&self, ctx: &PickContext<'_>, rng: &mut fastrand::Rng) -> Option<usize> {
        let el = eligible(ctx);
        let picked = match &self.inner {
            Inner::RoundRobin(rr) => rr.pick(&el),
            Inner::Random(sampler) => sampler.sample_eligible(rng, &el),
            Inner::LeastRequest {
                sampler,
                choice_count,
            } => least_request::pick(sampler, *choice_count, rng, &el),
            Inner::RingHash { ring, sampler } => match ctx.hash {
                Some(hash) => ring.pick(hash, &el),
                None => sampler.sample_eligible(rng, &el),
            },
        };
        self.finish(ctx, picked)
    }

    /// Falls back to the retry-excluded endpoint when nothing else was
    /// available.
    #[inline]
    fn finish(&self, ctx: &PickContext<'_>, picked: Option<usize>) -> Option<usize> {
        picked.or_else(|| {
            ctx.excluded()
                .filter(|&i| i < self.len && ctx.state.is_available(i))
        })
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("policy", &self.policy)
            .field("len", &self.len)
            .field("table_len", &self.table_len())
            .finish()
    }
}

fn eligible<'a>(ctx: &PickContext<'a>) -> Eligible<'a> {
    Eligible {
        state: ctx.state,
        excluded: ctx.excluded(),
    }
}

thread_local! {
    static THREAD_RNG: Cell<Option<fastrand::Rng>> = const { Cell::new(None) };
}

/// Runs `f` with this thread's generator (seeded on first use). Re-entrant
/// calls (an `EndpointState` that itself picks) get a fresh generator.
#[inline]
fn with_thread_rng<R>(f: impl FnOnce(&mut fastrand::Rng) -> R) -> R {
    THREAD_RNG.with(|cell| {
        let mut rng = cell.take().unwrap_or_default();
        let result = f(&mut rng);
        cell.set(Some(rng));
        result
    })
}
