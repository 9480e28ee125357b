//! Errors returned when a [`Balancer`](crate::Balancer) cannot be built.

/// Why a [`Balancer`](crate::Balancer) could not be built from a policy and
/// an endpoint list. Every message names the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BalanceError {
    /// The endpoint list is empty.
    #[error("endpoint list is empty: a balancer needs at least one endpoint")]
    NoEndpoints,
    /// An endpoint has weight 0; every weight must be at least 1.
    #[error("endpoint {index} has weight 0: every endpoint weight must be >= 1")]
    ZeroWeight {
        /// Position of the endpoint in the list.
        index: usize,
    },
    /// `LeastRequest::choice_count` is below 2.
    #[error("least_request choice_count {choice_count} is invalid: it must be >= 2")]
    InvalidChoiceCount {
        /// The rejected value.
        choice_count: u32,
    },
    /// `RingHash::minimum_ring_size` is 0.
    #[error("ring_hash minimum_ring_size 0 is invalid: it must be >= 1")]
    ZeroRingSize,
    /// More endpoints than the balancer can index.
    #[error("{count} endpoints exceed the maximum of {max} per balancer")]
    TooManyEndpoints {
        /// Number of endpoints given.
        count: usize,
        /// Largest supported number of endpoints.
        max: usize,
    },
    /// The endpoint key list and the weight list have different lengths.
    #[error(
        "{keys} endpoint keys were given for {weights} endpoint weights: the counts must match"
    )]
    KeyCountMismatch {
        /// Number of weights given.
        weights: usize,
        /// Number of keys given.
        keys: usize,
    },
}
