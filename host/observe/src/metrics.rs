//! Prometheus metrics of the data plane, exported by the admin server on `/metrics`.
//!
//! Families are registered once per process; each configuration generation resolves the label
//! sets it needs into handles up front, so a request only increments atomics. The names are
//! documented in `docs/metrics.md`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use std::sync::Arc;

use crate::sharded::ShardedHistogram;

type HistogramFamily<L> = Family<L, ShardedHistogram, fn() -> ShardedHistogram>;

fn latency_histogram() -> ShardedHistogram {
    // 100 µs .. ~52 s. Sharded by thread: every request observes one (no lock shared by the
    // workers).
    ShardedHistogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Labels of listener-level series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// Listener name.
    pub listener: String,
}

/// Labels of listener-level series split by status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerClassLabels {
    /// Listener name.
    pub listener: String,
    /// `1xx` … `5xx`.
    pub code_class: String,
}

/// Labels of listener-level series split by response flag.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerFlagLabels {
    /// Listener name.
    pub listener: String,
    /// Envoy response flag, e.g. `NR`, `UF`.
    pub response_flag: String,
}

/// Labels of route-level series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteClassLabels {
    /// Listener name.
    pub listener: String,
    /// Route name.
    pub route: String,
    /// `1xx` … `5xx`.
    pub code_class: String,
}

/// Labels of cluster-level series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// Cluster name.
    pub cluster: String,
}

/// Labels of cluster-level series split by status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterClassLabels {
    /// Cluster name.
    pub cluster: String,
    /// `1xx` … `5xx`.
    pub code_class: String,
}

/// Labels of per-worker series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    /// The worker's index, `0`, `1`, …
    pub worker: String,
}

/// Labels of the reload counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `failure`.
    pub result: String,
}

/// Every metric family of the proxy.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Istio's standard families (not under the `weft_` prefix).
    pub istio: Arc<crate::istio::IstioFamilies>,
    downstream_rq: Family<ListenerClassLabels, Counter>,
    downstream_rq_time: HistogramFamily<ListenerLabels>,
    downstream_cx_total: Family<ListenerLabels, Counter>,
    downstream_cx_active: Family<ListenerLabels, Gauge>,
    downstream_rq_rejected: Family<ListenerFlagLabels, Counter>,
    downstream_cx_overflow: Family<ListenerLabels, Counter>,
    response_flags: Family<ListenerFlagLabels, Counter>,
    route_rq: Family<RouteClassLabels, Counter>,
    upstream_rq: Family<ClusterClassLabels, Counter>,
    upstream_rq_time: HistogramFamily<ClusterLabels>,
    upstream_rq_active: Family<ClusterLabels, Gauge>,
    upstream_cx_connect_fail: Family<ClusterLabels, Counter>,
    upstream_rq_timeout: Family<ClusterLabels, Counter>,
    upstream_cx_total: Family<ClusterLabels, Counter>,
    /// Configuration reloads by result.
    pub config_reload: Family<ResultLabels, Counter>,
    /// The live configuration generation.
    pub config_generation: Gauge,
    /// Connections accepted by each worker (`runtime.accept: reuseport` only).
    pub worker_cx: Family<WorkerLabels, Counter>,
    /// Mesh TLS series (`connection_security_policy`, handshake errors, authorization).
    pub tls: TlsMetrics,
    /// Traffic management (retries, breakers, health, faults, mirrors, rate limits).
    pub resilience: Families,
    /// The overload manager.
    pub overload: OverloadMetrics,
    /// The xDS client (`weft_xds_*`).
    pub xds: crate::xds::XdsMetrics,
}

/// The overload manager's series (not per listener: the watermark is process-wide).
#[derive(Debug, Clone, Default)]
pub struct OverloadMetrics {
    /// 1 while the process is above its memory watermark.
    pub active: Gauge,
    /// The last sampled resident memory, in bytes.
    pub rss_bytes: Gauge,
    /// Requests answered 503 `OM` while overloaded.
    pub rq_shed: Counter,
    /// Idle connections closed when the watermark was crossed.
    pub cx_idle_closed: Counter,
}

