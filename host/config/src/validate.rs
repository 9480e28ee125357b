//! Checks that go beyond the schema: references between sections, unique names, well-formed
//! patterns and header names. Every problem is collected, not just the first.

mod capture;
mod observe;
mod resilience;
mod tls;
mod xds;

use std::collections::HashSet;

use crate::schema::{
    Cluster, Config, ForwardAction, HeaderMatch, HeaderMutations, Listener, ListenerProtocol,
    PathMatch, QueryMatch, RedirectAction, Route, VirtualHost,
};
use crate::{EndpointAddress, is_token};

/// A problem found by validation: the field path and what is wrong with it.
pub(crate) type Found = (String, String);

pub(crate) fn validate(config: &Config) -> Vec<Found> {
    let mut v = Validator {
        found: Vec::new(),
        clusters: config.clusters.iter().map(|c| c.name.as_str()).collect(),
        plugins: config.plugins.iter().map(|p| p.name.as_str()).collect(),
    };
    v.config(config);
    v.found.extend(observe::check(config));
    v.found.extend(xds::xds(config));
    v.found
}

struct Validator<'a> {
    found: Vec<Found>,
    clusters: HashSet<&'a str>,
    plugins: HashSet<&'a str>,
}

impl Validator<'_> {
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.found.push((path.into(), msg.into()));
    }

    fn config(&mut self, config: &Config) {
        if config.access_log.path.trim().is_empty() {
            self.err(
                "access_log.path",
                "must not be empty (use `off` to disable)",
            );
        }
        if config.workers > 1024 {
            self.err("workers", format!("{} is more than 1024", config.workers));
        }
        if config.runtime.accept == crate::schema::AcceptMode::Reuseport
            && !cfg!(target_os = "linux")
        {
            self.err(
                "runtime.accept",
                "`reuseport` needs Linux (other systems do not spread connections over SO_REUSEPORT sockets)",
            );
        }
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        addresses.insert(config.admin.address);
        for (i, l) in config.listeners.iter().enumerate() {
            let path = format!("listeners[{i}]");
            if !names.insert(l.name.as_str()) {
                self.err(
                    format!("{path}.name"),
                    format!("duplicate listener name `{}`", l.name),
                );
            }
            // Port 0 asks the OS for a free port, so it never collides; a listener reached
            // through a capture listener binds nothing.
            if l.bind_to_port && l.address.port() != 0 && !addresses.insert(l.address) {
                self.err(
                    format!("{path}.address"),
                    format!(
                        "address {} is already used by the admin server or another listener",
                        l.address
                    ),
                );
            }
            self.listener(&path, l);
            self.found.extend(tls::listener(&path, l));
        }
        let mut plugin_names = HashSet::new();
        for (i, p) in config.plugins.iter().enumerate() {
            let path = format!("plugins[{i}]");
            if !plugin_names.insert(p.name.as_str()) {
                self.err(
                    format!("{path}.name"),
                    format!("duplicate plugin name `{}`", p.name),
                );
            }
            self.plugin(&path, p);
        }
        let mut names = HashSet::new();
        for (i, c) in config.clusters.iter().enumerate() {
            let path = format!("clusters[{i}]");
            if !names.insert(c.name.as_str()) {
                self.err(
                    format!("{path}.name"),
                    format!("duplicate cluster name `{}`", c.name),
                );
            }
            self.cluster(&path, c);
            self.found.extend(tls::cluster(&path, c));
            if let Some(svc) = &c.service
                && (svc.host.is_empty() || !svc.host.is_ascii())
            {
                self.err(
                    format!("{path}.service.host"),
                    "must be a non-empty ASCII host name",
                );
            }
        }
        if let Some(i) = &config.identity {
            self.found.extend(tls::identity(i));
        }
        let o = &config.overload;
        if o.max_rss_bytes != 0 && o.max_rss_bytes < 16 * 1024 * 1024 {
            self.err(
                "overload.max_rss_bytes",
                format!(
                    "{} is less than 16 MiB (0 disables the overload manager)",
                    o.max_rss_bytes
                ),
            );
        }
        if !(std::time::Duration::from_millis(10)..=std::time::Duration::from_secs(60))
            .contains(&o.refresh_interval)
        {
            self.err("overload.refresh_interval", "must be within 10ms..=60s");
        }
        self.found.extend(capture::config(config));
        self.found
            .extend(crate::telemetry::validate(&config.telemetry));
        self.found
            .extend(crate::telemetry::validate_node(&config.node));
    }

    /// `per_connection_buffer_limit_bytes` of a listener or cluster: at least 32 KiB (and
    /// `floor`), at most 2^31 - 1 (the largest HTTP/2 window).
    fn buffer_limit(&mut self, path: &str, value: usize, floor: usize) {
        let floor = floor.max(32 * 1024);
        if !(floor..=i32::MAX as usize).contains(&value) {
            self.err(
                format!("{path}.per_connection_buffer_limit_bytes"),
                format!("{value} is outside {floor}..={}", i32::MAX),
            );
        }
    }

    fn plugin(&mut self, path: &str, p: &crate::schema::Plugin) {
        if p.name.is_empty() || p.name.contains(['/', ' ']) {
            self.err(
                format!("{path}.name"),
                "must be non-empty, without `/` or spaces",
            );
        }
        if p.file.trim().is_empty() {
            self.err(format!("{path}.file"), "must name a .wasm file");
        }
        if p.cpu_deadline.is_zero() || p.cpu_deadline > std::time::Duration::from_secs(10) {
            self.err(format!("{path}.cpu_deadline"), "must be within 1ms..=10s");
        }
        if !(1024 * 1024..=4 * 1024 * 1024 * 1024).contains(&p.max_memory_bytes) {
            self.err(
                format!("{path}.max_memory_bytes"),
                "must be within 1 MiB..=4 GiB",
            );
        }
        const KIB: usize = 1024;
        const MIB: usize = 1024 * KIB;
        const GIB: usize = 1024 * MIB;
        for (field, value, range, text) in [
            ("max_body_bytes", p.max_body_bytes, 1..=GIB, "1 B..=1 GiB"),
            (
                "max_random_bytes",
                p.max_random_bytes,
                16..=16 * MIB,
                "16 B..=16 MiB",
            ),
            (
                "max_log_line_bytes",
                p.max_log_line_bytes,
                64..=MIB,
                "64 B..=1 MiB",
            ),
            (
                "max_fd_write_bytes",
                p.max_fd_write_bytes,
                64..=16 * MIB,
                "64 B..=16 MiB",
            ),
            (
                "max_queue_item_bytes",
                p.max_queue_item_bytes,
                1..=64 * MIB,
                "1 B..=64 MiB",
            ),
            ("max_queue_bytes", p.max_queue_bytes, 1..=GIB, "1 B..=1 GiB"),
            (
                "max_shared_data_keys",
                p.max_shared_data_keys,
                1..=1_000_000,
                "1..=1000000",
            ),
            (
                "max_shared_data_bytes",
                p.max_shared_data_bytes,
                1..=GIB,
                "1 B..=1 GiB",
            ),
            (
                "max_callouts_in_flight",
                p.max_callouts_in_flight,
                1..=1_000_000,
                "1..=1000000",
            ),
        ] {
            if !range.contains(&value) {
                self.err(format!("{path}.{field}"), format!("must be within {text}"));
            }
        }
        if p.max_queue_bytes < p.max_queue_item_bytes {
            self.err(
                format!("{path}.max_queue_bytes"),
                "must be at least max_queue_item_bytes",
            );
        }
        if !(1..=100_000).contains(&p.log_lines_per_second) {
            self.err(
                format!("{path}.log_lines_per_second"),
                "must be within 1..=100000",
            );
        }
        if p.instances > 64 {
            self.err(
                format!("{path}.instances"),
                "must be within 0..=64 (0: one per worker thread)",
            );
        }
        if !["trace", "debug", "info", "warn", "error", "critical"].contains(&p.log_level.as_str())
        {
            self.err(
                format!("{path}.log_level"),
                format!("`{}` is not a log level", p.log_level),
            );
        }
        if p.max_failures == 0 {
            self.err(format!("{path}.max_failures"), "must be at least 1");
        }
    }

    fn plugin_refs(&mut self, path: &str, refs: &[crate::schema::PluginRef], on_route: bool) {
        for (i, r) in refs.iter().enumerate() {
            if !self.plugins.contains(r.name.as_str()) {
                self.err(
                    format!("{path}.plugins[{i}].name"),
                    format!("unknown plugin `{}`", r.name),
                );
            }
            if r.disabled && !on_route {
                self.err(format!("{path}.plugins[{i}].disabled"), "only for routes");
            }
        }
    }

    fn listener(&mut self, path: &str, l: &Listener) {
        self.plugin_refs(path, &l.plugins, false);
        self.listener_resilience(path, l);
        if l.name.is_empty() {
            self.err(format!("{path}.name"), "must not be empty");
        }
        let h = &l.http;
        if !(1024..=1024 * 1024).contains(&h.max_request_headers_bytes) {
            self.err(
                format!("{path}.http.max_request_headers_bytes"),
                format!("{} is outside 1024..=1048576", h.max_request_headers_bytes),
            );
        }
        if !(1..=1000).contains(&h.max_request_headers) {
            self.err(
                format!("{path}.http.max_request_headers"),
                format!("{} is outside 1..=1000", h.max_request_headers),
            );
        }
        if h.request_header_timeout.is_zero() {
            self.err(
                format!("{path}.http.request_header_timeout"),
                "must be more than zero",
            );
        }
        if h.idle_timeout.is_zero() {
            self.err(
                format!("{path}.http.idle_timeout"),
                "must be more than zero",
            );
        }
        // An HTTP/1 head must fit in the connection's read buffer.
        self.buffer_limit(
            path,
            l.per_connection_buffer_limit_bytes,
            h.max_request_headers_bytes + 8192,
        );
        if l.max_connections == Some(0) {
            self.err(
                format!("{path}.max_connections"),
                "must be at least 1 (leave it out for no limit)",
            );
        }
        match l.protocol {
            ListenerProtocol::Http => {
                if l.tcp.is_some() {
                    self.err(format!("{path}.tcp"), "only for `protocol: tcp`");
                }
                let mut vhost_names = HashSet::new();
                let mut domains = HashSet::new();
                let mut route_names = HashSet::new();
                for (i, vh) in l.virtual_hosts.iter().enumerate() {
                    let vpath = format!("{path}.virtual_hosts[{i}]");
                    if !vhost_names.insert(vh.name.as_str()) {
                        self.err(
                            format!("{vpath}.name"),
                            format!("duplicate virtual host name `{}`", vh.name),
                        );
                    }
                    for (j, d) in vh.domains.iter().enumerate() {
                        if !domains.insert(d.to_ascii_lowercase()) {
                            self.err(
                                format!("{vpath}.domains[{j}]"),
                                format!("domain `{d}` is already served by another virtual host of this listener"),
                            );
                        }
                    }
                    self.virtual_host(&vpath, vh, &mut route_names);
                }
            }
            ListenerProtocol::Tcp => {
                if !l.virtual_hosts.is_empty() {
                    self.err(format!("{path}.virtual_hosts"), "only for `protocol: http`");
                }
                match &l.tcp {
                    None => self.err(format!("{path}.tcp"), "required for `protocol: tcp`"),
                    Some(t) => {
                        self.cluster_ref(&format!("{path}.tcp.cluster"), &t.cluster);
                        if t.idle_timeout.is_zero() {
                            self.err(format!("{path}.tcp.idle_timeout"), "must be more than zero");
                        }
                    }
                }
            }
        }
    }

    fn virtual_host(&mut self, path: &str, vh: &VirtualHost, route_names: &mut HashSet<String>) {
        if vh.domains.is_empty() {
            self.err(
                format!("{path}.domains"),
                "needs at least one domain (`*` for any)",
            );
        }
        for (i, d) in vh.domains.iter().enumerate() {
            if let Err(why) = check_domain(d) {
                self.err(format!("{path}.domains[{i}]"), why);
            }
        }
        for (i, r) in vh.routes.iter().enumerate() {
            let rpath = format!("{path}.routes[{i}]");
            let name = r.name.clone().unwrap_or_else(|| format!("{}/{i}", vh.name));
            if !route_names.insert(name.clone()) {
                self.err(
                    format!("{rpath}.name"),
                    format!("duplicate route name `{name}` in this listener"),
                );
            }
            self.route(&rpath, r);
        }
    }

    fn route(&mut self, path: &str, r: &Route) {
        self.plugin_refs(path, &r.plugins, true);
        self.route_resilience(path, r);
        let actions = [
            r.route.is_some(),
            r.redirect.is_some(),
            r.direct_response.is_some(),
        ];
        if actions.iter().filter(|a| **a).count() != 1 {
            self.err(
                path,
                "needs exactly one of `route`, `redirect`, `direct_response`",
            );
        }
        let m = &r.matcher;
        if let Some(p) = &m.path {
            self.path_match(&format!("{path}.match.path"), p);
        }
        for (i, h) in m.headers.iter().enumerate() {
            self.header_match(&format!("{path}.match.headers[{i}]"), h);
        }
        for (i, q) in m.query.iter().enumerate() {
            self.query_match(&format!("{path}.match.query[{i}]"), q);
        }
        for (i, method) in m.methods.iter().enumerate() {
            if !is_token(method) {
                self.err(
                    format!("{path}.match.methods[{i}]"),
                    format!("`{method}` is not an HTTP method"),
                );
            }
        }
        if let Some(f) = &r.route {
            let has_prefix = m.path.as_ref().is_some_and(|p| p.prefix.is_some());
            self.forward(&format!("{path}.route"), f, has_prefix);
        }
        if let Some(rd) = &r.redirect {
            self.redirect(&format!("{path}.redirect"), rd);
        }
        if let Some(d) = &r.direct_response
            && !(200..=599).contains(&d.status)
        {
            self.err(
                format!("{path}.direct_response.status"),
                format!("{} is outside 200..=599", d.status),
            );
        }
        self.mutations(&format!("{path}.request_headers"), &r.request_headers);
        self.mutations(&format!("{path}.response_headers"), &r.response_headers);
    }

    fn path_match(&mut self, path: &str, p: &PathMatch) {
        let set = [p.exact.is_some(), p.prefix.is_some(), p.regex.is_some()];
        if set.iter().filter(|s| **s).count() != 1 {
            self.err(path, "needs exactly one of `exact`, `prefix`, `regex`");
        }
        for (field, value) in [("exact", &p.exact), ("prefix", &p.prefix)] {
            if let Some(v) = value
                && !v.starts_with('/')
            {
                self.err(
                    format!("{path}.{field}"),
                    format!("`{v}` must start with `/`"),
                );
            }
        }
        if let Some(re) = &p.regex {
            self.regex(&format!("{path}.regex"), re);
        }
    }

    fn header_match(&mut self, path: &str, h: &HeaderMatch) {
        if !is_header_name(&h.name) {
            self.err(
                format!("{path}.name"),
                format!("`{}` is not a valid header name", h.name),
            );
        }
        let set = [
            h.exact.is_some(),
            h.regex.is_some(),
            h.present.is_some(),
            h.absent.is_some(),
        ];
        if set.iter().filter(|s| **s).count() > 1 {
            self.err(
                path,
                "takes at most one of `exact`, `regex`, `present`, `absent`",
            );
        }
        if let Some(re) = &h.regex {
            self.regex(&format!("{path}.regex"), re);
        }
    }

    fn query_match(&mut self, path: &str, q: &QueryMatch) {
        if q.name.is_empty() {
            self.err(format!("{path}.name"), "must not be empty");
        }
        let set = [q.exact.is_some(), q.regex.is_some(), q.present.is_some()];
        if set.iter().filter(|s| **s).count() > 1 {
            self.err(path, "takes at most one of `exact`, `regex`, `present`");
        }
        if let Some(re) = &q.regex {
            self.regex(&format!("{path}.regex"), re);
        }
    }

    fn forward(&mut self, path: &str, f: &ForwardAction, has_prefix: bool) {
        self.forward_resilience(path, f);
        let mut types = HashSet::new();
        for (i, u) in f.upgrade_configs.iter().enumerate() {
            let upath = format!("{path}.upgrade_configs[{i}].upgrade_type");
            if !is_token(&u.upgrade_type) {
                self.err(&upath, format!("`{}` is not an HTTP token", u.upgrade_type));
            } else if u.upgrade_type.eq_ignore_ascii_case("h2c") {
                self.err(
                    &upath,
                    "h2c upgrades are always served as plain HTTP/1.1 requests",
                );
            } else if !types.insert(u.upgrade_type.to_ascii_lowercase()) {
                self.err(
                    &upath,
                    format!("duplicate upgrade type `{}`", u.upgrade_type),
                );
            }
        }
        match (&f.cluster, f.weighted_clusters.is_empty()) {
            (Some(c), true) => self.cluster_ref(&format!("{path}.cluster"), c),
            (None, false) => {
                let mut total: u64 = 0;
                for (i, w) in f.weighted_clusters.iter().enumerate() {
                    self.cluster_ref(&format!("{path}.weighted_clusters[{i}].name"), &w.name);
                    total += u64::from(w.weight);
                }
                if total == 0 {
                    self.err(
                        format!("{path}.weighted_clusters"),
                        "weights add up to zero",
                    );
                }
            }
            _ => self.err(path, "needs exactly one of `cluster`, `weighted_clusters`"),
        }
        if f.prefix_rewrite.is_some() && !has_prefix {
            self.err(
                format!("{path}.prefix_rewrite"),
                "needs a `match.path.prefix`",
            );
        }
        if f.prefix_rewrite.is_some() && f.regex_rewrite.is_some() {
            self.err(
                path,
                "takes at most one of `prefix_rewrite`, `regex_rewrite`",
            );
        }
        if let Some(rr) = &f.regex_rewrite {
            self.regex(&format!("{path}.regex_rewrite.pattern"), &rr.pattern);
        }
        if let Some(h) = &f.host_rewrite
            && (h.is_empty() || !is_header_value(h))
        {
            self.err(
                format!("{path}.host_rewrite"),
                format!("`{h}` is not a valid host"),
            );
        }
        for (i, hp) in f.hash_policy.iter().enumerate() {
            let set = [hp.header.is_some(), hp.cookie.is_some(), hp.source_ip];
            if set.iter().filter(|s| **s).count() != 1 {
                self.err(
                    format!("{path}.hash_policy[{i}]"),
                    "needs exactly one of `header`, `cookie`, `source_ip: true`",
                );
            }
            if let Some(h) = &hp.header
                && !is_header_name(h)
            {
                self.err(
                    format!("{path}.hash_policy[{i}].header"),
                    format!("`{h}` is not a valid header name"),
                );
            }
        }
    }

    fn redirect(&mut self, path: &str, r: &RedirectAction) {
        if let Some(s) = &r.scheme
            && s != "http"
            && s != "https"
        {
            self.err(
                format!("{path}.scheme"),
                format!("`{s}` is neither `http` nor `https`"),
            );
        }
        if ![301, 302, 303, 307, 308].contains(&r.response_code) {
            self.err(
                format!("{path}.response_code"),
                format!("{} is not one of 301, 302, 303, 307, 308", r.response_code),
            );
        }
        if r.path.is_some() && r.prefix_rewrite.is_some() {
            self.err(path, "takes at most one of `path`, `prefix_rewrite`");
        }
        if let Some(p) = &r.path
            && (!p.starts_with('/') || !is_header_value(p))
        {
            self.err(format!("{path}.path"), format!("`{p}` must start with `/`"));
        }
        if let Some(h) = &r.host
            && (h.is_empty() || h.contains(['/', ' ', '?', '#']) || !is_header_value(h))
        {
            self.err(format!("{path}.host"), format!("`{h}` is not a valid host"));
        }
    }

    fn mutations(&mut self, path: &str, m: &HeaderMutations) {
        for (field, list) in [("add", &m.add), ("set", &m.set)] {
            for (i, h) in list.iter().enumerate() {
                if !is_header_name(&h.name) {
                    self.err(
                        format!("{path}.{field}[{i}].name"),
                        format!("`{}` is not a valid header name", h.name),
                    );
                } else if is_reserved_header(&h.name) {
                    self.err(
                        format!("{path}.{field}[{i}].name"),
                        format!("`{}` is managed by the proxy and cannot be changed", h.name),
                    );
                }
                if !is_header_value(&h.value) {
                    self.err(
                        format!("{path}.{field}[{i}].value"),
                        "contains a control character (CR, LF, NUL…)",
                    );
                }
            }
        }
        for (i, name) in m.remove.iter().enumerate() {
            if !is_header_name(name) {
                self.err(
                    format!("{path}.remove[{i}]"),
                    format!("`{name}` is not a valid header name"),
                );
            }
        }
    }

    fn cluster(&mut self, path: &str, c: &Cluster) {
        self.cluster_resilience(path, c);
        self.buffer_limit(path, c.per_connection_buffer_limit_bytes, 0);
        if c.name.is_empty() {
            self.err(format!("{path}.name"), "must not be empty");
        }
        capture::cluster(&mut self.found, path, c);
        self.found.extend(endpoints(path, c));
        if c.choice_count < 2 {
            self.err(format!("{path}.choice_count"), "must be at least 2");
        }
        if !(1..=8 * 1024 * 1024).contains(&c.minimum_ring_size) {
            self.err(
                format!("{path}.minimum_ring_size"),
                "must be within 1..=8388608",
            );
        }
        if c.connect_timeout.is_zero() {
            self.err(format!("{path}.connect_timeout"), "must be more than zero");
        }
        if c.idle_timeout.is_zero() {
            self.err(format!("{path}.idle_timeout"), "must be more than zero");
        }
        if c.dns_refresh_rate.as_millis() < 100 {
            self.err(format!("{path}.dns_refresh_rate"), "must be at least 100ms");
        }
    }

    fn cluster_ref(&mut self, path: &str, name: &str) {
        if !self.clusters.contains(name) {
            self.err(path, format!("unknown cluster `{name}`"));
        }
    }

    fn regex(&mut self, path: &str, pattern: &str) {
        if let Err(e) = regex::Regex::new(pattern) {
            let first = e
                .to_string()
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_owned();
            self.err(
                path,
                format!("invalid regular expression `{pattern}`: {first}"),
            );
        }
    }
}

/// The checks of a cluster's endpoint list (also run alone on an in-place endpoint update).
pub(crate) fn endpoints(path: &str, c: &Cluster) -> Vec<Found> {
    let mut found = Vec::new();
    for (i, e) in c.endpoints.iter().enumerate() {
        if let Err(why) = EndpointAddress::parse(&e.address) {
            found.push((format!("{path}.endpoints[{i}].address"), why));
        }
        if e.weight == 0 {
            found.push((
                format!("{path}.endpoints[{i}].weight"),
                "must be at least 1".into(),
            ));
        }
    }
    found
}

fn check_domain(d: &str) -> Result<(), String> {
    if d == "*" {
        return Ok(());
    }
    let host = d.strip_prefix("*.").unwrap_or(d);
    let valid = !host.is_empty()
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
        });
    if valid {
        Ok(())
    } else {
        Err(format!("`{d}` is not a domain (`host`, `*.suffix` or `*`)"))
    }
}

fn is_header_name(name: &str) -> bool {
    is_token(name)
}

/// Header values must not carry control characters other than horizontal tab.
fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn is_reserved_header(name: &str) -> bool {
    const RESERVED: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "upgrade",
        "content-length",
        "trailer",
    ];
    name.starts_with(':') || RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name))
}
