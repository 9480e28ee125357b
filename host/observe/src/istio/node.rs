//! Workload identities: this sidecar's (Istio's node metadata, from configuration and the
//! environment) and a peer's (from the metadata exchange).

use std::collections::BTreeMap;
use std::sync::Arc;

use weft_config::schema::Node;

/// The pod label carrying the canonical service name.
pub const CANONICAL_NAME_LABEL: &str = "service.istio.io/canonical-name";
/// The pod label carrying the canonical revision.
pub const CANONICAL_REVISION_LABEL: &str = "service.istio.io/canonical-revision";
/// The `app` label.
pub const APP_LABEL: &str = "app";
/// The `version` label.
pub const VERSION_LABEL: &str = "version";

/// One side of a call, as Istio's `WorkloadMetadataObject` has it. Empty means unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Workload {
    /// Instance (pod) name: `NAME`.
    pub instance: Arc<str>,
    /// `NAMESPACE`.
    pub namespace: Arc<str>,
    /// `WORKLOAD_NAME`.
    pub workload: Arc<str>,
    /// `CLUSTER_ID`.
    pub cluster: Arc<str>,
    /// `LABELS["service.istio.io/canonical-name"]`.
    pub canonical_service: Arc<str>,
    /// `LABELS["service.istio.io/canonical-revision"]`.
    pub canonical_revision: Arc<str>,
    /// `LABELS["app"]`.
    pub app: Arc<str>,
    /// `LABELS["version"]`.
    pub version: Arc<str>,
}

/// This sidecar: its workload facts and node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNode {
    /// Envoy's node id (`x-envoy-peer-metadata-id`).
    pub id: String,
    /// The workload facts sent to peers and used as the local side's labels.
    pub workload: Workload,
    /// `MESH_ID`.
    pub mesh_id: String,
    /// Every pod label (configured and `ISTIO_METAJSON_LABELS`).
    pub labels: BTreeMap<String, String>,
    /// Further node metadata (`ISTIO_META_*`).
    pub metadata: BTreeMap<String, String>,
}

/// Which environment variable fills which node field (Istio's sidecar injection sets them).
pub const ENV_POD_NAME: &str = "POD_NAME";
/// Namespace.
pub const ENV_POD_NAMESPACE: &str = "POD_NAMESPACE";
/// Instance IP (for the default node id).
pub const ENV_INSTANCE_IP: &str = "INSTANCE_IP";
/// Cluster id.
pub const ENV_CLUSTER_ID: &str = "ISTIO_META_CLUSTER_ID";
/// Workload name.
pub const ENV_WORKLOAD_NAME: &str = "ISTIO_META_WORKLOAD_NAME";
/// Mesh id.
pub const ENV_MESH_ID: &str = "ISTIO_META_MESH_ID";
/// Pod labels as a JSON object.
pub const ENV_LABELS_JSON: &str = "ISTIO_METAJSON_LABELS";
/// Canonical service (the injector copies the pod label here).
pub const ENV_CANONICAL_SERVICE: &str = "CANONICAL_SERVICE";
/// Canonical revision.
pub const ENV_CANONICAL_REVISION: &str = "CANONICAL_REVISION";
/// Prefix of further node metadata.
pub const ENV_META_PREFIX: &str = "ISTIO_META_";

impl LocalNode {
    /// Resolves `node` against the process environment.
    pub fn from_env(node: &Node) -> LocalNode {
        let vars: BTreeMap<String, String> = std::env::vars().collect();
        LocalNode::resolve(node, &vars)
    }