impl OverloadMetrics {
    fn register(&self, reg: &mut Registry) {
        reg.register(
            "overload_active",
            "1 while resident memory is above overload.max_rss_bytes",
            self.active.clone(),
        );
        reg.register(
            "process_resident_memory_sampled_bytes",
            "Resident memory at the overload manager's last sample",
            self.rss_bytes.clone(),
        );
        reg.register(
            "overload_rq_shed",
            "Requests answered 503 (flag OM) while overloaded",
            self.rq_shed.clone(),
        );
        reg.register(
            "overload_cx_idle_closed",
            "Idle downstream connections closed by the overload manager",
            self.cx_idle_closed.clone(),
        );
    }
}

/// The five status classes, indexed by `status / 100 - 1`.
pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index into [`CODE_CLASSES`] for a status code.
pub fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// Handles for one listener.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    /// Requests by status class.
    pub rq: [Counter; 5],
    /// Request duration.
    pub rq_time: ShardedHistogram,
    /// Connections accepted.
    pub cx_total: Counter,
    /// Connections open.
    pub cx_active: Gauge,
    /// Connections refused by `max_connections`.
    pub cx_overflow: Counter,
    /// Metrics family handle for rejections and flags (rare: resolved on use).
    family: ListenerFamilies,
}

#[derive(Debug, Clone)]
struct ListenerFamilies {
    listener: String,
    rejected: Family<ListenerFlagLabels, Counter>,
    flags: Family<ListenerFlagLabels, Counter>,
}

/// Handles for one route.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    /// Requests by status class.
    pub rq: [Counter; 5],
}

