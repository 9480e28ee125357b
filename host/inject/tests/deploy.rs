//! `deploy/kubernetes/`: every manifest is read into its k8s-openapi type (unknown kinds and
//! unknown fields fail), the mesh ConfigMap is a valid Weft configuration wired to the paths
//! `weft inject` mounts, the CA matches the identity sidecars expect, and the injected example
//! is exactly what `weft inject` makes of its source (`WEFT_UPDATE_GOLDEN=1` rewrites it).
#![expect(
    clippy::expect_used,
    reason = "test helpers outside #[test] functions fail loudly on unexpected input"
)]

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde_json::Value;
use weft_inject::commands::{CA_DIR, CERTS_DIR, PORTS};
use weft_inject::strict::from_value;
use weft_inject::{Options, documents};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

/// Every object of every manifest, typed-checked; returns them as generic values.
fn objects() -> Vec<(String, Value)> {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    assert!(files.len() >= 4, "manifests missing: {files:?}");
    let mut all = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        for doc in documents::split(&text) {
            let at = format!("{}: document {}", file.display(), doc.index);
            let Some(value) = doc.parse().unwrap_or_else(|e| panic!("{at}: {e}")) else {
                continue;
            };
            let kind = value["kind"].as_str().unwrap_or("").to_owned();
            let checked = match (value["apiVersion"].as_str().unwrap_or(""), kind.as_str()) {
                ("v1", "Namespace") => from_value::<Namespace>(&value).map(drop),
                ("v1", "ServiceAccount") => from_value::<ServiceAccount>(&value).map(drop),
                ("v1", "ConfigMap") => from_value::<ConfigMap>(&value).map(drop),
                ("v1", "Secret") => from_value::<Secret>(&value).map(drop),
                ("v1", "Service") => from_value::<Service>(&value).map(drop),
                ("apps/v1", "Deployment") => from_value::<Deployment>(&value).map(drop),
                ("rbac.authorization.k8s.io/v1", "Role") => from_value::<Role>(&value).map(drop),
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                    from_value::<RoleBinding>(&value).map(drop)
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    from_value::<ClusterRole>(&value).map(drop)
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    from_value::<ClusterRoleBinding>(&value).map(drop)
                }
                (api, kind) => panic!("{at}: {api} {kind}: a kind this test does not know"),
            };
            if let Err(e) = checked {
                panic!("{at} ({kind}): {e:?}");
            }
            all.push((kind, value));
        }
    }
    all
}

fn find<'a>(objects: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|(k, v)| k == kind && v["metadata"]["name"] == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn every_manifest_is_a_known_kind_without_unknown_fields() {
    let objects = objects();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
    ] {
        assert!(objects.iter().any(|(k, _)| k == kind), "no {kind}");
    }
}

#[test]
fn the_mesh_config_map_is_a_valid_weft_configuration_on_the_injected_paths() {
    let objects = objects();
    let cm = find(&objects, "ConfigMap", "weft-mesh");
    assert_eq!(
        cm["metadata"]["name"],
        Options::default().config_map.as_str()
    );
    let text = cm["data"]["weft.yaml"].as_str().expect("weft.yaml key");
    let config = weft_config::parse(text, "deploy/kubernetes/mesh.yaml: weft.yaml")
        .unwrap_or_else(|e| panic!("{e}"));
    let identity = config.identity.expect("an identity block");
    assert!(identity.ca_trust_bundle_file.starts_with(CA_DIR));
    assert!(
        identity
            .bootstrap_token_file
            .as_deref()
            .is_some_and(|f| f.starts_with(CA_DIR))
    );
    assert_eq!(identity.output_dir, CERTS_DIR);
    let ports: Vec<u16> = config.listeners.iter().map(|l| l.address.port()).collect();
    assert!(
        ports.contains(&PORTS.outbound) && ports.contains(&PORTS.inbound),
        "{ports:?}"
    );
    assert_eq!(config.admin.address.port(), PORTS.admin);
    // The sidecar ports the injected probes and scrape annotations use.
    let sidecar = config.sidecar.as_ref().expect("a sidecar block");
    assert!(sidecar.capture);
    assert_eq!(sidecar.health_address.port(), PORTS.health);
    assert_eq!(sidecar.prometheus_address.port(), PORTS.proxy_metrics);

    // The CA address is the CA's Service, and the CA runs as the identity agents accept.
    let svc = find(&objects, "Service", "weft-ca");
    let ns = svc["metadata"]["namespace"].as_str().expect("namespace");
    let port = svc["spec"]["ports"][0]["port"].as_u64().expect("port");
    assert_eq!(identity.ca_address, format!("weft-ca.{ns}.svc:{port}"));
    let ca = find(&objects, "Deployment", "weft-ca");
    let sa = ca["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("service account");
    assert_eq!(
        weft_tls::ca_protocol::ca_identity("cluster.local"),
        format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
    );
}

#[test]
fn the_example_is_what_weft_inject_makes_of_its_source() {
    let dir = deploy_dir().join("example");
    let source = std::fs::read_to_string(dir.join("app.yaml")).expect("source");
    let out = weft_inject::inject(&source, &Options::default())
        .expect("inject")
        .yaml;
    let injected = dir.join("app.injected.yaml");
    if std::env::var_os("WEFT_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&injected, &out).expect("write");
    }
    let want = std::fs::read_to_string(&injected).expect("app.injected.yaml");
    assert!(
        out == want,
        "deploy/kubernetes/example/app.injected.yaml is stale: regenerate with weft inject (or WEFT_UPDATE_GOLDEN=1)"
    );
    // Two services, each with its service account and an injected Deployment.
    let objects = objects();
    for name in ["httpbin", "curl"] {
        find(&objects, "Service", name);
        find(&objects, "ServiceAccount", name);
    }
    let injected_deployments = want.matches("name: weft-proxy").count();
    assert_eq!(injected_deployments, 2);
}
