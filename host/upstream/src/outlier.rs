//! Outlier detection (passive health checking): consecutive 5xx, consecutive gateway errors,
//! consecutive local-origin failures, and success-rate ejection; an ejection lasts
//! `base_ejection_time × times ejected` (at most `max_ejection_time`), and at most
//! `max_ejection_percent` of a cluster's endpoints are ejected at once.
//!
//! Local-origin failures (connect failures, resets, timeouts) count toward all three
//! consecutive counters, as in Envoy without `split_external_local_origin_errors`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use weft_config::resilience::OutlierDetection;

use crate::clock::now_ms;
use crate::endpoint::{Endpoint, EndpointHealth, EndpointSet};
use weft_observe::metrics::ClusterResilienceMetrics;

/// What an attempt to an endpoint came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// The endpoint answered with this status.
    Status(u16),
    /// Connect failure, reset or timeout.
    LocalFailure,
}

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectReason {
    /// `consecutive_5xx`.
    Consecutive5xx,
    /// `consecutive_gateway_errors`.
    ConsecutiveGatewayErrors,
    /// `consecutive_local_origin_failures`.
    ConsecutiveLocalOriginFailures,
    /// Success rate below the cluster's.
    SuccessRate,
}

impl EjectReason {
    /// Its index in [`weft_observe::metrics::EJECT_REASONS`].
    pub fn index(self) -> usize {
        match self {
            EjectReason::Consecutive5xx => 0,
            EjectReason::ConsecutiveGatewayErrors => 1,
            EjectReason::ConsecutiveLocalOriginFailures => 2,
            EjectReason::SuccessRate => 3,
        }
    }

    /// Its metric label.
    pub fn label(self) -> &'static str {
        match self {
            EjectReason::Consecutive5xx => "consecutive_5xx",
            EjectReason::ConsecutiveGatewayErrors => "consecutive_gateway_errors",
            EjectReason::ConsecutiveLocalOriginFailures => "consecutive_local_origin_failures",
            EjectReason::SuccessRate => "success_rate",
        }
    }
}

/// Updates `h`'s counters with one observation; returns the threshold it crossed, if any.
pub fn observe(h: &EndpointHealth, cfg: &OutlierDetection, o: Observation) -> Option<EjectReason> {
    h.window_total.fetch_add(1, Ordering::Relaxed);
    let hit = |n: u32, threshold: u32| threshold > 0 && n >= threshold;
    match o {
        Observation::LocalFailure => {
            let local = h.consecutive_local.fetch_add(1, Ordering::Relaxed) + 1;
            let x5 = h.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
            let gw = h.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1;
            if hit(local, cfg.consecutive_local_origin_failures) {
                Some(EjectReason::ConsecutiveLocalOriginFailures)
            } else if hit(x5, cfg.consecutive_5xx) {
                Some(EjectReason::Consecutive5xx)
            } else if hit(gw, cfg.consecutive_gateway_errors) {
                Some(EjectReason::ConsecutiveGatewayErrors)
            } else {
                None
            }
        }
        Observation::Status(status) => {
            h.consecutive_local.store(0, Ordering::Relaxed);
            if status >= 500 {
                let x5 = h.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
                let gw = if (502..=504).contains(&status) {
                    h.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
                } else {
                    h.consecutive_gateway.store(0, Ordering::Relaxed);
                    0
                };
                if hit(x5, cfg.consecutive_5xx) {
                    Some(EjectReason::Consecutive5xx)
                } else if hit(gw, cfg.consecutive_gateway_errors) {
                    Some(EjectReason::ConsecutiveGatewayErrors)
                } else {
                    None
                }
            } else {
                h.window_success.fetch_add(1, Ordering::Relaxed);
                h.consecutive_5xx.store(0, Ordering::Relaxed);
                h.consecutive_gateway.store(0, Ordering::Relaxed);
                None
            }
        }
    }
}

/// How many of `total` endpoints may be ejected at once: `percent` of them, rounded down, but
/// at least one when `percent` is above zero (as Envoy).
pub fn max_ejected(total: usize, percent: f64) -> usize {
    if percent <= 0.0 || total == 0 {
        return 0;
    }
    ((total as f64 * percent / 100.0).floor() as usize).clamp(1, total)
}

