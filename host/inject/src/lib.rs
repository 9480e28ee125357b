//! `weft inject`: adds the Weft sidecar to Kubernetes workload manifests, as
//! `istioctl kube-inject` does for Istio.
//!
//! Each document of a multi-document YAML input is read on its own (and each item of a `v1`
//! `List`). Deployments,
//! StatefulSets, DaemonSets, Jobs, CronJobs and Pods are read into their k8s-openapi types
//! (strictly: an unknown field is an error that names it) and get, in their pod template:
//!
//! - `weft-init`, an init container running `weft iptables` as root with NET_ADMIN and NET_RAW
//!   to install the capture rules, then exiting;
//! - `weft-proxy`, the proxy as a native sidecar (an init container with
//!   `restartPolicy: Always`: it starts before the application and stops after it), running as
//!   uid/gid 1337 with startup and readiness probes on `:15021/healthz/ready`;
//! - the volumes for the mesh configuration, the CA trust root and bootstrap token, the
//!   workload certificate and plugins;
//! - Prometheus scrape annotations and the `sidecar.weft.dev/status` record.
//!
//! Everything else passes through byte for byte, as do workloads that opt out. Injecting an
//! injected manifest replaces the previous injection, so running it twice changes nothing.
#![forbid(unsafe_code)]

pub mod annotations;
pub mod commands;
pub mod documents;
mod error;
pub mod sidecar;
pub mod strict;
pub mod workload;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, ContainerPort};
use serde::{Deserialize, Serialize};

pub use error::{DocumentRef, InjectError};
pub use sidecar::ProxyResources;

use annotations::{BadAnnotation, Lookup};
use sidecar::{PodFacts, Sidecar};
use strict::FieldError;
use workload::{Template, Workload};

/// The image used unless `--image` or `sidecar.weft.dev/proxyImage` says otherwise.
pub const DEFAULT_IMAGE: &str = concat!("weft:", env!("CARGO_PKG_VERSION"));

/// The settings of an injection (the flags of `weft inject`).
#[derive(Debug, Clone)]
pub struct Options {
    /// Image of the sidecar and the capture init container.
    pub image: String,
    /// SPIFFE trust domain of the workload identities.
    pub trust_domain: String,
    /// `ISTIO_META_CLUSTER_ID`.
    pub cluster_id: String,
    /// The ConfigMap holding the mesh configuration (`weft.yaml`).
    pub config_map: String,
    /// The ConfigMap holding the CA's `root-cert.pem`.
    pub ca_root_config_map: String,
    /// The Secret holding the CA bootstrap `token`.
    pub bootstrap_token_secret: String,
    /// The sidecar's requests and limits (per-pod annotations override them).
    pub resources: ProxyResources,
    /// Recorded in the status annotation.
    pub version: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            image: DEFAULT_IMAGE.to_owned(),
            trust_domain: "cluster.local".to_owned(),
            cluster_id: "Kubernetes".to_owned(),
            config_map: "weft-mesh".to_owned(),
            ca_root_config_map: "weft-ca-root".to_owned(),
            bootstrap_token_secret: "weft-bootstrap-token".to_owned(),
            resources: ProxyResources::default(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

impl Options {
    /// Checks the flags before any document is read.
    pub fn validate(&self) -> Result<(), InjectError> {
        let bad = |flag: &'static str, message: String| Err(InjectError::Option { flag, message });
        let td = &self.trust_domain;
        if td.is_empty()
            || !td
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c))
        {
            return bad(
                "trust-domain",
                format!("`{td}`: lowercase letters, digits, `.`, `-` and `_` only"),
            );
        }
        if self.image.is_empty() || self.image.contains(char::is_whitespace) {
            return bad("image", format!("`{}` must be one word", self.image));
        }
        let r = &self.resources;
        for (flag, v, optional) in [
            ("proxy-cpu", &r.cpu, false),
            ("proxy-memory", &r.memory, false),
            ("proxy-cpu-limit", &r.cpu_limit, true),
            ("proxy-memory-limit", &r.memory_limit, true),
        ] {
            let unset = optional && v.is_empty();
            if !unset && !annotations::is_quantity(v) {
                return bad(
                    flag,
                    format!("`{v}` is not a Kubernetes quantity (like 100m or 128Mi)"),
                );
            }
        }
        for (flag, v) in [
            ("config-map", &self.config_map),
            ("ca-root-config-map", &self.ca_root_config_map),
            ("bootstrap-token-secret", &self.bootstrap_token_secret),
        ] {
            if v.is_empty() {
                return bad(flag, "must not be empty".to_owned());
            }
        }
        Ok(())
    }
}

