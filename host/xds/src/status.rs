//! What `/config_dump` shows of xDS (under `dynamic`), and the `weft_xds_*` metrics.

use std::collections::BTreeMap;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde_json::{Value, json};
use weft_observe::xds::{XdsMetrics, XdsTypeLabels, XdsUpdateLabels};

use crate::resources::Kind;

/// Per resource type: the accepted version, the last nonce, when, the names, the last NACK.
#[derive(Debug, Default, Clone)]
struct TypeStatus {
    version: String,
    nonce: String,
    last_update: Option<SystemTime>,
    resources: Vec<String>,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    connected: bool,
    types: BTreeMap<Kind, TypeStatus>,
    warming: Vec<String>,
}

/// The client's status, shared with the admin server.
#[derive(Debug)]
pub struct Status {
    control_plane: String,
    node_id: String,
    inner: Mutex<Inner>,
    metrics: XdsMetrics,
}

impl Status {
    pub(crate) fn new(control_plane: String, node_id: String, metrics: XdsMetrics) -> Status {
        Status {
            control_plane,
            node_id,
            inner: Mutex::new(Inner::default()),
            metrics,
        }
    }

    pub(crate) fn connected(&self, up: bool) {
        self.inner.lock().connected = up;
        self.metrics.connected.set(i64::from(up));
    }

    /// True while the ADS stream is up.
    pub fn is_connected(&self) -> bool {
        self.inner.lock().connected
    }

    pub(crate) fn accepted(&self, kind: Kind, version: &str, nonce: &str, names: Vec<String>) {
        let now = SystemTime::now();
        {
            let mut inner = self.inner.lock();
            let t = inner.types.entry(kind).or_default();
            t.version = version.to_owned();
            t.nonce = nonce.to_owned();
            t.last_update = Some(now);
            t.resources = names;
            t.last_error = None;
        }
        self.count(kind, "accepted");
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.metrics
            .last_update
            .get_or_create(&XdsTypeLabels {
                type_url: kind.type_url().into(),
            })
            .set(secs);
    }

    pub(crate) fn rejected(&self, kind: Option<Kind>, type_url: &str, nonce: &str, error: &str) {
        if let Some(kind) = kind {
            let mut inner = self.inner.lock();
            let t = inner.types.entry(kind).or_default();
            t.nonce = nonce.to_owned();
            t.last_error = Some(error.to_owned());
        }
        self.metrics
            .updates
            .get_or_create(&XdsUpdateLabels {
                type_url: type_url.into(),
                result: "rejected".into(),
            })
            .inc();
    }

    fn count(&self, kind: Kind, result: &str) {
        self.metrics
            .updates
            .get_or_create(&XdsUpdateLabels {
                type_url: kind.type_url().into(),
                result: result.into(),
            })
            .inc();
    }

    pub(crate) fn warming(&self, warming: Vec<String>) {
        self.metrics.warming.set(warming.len() as i64);
        self.inner.lock().warming = warming;
    }

    /// The JSON shown in `/config_dump`.
    pub fn dump(&self) -> Value {
        let inner = self.inner.lock();
        let types: Vec<Value> = inner
            .types
            .iter()
            .map(|(k, t)| {
                json!({
                    "type_url": k.type_url(),
                    "version_info": t.version,
                    "nonce": t.nonce,
                    "last_updated": t.last_update.map(weft_observe::access_log::rfc3339),
                    "resources": t.resources,
                    "last_error": t.last_error,
                })
            })
            .collect();
        json!({
            "kind": "xds",
            "control_plane": self.control_plane,
            "node_id": self.node_id,
            "connected": inner.connected,
            "warming": inner.warming,
            "resource_types": types,
        })
    }
}

impl weft_proxy::DynamicStatus for Status {
    fn dump(&self) -> Value {
        Status::dump(self)
    }
}
