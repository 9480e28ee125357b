//! Traffic management glued to clusters and routes: per-cluster circuit breakers, health
//! checking and outlier detection tasks, panic-aware endpoint picks; per-route retries, faults,
//! rate limits and mirrors; and their metrics (`docs/metrics.md`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use weft_balance::{EndpointState, PickContext};
use weft_config::resilience::OutlierDetection;
use weft_config::schema;

use crate::breaker::Breaker;
use crate::cluster::{Cluster, Endpoint, EndpointSet};
use crate::fault::FaultConfig;
use crate::generation::BuildError;
use crate::health::now_ms;
use crate::metrics::Metrics;
use crate::outlier::{EjectReason, Observation};
use crate::ratelimit::TokenBucket;
use crate::retry::RetryConfig;

/// Labels: cluster and a reason or result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterReasonLabels {
    /// Cluster name.
    pub cluster: String,
    /// Why or how.
    pub reason: String,
}

/// Labels: cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterOnlyLabels {
    /// Cluster name.
    pub cluster: String,
}

/// Labels: listener and route (empty for a listener-wide limit).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerRouteLabels {
    /// Listener name.
    pub listener: String,
    /// Route name.
    pub route: String,
}

/// Labels: listener, route and fault kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    /// Listener name.
    pub listener: String,
    /// Route name.
    pub route: String,
    /// `delay` or `abort`.
    pub kind: String,
}

/// The metric families of traffic management.
#[derive(Debug, Default)]
pub(crate) struct Families {
    retry: Family<ClusterOnlyLabels, Counter>,
    retry_success: Family<ClusterOnlyLabels, Counter>,
    retry_limit_exceeded: Family<ClusterOnlyLabels, Counter>,
    retry_overflow: Family<ClusterReasonLabels, Counter>,
    breaker_overflow: Family<ClusterReasonLabels, Counter>,
    ejections: Family<ClusterReasonLabels, Counter>,
    ejections_active: Family<ClusterOnlyLabels, Gauge>,
    health_checks: Family<ClusterReasonLabels, Counter>,
    healthy: Family<ClusterOnlyLabels, Gauge>,
    panic: Family<ClusterOnlyLabels, Counter>,
    mirror: Family<ClusterReasonLabels, Counter>,
    faults: Family<FaultLabels, Counter>,
    rate_limited: Family<ListenerRouteLabels, Counter>,
}

impl Families {
    pub(crate) fn register(&self, reg: &mut Registry) {
        reg.register("upstream_rq_retry", "Retries sent", self.retry.clone());
        reg.register(
            "upstream_rq_retry_success",
            "Requests that succeeded on a retry",
            self.retry_success.clone(),
        );
        reg.register(
            "upstream_rq_retry_limit_exceeded",
            "Requests that still failed after their last allowed retry",
            self.retry_limit_exceeded.clone(),
        );
        reg.register(
            "upstream_rq_retry_overflow",
            "Retries not sent because the retry budget or max_retries breaker was exhausted",
            self.retry_overflow.clone(),
        );
        reg.register(
            "circuit_breaker_overflow",
            "Requests refused by a circuit breaker (503 UO)",
            self.breaker_overflow.clone(),
        );
        reg.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection, by reason",
            self.ejections.clone(),
        );
        reg.register(
            "outlier_ejections_active",
            "Endpoints ejected now (updated every outlier interval)",
            self.ejections_active.clone(),
        );
        reg.register(
            "health_check",
            "Active health checks by result",
            self.health_checks.clone(),
        );
        reg.register(
            "membership_healthy",
            "Endpoints passing their active health check",
            self.healthy.clone(),
        );
        reg.register(
            "upstream_lb_healthy_panic",
            "Picks made in panic mode (too few available endpoints, balanced over all)",
            self.panic.clone(),
        );
        reg.register(
            "upstream_rq_mirror",
            "Mirrored requests by shadow cluster and result",
            self.mirror.clone(),
        );
        reg.register(
            "fault_injected",
            "Requests delayed or aborted by fault injection",
            self.faults.clone(),
        );
        reg.register(
            "local_rate_limited",
            "Requests refused by a local rate limit (429 RL)",
            self.rate_limited.clone(),
        );
    }
}

