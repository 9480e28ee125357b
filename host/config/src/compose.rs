//! The composition of the file's static resources with the dynamic ones a control plane
//! sends (xDS): one configuration, validated as a whole, problems named by resource.

use std::collections::HashSet;

use crate::error::{ConfigError, Problem};
use crate::schema::{Cluster, Config, Listener, Plugin};

/// Listeners, clusters and plugins from a dynamic source (xDS), added to the file's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DynamicResources {
    /// Listeners (names must not clash with the file's).
    pub listeners: Vec<Listener>,
    /// Clusters (names must not clash with the file's); unlike the file's, they may have no
    /// endpoints (every request then gets 503 `UH`, as in Envoy).
    pub clusters: Vec<Cluster>,
    /// Plugins the dynamic listeners attach (Wasm HTTP filters; names must not clash with the
    /// file's).
    pub plugins: Vec<Plugin>,
}

impl DynamicResources {
    /// True when there is nothing dynamic.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty() && self.clusters.is_empty() && self.plugins.is_empty()
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
    let statics: HashSet<&str> = file.plugins.iter().map(|p| p.name.as_str()).collect();
    for p in &dynamic.plugins {
        if statics.contains(p.name.as_str()) {
            problems.push(problem(
                format!("plugin \"{}\"", p.name),
                "a static plugin of that name exists in the file",
            ));
        }
    }
    let mut config = file.clone();
    let (nl, nc, np) = (
        config.listeners.len(),
        config.clusters.len(),
        config.plugins.len(),
    );
    config.listeners.extend(dynamic.listeners.iter().cloned());
    config.clusters.extend(dynamic.clusters.iter().cloned());
    config.plugins.extend(dynamic.plugins.iter().cloned());
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
        })
        .or_else(|| {
            rename(&path, "plugins", np, |i| {
                dynamic
                    .plugins
                    .get(i)
                    .map(|p| format!("plugin \"{}\"", p.name))
            })
        });
        match renamed {
            Some((name, rest)) => {
                // An EDS cluster may have no endpoints (yet, or all removed): Envoy accepts it.
                if rest == ".endpoints" && message.starts_with("needs at least one endpoint") {
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

/// Checks the new endpoint list of dynamic cluster `cluster` (an in-place endpoint update,
/// which leaves every other part of the configuration as it is) with the same rules a whole
/// configuration's validation applies to it; problems are named `cluster "x".endpoints[i]…`.
pub fn check_endpoints(cluster: &Cluster, label: &str) -> Result<(), ConfigError> {
    let name = format!("cluster \"{}\"", cluster.name);
    let mut found = crate::validate::endpoints(&name, cluster);
    if cluster.kind == crate::schema::ClusterType::OriginalDst && !cluster.endpoints.is_empty() {
        found.push((
            format!("{name}.endpoints"),
            "an `original_dst` cluster connects to the original destination: no endpoints".into(),
        ));
    }
    if found.is_empty() {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        file: label.to_owned(),
        problems: found.into_iter().map(|(p, m)| problem(p, m)).collect(),
    })
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
            plugins: Vec::new(),
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