    /// Resolves `node` against `env`: a variable that is set wins over the configured field (as
    /// Istio's `proxyMetadata` never overrides a variable the pod already sets); the canonical
    /// service falls back to the `app` label, then the workload name; the canonical revision to
    /// the `version` label, then `latest` (Istio's fallbacks).
    pub fn resolve(node: &Node, env: &BTreeMap<String, String>) -> LocalNode {
        let var = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let pick = |k: &str, configured: &Option<String>| var(k).or_else(|| configured.clone());
        let env_labels: BTreeMap<String, String> = var(ENV_LABELS_JSON)
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default();
        let mut labels = node.labels.clone();
        labels.extend(env_labels.clone());
        let mut metadata = node.metadata.clone();
        for (k, v) in env {
            if let Some(key) = k.strip_prefix(ENV_META_PREFIX)
                && !key.is_empty()
            {
                metadata.insert(key.to_owned(), v.clone());
            }
        }
        // A label from the environment, else the configured field, else a configured label.
        let label = |key: &str, configured: &Option<String>| {
            env_labels
                .get(key)
                .cloned()
                .or_else(|| configured.clone())
                .or_else(|| node.labels.get(key).cloned())
        };
        let name = pick(ENV_POD_NAME, &node.name).unwrap_or_default();
        let namespace = pick(ENV_POD_NAMESPACE, &node.namespace).unwrap_or_default();
        let workload = pick(ENV_WORKLOAD_NAME, &node.workload_name).unwrap_or_default();
        let app = label(APP_LABEL, &node.app).unwrap_or_default();
        let version = label(VERSION_LABEL, &node.version).unwrap_or_default();
        let canonical_service = var(ENV_CANONICAL_SERVICE)
            .or_else(|| label(CANONICAL_NAME_LABEL, &node.canonical_service))
            .or_else(|| (!app.is_empty()).then(|| app.clone()))
            .unwrap_or_else(|| workload.clone());
        let canonical_revision = var(ENV_CANONICAL_REVISION)
            .or_else(|| label(CANONICAL_REVISION_LABEL, &node.canonical_revision))
            .or_else(|| (!version.is_empty()).then(|| version.clone()))
            .unwrap_or_else(|| "latest".to_owned());
        let cluster = pick(ENV_CLUSTER_ID, &node.cluster).unwrap_or_default();
        let mesh_id = pick(ENV_MESH_ID, &node.mesh_id).unwrap_or_default();
        let id = node.id.clone().unwrap_or_else(|| {
            let ip = var(ENV_INSTANCE_IP).unwrap_or_else(|| "127.0.0.1".to_owned());
            format!("sidecar~{ip}~{name}.{namespace}~{namespace}.svc.cluster.local")
        });
        LocalNode {
            id,
            workload: Workload {
                instance: name.into(),
                namespace: namespace.into(),
                workload: workload.into(),
                cluster: cluster.into(),
                canonical_service: canonical_service.into(),
                canonical_revision: canonical_revision.into(),
                app: app.into(),
                version: version.into(),
            },
            mesh_id,
            labels,
            metadata,
        }
    }
}

/// The namespace of a SPIFFE identity `spiffe://<trust domain>/ns/<namespace>/sa/<account>`.
pub fn spiffe_namespace(principal: &str) -> Option<&str> {
    let path = principal.strip_prefix("spiffe://")?;
    let mut parts = path.split('/').skip(1);
    while let Some(p) = parts.next() {
        if p == "ns" {
            return parts.next().filter(|n| !n.is_empty());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn environment_wins_over_configuration_and_fills_what_is_unset() {
        let node = Node {
            name: Some("from-config".into()),
            namespace: Some("config-ns".into()),
            workload_name: Some("reviews-v1".into()),
            ..Node::default()
        };
        let local = LocalNode::resolve(
            &node,
            &env(&[
                ("POD_NAME", "reviews-v1-abc"),
                ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
                (
                    "ISTIO_METAJSON_LABELS",
                    r#"{"app":"reviews","version":"v1"}"#,
                ),
                ("ISTIO_META_INTERCEPTION_MODE", "REDIRECT"),
                ("INSTANCE_IP", "10.0.0.7"),
            ]),
        );
        assert_eq!(&*local.workload.instance, "reviews-v1-abc", "env wins");
        assert_eq!(&*local.workload.namespace, "config-ns", "config fills");
        assert_eq!(&*local.workload.workload, "reviews-v1");
        assert_eq!(&*local.workload.cluster, "Kubernetes");
        assert_eq!(&*local.workload.app, "reviews");
        assert_eq!(&*local.workload.canonical_service, "reviews", "from app");
        assert_eq!(&*local.workload.canonical_revision, "v1", "from version");
        assert_eq!(local.metadata["INTERCEPTION_MODE"], "REDIRECT");
        assert_eq!(
            local.id,
            "sidecar~10.0.0.7~reviews-v1-abc.config-ns~config-ns.svc.cluster.local"
        );
    }

    #[test]
    fn canonical_names_fall_back_as_istio() {
        let local = LocalNode::resolve(
            &Node {
                workload_name: Some("ratings".into()),
                ..Node::default()
            },
            &BTreeMap::new(),
        );
        assert_eq!(&*local.workload.canonical_service, "ratings");
        assert_eq!(&*local.workload.canonical_revision, "latest");
    }

    #[test]
    fn namespace_from_spiffe_id() {
        assert_eq!(
            spiffe_namespace("spiffe://cluster.local/ns/bookinfo/sa/reviews"),
            Some("bookinfo")
        );
        assert_eq!(spiffe_namespace("spiffe://cluster.local/sa/x"), None);
        assert_eq!(spiffe_namespace("https://x/ns/y"), None);
    }
}
