//! A cluster's traffic-management state: circuit breakers and the retry budget, the health
//! checking and outlier detection tasks, and panic-aware endpoint picks.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use weft_balance::{EndpointState, PickContext};
use weft_config::resilience::OutlierDetection;
use weft_config::schema;
use weft_observe::metrics::ClusterResilienceMetrics;

use crate::breaker::Breaker;
use crate::clock::now_ms;
use crate::cluster::{Cluster, Endpoint, EndpointSet};
use crate::outlier::Observation;

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
struct Panicked<'a>(&'a EndpointSet);

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
struct Untried<'a> {
    inner: &'a dyn EndpointState,
    tried: &'a [usize],
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

impl Cluster {
    /// Picks an endpoint of `set` for try `attempt` (0 first). A retry avoids every endpoint in
    /// `tried` while another is available, else at least the last one tried; panic mode
    /// balances over every endpoint when too few are available.
    pub fn pick_endpoint(
        &self,
        set: &EndpointSet,
        hash: Option<u64>,
        attempt: u32,
        tried: &[usize],
    ) -> Option<(usize, Arc<Endpoint>)> {
        let balancer = set.balancer()?;
        let now = now_ms();
        let total = set.endpoints.len();
        let available = set
            .endpoints
            .iter()
            .filter(|e| e.health.is_available(now))
            .count();
        let panicked = Panicked(set);
        let state: &dyn EndpointState =
            if in_panic(available, total, self.resilience.panic_threshold) {
                self.resilience.metrics.panic.inc();
                &panicked
            } else {
                set
            };
        let mut ctx = PickContext::new(state);
        ctx.hash = hash;
        let picked = match tried.last() {
            None => balancer.pick(&ctx),
            Some(&last) => {
                let untried = Untried {
                    inner: state,
                    tried,
                };
                let mut fresh = PickContext::new(&untried);
                fresh.hash = hash;
                balancer
                    .pick(&fresh)
                    .or_else(|| balancer.pick(&ctx.retry(attempt, last)))
            }
        };
        let i = picked?;
        set.endpoints.get(i).map(|e| (i, e.clone()))
    }

    /// Feeds one try's result to outlier detection.
    pub fn observe(&self, set: &EndpointSet, endpoint: &Endpoint, o: Observation) {
        if let Some(cfg) = &self.resilience.outlier {
            crate::outlier::record(set, endpoint, cfg, o, &self.resilience.metrics, &self.name);
        }
    }

    /// Takes over the health and ejection state of `old`'s endpoints with the same address
    /// (a reload that changed the cluster's settings but not its endpoints).
    pub fn adopt_endpoint_state(&self, old: &Cluster) {
        let old_set = old.endpoints();
        for e in self.endpoints().endpoints.iter() {
            if let Some(o) = old_set.endpoints.iter().find(|o| o.addr == e.addr)
                && !Arc::ptr_eq(o, e)
            {
                e.health.adopt(&o.health);
            }
        }
        let healthy = self
            .endpoints()
            .endpoints
            .iter()
            .filter(|e| !e.health.failed_active_hc.load(Ordering::Relaxed))
            .count();
        if !self.config.health_checks.is_empty() {
            self.resilience.metrics.healthy.set(healthy as i64);
        }
    }
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