/// Traffic-management metric handles of one cluster.
#[derive(Debug)]
pub struct ClusterResilienceMetrics {
    /// Retries sent.
    pub retry: Counter,
    /// Requests that succeeded on a retry.
    pub retry_success: Counter,
    /// Requests that failed after the last retry.
    pub retry_limit_exceeded: Counter,
    /// Retries refused by the budget.
    pub retry_overflow_budget: Counter,
    /// Retries refused by `max_retries`.
    pub retry_overflow_breaker: Counter,
    /// Requests refused by `max_requests`.
    pub overflow_requests: Counter,
    /// Requests refused by `max_pending_requests`.
    pub overflow_pending: Counter,
    ejections: [Counter; 4],
    /// Endpoints ejected now.
    pub ejections_active: Gauge,
    hc_success: Counter,
    hc_failure: Counter,
    /// Endpoints passing their health check.
    pub healthy: Gauge,
    /// Panic-mode picks.
    pub panic: Counter,
    /// Mirrored requests sent to this cluster (as a shadow) and answered.
    pub mirror_sent: Counter,
    /// Mirrored requests that failed or timed out.
    pub mirror_failed: Counter,
    /// Mirrored requests not sent (breaker overflow, no endpoint, body not buffered).
    pub mirror_skipped: Counter,
}

impl ClusterResilienceMetrics {
    pub(crate) fn ejected(&self, reason: EjectReason) {
        let i = match reason {
            EjectReason::Consecutive5xx => 0,
            EjectReason::ConsecutiveGatewayErrors => 1,
            EjectReason::ConsecutiveLocalOriginFailures => 2,
            EjectReason::SuccessRate => 3,
        };
        self.ejections[i].inc();
    }

    pub(crate) fn hc(&self, passed: bool) {
        if passed {
            self.hc_success.inc();
        } else {
            self.hc_failure.inc();
        }
    }
}

/// Traffic-management metric handles of one route.
#[derive(Debug)]
pub struct RouteResilienceMetrics {
    /// Delays injected.
    pub delays: Counter,
    /// Aborts injected.
    pub aborts: Counter,
    /// Requests refused by the route's rate limit.
    pub rate_limited: Counter,
}

impl Metrics {
    /// Traffic-management handles for `cluster`.
    pub fn cluster_resilience(&self, cluster: &str) -> Arc<ClusterResilienceMetrics> {
        let f = &self.resilience;
        let c = ClusterOnlyLabels {
            cluster: cluster.to_owned(),
        };
        let r = |reason: &str| ClusterReasonLabels {
            cluster: cluster.to_owned(),
            reason: reason.to_owned(),
        };
        Arc::new(ClusterResilienceMetrics {
            retry: f.retry.get_or_create_owned(&c),
            retry_success: f.retry_success.get_or_create_owned(&c),
            retry_limit_exceeded: f.retry_limit_exceeded.get_or_create_owned(&c),
            retry_overflow_budget: f.retry_overflow.get_or_create_owned(&r("budget")),
            retry_overflow_breaker: f.retry_overflow.get_or_create_owned(&r("circuit_breaker")),
            overflow_requests: f.breaker_overflow.get_or_create_owned(&r("max_requests")),
            overflow_pending: f
                .breaker_overflow
                .get_or_create_owned(&r("max_pending_requests")),
            ejections: [
                EjectReason::Consecutive5xx,
                EjectReason::ConsecutiveGatewayErrors,
                EjectReason::ConsecutiveLocalOriginFailures,
                EjectReason::SuccessRate,
            ]
            .map(|e| f.ejections.get_or_create_owned(&r(e.label()))),
            ejections_active: f.ejections_active.get_or_create_owned(&c),
            hc_success: f.health_checks.get_or_create_owned(&r("success")),
            hc_failure: f.health_checks.get_or_create_owned(&r("failure")),
            healthy: f.healthy.get_or_create_owned(&c),
            panic: f.panic.get_or_create_owned(&c),
            mirror_sent: f.mirror.get_or_create_owned(&r("sent")),
            mirror_failed: f.mirror.get_or_create_owned(&r("failed")),
            mirror_skipped: f.mirror.get_or_create_owned(&r("skipped")),
        })
    }

