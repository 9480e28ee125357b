//! Endpoints: one resolved address with its live statistics and health, and the set of a
//! cluster's endpoints at one moment with the load balancer built over it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use weft_balance::{Balancer, EndpointState, PickContext, Policy};

use crate::clock::now_ms;

/// One resolved endpoint and its live statistics.
#[derive(Debug)]
pub struct Endpoint {
    /// Its socket address.
    pub addr: SocketAddr,
    /// `ip:port` as a URI authority, built once.
    pub authority: http::uri::Authority,
    /// Balancing weight.
    pub weight: u32,
    /// Priority level (0 highest).
    pub priority: u32,
    /// Reached without TLS although the cluster has TLS (its labels miss the cluster's
    /// `tls.endpoint_match`).
    pub plaintext: bool,
    /// Requests in flight.
    pub active: AtomicU64,
    /// Requests sent.
    pub rq_total: AtomicU64,
    /// Requests that failed (connect failure, reset, timeout, 5xx).
    pub rq_error: AtomicU64,
    /// Connection attempts that failed.
    pub cx_connect_fail: AtomicU64,
    /// Active health check and outlier state.
    pub health: EndpointHealth,
}

/// The millisecond a count was taken in, and per priority level `(level, endpoints, available)`.
type LevelCounts = (u64, Vec<(u32, usize, usize)>);

/// The endpoints of a cluster at one moment, with the balancer built over them.
#[derive(Debug)]
pub struct EndpointSet {
    /// The endpoints, indexed as the balancer sees them.
    pub endpoints: Vec<Arc<Endpoint>>,
    balancer: Option<Balancer>,
    /// The priority levels present, in order, when there is more than one.
    levels: Option<Vec<u32>>,
    /// Each level's endpoint and available counts, as last counted, and the millisecond they
    /// were counted in: a pick counts again only when the clock has moved on (health and
    /// ejections change on millisecond boundaries at the finest), not on every request.
    level_counts: arc_swap::ArcSwapOption<LevelCounts>,
    /// The endpoints reached in plaintext although the cluster has TLS.
    plaintext: std::collections::HashSet<SocketAddr>,
}

impl EndpointState for EndpointSet {
    fn is_available(&self, index: usize) -> bool {
        let now = now_ms();
        self.endpoints
            .get(index)
            .is_some_and(|e| e.health.is_available(now))
    }
    fn active_requests(&self, index: usize) -> u64 {
        self.endpoints
            .get(index)
            .map_or(0, |e| e.active.load(Ordering::Relaxed))
    }
}

impl EndpointSet {
    pub(crate) fn build(policy: Policy, endpoints: Vec<Arc<Endpoint>>) -> EndpointSet {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let keys: Vec<Vec<u8>> = endpoints
            .iter()
            .map(|e| e.addr.to_string().into_bytes())
            .collect();
        let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let balancer = if endpoints.is_empty() {
            None
        } else {
            Balancer::with_endpoint_keys(policy, &weights, &key_refs)
                .inspect_err(|e| tracing::error!(error = %e, "cannot build load balancer"))
                .ok()
        };
        let mut levels: Vec<u32> = endpoints.iter().map(|e| e.priority).collect();
        levels.sort_unstable();
        levels.dedup();
        let plaintext = endpoints
            .iter()
            .filter(|e| e.plaintext)
            .map(|e| e.addr)
            .collect();
        EndpointSet {
            endpoints,
            balancer,
            levels: (levels.len() > 1).then_some(levels),
            level_counts: arc_swap::ArcSwapOption::empty(),
            plaintext,
        }
    }

    /// With several priority levels, the level this pick goes to (Envoy's priority load over
    /// the endpoints' availability now); `None` with one level, or none available.
    pub(crate) fn pick_level(&self, now: u64) -> Option<u32> {
        let levels = self.levels.as_ref()?;
        if let Some(counted) = self.level_counts.load().as_deref()
            && counted.0 == now
        {
            return choose_level(&counted.1, fastrand::f64());
        }
        let mut counts: Vec<(u32, usize, usize)> = levels.iter().map(|&p| (p, 0, 0)).collect();
        for e in &self.endpoints {
            // `levels` is sorted and holds every endpoint's level.
            if let Ok(i) = levels.binary_search(&e.priority) {
                counts[i].1 += 1;
                if e.health.is_available(now) {
                    counts[i].2 += 1;
                }
            }
        }
        let level = choose_level(&counts, fastrand::f64());
        self.level_counts.store(Some(Arc::new((now, counts))));
        level
    }

