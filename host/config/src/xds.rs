//! The `xds:` section (the bootstrap of Weft as an xDS client) and the composition of the
//! file's static resources with the dynamic ones a control plane sends.
//!
//! ```yaml
//! xds:
//!   cluster: xds-grpc              # a static cluster: the control plane (gRPC, so `protocol: http2`)
//!   node:
//!     id: sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local
//!     cluster: reviews.ns
//!     locality: { region: eu, zone: eu-1a }
//!     metadata: { NAMESPACE: ns }
//! ```

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, Problem};
use crate::schema::{Cluster, Config, Listener, UpstreamProtocol};

/// How Weft reaches its control plane, and who it says it is.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Xds {
    /// The static cluster (in `clusters`) of the control plane; its first endpoint is dialled
    /// with gRPC over HTTP/2 cleartext.
    pub cluster: String,
    /// The node this proxy presents in every discovery request.
    pub node: XdsNode,
    /// First delay before reconnecting after the stream fails; doubles (with jitter) per failure.
    #[serde(default = "defaults::reconnect_base", with = "humantime_serde")]
    pub reconnect_base: Duration,
    /// Longest delay between reconnection attempts.
    #[serde(default = "defaults::reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
}

/// Envoy's `Node`: the identity a control plane renders configuration for.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct XdsNode {
    /// Node id; Istio's form is `sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`.
    pub id: String,
    /// Service cluster (Istio: `<app>.<namespace>`).
    #[serde(default)]
    pub cluster: String,
    /// Where this proxy runs.
    #[serde(default)]
    pub locality: XdsLocality,
    /// Node metadata (a protobuf `Struct`); Istio reads e.g. `NAMESPACE`, `CLUSTER_ID`, `LABELS`.
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Also take every `ISTIO_META_<NAME>` environment variable as metadata `<NAME>` (a string),
    /// as Istio's agent does; the file's `metadata` wins on a clash.
    #[serde(default = "defaults::yes")]
    pub istio_meta_env: bool,
}

/// Envoy's `Locality`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct XdsLocality {
    /// Region.
    #[serde(default)]
    pub region: String,
    /// Zone.
    #[serde(default)]
    pub zone: String,
    /// Sub-zone.
    #[serde(default)]
    pub sub_zone: String,
}

mod defaults {
    use std::time::Duration;

    pub(super) fn reconnect_base() -> Duration {
        Duration::from_millis(500)
    }
    pub(super) fn reconnect_max() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn yes() -> bool {
        true
    }
}

/// Checks the `xds` section against the rest of the file.
pub(crate) fn validate(config: &Config) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let Some(x) = &config.xds else {
        return found;
    };
    match config.clusters.iter().find(|c| c.name == x.cluster) {
        None => found.push((
            "xds.cluster".to_owned(),
            format!("unknown cluster `{}`", x.cluster),
        )),
        Some(c) => {
            if c.protocol != UpstreamProtocol::Http2 {
                found.push((
                    "xds.cluster".to_owned(),
                    format!(
                        "cluster `{}` must have `protocol: http2` (xDS is gRPC)",
                        c.name
                    ),
                ));
            }
            if c.tls.is_some() {
                found.push((
                    "xds.cluster".to_owned(),
                    format!(
                        "cluster `{}` has `tls`: TLS to the control plane is unimplemented \
                         (plaintext only for now)",
                        c.name
                    ),
                ));
            }
        }
    }
    if x.node.id.trim().is_empty() {
        found.push(("xds.node.id".to_owned(), "must not be empty".to_owned()));
    }
    if x.reconnect_base.is_zero() || x.reconnect_base > x.reconnect_max {
        found.push((
            "xds.reconnect_base".to_owned(),
            "must be more than zero and at most `reconnect_max`".to_owned(),
        ));
    }
    found
}

/// Listeners and clusters from a dynamic source (xDS), added to the file's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DynamicResources {
    /// Listeners (names must not clash with the file's).
    pub listeners: Vec<Listener>,
    /// Clusters (names must not clash with the file's); unlike the file's, they may have no
    /// endpoints (every request then gets 503 `UH`, as in Envoy).
    pub clusters: Vec<Cluster>,
}

impl DynamicResources {
    /// True when there is nothing dynamic.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty() && self.clusters.is_empty()
    }
}