/// How long the `times`-th ejection lasts.
pub fn ejection_time(cfg: &OutlierDetection, times: u32) -> Duration {
    cfg.base_ejection_time
        .saturating_mul(times.max(1))
        .min(cfg.max_ejection_time.max(cfg.base_ejection_time))
}

/// Success-rate outliers: among endpoints with at least `request_volume` requests (there must
/// be `minimum_hosts` of them), those whose success rate is below
/// `mean − stdev_factor / 1000 × stdev`. `stats` are `(successes, requests)`.
pub fn success_rate_outliers(
    stats: &[(u64, u64)],
    minimum_hosts: u32,
    request_volume: u32,
    stdev_factor: u32,
) -> Vec<usize> {
    if stdev_factor == 0 {
        return Vec::new();
    }
    let eligible: Vec<(usize, f64)> = stats
        .iter()
        .enumerate()
        .filter(|(_, (_, total))| *total >= u64::from(request_volume) && *total > 0)
        .map(|(i, (ok, total))| (i, *ok as f64 * 100.0 / *total as f64))
        .collect();
    if eligible.is_empty() || eligible.len() < minimum_hosts as usize {
        return Vec::new();
    }
    let n = eligible.len() as f64;
    let mean = eligible.iter().map(|(_, r)| r).sum::<f64>() / n;
    let variance = eligible
        .iter()
        .map(|(_, r)| (r - mean).powi(2))
        .sum::<f64>()
        / n;
    let threshold = mean - f64::from(stdev_factor) / 1000.0 * variance.sqrt();
    eligible
        .into_iter()
        .filter(|(_, r)| *r < threshold)
        .map(|(i, _)| i)
        .collect()
}

/// Ejects `endpoint` from `set` at `now` unless too many are ejected already; true if it was.
pub fn try_eject(set: &EndpointSet, endpoint: &Endpoint, cfg: &OutlierDetection, now: u64) -> bool {
    let h = &endpoint.health;
    if h.is_ejected(now) {
        return false;
    }
    let ejected = set
        .endpoints
        .iter()
        .filter(|e| e.health.is_ejected(now))
        .count();
    if ejected >= max_ejected(set.endpoints.len(), cfg.max_ejection_percent) {
        return false;
    }
    let times = h.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
    let until = now
        .saturating_add(u64::try_from(ejection_time(cfg, times).as_millis()).unwrap_or(u64::MAX));
    h.ejected_until_ms.store(until, Ordering::Relaxed);
    h.ejections_total.fetch_add(1, Ordering::Relaxed);
    h.consecutive_5xx.store(0, Ordering::Relaxed);
    h.consecutive_gateway.store(0, Ordering::Relaxed);
    h.consecutive_local.store(0, Ordering::Relaxed);
    true
}

/// Observes one attempt's result and ejects the endpoint if it crossed a threshold.
pub(crate) fn record(
    set: &EndpointSet,
    endpoint: &Endpoint,
    cfg: &OutlierDetection,
    o: Observation,
    metrics: &ClusterResilienceMetrics,
    cluster: &str,
) {
    if let Some(reason) = observe(&endpoint.health, cfg, o)
        && try_eject(set, endpoint, cfg, now_ms())
    {
        metrics.ejected(reason.index());
        tracing::warn!(%cluster, endpoint = %endpoint.addr, reason = reason.label(), "endpoint ejected");
    }
}