/// Handles for one cluster.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    /// Upstream requests by status class.
    pub rq: [Counter; 5],
    /// Upstream request time (to response headers).
    pub rq_time: ShardedHistogram,
    /// Upstream requests in flight.
    pub rq_active: Gauge,
    /// Failed connection attempts.
    pub cx_connect_fail: Counter,
    /// Requests that hit the route timeout.
    pub rq_timeout: Counter,
    /// Upstream connections opened.
    pub cx_total: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let istio = Arc::new(crate::istio::IstioFamilies::default());
        root.register_collector(Box::new(crate::istio::IstioCollector(istio.clone())));
        let m = Metrics {
            istio,
            downstream_rq: Family::default(),
            downstream_rq_time: Family::new_with_constructor(latency_histogram),
            downstream_cx_total: Family::default(),
            downstream_cx_active: Family::default(),
            downstream_rq_rejected: Family::default(),
            downstream_cx_overflow: Family::default(),
            response_flags: Family::default(),
            route_rq: Family::default(),
            upstream_rq: Family::default(),
            upstream_rq_time: Family::new_with_constructor(latency_histogram),
            upstream_rq_active: Family::default(),
            upstream_cx_connect_fail: Family::default(),
            upstream_rq_timeout: Family::default(),
            upstream_cx_total: Family::default(),
            config_reload: Family::default(),
            config_generation: Gauge::default(),
            worker_cx: Family::default(),
            tls: TlsMetrics::default(),
            resilience: Default::default(),
            overload: OverloadMetrics::default(),
            xds: Default::default(),
            registry: Registry::default(),
        };
        let reg = root.sub_registry_with_prefix("weft");
        reg.register(
            "downstream_rq",
            "Downstream requests by listener and status class",
            m.downstream_rq.clone(),
        );
        reg.register(
            "downstream_rq_time_seconds",
            "Downstream request duration, from request start to the end of the response",
            m.downstream_rq_time.clone(),
        );
        reg.register(
            "downstream_cx",
            "Downstream connections accepted",
            m.downstream_cx_total.clone(),
        );
        reg.register(
            "downstream_cx_active",
            "Downstream connections open",
            m.downstream_cx_active.clone(),
        );
        reg.register(
            "downstream_rq_rejected",
            "Requests refused before routing (framing, limits, timeouts)",
            m.downstream_rq_rejected.clone(),
        );
        reg.register(
            "downstream_cx_overflow",
            "Downstream connections closed at accept because the listener had max_connections open",
            m.downstream_cx_overflow.clone(),
        );
        reg.register(
            "response_flags",
            "Responses by Envoy response flag",
            m.response_flags.clone(),
        );
        reg.register(
            "route_rq",
            "Requests by listener, route and status class",
            m.route_rq.clone(),
        );
        reg.register(
            "upstream_rq",
            "Upstream requests by cluster and status class",
            m.upstream_rq.clone(),
        );
        reg.register(
            "upstream_rq_time_seconds",
            "Upstream request time to response headers",
            m.upstream_rq_time.clone(),
        );
        reg.register(
            "upstream_rq_active",
            "Upstream requests in flight",
            m.upstream_rq_active.clone(),
        );
        reg.register(
            "upstream_cx_connect_fail",
            "Upstream connection attempts that failed or timed out",
            m.upstream_cx_connect_fail.clone(),
        );
        reg.register(
            "upstream_rq_timeout",
            "Upstream requests that hit the route timeout",
            m.upstream_rq_timeout.clone(),
        );
        reg.register(
            "upstream_cx",
            "Upstream connections opened",
            m.upstream_cx_total.clone(),
        );
        reg.register(
            "config_reload",
            "Configuration reloads by result",
            m.config_reload.clone(),
        );
        reg.register(
            "config_generation",
            "The live configuration generation",
            m.config_generation.clone(),
        );
        reg.register(
            "worker_downstream_cx",
            "Downstream connections accepted by each worker (runtime.accept: reuseport)",
            m.worker_cx.clone(),
        );
        m.tls.register(reg);
        m.resilience.register(reg);
        m.overload.register(reg);
        m.xds.register(reg);
        Metrics {
            registry: root,
            ..m
        }
    }

    /// Adds families that `collector` encodes at every scrape, after the registered ones and
    /// under the same `weft` prefix (the plugins' families are read from their live handles this
    /// way). Register each collector once, before the metrics are shared.
    pub fn register_collector(&mut self, collector: Box<dyn Collector>) {
        self.registry
            .sub_registry_with_prefix("weft")
            .register_collector(collector);
    }

    /// The OpenMetrics text exposition of every family: one encoding of one registry.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The Prometheus text format 0.0.4 exposition of every family (what Prometheus asks for
    /// when it does not accept OpenMetrics): see [`crate::exposition`].
    pub fn encode_text(&self) -> String {
        crate::exposition::openmetrics_to_text(&self.encode())
    }

    /// Handles for `listener`.
    pub fn listener(&self, listener: &str) -> std::sync::Arc<ListenerMetrics> {
        let l = ListenerLabels {
            listener: listener.to_owned(),
        };
        std::sync::Arc::new(ListenerMetrics {
            rq: CODE_CLASSES.map(|c| {
                self.downstream_rq
                    .get_or_create_owned(&ListenerClassLabels {
                        listener: listener.to_owned(),
                        code_class: c.to_owned(),
                    })
            }),
            rq_time: self.downstream_rq_time.get_or_create_owned(&l),
            cx_total: self.downstream_cx_total.get_or_create_owned(&l),
            cx_active: self.downstream_cx_active.get_or_create_owned(&l),
            cx_overflow: self.downstream_cx_overflow.get_or_create_owned(&l),
            family: ListenerFamilies {
                listener: listener.to_owned(),
                rejected: self.downstream_rq_rejected.clone(),
                flags: self.response_flags.clone(),
            },
        })
    }

    /// Handles for `route` of `listener`.
    pub fn route(&self, listener: &str, route: &str) -> std::sync::Arc<RouteMetrics> {
        std::sync::Arc::new(RouteMetrics {
            rq: CODE_CLASSES.map(|c| {
                self.route_rq.get_or_create_owned(&RouteClassLabels {
                    listener: listener.to_owned(),
                    route: route.to_owned(),
                    code_class: c.to_owned(),
                })
            }),
        })
    }

    /// Handles for `cluster`.
    pub fn cluster(&self, cluster: &str) -> std::sync::Arc<ClusterMetrics> {
        let l = ClusterLabels {
            cluster: cluster.to_owned(),
        };
        std::sync::Arc::new(ClusterMetrics {
            rq: CODE_CLASSES.map(|c| {
                self.upstream_rq.get_or_create_owned(&ClusterClassLabels {
                    cluster: cluster.to_owned(),
                    code_class: c.to_owned(),
                })
            }),
            rq_time: self.upstream_rq_time.get_or_create_owned(&l),
            rq_active: self.upstream_rq_active.get_or_create_owned(&l),
            cx_connect_fail: self.upstream_cx_connect_fail.get_or_create_owned(&l),
            rq_timeout: self.upstream_rq_timeout.get_or_create_owned(&l),
            cx_total: self.upstream_cx_total.get_or_create_owned(&l),
        })
    }
}

