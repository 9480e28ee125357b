//! A cluster's traffic-management state: circuit breakers and the retry budget, the health
//! checking and outlier detection tasks, and panic-aware endpoint picks.

use std::sync::Arc;

use arc_swap::ArcSwap;
use weft_balance::EndpointState;
use weft_config::resilience::OutlierDetection;
use weft_config::schema;
use weft_observe::metrics::ClusterResilienceMetrics;

use crate::breaker::Breaker;
use crate::endpoint::EndpointSet;

/// A cluster's traffic-management state. Its background tasks (health checks, outlier
/// intervals) stop when it is dropped, that is when no generation uses the cluster any more.
#[derive(Debug)]
pub struct ClusterResilience {
    /// Circuit breakers and the retry budget.
    pub breaker: Breaker,
    /// Outlier detection settings.
    pub outlier: Option<OutlierDetection>,
    /// Panic threshold, percent.
    pub panic_threshold: f64,
    /// Metric handles.
    pub metrics: Arc<ClusterResilienceMetrics>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ClusterResilience {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ClusterResilience {
    /// Builds the state and starts the cluster's health checker and outlier detector.
    pub(crate) fn start(
        config: &schema::Cluster,
        endpoints: &Arc<ArcSwap<EndpointSet>>,
        metrics: Arc<ClusterResilienceMetrics>,
        tls: Option<Arc<crate::tls::UpstreamTls>>,
    ) -> ClusterResilience {
        let mut tasks = Vec::new();
        if let Some(hc) = config.health_checks.first() {
            metrics.healthy.set(endpoints.load().endpoints.len() as i64);
            tasks.push(crate::health::spawn_checker(
                &config.name,
                config.protocol,
                hc,
                endpoints.clone(),
                metrics.clone(),
                tls,
            ));
        }
        if let Some(o) = &config.outlier_detection {
            tasks.push(crate::outlier::spawn_detector(
                &config.name,
                o,
                endpoints.clone(),
                metrics.clone(),
            ));
        }
        ClusterResilience {
            breaker: Breaker::new(
                config.circuit_breakers.as_ref(),
                config.retry_budget.as_ref(),
            ),
            outlier: config.outlier_detection.clone(),
            panic_threshold: config.panic_threshold,
            metrics,
            tasks,
        }
    }
}

/// Every endpoint available (panic mode), with the live in-flight counts.
pub(crate) struct Panicked<'a>(pub(crate) &'a EndpointSet);

impl EndpointState for Panicked<'_> {
    fn is_available(&self, _index: usize) -> bool {
        true
    }
    fn active_requests(&self, index: usize) -> u64 {
        self.0.active_requests(index)
    }
}

/// Another state with the endpoints already tried by this request taken out (Istio's
/// `previous_hosts` retry predicate).
pub(crate) struct Untried<'a> {
    pub(crate) inner: &'a dyn EndpointState,
    pub(crate) tried: &'a [usize],
}

impl EndpointState for Untried<'_> {
    fn is_available(&self, index: usize) -> bool {
        !self.tried.contains(&index) && self.inner.is_available(index)
    }
    fn active_requests(&self, index: usize) -> u64 {
        self.inner.active_requests(index)
    }
}

/// Whether a cluster with `available` of `total` endpoints is in panic mode.
pub fn in_panic(available: usize, total: usize, threshold: f64) -> bool {
    total > 0 && threshold > 0.0 && (available as f64) * 100.0 < threshold * total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_mode_starts_below_the_threshold() {
        assert!(!in_panic(3, 3, 50.0));
        assert!(!in_panic(2, 4, 50.0));
        assert!(in_panic(1, 4, 50.0));
        assert!(in_panic(0, 3, 50.0));
        assert!(!in_panic(0, 3, 0.0), "0 disables panic mode");
        assert!(!in_panic(0, 0, 50.0));
    }
}