    /// Whether `addr` is reached in plaintext although the cluster has TLS.
    pub fn is_plaintext(&self, addr: &SocketAddr) -> bool {
        !self.plaintext.is_empty() && self.plaintext.contains(addr)
    }

    /// The balancer (`None` when there is no endpoint).
    pub(crate) fn balancer(&self) -> Option<&Balancer> {
        self.balancer.as_ref()
    }

    /// Picks an endpoint; `hash` feeds ring hashing. `None` when there is no endpoint.
    pub fn pick(&self, hash: Option<u64>) -> Option<&Arc<Endpoint>> {
        let balancer = self.balancer.as_ref()?;
        let mut ctx = PickContext::new(self);
        ctx.hash = hash;
        balancer.pick(&ctx).and_then(|i| self.endpoints.get(i))
    }
}

impl Endpoint {
    pub(crate) fn new(addr: SocketAddr, weight: u32) -> Endpoint {
        let authority = http::uri::Authority::try_from(addr.to_string().as_str())
            .unwrap_or_else(|_| http::uri::Authority::from_static("invalid"));
        Endpoint {
            addr,
            authority,
            weight,
            priority: 0,
            plaintext: false,
            active: AtomicU64::new(0),
            rq_total: AtomicU64::new(0),
            rq_error: AtomicU64::new(0),
            cx_connect_fail: AtomicU64::new(0),
            health: Default::default(),
        }
    }

    /// The same endpoint at priority level `priority`, reached in plaintext or not.
    pub(crate) fn placed(mut self, priority: u32, plaintext: bool) -> Endpoint {
        self.priority = priority;
        self.plaintext = plaintext;
        self
    }
}

/// Envoy's default overprovisioning factor, in percent: a level whose endpoints are 5/7
/// available still takes all of its share.
const OVERPROVISIONING: f64 = 140.0;

/// The priority level a request goes to, Envoy's way: each level's health is its available
/// share of endpoints times the overprovisioning factor (at most 100 %); the highest level
/// takes its health's worth of the traffic, the next takes what is left up to its own health,
/// and so on; when the healths add up to less than 100 %, the shares are scaled up. `levels`
/// is `(priority, endpoints, available)` in priority order; `draw` is uniform in `[0, 1)`.
/// `None` when no level has an available endpoint.
pub fn choose_level(levels: &[(u32, usize, usize)], draw: f64) -> Option<u32> {
    let health: Vec<f64> = levels
        .iter()
        .map(|&(_, total, available)| {
            if total == 0 {
                0.0
            } else {
                (available as f64 * OVERPROVISIONING / total as f64).min(100.0)
            }
        })
        .collect();
    let mut left = 100.0;
    let loads: Vec<f64> = health
        .iter()
        .map(|h| {
            let take = h.min(left);
            left -= take;
            take
        })
        .collect();
    let sum: f64 = loads.iter().sum();
    if sum <= 0.0 {
        return None;
    }
    let mut at = draw * sum;
    for (i, load) in loads.iter().enumerate() {
        if at < *load {
            return Some(levels[i].0);
        }
        at -= load;
    }
    loads.iter().rposition(|l| *l > 0.0).map(|i| levels[i].0)
}

/// Live health of one endpoint. Every field is an atomic: writers are the health checker, the
/// outlier detector and request completions; the reader is every balancer pick.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    /// The active health check says the endpoint is down (`/failed_active_hc`).
    pub failed_active_hc: AtomicBool,
    /// Consecutive passed checks.
    pub(crate) hc_passes: AtomicU32,
    /// Consecutive failed checks.
    pub(crate) hc_failures: AtomicU32,
    /// Ejected by outlier detection until this [`now_ms`] instant (0: not ejected).
    pub ejected_until_ms: AtomicU64,
    /// How many times it was ejected (decays by one per interval without ejection).
    pub times_ejected: AtomicU32,
    /// Ejections in total.
    pub ejections_total: AtomicU64,
    pub(crate) consecutive_5xx: AtomicU32,
    pub(crate) consecutive_gateway: AtomicU32,
    pub(crate) consecutive_local: AtomicU32,
    /// Successes in the current outlier interval.
    pub(crate) window_success: AtomicU64,
    /// Requests in the current outlier interval.
    pub(crate) window_total: AtomicU64,
}

