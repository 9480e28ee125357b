//! Checks of the capture settings (`crate::capture`): capture listeners, their filter chains
//! and targets, `original_dst` clusters and the `sidecar` block.

use std::time::Duration;

use super::Found;
use crate::capture::BLACKHOLE_CLUSTER;
use crate::schema::{Cluster, ClusterType, Config, FilterChainMatch, Listener};

/// Every capture problem of `config`.
pub(super) fn config(config: &Config) -> Vec<Found> {
    let mut found = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        listener(&mut found, &format!("listeners[{i}]"), l, config);
    }
    if let Some(s) = &config.sidecar {
        if s.app_metrics_url.as_deref().is_some_and(|u| {
            u.parse::<http::Uri>().map_or(true, |uri| {
                uri.scheme_str() != Some("http") || uri.host().is_none()
            })
        }) {
            found.push((
                "sidecar.app_metrics_url".into(),
                "must be an `http://host:port/path` URL".into(),
            ));
        }
        timeout(
            &mut found,
            "sidecar.protocol_detection_timeout",
            s.protocol_detection_timeout,
        );
    }
    found
}

fn timeout(found: &mut Vec<Found>, path: &str, t: Duration) {
    if t.is_zero() || t > Duration::from_secs(60) {
        found.push((path.into(), "must be within 1ms..=60s".into()));
    }
}

fn listener(found: &mut Vec<Found>, path: &str, l: &Listener, config: &Config) {
    if !l.original_dst {
        if !l.filter_chains.is_empty() {
            found.push((
                format!("{path}.filter_chains"),
                "only for a capture listener (`original_dst: true`)".into(),
            ));
        }
        if l.passthrough_cluster.is_some() {
            found.push((
                format!("{path}.passthrough_cluster"),
                "only for a capture listener (`original_dst: true`)".into(),
            ));
        }
        return;
    }
    if !l.bind_to_port {
        found.push((
            format!("{path}.bind_to_port"),
            "a capture listener must bind its port".into(),
        ));
    }
    if !l.virtual_hosts.is_empty() || l.tcp.is_some() || l.tls.is_some() || !l.plugins.is_empty() {
        found.push((
            path.into(),
            "a capture listener only hands connections over: routes, `tcp`, `tls` and `plugins` \
             belong to the listeners its `filter_chains` name"
                .into(),
        ));
    }
    timeout(
        found,
        &format!("{path}.protocol_detection_timeout"),
        l.protocol_detection_timeout,
    );
    if let Some(name) = &l.passthrough_cluster {
        match config.clusters.iter().find(|c| c.name == *name) {
            None => found.push((
                format!("{path}.passthrough_cluster"),
                format!("unknown cluster `{name}`"),
            )),
            Some(c) if c.kind != ClusterType::OriginalDst && c.name != BLACKHOLE_CLUSTER => found
                .push((
                    format!("{path}.passthrough_cluster"),
                    format!("cluster `{name}` is not `type: original_dst`"),
                )),
            Some(_) => {}
        }
    }
    for (j, chain) in l.filter_chains.iter().enumerate() {
        let cpath = format!("{path}.filter_chains[{j}]");
        match config.listeners.iter().find(|t| t.name == chain.listener) {
            None => found.push((
                format!("{cpath}.listener"),
                format!("unknown listener `{}`", chain.listener),
            )),
            Some(t) if t.bind_to_port || t.original_dst => found.push((
                format!("{cpath}.listener"),
                format!(
                    "listener `{}` must have `bind_to_port: false` (and not be a capture listener)",
                    chain.listener
                ),
            )),
            Some(_) => {}
        }
        chain_match(found, &format!("{cpath}.match"), &chain.matcher);
    }
}

fn chain_match(found: &mut Vec<Found>, path: &str, m: &FilterChainMatch) {
    for (i, name) in m.server_names.iter().enumerate() {
        let bare = name.strip_prefix("*.").unwrap_or(name);
        let ok = !bare.is_empty()
            && !bare.contains('*')
            && bare
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !ok {
            found.push((
                format!("{path}.server_names[{i}]"),
                format!("`{name}` is not a host name or `*.suffix`"),
            ));
        }
    }
    for (i, p) in m.application_protocols.iter().enumerate() {
        if p.is_empty() || p.len() > 255 {
            found.push((
                format!("{path}.application_protocols[{i}]"),
                "must be 1 to 255 bytes".into(),
            ));
        }
    }
}

/// Endpoint rules that depend on the cluster's type.
pub(super) fn cluster(found: &mut Vec<Found>, path: &str, c: &Cluster) {
    match c.kind {
        ClusterType::Static => {
            if c.endpoints.is_empty() && c.name != BLACKHOLE_CLUSTER {
                found.push((
                    format!("{path}.endpoints"),
                    format!(
                        "needs at least one endpoint (only `{BLACKHOLE_CLUSTER}` may have none)"
                    ),
                ));
            }
            if c.original_dst.is_some() {
                found.push((
                    format!("{path}.original_dst"),
                    "only for `type: original_dst`".into(),
                ));
            }
        }
        ClusterType::OriginalDst => {
            if !c.endpoints.is_empty() {
                found.push((
                    format!("{path}.endpoints"),
                    "an `original_dst` cluster connects to the original destination: no endpoints"
                        .into(),
                ));
            }
            if !c.health_checks.is_empty() {
                found.push((
                    format!("{path}.health_checks"),
                    "not for an `original_dst` cluster".into(),
                ));
            }
        }
    }
}