/// What happened to one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was added (or a previous injection replaced).
    Injected,
    /// A workload left unchanged, and why.
    Skipped(String),
    /// Not a workload: passed through unchanged.
    PassedThrough,
}

/// The result of [`inject`].
#[derive(Debug, Clone)]
pub struct Injected {
    /// The output manifests.
    pub yaml: String,
    /// One entry per input document, in order.
    pub outcomes: Vec<(DocumentRef, Outcome)>,
}

/// The status annotation's value (Istio's `sidecar.istio.io/status` shape).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    #[serde(default)]
    init_containers: Vec<String>,
    #[serde(default)]
    containers: Option<Vec<String>>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    image_pull_secrets: Option<Vec<String>>,
    #[serde(default)]
    version: String,
}

/// Writes a Kubernetes object as YAML.
pub fn to_yaml<T: Serialize>(o: &T) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(o)
}

/// Injects the sidecar into every workload of `input` (multi-document YAML; a `v1` `List`'s
/// items count as documents of their own).
pub fn inject(input: &str, options: &Options) -> Result<Injected, InjectError> {
    options.validate()?;
    let mut yaml = String::new();
    let mut outcomes = Vec::new();
    for doc in documents::split(input) {
        let mut reference = doc.reference();
        let (text, outcome) = match doc.parse()? {
            None => (None, Outcome::PassedThrough),
            Some(value) => {
                reference.object = describe(&value);
                if is_list(&value) {
                    inject_list(value, options, &reference)?
                } else {
                    match inject_object(&value, options, &reference, "")? {
                        (Some(w), outcome) => (
                            Some(w.to_yaml().map_err(|e| serialize_error(&reference, e))?),
                            outcome,
                        ),
                        (None, outcome) => (None, outcome),
                    }
                }
            }
        };
        if !yaml.is_empty() {
            yaml.push_str("---\n");
        }
        let text = text.as_deref().unwrap_or(doc.text);
        yaml.push_str(text.trim_end_matches(['\n', '\r']));
        yaml.push('\n');
        outcomes.push((reference, outcome));
    }
    Ok(Injected { yaml, outcomes })
}

fn serialize_error(reference: &DocumentRef, e: impl std::fmt::Display) -> InjectError {
    InjectError::Serialize {
        doc: reference.clone(),
        message: e.to_string(),
    }
}

/// `kind: List` (what `kubectl get -o yaml` prints for several objects).
fn is_list(value: &serde_json::Value) -> bool {
    value.get("apiVersion").and_then(serde_json::Value::as_str) == Some("v1")
        && value.get("kind").and_then(serde_json::Value::as_str) == Some("List")
        && value.get("items").is_some_and(serde_json::Value::is_array)
}

/// Reads one object and injects it when it is a workload: the injected workload (`None` when
/// unchanged) and what happened. Field paths in errors are prefixed with `prefix`.
fn inject_object(
    value: &serde_json::Value,
    options: &Options,
    reference: &DocumentRef,
    prefix: &str,
) -> Result<(Option<Workload>, Outcome), InjectError> {
    let field_error = |e: FieldError| match e {
        FieldError::Invalid { path, message } => InjectError::Field {
            doc: reference.clone(),
            path: format!("{prefix}{path}"),
            message,
        },
        FieldError::Unknown { path } => InjectError::UnknownField {
            doc: reference.clone(),
            path: format!("{prefix}{path}"),
        },
    };
    let Some(mut w) = Workload::read(value).map_err(field_error)? else {
        return Ok((None, Outcome::PassedThrough));
    };
    match inject_workload(&mut w, options) {
        Err(bad) => Err(InjectError::Annotation {
            doc: reference.clone(),
            name: bad.name,
            message: bad.message,
        }),
        Ok(Outcome::Injected) => Ok((Some(w), Outcome::Injected)),
        Ok(other) => Ok((None, other)),
    }
}