/// The interval task: success-rate ejection, decay of ejection counts, gauges.
pub(crate) fn spawn_detector(
    cluster: &str,
    cfg: &OutlierDetection,
    endpoints: Arc<ArcSwap<EndpointSet>>,
    metrics: Arc<ClusterResilienceMetrics>,
) -> tokio::task::JoinHandle<()> {
    let cfg = cfg.clone();
    let name = cluster.to_owned();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(cfg.interval).await;
            let set = endpoints.load_full();
            let now = now_ms();
            let stats: Vec<(u64, u64)> = set
                .endpoints
                .iter()
                .map(|e| {
                    (
                        e.health.window_success.swap(0, Ordering::Relaxed),
                        e.health.window_total.swap(0, Ordering::Relaxed),
                    )
                })
                .collect();
            for e in set.endpoints.iter() {
                let h = &e.health;
                if !h.is_ejected(now) && h.ejected_until_ms.load(Ordering::Relaxed) != 0 {
                    // Healthy for an interval: forget one past ejection.
                    let times = h.times_ejected.load(Ordering::Relaxed);
                    if times > 0 {
                        h.times_ejected.store(times - 1, Ordering::Relaxed);
                    }
                }
            }
            for i in success_rate_outliers(
                &stats,
                cfg.success_rate_minimum_hosts,
                cfg.success_rate_request_volume,
                cfg.success_rate_stdev_factor,
            ) {
                if let Some(e) = set.endpoints.get(i)
                    && try_eject(&set, e, &cfg, now)
                {
                    metrics.ejected(EjectReason::SuccessRate.index());
                    tracing::warn!(cluster = %name, endpoint = %e.addr, "endpoint ejected for its success rate");
                }
            }
            let active = set
                .endpoints
                .iter()
                .filter(|e| e.health.is_ejected(now))
                .count();
            metrics.ejections_active.set(active as i64);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 3,
            consecutive_gateway_errors: 2,
            consecutive_local_origin_failures: 0,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(1),
            max_ejection_time: Duration::from_secs(5),
            max_ejection_percent: 50.0,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
        }
    }

    #[test]
    fn consecutive_5xx_crosses_at_the_threshold_and_a_success_resets() {
        let (h, c) = (EndpointHealth::default(), cfg());
        assert_eq!(observe(&h, &c, Observation::Status(500)), None);
        assert_eq!(observe(&h, &c, Observation::Status(200)), None);
        assert_eq!(observe(&h, &c, Observation::Status(500)), None);
        assert_eq!(observe(&h, &c, Observation::Status(500)), None);
        assert_eq!(
            observe(&h, &c, Observation::Status(500)),
            Some(EjectReason::Consecutive5xx)
        );
    }

    #[test]
    fn gateway_errors_and_local_failures_count_separately() {
        let (h, c) = (EndpointHealth::default(), cfg());
        assert_eq!(observe(&h, &c, Observation::Status(503)), None);
        assert_eq!(
            observe(&h, &c, Observation::LocalFailure),
            Some(EjectReason::ConsecutiveGatewayErrors)
        );
        let h = EndpointHealth::default();
        assert_eq!(observe(&h, &c, Observation::Status(502)), None);
        assert_eq!(
            observe(&h, &c, Observation::Status(500)),
            None,
            "500 is no gateway error"
        );
        assert_eq!(
            observe(&h, &c, Observation::Status(502)),
            Some(EjectReason::Consecutive5xx)
        );
    }

    #[test]
    fn ejection_time_grows_with_ejections_up_to_the_max() {
        let c = cfg();
        assert_eq!(ejection_time(&c, 1), Duration::from_secs(1));
        assert_eq!(ejection_time(&c, 3), Duration::from_secs(3));
        assert_eq!(ejection_time(&c, 9), Duration::from_secs(5));
    }

    #[test]
    fn reason_indexes_match_the_metric_labels() {
        for r in [
            EjectReason::Consecutive5xx,
            EjectReason::ConsecutiveGatewayErrors,
            EjectReason::ConsecutiveLocalOriginFailures,
            EjectReason::SuccessRate,
        ] {
            assert_eq!(weft_observe::metrics::EJECT_REASONS[r.index()], r.label());
        }
    }

    #[test]
    fn at_least_one_endpoint_may_be_ejected() {
        assert_eq!(max_ejected(3, 10.0), 1);
        assert_eq!(max_ejected(10, 35.0), 3);
        assert_eq!(max_ejected(4, 100.0), 4);
        assert_eq!(max_ejected(4, 0.0), 0);
        assert_eq!(max_ejected(0, 50.0), 0);
    }

    #[test]
    fn success_rate_ejects_the_low_outlier_only_with_enough_hosts_and_volume() {
        let stats = [(100, 100), (99, 100), (100, 100), (98, 100), (40, 100)];
        assert_eq!(success_rate_outliers(&stats, 5, 100, 1900), vec![4]);
        assert!(success_rate_outliers(&stats, 6, 100, 1900).is_empty());
        assert!(success_rate_outliers(&stats, 5, 101, 1900).is_empty());
        assert!(success_rate_outliers(&stats, 5, 100, 0).is_empty());
        let even = [(90, 100); 5];
        assert!(success_rate_outliers(&even, 5, 100, 1900).is_empty());
    }
}
