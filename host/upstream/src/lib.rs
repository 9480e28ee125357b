//! Upstream clusters: where a request goes once the HTTP layer has decided to forward it.
//!
//! A [`cluster::Cluster`] owns its endpoint set (static or resolved from DNS and refreshed), the
//! load balancer over it, a pooled HTTP client whose [`tls`] connector speaks plaintext or mTLS,
//! and its traffic-management state ([`resilience`]): circuit [`breaker`]s and the retry budget,
//! active [`health`] checks and [`outlier`] detection. Nothing here knows about routes or HTTP
//! phases.
#![forbid(unsafe_code)]

pub mod breaker;
pub mod clock;
pub mod cluster;
pub mod endpoint;
pub mod h1_pool;
pub mod health;
pub mod outlier;
pub mod resilience;
pub mod tls;
pub mod worker;

pub use cluster::{Cluster, HttpClient};
pub use endpoint::{Endpoint, EndpointHealth, EndpointSet};