/// Injects the workloads among a List's items; the List is rewritten only when one changed.
fn inject_list(
    mut value: serde_json::Value,
    options: &Options,
    reference: &DocumentRef,
) -> Result<(Option<String>, Outcome), InjectError> {
    let mut outcome = Outcome::PassedThrough;
    if let Some(items) = value
        .get_mut("items")
        .and_then(serde_json::Value::as_array_mut)
    {
        for (i, item) in items.iter_mut().enumerate() {
            let mut item_ref = reference.clone();
            if let Some(what) = describe(item) {
                item_ref.object = Some(format!("List item {i}: {what}"));
            }
            match inject_object(item, options, &item_ref, &format!("items[{i}]."))? {
                (Some(w), _) => {
                    *item = w.to_value().map_err(|e| serialize_error(&item_ref, e))?;
                    outcome = Outcome::Injected;
                }
                (None, Outcome::Skipped(why)) if outcome == Outcome::PassedThrough => {
                    outcome = Outcome::Skipped(why);
                }
                (None, _) => {}
            }
        }
    }
    if outcome != Outcome::Injected {
        return Ok((None, outcome));
    }
    let text = to_yaml(&value).map_err(|e| serialize_error(reference, e))?;
    Ok((Some(text), outcome))
}

/// `Kind name` of a generic object, for messages.
fn describe(value: &serde_json::Value) -> Option<String> {
    let kind = value.get("kind")?.as_str()?;
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name").or_else(|| m.get("generateName")))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("");
    Some(format!("{kind} {name}").trim_end().to_owned())
}

/// Adds (or replaces) the sidecar in one workload.
fn inject_workload(w: &mut Workload, options: &Options) -> Result<Outcome, BadAnnotation> {
    let namespace = w
        .namespace()
        .map_or_else(|| "$(POD_NAMESPACE)".to_owned(), str::to_owned);
    let workload_name = w.name();
    let owner = w.owner(&namespace);
    let Some(mut t) = w.template() else {
        return Ok(Outcome::Skipped("no pod spec".to_owned()));
    };
    if t.spec.host_network == Some(true) {
        return Ok(Outcome::Skipped(
            "hostNetwork pods share the node's network: no capture".to_owned(),
        ));
    }
    let lookup = Lookup::new(t.metadata.annotations.as_ref(), t.metadata.labels.as_ref());
    if let Some(why) = lookup.opted_out()? {
        return Ok(Outcome::Skipped(why));
    }
    let merge_metrics = lookup.bool(annotations::MERGE_METRICS, true)?;
    remove_previous(&mut t, merge_metrics);

    let lookup = Lookup::new(t.metadata.annotations.as_ref(), t.metadata.labels.as_ref());
    let mut image = lookup
        .word(annotations::PROXY_IMAGE)?
        .unwrap_or_else(|| options.image.clone());
    if let Some(tag) = lookup.word(annotations::PROXY_VERSION)? {
        image = with_tag(&image, &tag);
    }
    let mut resources = options.resources.clone();
    for (name, slot) in [
        (annotations::PROXY_CPU, &mut resources.cpu),
        (annotations::PROXY_MEMORY, &mut resources.memory),
        (annotations::PROXY_CPU_LIMIT, &mut resources.cpu_limit),
        (annotations::PROXY_MEMORY_LIMIT, &mut resources.memory_limit),
    ] {
        if let Some(q) = lookup.quantity(name)? {
            *slot = q;
        }
    }
    let capture = lookup.capture()?;

    let service_account = t
        .spec
        .service_account_name
        .clone()
        .or_else(|| t.spec.service_account.clone())
        .unwrap_or_else(|| "default".to_owned());
    let ports: Vec<ContainerPort> = t
        .spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten().cloned())
        .collect();
    let annotations = t.metadata.annotations.get_or_insert_with(BTreeMap::new);
    // Scrape the sidecar's own metrics (15090) unless the application has its own scrape
    // annotations: those are left as they are, so its metrics are not lost.
    let app_scraped = [
        annotations::PROMETHEUS_SCRAPE,
        annotations::PROMETHEUS_PATH,
        annotations::PROMETHEUS_PORT,
    ]
    .iter()
    .any(|name| annotations.contains_key(*name));
    if merge_metrics && !app_scraped {
        for (name, value) in sidecar::prometheus_annotations() {
            annotations.insert(name.to_owned(), value);
        }
    }
    let facts = PodFacts {
        spiffe_id: format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            options.trust_domain
        ),
        pod_ports: (!ports.is_empty()).then(|| serde_json::to_string(&ports).unwrap_or_default()),
        app_containers: t
            .spec
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
        cluster_id: options.cluster_id.clone(),
        workload_name,
        owner,
        mesh_id: options.trust_domain.clone(),
    };
    let sidecar = Sidecar {
        image,
        resources,
        capture,
        env: sidecar::proxy_env(facts),
        config_map: options.config_map.clone(),
        ca_root_config_map: options.ca_root_config_map.clone(),
        bootstrap_token_secret: options.bootstrap_token_secret.clone(),
    };
    let status = Status {
        init_containers: sidecar::INIT_CONTAINERS.map(str::to_owned).to_vec(),
        containers: None,
        volumes: sidecar::VOLUMES.map(str::to_owned).to_vec(),
        image_pull_secrets: None,
        version: options.version.clone(),
    };
    annotations.insert(
        annotations::STATUS.to_owned(),
        serde_json::to_string(&status).unwrap_or_default(),
    );
    let init = t.spec.init_containers.get_or_insert_with(Vec::new);
    init.splice(0..0, [sidecar.init_container(), sidecar.proxy_container()]);
    t.spec
        .volumes
        .get_or_insert_with(Vec::new)
        .extend(sidecar.volumes());
    Ok(Outcome::Injected)
}

