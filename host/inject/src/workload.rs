//! The workload kinds `weft inject` changes, each reduced to the pod template it carries.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::strict::{FieldError, from_value};

/// A workload read from a manifest (boxed: the types are a few kilobytes each).
#[derive(Debug, Clone)]
pub enum Workload {
    /// apps/v1 Deployment.
    Deployment(Box<Deployment>),
    /// apps/v1 StatefulSet.
    StatefulSet(Box<StatefulSet>),
    /// apps/v1 DaemonSet.
    DaemonSet(Box<DaemonSet>),
    /// batch/v1 Job.
    Job(Box<Job>),
    /// batch/v1 CronJob.
    CronJob(Box<CronJob>),
    /// v1 Pod.
    Pod(Box<Pod>),
}

/// The parts of a workload injection reads and changes.
pub struct Template<'a> {
    /// The pod template's (or the Pod's) metadata.
    pub metadata: &'a mut ObjectMeta,
    /// The pod spec.
    pub spec: &'a mut PodSpec,
}

impl Workload {
    /// Reads `value` when its `apiVersion` and `kind` are a workload; `Ok(None)` for any
    /// other object (passed through).
    pub fn read(value: &Value) -> Result<Option<Workload>, FieldError> {
        let api_version = value.get("apiVersion").and_then(Value::as_str);
        let kind = value.get("kind").and_then(Value::as_str);
        Ok(Some(match (api_version, kind) {
            (Some("apps/v1"), Some("Deployment")) => Workload::Deployment(from_value(value)?),
            (Some("apps/v1"), Some("StatefulSet")) => Workload::StatefulSet(from_value(value)?),
            (Some("apps/v1"), Some("DaemonSet")) => Workload::DaemonSet(from_value(value)?),
            (Some("batch/v1"), Some("Job")) => Workload::Job(from_value(value)?),
            (Some("batch/v1"), Some("CronJob")) => Workload::CronJob(from_value(value)?),
            (Some("v1"), Some("Pod")) => Workload::Pod(from_value(value)?),
            _ => return Ok(None),
        }))
    }

    /// The object's own metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Workload::Deployment(o) => &o.metadata,
            Workload::StatefulSet(o) => &o.metadata,
            Workload::DaemonSet(o) => &o.metadata,
            Workload::Job(o) => &o.metadata,
            Workload::CronJob(o) => &o.metadata,
            Workload::Pod(o) => &o.metadata,
        }
    }

    /// `Kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Workload::Deployment(_) => "Deployment",
            Workload::StatefulSet(_) => "StatefulSet",
            Workload::DaemonSet(_) => "DaemonSet",
            Workload::Job(_) => "Job",
            Workload::CronJob(_) => "CronJob",
            Workload::Pod(_) => "Pod",
        }
    }

    /// The object's name (or its `generateName`).
    pub fn name(&self) -> String {
        let m = self.metadata();
        m.name
            .clone()
            .or_else(|| m.generate_name.clone())
            .unwrap_or_default()
    }

    /// The object's namespace when the manifest says.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }

    /// Istio's `ISTIO_META_OWNER`: `kubernetes://apis/<group/version>/namespaces/<ns>/<plural>/<name>`.
    pub fn owner(&self, namespace: &str) -> String {
        let (api, plural) = match self {
            Workload::Deployment(_) => ("apps/v1", "deployments"),
            Workload::StatefulSet(_) => ("apps/v1", "statefulsets"),
            Workload::DaemonSet(_) => ("apps/v1", "daemonsets"),
            Workload::Job(_) => ("batch/v1", "jobs"),
            Workload::CronJob(_) => ("batch/v1", "cronjobs"),
            Workload::Pod(_) => ("v1", "pods"),
        };
        format!(
            "kubernetes://apis/{api}/namespaces/{namespace}/{plural}/{}",
            self.name()
        )
    }

    /// The pod template; `None` when the manifest has no pod spec at all.
    pub fn template(&mut self) -> Option<Template<'_>> {
        let (metadata, spec) = match self {
            Workload::Deployment(o) => template(o.spec.as_mut().map(|s| &mut s.template)),
            Workload::StatefulSet(o) => template(o.spec.as_mut().map(|s| &mut s.template)),
            Workload::DaemonSet(o) => template(o.spec.as_mut().map(|s| &mut s.template)),
            Workload::Job(o) => template(o.spec.as_mut().map(|s| &mut s.template)),
            Workload::CronJob(o) => template(
                o.spec
                    .as_mut()
                    .and_then(|s| s.job_template.spec.as_mut())
                    .map(|s| &mut s.template),
            ),
            Workload::Pod(o) => (Some(&mut o.metadata), o.spec.as_mut()),
        };
        Some(Template {
            metadata: metadata?,
            spec: spec?,
        })
    }

    /// The object as a generic value (fields sorted, as the API's own order is).
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        match self {
            Workload::Deployment(o) => serde_json::to_value(o),
            Workload::StatefulSet(o) => serde_json::to_value(o),
            Workload::DaemonSet(o) => serde_json::to_value(o),
            Workload::Job(o) => serde_json::to_value(o),
            Workload::CronJob(o) => serde_json::to_value(o),
            Workload::Pod(o) => serde_json::to_value(o),
        }
    }

    /// The object as YAML, fields in the API's order.
    pub fn to_yaml(&self) -> Result<String, serde_saphyr::SerializeError> {
        match self {
            Workload::Deployment(o) => crate::to_yaml(o),
            Workload::StatefulSet(o) => crate::to_yaml(o),
            Workload::DaemonSet(o) => crate::to_yaml(o),
            Workload::Job(o) => crate::to_yaml(o),
            Workload::CronJob(o) => crate::to_yaml(o),
            Workload::Pod(o) => crate::to_yaml(o),
        }
    }
}

fn template(
    t: Option<&mut k8s_openapi::api::core::v1::PodTemplateSpec>,
) -> (Option<&mut ObjectMeta>, Option<&mut PodSpec>) {
    match t {
        Some(t) => (
            Some(t.metadata.get_or_insert_with(ObjectMeta::default)),
            t.spec.as_mut(),
        ),
        None => (None, None),
    }
}
