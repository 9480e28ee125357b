//! Checks of the traffic-management settings (`crate::resilience`).

use std::time::Duration;

use super::Validator;
use crate::resilience::{Fault, LocalRateLimit, RetryOn};
use crate::schema::{Cluster, ForwardAction, Listener, Route};

impl Validator<'_> {
    fn percentage(&mut self, path: String, value: f64) {
        if !(0.0..=100.0).contains(&value) {
            self.err(path, format!("{value} is outside 0..=100"));
        }
    }

    fn at_least_one(&mut self, path: String, value: u32) {
        if value == 0 {
            self.err(path, "must be at least 1");
        }
    }

    fn positive(&mut self, path: String, value: Duration) {
        if value.is_zero() {
            self.err(path, "must be more than zero");
        }
    }

    pub(super) fn listener_resilience(&mut self, path: &str, l: &Listener) {
        if let Some(rl) = &l.local_rate_limit {
            self.rate_limit(&format!("{path}.local_rate_limit"), rl);
        }
    }

    pub(super) fn route_resilience(&mut self, path: &str, r: &Route) {
        if let Some(rl) = &r.local_rate_limit {
            self.rate_limit(&format!("{path}.local_rate_limit"), rl);
        }
        if let Some(f) = &r.fault {
            self.fault(&format!("{path}.fault"), f);
        }
    }

    fn rate_limit(&mut self, path: &str, rl: &LocalRateLimit) {
        self.at_least_one(format!("{path}.max_tokens"), rl.max_tokens);
        self.at_least_one(format!("{path}.tokens_per_fill"), rl.tokens_per_fill);
        if rl.fill_interval < Duration::from_millis(1) {
            self.err(format!("{path}.fill_interval"), "must be at least 1ms");
        }
    }

    fn fault(&mut self, path: &str, f: &Fault) {
        if f.delay.is_none() && f.abort.is_none() {
            self.err(path, "needs `delay`, `abort` or both");
        }
        if let Some(d) = &f.delay {
            self.percentage(format!("{path}.delay.percentage"), d.percentage);
            if d.fixed_delay > Duration::from_secs(3600) {
                self.err(format!("{path}.delay.fixed_delay"), "must be at most 1h");
            }
        }
        if let Some(a) = &f.abort {
            self.percentage(format!("{path}.abort.percentage"), a.percentage);
            match (a.http_status, a.grpc_status) {
                (Some(s), None) => {
                    if !(200..=599).contains(&s) {
                        self.err(
                            format!("{path}.abort.http_status"),
                            format!("{s} is outside 200..=599"),
                        );
                    }
                }
                (None, Some(g)) => {
                    if g > 16 {
                        self.err(
                            format!("{path}.abort.grpc_status"),
                            format!("{g} is outside 0..=16"),
                        );
                    }
                }
                _ => self.err(
                    format!("{path}.abort"),
                    "needs exactly one of `http_status`, `grpc_status`",
                ),
            }
        }
        for (i, h) in f.headers.iter().enumerate() {
            self.header_match(&format!("{path}.headers[{i}]"), h);
        }
    }

    pub(super) fn forward_resilience(&mut self, path: &str, f: &ForwardAction) {
        if let Some(r) = &f.retry_policy {
            let rpath = format!("{path}.retry_policy");
            if r.num_retries > 100 {
                self.err(format!("{rpath}.num_retries"), "must be at most 100");
            }
            if let Some(t) = r.per_try_timeout {
                self.positive(format!("{rpath}.per_try_timeout"), t);
            }
            match RetryOn::parse(&r.retry_on) {
                Err(why) => self.err(format!("{rpath}.retry_on"), why),
                Ok(on) => {
                    if on.retriable_status_codes && r.retriable_status_codes.is_empty() {
                        self.err(
                            format!("{rpath}.retriable_status_codes"),
                            "`retry_on: retriable-status-codes` needs at least one code",
                        );
                    }
                }
            }
            for (i, code) in r.retriable_status_codes.iter().enumerate() {
                if !(100..=599).contains(code) {
                    self.err(
                        format!("{rpath}.retriable_status_codes[{i}]"),
                        format!("{code} is outside 100..=599"),
                    );
                }
            }
            if let Some(b) = &r.retry_back_off {
                self.positive(
                    format!("{rpath}.retry_back_off.base_interval"),
                    b.base_interval,
                );
                if let Some(max) = b.max_interval
                    && max < b.base_interval
                {
                    self.err(
                        format!("{rpath}.retry_back_off.max_interval"),
                        "must be at least `base_interval`",
                    );
                }
            }
            if r.per_request_buffer_limit_bytes > 64 * 1024 * 1024 {
                self.err(
                    format!("{rpath}.per_request_buffer_limit_bytes"),
                    "must be at most 64 MiB",
                );
            }
        }
        for (i, m) in f.request_mirror_policies.iter().enumerate() {
            let mpath = format!("{path}.request_mirror_policies[{i}]");
            self.cluster_ref(&format!("{mpath}.cluster"), &m.cluster);
            if m.percentage.is_some() && m.runtime_fraction.is_some() {
                self.err(
                    &mpath,
                    "takes at most one of `percentage`, `runtime_fraction`",
                );
            }
            if let Some(p) = m.percentage {
                self.percentage(format!("{mpath}.percentage"), p);
            }
            if let Some(f) = &m.runtime_fraction {
                self.percentage(
                    format!("{mpath}.runtime_fraction.default_value.numerator"),
                    f.default_value.percent(),
                );
            }
        }
    }

    pub(super) fn cluster_resilience(&mut self, path: &str, c: &Cluster) {
        self.percentage(format!("{path}.panic_threshold"), c.panic_threshold);
        if let Some(b) = &c.circuit_breakers {
            let bpath = format!("{path}.circuit_breakers");
            if let Some(n) = b.max_connections {
                self.at_least_one(format!("{bpath}.max_connections"), n);
                if c.protocol == crate::schema::UpstreamProtocol::Http2 {
                    self.err(
                        format!("{bpath}.max_connections"),
                        "unimplemented for `protocol: http2` (one multiplexed connection)",
                    );
                }
            }
            if b.max_pending_requests.is_some() && b.max_connections.is_none() {
                self.err(
                    format!("{bpath}.max_pending_requests"),
                    "has no effect without `max_connections` (nothing waits for a connection)",
                );
            }
            self.at_least_one(format!("{bpath}.max_requests"), b.max_requests);
        }
        if let Some(b) = &c.retry_budget {
            self.percentage(
                format!("{path}.retry_budget.budget_percent"),
                b.budget_percent,
            );
        }
        if let Some(o) = &c.outlier_detection {
            let opath = format!("{path}.outlier_detection");
            if o.interval < Duration::from_millis(10) {
                self.err(format!("{opath}.interval"), "must be at least 10ms");
            }
            self.positive(format!("{opath}.base_ejection_time"), o.base_ejection_time);
            if o.max_ejection_time < o.base_ejection_time {
                self.err(
                    format!("{opath}.max_ejection_time"),
                    "must be at least `base_ejection_time`",
                );
            }
            self.percentage(
                format!("{opath}.max_ejection_percent"),
                o.max_ejection_percent,
            );
            self.at_least_one(
                format!("{opath}.success_rate_minimum_hosts"),
                o.success_rate_minimum_hosts,
            );
            self.at_least_one(
                format!("{opath}.success_rate_request_volume"),
                o.success_rate_request_volume,
            );
        }
        if c.health_checks.len() > 1 {
            self.err(
                format!("{path}.health_checks"),
                "unimplemented: at most one health check per cluster",
            );
        }
        for (i, hc) in c.health_checks.iter().enumerate() {
            let hpath = format!("{path}.health_checks[{i}]");
            if hc.http.is_some() == hc.tcp.is_some() {
                self.err(&hpath, "needs exactly one of `http`, `tcp`");
            }
            if hc.interval < Duration::from_millis(10) {
                self.err(format!("{hpath}.interval"), "must be at least 10ms");
            }
            self.positive(format!("{hpath}.timeout"), hc.timeout);
            self.at_least_one(format!("{hpath}.healthy_threshold"), hc.healthy_threshold);
            self.at_least_one(
                format!("{hpath}.unhealthy_threshold"),
                hc.unhealthy_threshold,
            );
            if let Some(h) = &hc.http {
                if !h.path.starts_with('/') || !super::is_header_value(&h.path) {
                    self.err(
                        format!("{hpath}.http.path"),
                        format!("`{}` must start with `/`", h.path),
                    );
                }
                if let Some(host) = &h.host
                    && (host.is_empty() || !super::is_header_value(host))
                {
                    self.err(
                        format!("{hpath}.http.host"),
                        format!("`{host}` is not a valid host"),
                    );
                }
                if h.expected_statuses.is_empty() {
                    self.err(
                        format!("{hpath}.http.expected_statuses"),
                        "needs at least one status",
                    );
                }
                for (j, s) in h.expected_statuses.iter().enumerate() {
                    let spath = format!("{hpath}.http.expected_statuses[{j}]");
                    match s.range() {
                        Err(why) => self.err(spath, why),
                        Ok((lo, hi)) => {
                            if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
                                self.err(spath, format!("{lo}-{hi} is not within 100..=599"));
                            }
                        }
                    }
                }
            }
        }
    }
}