/// Removes a previous injection (found by the status annotation or by the containers' names):
/// its containers, volumes, status and, where it set them, Prometheus annotations (restoring
/// the application's own from the proxy's environment).
fn remove_previous(t: &mut Template<'_>, merge_metrics: bool) {
    let status = t
        .metadata
        .annotations
        .as_mut()
        .and_then(|a| a.remove(annotations::STATUS));
    let ours = |c: &Container| sidecar::INIT_CONTAINERS.contains(&c.name.as_str());
    let injected = status.is_some()
        || t.spec.init_containers.iter().flatten().any(ours)
        || t.spec.containers.iter().any(ours);
    if !injected {
        return;
    }
    let status: Status = status
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let containers: Vec<&str> = sidecar::INIT_CONTAINERS
        .into_iter()
        .chain(status.init_containers.iter().map(String::as_str))
        .chain(status.containers.iter().flatten().map(String::as_str))
        .collect();
    let volumes: Vec<&str> = sidecar::VOLUMES
        .into_iter()
        .chain(status.volumes.iter().map(String::as_str))
        .collect();
    let app_prometheus = t
        .spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == sidecar::PROXY_CONTAINER)
        .and_then(|c| {
            c.env
                .iter()
                .flatten()
                .find(|e| e.name == sidecar::PROMETHEUS_ANNOTATIONS_ENV)
        })
        .and_then(|e| e.value.as_deref())
        .and_then(|v| serde_json::from_str::<BTreeMap<String, String>>(v).ok());
    if let Some(init) = &mut t.spec.init_containers {
        init.retain(|c| !containers.contains(&c.name.as_str()));
    }
    t.spec
        .containers
        .retain(|c| !containers.contains(&c.name.as_str()));
    if let Some(v) = &mut t.spec.volumes {
        v.retain(|v| !volumes.contains(&v.name.as_str()));
    }
    if !merge_metrics {
        return;
    }
    if let Some(annotations) = &mut t.metadata.annotations {
        // Ours only when all three are exactly what injection writes.
        let ours = sidecar::prometheus_annotations();
        if ours
            .iter()
            .all(|(name, value)| annotations.get(*name) == Some(value))
        {
            for (name, _) in ours {
                annotations.remove(name);
            }
        }
        for (key, value) in app_prometheus.into_iter().flatten() {
            annotations.insert(format!("prometheus.io/{key}"), value);
        }
    }
}

/// `image` with its tag (or digest) replaced by `tag`.
fn with_tag(image: &str, tag: &str) -> String {
    let base = image.split('@').next().unwrap_or(image);
    let name_start = base.rfind('/').map_or(0, |i| i + 1);
    let base = match base[name_start..].rfind(':') {
        Some(i) => &base[..name_start + i],
        None => base,
    };
    format!("{base}:{tag}")
}

#[cfg(test)]
mod tests {
    use super::with_tag;

    #[test]
    fn tags() {
        assert_eq!(with_tag("weft:0.1.0", "0.2.0"), "weft:0.2.0");
        assert_eq!(with_tag("reg:5000/weft", "1"), "reg:5000/weft:1");
        assert_eq!(
            with_tag("reg:5000/a/weft:0.1@sha256:ab", "2"),
            "reg:5000/a/weft:2"
        );
    }
}