impl ListenerMetrics {
    /// Counts a request refused by the framing guard.
    pub fn rejected(&self, reason: &str) {
        self.family
            .rejected
            .get_or_create(&ListenerFlagLabels {
                listener: self.family.listener.clone(),
                response_flag: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a response carrying an Envoy response flag.
    pub fn flag(&self, flag: &str) {
        self.family
            .flags
            .get_or_create(&ListenerFlagLabels {
                listener: self.family.listener.clone(),
                response_flag: flag.to_owned(),
            })
            .inc();
    }
}

/// Outlier ejection reason labels; [`ClusterResilienceMetrics::ejected`] takes an index.
pub const EJECT_REASONS: [&str; 4] = [
    "consecutive_5xx",
    "consecutive_gateway_errors",
    "consecutive_local_origin_failures",
    "success_rate",
];

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
pub struct Families {
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
    pub fn register(&self, reg: &mut Registry) {
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
    /// Counts an ejection; `reason` indexes [`EJECT_REASONS`].
    pub fn ejected(&self, reason: usize) {
        if let Some(c) = self.ejections.get(reason) {
            c.inc();
        }
    }

    pub fn hc(&self, passed: bool) {
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
            ejections: EJECT_REASONS.map(|e| f.ejections.get_or_create_owned(&r(e))),
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

/// Labels of the security series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecurityLabels {
    /// Listener name.
    pub listener: String,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: String,
}

/// Labels of per-listener TLS counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsListenerLabels {
    /// Listener name.
    pub listener: String,
}

/// The TLS metric families.
#[derive(Debug, Clone, Default)]
pub struct TlsMetrics {
    /// Downstream connections by `connection_security_policy`.
    pub cx_security: Family<SecurityLabels, Counter>,
    /// Failed downstream TLS handshakes (bad or missing certificate, plaintext in strict…).
    pub handshake_error: Family<TlsListenerLabels, Counter>,
    /// Requests refused by listener authorization (403).
    pub rbac_denied: Family<TlsListenerLabels, Counter>,
}

impl TlsMetrics {
    /// Registers the families.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "downstream_cx_security",
            "Downstream connections by Istio connection_security_policy (mutual_tls, none)",
            self.cx_security.clone(),
        );
        reg.register(
            "downstream_tls_handshake_error",
            "Downstream TLS handshakes that failed",
            self.handshake_error.clone(),
        );
        reg.register(
            "downstream_rq_rbac_denied",
            "Requests denied by listener authorization rules",
            self.rbac_denied.clone(),
        );
    }

    /// Counts a connection.
    pub fn connection(&self, listener: &str, policy: &str) {
        self.cx_security
            .get_or_create(&SecurityLabels {
                listener: listener.to_owned(),
                connection_security_policy: policy.to_owned(),
            })
            .inc();
    }

    /// Counts a failed handshake.
    pub fn handshake_failed(&self, listener: &str) {
        self.handshake_error
            .get_or_create(&TlsListenerLabels {
                listener: listener.to_owned(),
            })
            .inc();
    }

    /// The denied-request counter of `listener`.
    pub fn denied_counter(&self, listener: &str) -> Counter {
        self.rbac_denied.get_or_create_owned(&TlsListenerLabels {
            listener: listener.to_owned(),
        })
    }

    /// Counts a denied request.
    pub fn denied(&self, listener: &str) {
        self.rbac_denied
            .get_or_create(&TlsListenerLabels {
                listener: listener.to_owned(),
            })
            .inc();
    }
}
