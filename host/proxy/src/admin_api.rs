//! The running proxy as the admin server sees it ([`weft_admin::AdminApi`]).

use std::sync::Arc;

use serde_json::{Value, json};
use weft_admin::{AdminApi, ApiFuture};
use weft_extensions::PluginRegistry;
use weft_observe::exposition::Format;
use weft_transport::ListenerGen;
use weft_upstream::Cluster;

use crate::state::State;

/// The admin view of the running proxy.
pub(crate) struct Api(pub Arc<State>);

impl AdminApi for Api {
    fn is_ready(&self) -> bool {
        self.0.is_ready()
    }

    fn sidecar_ready(&self) -> Result<(), String> {
        if !self.0.is_ready() {
            return Err("starting or draining".to_owned());
        }
        let g = self.0.generation();
        // A plugin the requests depend on (anything but fail_open) must be loaded.
        for handle in g.plugin_handles() {
            let failed = matches!(
                &*handle.current(),
                weft_extensions::PluginVersion::Failed { .. }
            );
            if failed && handle.policy() != weft_wasm::FailurePolicy::FailOpen {
                return Err(format!("plugin {} is not loaded", handle.label()));
            }
        }
        if g.config.identity.is_some() {
            crate::identity::certificates_valid(&g)?;
        }
        Ok(())
    }

    fn metrics(&self, format: Format) -> String {
        // The plugin families are a collector in the same registry (registered at start).
        match format {
            Format::OpenMetrics => self.0.metrics().encode(),
            Format::Text => self.0.metrics().encode_text(),
        }
    }

    fn config_dump(&self, include_secrets: bool) -> Value {
        let g = self.0.generation();
        let mut config = serde_json::to_value(&*g.config).unwrap_or(Value::Null);
        if !include_secrets {
            redact(&mut config);
        }
        json!({
            "generation": g.id,
            "source": g.source,
            "loaded_at": weft_observe::access_log::rfc3339(g.loaded_at),
            "last_reload_error": self.0.last_reload_error(),
            "listeners": self.0.listener_addrs(),
            "config": config,
            "dynamic": self.0.dynamic_status.lock().as_ref().map(|s| s.dump()),
        })
    }

    fn clusters(&self) -> Arc<Vec<Arc<Cluster>>> {
        self.0.generation().clusters.clone()
    }

    fn plugins(&self) -> &PluginRegistry {
        self.0.plugins()
    }

    fn chains(&self) -> Value {
        let g = self.0.generation();
        let mut names: Vec<&String> = g.listeners.keys().collect();
        names.sort();
        let mut chains = Vec::new();
        for name in names {
            match g.listeners.get(name).map(|l| &**l) {
                Some(ListenerGen::Http(h)) => chains.extend(h.http.describe()),
                Some(ListenerGen::Tcp(t)) => chains.push(json!({
                    "listener": name,
                    "phases": ["weft.tcp_proxy"],
                    "plugins": t.wasm.iter().map(|h| h.label()).collect::<Vec<_>>(),
                })),
                Some(ListenerGen::Capture(c)) => chains.push(json!({
                    "listener": name,
                    "phases": ["weft.original_dst"],
                    "filter_chains": c.chains.iter().map(|ch| json!({
                        "name": &*ch.name,
                        "listener": &*ch.target,
                    })).collect::<Vec<_>>(),
                    "fallback_cluster": &*c.fallback.cluster.name,
                })),
                None => {}
            }
        }
        Value::Array(chains)
    }

    fn certs(&self) -> Value {
        crate::identity::certs_json(&self.0.generation())
    }

    fn reload(&self) -> ApiFuture<'_, Result<u64, (String, u64)>> {
        Box::pin(async move {
            self.0
                .reload()
                .await
                .map_err(|e| (e.to_string(), self.0.generation().id))
        })
    }

    fn reload_plugin<'a>(&'a self, name: &'a str) -> ApiFuture<'a, Result<usize, String>> {
        Box::pin(async move { self.0.reload_plugin(name).await.map_err(|e| e.to_string()) })
    }

    fn shutdown(&self) {
        self.0.shutdown();
    }
}

/// Replaces every plugin `configuration`, `vm_configuration` and `env` (top-level plugin
/// definitions, and per-listener and per-route overrides) with its sha256: they carry API
/// keys, HMAC secrets and tokens.
pub(crate) fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "plugins"
                    && let Value::Array(items) = child
                {
                    for item in items.iter_mut() {
                        if let Value::Object(p) = item {
                            for key in ["configuration", "vm_configuration", "env"] {
                                if let Some(secret) = p.get_mut(key)
                                    && !secret.is_null()
                                {
                                    let text = secret.to_string();
                                    *secret = json!({
                                        "redacted": true,
                                        "sha256": weft_extensions::sha256_hex(text.as_bytes()),
                                    });
                                }
                            }
                        }
                    }
                }
                redact(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_configurations_are_replaced_by_their_digest() {
        let mut v = json!({
            "plugins": [{ "name": "authz", "configuration": { "api_keys": ["s3cret"] }, "env": {"TOKEN": "t"} }],
            "listeners": [{ "plugins": [{ "name": "authz", "configuration": { "k": "hmac" } }],
                            "virtual_hosts": [{ "routes": [{ "plugins": [{ "name": "a", "configuration": null }] }] }] }],
        });
        redact(&mut v);
        let text = v.to_string();
        assert!(
            !text.contains("s3cret") && !text.contains("hmac") && !text.contains("\"t\""),
            "{text}"
        );
        assert_eq!(v["plugins"][0]["configuration"]["redacted"], true);
        assert_eq!(
            v["plugins"][0]["configuration"]["sha256"],
            weft_extensions::sha256_hex(json!({ "api_keys": ["s3cret"] }).to_string().as_bytes())
        );
        assert_eq!(
            v["listeners"][0]["plugins"][0]["configuration"]["redacted"],
            true
        );
        assert!(
            v["listeners"][0]["virtual_hosts"][0]["routes"][0]["plugins"][0]["configuration"]
                .is_null()
        );
        assert_eq!(v["plugins"][0]["name"], "authz");
    }
}