/// The file's configuration with `dynamic`'s listeners and clusters added, validated as a whole.
/// Problems in dynamic resources are named by the resource (`listener "x": …`), not by their
/// index in the composed configuration.
pub fn compose(
    file: &Config,
    dynamic: &DynamicResources,
    label: &str,
) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let statics: HashSet<&str> = file.listeners.iter().map(|l| l.name.as_str()).collect();
    for l in &dynamic.listeners {
        if statics.contains(l.name.as_str()) {
            problems.push(problem(
                format!("listener \"{}\"", l.name),
                "a static listener of that name exists in the file",
            ));
        }
    }
    let statics: HashSet<&str> = file.clusters.iter().map(|c| c.name.as_str()).collect();
    for c in &dynamic.clusters {
        if statics.contains(c.name.as_str()) {
            problems.push(problem(
                format!("cluster \"{}\"", c.name),
                "a static cluster of that name exists in the file",
            ));
        }
    }
    let mut config = file.clone();
    let (nl, nc) = (config.listeners.len(), config.clusters.len());
    config.listeners.extend(dynamic.listeners.iter().cloned());
    config.clusters.extend(dynamic.clusters.iter().cloned());
    for (path, message) in crate::validate::validate(&config) {
        let renamed = rename(&path, "listeners", nl, |i| {
            dynamic
                .listeners
                .get(i)
                .map(|l| format!("listener \"{}\"", l.name))
        })
        .or_else(|| {
            rename(&path, "clusters", nc, |i| {
                dynamic
                    .clusters
                    .get(i)
                    .map(|c| format!("cluster \"{}\"", c.name))
            })
        });
        match renamed {
            Some((name, rest)) => {
                if rest == ".endpoints" && message == "needs at least one endpoint" {
                    continue;
                }
                problems.push(problem(format!("{name}{rest}"), message));
            }
            None => problems.push(problem(path, message)),
        }
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            file: label.to_owned(),
            problems,
        })
    }
}

fn problem(path: String, message: impl Into<String>) -> Problem {
    Problem {
        path,
        location: None,
        message: message.into(),
    }
}

/// `listeners[7].virtual_hosts[0]` with 5 static listeners → (`listener "x"`, `.virtual_hosts[0]`).
fn rename(
    path: &str,
    section: &str,
    statics: usize,
    name: impl Fn(usize) -> Option<String>,
) -> Option<(String, String)> {
    let rest = path.strip_prefix(section)?.strip_prefix('[')?;
    let (index, rest) = rest.split_once(']')?;
    let index: usize = index.parse().ok()?;
    let dynamic = index.checked_sub(statics)?;
    Some((name(dynamic)?, rest.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(extra: &str) -> Result<Config, ConfigError> {
        crate::parse(
            &format!(
                "admin: {{ address: 127.0.0.1:0 }}\nclusters:\n  - name: xds\n    protocol: http2\n    endpoints: [{{ address: 127.0.0.1:15010 }}]\n{extra}"
            ),
            "weft.yaml",
        )
    }

    #[test]
    fn the_bootstrap_names_a_static_h2_cluster_and_a_node() {
        let ok =
            file("xds: { cluster: xds, node: { id: sidecar~10.0.0.1~p.ns~ns.svc.cluster.local } }")
                .unwrap_or_else(|e| panic!("{e}"));
        let x = ok.xds.unwrap_or_else(|| panic!("xds section"));
        assert!(x.node.istio_meta_env);
        let err = file("xds: { cluster: nope, node: { id: n } }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("xds.cluster: unknown cluster `nope`"), "{err}");
        let err = file("xds: { cluster: xds, node: { id: \"\" } }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("xds.node.id: must not be empty"), "{err}");
    }

    #[test]
    fn dynamic_problems_are_named_by_resource() {
        let config = file("").unwrap_or_else(|e| panic!("{e}"));
        let mut dup = config.clusters[0].clone();
        dup.endpoints.clear();
        let mut empty = dup.clone();
        empty.name = "eds".into();
        let dynamic = DynamicResources {
            listeners: Vec::new(),
            clusters: vec![dup, empty],
        };
        let err = compose(&config, &dynamic, "xds").unwrap_err();
        let problems: Vec<_> = err.problems().iter().map(|p| p.render("xds")).collect();
        // The clash is named; an EDS cluster with no endpoints yet is allowed.
        assert!(
            problems.contains(
                &"xds: cluster \"xds\": a static cluster of that name exists in the file"
                    .to_owned()
            ),
            "{problems:?}"
        );
        assert!(
            !problems.iter().any(|p| p.contains("\"eds\"")),
            "{problems:?}"
        );
    }
}