impl EndpointHealth {
    /// Whether the endpoint is ejected at `now` (a [`now_ms`] instant).
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now
    }

    /// Whether the balancer may pick the endpoint at `now`.
    pub fn is_available(&self, now: u64) -> bool {
        !self.failed_active_hc.load(Ordering::Relaxed) && !self.is_ejected(now)
    }

    /// Envoy's `health_flags` text: `healthy`, or `/failed_active_hc/failed_outlier_check`.
    pub fn flags(&self, now: u64) -> String {
        let mut out = String::new();
        if self.failed_active_hc.load(Ordering::Relaxed) {
            out.push_str("/failed_active_hc");
        }
        if self.is_ejected(now) {
            out.push_str("/failed_outlier_check");
        }
        if out.is_empty() {
            out.push_str("healthy");
        }
        out
    }

    /// Takes over another endpoint's state (same address, carried across a reload).
    pub fn adopt(&self, old: &EndpointHealth) {
        let copy32 =
            |a: &AtomicU32, b: &AtomicU32| a.store(b.load(Ordering::Relaxed), Ordering::Relaxed);
        let copy64 =
            |a: &AtomicU64, b: &AtomicU64| a.store(b.load(Ordering::Relaxed), Ordering::Relaxed);
        self.failed_active_hc.store(
            old.failed_active_hc.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        copy32(&self.hc_passes, &old.hc_passes);
        copy32(&self.hc_failures, &old.hc_failures);
        copy64(&self.ejected_until_ms, &old.ejected_until_ms);
        copy32(&self.times_ejected, &old.times_ejected);
        copy64(&self.ejections_total, &old.ejections_total);
        copy32(&self.consecutive_5xx, &old.consecutive_5xx);
        copy32(&self.consecutive_gateway, &old.consecutive_gateway);
        copy32(&self.consecutive_local, &old.consecutive_local);
    }

    /// Records one health-check result; returns the new "failed" state when it changed.
    pub(crate) fn record_check(
        &self,
        passed: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        let failed = self.failed_active_hc.load(Ordering::Relaxed);
        if passed {
            self.hc_failures.store(0, Ordering::Relaxed);
            let passes = self.hc_passes.fetch_add(1, Ordering::Relaxed) + 1;
            if failed && passes >= healthy_threshold {
                self.failed_active_hc.store(false, Ordering::Relaxed);
                return Some(false);
            }
        } else {
            self.hc_passes.store(0, Ordering::Relaxed);
            let failures = self.hc_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if !failed && failures >= unhealthy_threshold {
                self.failed_active_hc.store(true, Ordering::Relaxed);
                return Some(true);
            }
        }
        None
    }
}

#[cfg(test)]
mod priority_tests {
    use super::choose_level;

    fn share(levels: &[(u32, usize, usize)]) -> Vec<(u32, usize)> {
        let mut counts: Vec<(u32, usize)> = levels.iter().map(|l| (l.0, 0)).collect();
        for i in 0..1000 {
            let draw = (i as f64 + 0.5) / 1000.0;
            if let Some(p) = choose_level(levels, draw)
                && let Some(c) = counts.iter_mut().find(|c| c.0 == p)
            {
                c.1 += 1;
            }
        }
        counts
    }

    #[test]
    fn priority_load_follows_envoys_overprovisioned_health() {
        // All healthy: everything to level 0.
        assert_eq!(share(&[(0, 4, 4), (1, 4, 4)]), vec![(0, 1000), (1, 0)]);
        // 3 of 4 available: 75 % x 1.4 = 105 %, still all of it.
        assert_eq!(share(&[(0, 4, 3), (1, 4, 4)]), vec![(0, 1000), (1, 0)]);
        // 1 of 2: 70 % stays, 30 % spills to level 1.
        assert_eq!(share(&[(0, 2, 1), (1, 2, 2)]), vec![(0, 700), (1, 300)]);
        // Level 0 down: all to level 1.
        assert_eq!(share(&[(0, 2, 0), (1, 3, 3)]), vec![(0, 0), (1, 1000)]);
        // Both degraded (28 % + 28 %): the shares are scaled up to 100 %.
        assert_eq!(share(&[(0, 5, 1), (1, 5, 1)]), vec![(0, 500), (1, 500)]);
        assert_eq!(choose_level(&[(0, 2, 0), (1, 2, 0)], 0.5), None);
    }
}
