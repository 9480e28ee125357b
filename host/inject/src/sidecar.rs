//! What is added to a pod: the capture init container, the proxy as a native sidecar, and
//! their volumes. Modelled on Istio's injection template (`istio-init`, `istio-proxy`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector,
    Probe, ProjectedVolumeSource, ResourceRequirements, SecretProjection, SecurityContext, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::commands::{
    CA_DIR, CERTS_DIR, CONFIG_DIR, CaptureArgs, EXECUTABLE, METRICS_PATH, PLUGINS_DIR, PORTS,
    PROXY_GID, PROXY_UID, READY_PATH, proxy_args,
};

/// The capture init container's name.
pub const INIT_CONTAINER: &str = "weft-init";
/// The proxy's name (a native sidecar: an init container with `restartPolicy: Always`).
pub const PROXY_CONTAINER: &str = "weft-proxy";
/// The mesh configuration volume (a ConfigMap holding `weft.yaml`).
pub const CONFIG_VOLUME: &str = "weft-config";
/// The CA trust root and bootstrap token (projected from a ConfigMap and a Secret).
pub const CA_VOLUME: &str = "weft-ca";
/// The workload certificate, written by the certificate agent (in memory).
pub const CERTS_VOLUME: &str = "weft-certs";
/// Plugin files.
pub const PLUGINS_VOLUME: &str = "weft-plugins";

/// Every container `weft inject` adds, in order.
pub const INIT_CONTAINERS: [&str; 2] = [INIT_CONTAINER, PROXY_CONTAINER];
/// Every volume `weft inject` adds, in order.
pub const VOLUMES: [&str; 4] = [CONFIG_VOLUME, CA_VOLUME, CERTS_VOLUME, PLUGINS_VOLUME];

/// The env variable Istio's agent keeps an application's own `prometheus.io/*` annotations in
/// (JSON); `weft inject` no longer writes it, but restores them from it when it replaces an
/// injection that did.
pub const PROMETHEUS_ANNOTATIONS_ENV: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";
/// The env variable carrying the workload's SPIFFE ID.
pub const SPIFFE_ID_ENV: &str = "WEFT_SPIFFE_ID";

/// The sidecar's requests and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyResources {
    /// CPU request.
    pub cpu: String,
    /// Memory request.
    pub memory: String,
    /// CPU limit (none when empty).
    pub cpu_limit: String,
    /// Memory limit (none when empty).
    pub memory_limit: String,
}

impl Default for ProxyResources {
    fn default() -> Self {
        ProxyResources {
            cpu: "100m".to_owned(),
            memory: "64Mi".to_owned(),
            cpu_limit: "2".to_owned(),
            memory_limit: "512Mi".to_owned(),
        }
    }
}

impl ProxyResources {
    fn requirements(&self) -> ResourceRequirements {
        let map = |pairs: [(&str, &String); 2]| {
            let m: BTreeMap<String, Quantity> = pairs
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_owned(), Quantity(v.clone())))
                .collect();
            (!m.is_empty()).then_some(m)
        };
        ResourceRequirements {
            requests: map([("cpu", &self.cpu), ("memory", &self.memory)]),
            limits: map([("cpu", &self.cpu_limit), ("memory", &self.memory_limit)]),
            ..Default::default()
        }
    }
}

/// Everything that varies between injected pods.
#[derive(Debug, Clone)]
pub struct Sidecar {
    /// Image of both containers.
    pub image: String,
    /// Requests and limits of both containers.
    pub resources: ProxyResources,
    /// What `weft iptables` is told.
    pub capture: CaptureArgs,
    /// The environment of the proxy (see [`proxy_env`]).
    pub env: Vec<EnvVar>,
    /// The mesh ConfigMap.
    pub config_map: String,
    /// The ConfigMap holding the CA's `root-cert.pem`.
    pub ca_root_config_map: String,
    /// The Secret holding the CA bootstrap `token`.
    pub bootstrap_token_secret: String,
}

/// A plain `name: value` env entry.
pub fn env_value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// An env entry from the downward API (`metadata.name`, `status.podIP`, …).
pub fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: field_path.to_owned(),
            }),
            ..Default::default()
        }),
    }
}

/// What the proxy's process knows about its pod: the downward API and Istio's node metadata
/// (`ISTIO_META_*`) names.
pub struct PodFacts {
    /// The SPIFFE ID (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`).
    pub spiffe_id: String,
    /// `ISTIO_META_POD_PORTS`: the application containers' ports as JSON; none when empty.
    pub pod_ports: Option<String>,
    /// `ISTIO_META_APP_CONTAINERS`.
    pub app_containers: String,
    /// `ISTIO_META_CLUSTER_ID`.
    pub cluster_id: String,
    /// `ISTIO_META_WORKLOAD_NAME`.
    pub workload_name: String,
    /// `ISTIO_META_OWNER`.
    pub owner: String,
    /// `ISTIO_META_MESH_ID` (the trust domain, as Istio's default).
    pub mesh_id: String,
}