    /// Traffic-management handles for `route` of `listener` (`route` empty: the listener's).
    pub fn route_resilience(&self, listener: &str, route: &str) -> RouteResilienceMetrics {
        let f = &self.resilience;
        let kind = |kind: &str| FaultLabels {
            listener: listener.to_owned(),
            route: route.to_owned(),
            kind: kind.to_owned(),
        };
        RouteResilienceMetrics {
            delays: f.faults.get_or_create_owned(&kind("delay")),
            aborts: f.faults.get_or_create_owned(&kind("abort")),
            rate_limited: f.rate_limited.get_or_create_owned(&ListenerRouteLabels {
                listener: listener.to_owned(),
                route: route.to_owned(),
            }),
        }
    }
}

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

/// A shadow cluster and the share of requests it gets.
#[derive(Debug)]
pub struct Mirror {
    /// The shadow cluster.
    pub cluster: Arc<Cluster>,
    /// Percentage mirrored.
    pub percentage: f64,
}

/// A route's traffic-management settings, compiled.
#[derive(Debug)]
pub struct RouteResilience {
    /// Retry policy.
    pub retry: Option<RetryConfig>,
    /// Fault injection.
    pub fault: Option<FaultConfig>,
    /// Route-level token bucket.
    pub rate_limit: Option<Arc<TokenBucket>>,
    /// Shadow clusters.
    pub mirrors: Vec<Mirror>,
    /// Metric handles.
    pub metrics: RouteResilienceMetrics,
}

impl RouteResilience {
    /// Compiles route `r` (at field path `path`) of `listener`.
    pub fn build(
        path: &str,
        r: &schema::Route,
        clusters: &[Arc<Cluster>],
        metrics: &Metrics,
        listener: &str,
        route: &str,
        previous: Option<&crate::generation::Generation>,
    ) -> Result<RouteResilience, BuildError> {
        let forward = r.route.as_ref();
        let mut mirrors = Vec::new();
        for (i, m) in forward
            .map_or(&[][..], |f| &f.request_mirror_policies)
            .iter()
            .enumerate()
        {
            let cluster = clusters
                .iter()
                .find(|c| *c.name == *m.cluster)
                .cloned()
                .ok_or_else(|| {
                    BuildError::Invalid(format!(
                        "{path}.route.request_mirror_policies[{i}].cluster: unknown cluster `{}`",
                        m.cluster
                    ))
                })?;
            mirrors.push(Mirror {
                cluster,
                percentage: m.effective_percentage(),
            });
        }
        Ok(RouteResilience {
            retry: forward
                .and_then(|f| f.retry_policy.as_ref())
                .map(RetryConfig::new),
            fault: r
                .fault
                .as_ref()
                .map(|f| FaultConfig::new(&format!("{path}.fault"), f))
                .transpose()?,
            rate_limit: r.local_rate_limit.as_ref().map(|rl| {
                crate::ratelimit::carry_over(
                    previous_route_bucket(previous, listener, route).as_ref(),
                    rl,
                    now_ms(),
                )
            }),
            mirrors,
            metrics: metrics.route_resilience(listener, route),
        })
    }
}

fn previous_http_listener<'a>(
    previous: Option<&'a crate::generation::Generation>,
    listener: &str,
) -> Option<&'a crate::generation::HttpListener> {
    match previous?.listeners.get(listener).map(|l| &**l) {
        Some(crate::generation::ListenerGen::Http(h)) => Some(h),
        _ => None,
    }
}

/// The bucket route `route` of `listener` had in the previous generation.
fn previous_route_bucket(
    previous: Option<&crate::generation::Generation>,
    listener: &str,
    route: &str,
) -> Option<Arc<TokenBucket>> {
    let l = previous_http_listener(previous, listener)?;
    l.routes
        .routes()
        .zip(&l.route_state)
        .find(|(r, _)| &*r.name == route)
        .and_then(|(_, s)| s.resilience.rate_limit.clone())
}

/// The listener-wide bucket of `listener`, carried over when its settings are unchanged.
pub(crate) fn listener_bucket(
    previous: Option<&crate::generation::Generation>,
    listener: &str,
    cfg: &weft_config::resilience::LocalRateLimit,
) -> Arc<TokenBucket> {
    let old = previous_http_listener(previous, listener)
        .and_then(|l| l.local_rate_limit.as_ref())
        .map(|(b, _)| b);
    crate::ratelimit::carry_over(old, cfg, now_ms())
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