/// The proxy's environment, in Istio's order; `POD_NAMESPACE` comes before anything that
/// refers to it as `$(POD_NAMESPACE)`.
pub fn proxy_env(facts: PodFacts) -> Vec<EnvVar> {
    let mut env = vec![
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_field("INSTANCE_IP", "status.podIP"),
        env_field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        env_field("HOST_IP", "status.hostIP"),
        env_value(SPIFFE_ID_ENV, facts.spiffe_id),
    ];
    if let Some(ports) = facts.pod_ports {
        env.push(env_value("ISTIO_META_POD_PORTS", ports));
    }
    env.extend([
        env_value("ISTIO_META_APP_CONTAINERS", facts.app_containers),
        env_value("ISTIO_META_CLUSTER_ID", facts.cluster_id),
        env_field("ISTIO_META_NODE_NAME", "spec.nodeName"),
        env_value("ISTIO_META_INTERCEPTION_MODE", "REDIRECT"),
        env_value("ISTIO_META_WORKLOAD_NAME", facts.workload_name),
        env_value("ISTIO_META_OWNER", facts.owner),
        env_value("ISTIO_META_MESH_ID", facts.mesh_id),
    ]);
    env
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn ready_probe(period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(READY_PATH.to_owned()),
            port: IntOrString::Int(i32::from(PORTS.health)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

impl Sidecar {
    /// `weft-init`: installs the capture rules as root with NET_ADMIN and NET_RAW, then exits.
    pub fn init_container(&self) -> Container {
        Container {
            name: INIT_CONTAINER.to_owned(),
            image: Some(self.image.clone()),
            image_pull_policy: Some("IfNotPresent".to_owned()),
            command: Some(strings(&[EXECUTABLE])),
            args: Some(self.capture.args()),
            resources: Some(self.resources.requirements()),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    add: Some(strings(&["NET_ADMIN", "NET_RAW"])),
                    drop: Some(strings(&["ALL"])),
                }),
                privileged: Some(false),
                read_only_root_filesystem: Some(false),
                run_as_group: Some(0),
                run_as_non_root: Some(false),
                run_as_user: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `weft-proxy`: the proxy as a native sidecar (`restartPolicy: Always`), so it starts
    /// before the application containers (once its startup probe passes) and stops after them.
    pub fn proxy_container(&self) -> Container {
        Container {
            name: PROXY_CONTAINER.to_owned(),
            image: Some(self.image.clone()),
            image_pull_policy: Some("IfNotPresent".to_owned()),
            command: Some(strings(&[EXECUTABLE])),
            args: Some(proxy_args()),
            restart_policy: Some("Always".to_owned()),
            ports: Some(vec![ContainerPort {
                name: Some("http-envoy-prom".to_owned()),
                container_port: i32::from(PORTS.proxy_metrics),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
            env: Some(self.env.clone()),
            resources: Some(self.resources.requirements()),
            startup_probe: Some(ready_probe(1, 600)),
            readiness_probe: Some(ready_probe(15, 4)),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    add: None,
                    drop: Some(strings(&["ALL"])),
                }),
                privileged: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_group: Some(PROXY_GID),
                run_as_non_root: Some(true),
                run_as_user: Some(PROXY_UID),
                ..Default::default()
            }),
            volume_mounts: Some(vec![
                mount(CONFIG_VOLUME, CONFIG_DIR, true),
                mount(CA_VOLUME, CA_DIR, true),
                mount(CERTS_VOLUME, CERTS_DIR, false),
                mount(PLUGINS_VOLUME, PLUGINS_DIR, false),
            ]),
            ..Default::default()
        }
    }

    /// The volumes, named as [`VOLUMES`].
    pub fn volumes(&self) -> Vec<Volume> {
        let item = |key: &str| {
            Some(vec![KeyToPath {
                key: key.to_owned(),
                path: key.to_owned(),
                mode: None,
            }])
        };
        vec![
            Volume {
                name: CONFIG_VOLUME.to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: self.config_map.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: CA_VOLUME.to_owned(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![
                        VolumeProjection {
                            config_map: Some(ConfigMapProjection {
                                name: self.ca_root_config_map.clone(),
                                items: item("root-cert.pem"),
                                optional: None,
                            }),
                            ..Default::default()
                        },
                        VolumeProjection {
                            secret: Some(SecretProjection {
                                name: self.bootstrap_token_secret.clone(),
                                items: item("token"),
                                optional: None,
                            }),
                            ..Default::default()
                        },
                    ]),
                    default_mode: None,
                }),
                ..Default::default()
            },
            Volume {
                name: CERTS_VOLUME.to_owned(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".to_owned()),
                    size_limit: None,
                }),
                ..Default::default()
            },
            Volume {
                name: PLUGINS_VOLUME.to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            },
        ]
    }
}

/// The Prometheus annotations pointing at the proxy's metrics port.
pub fn prometheus_annotations() -> [(&'static str, String); 3] {
    [
        (crate::annotations::PROMETHEUS_SCRAPE, "true".to_owned()),
        (
            crate::annotations::PROMETHEUS_PORT,
            PORTS.proxy_metrics.to_string(),
        ),
        (crate::annotations::PROMETHEUS_PATH, METRICS_PATH.to_owned()),
    ]
}
