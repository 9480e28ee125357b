//! `envoy.filters.http.wasm` (an HTTP filter of the HTTP connection manager) and
//! `envoy.filters.network.wasm` (a network filter before the TCP proxy) → a Weft plugin
//! ([`weft_config::schema::Plugin`]) and its attachment to the listener.
//!
//! The code comes from a local file (`vm_config.code.local.filename`) or from an HTTP server
//! (`vm_config.code.remote`, fetched through the cluster `http_uri.cluster` names and checked
//! against `sha256` by the client before the update is published: [`crate::remote`]).

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{async_data_source, data_source, http_uri};
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::wasm::v3::{FailurePolicy as XFailure, plugin_config};
use envoy_types::pb::google::protobuf::{self, Any};
use prost::Message;
use serde_json::Value;
use weft_config::schema::{FailurePolicy, Plugin};

use super::duration;
use crate::fields::reject_rest;

/// The type URL of the HTTP Wasm filter's configuration.
pub(crate) const HTTP_WASM: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// The type URL of the network Wasm filter's configuration.
pub(crate) const NETWORK_WASM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm";

/// The file name prefix of a plugin whose code is still to be fetched: `xds-remote:<sha256>`.
pub(crate) const REMOTE_PREFIX: &str = "xds-remote:";

/// Code to fetch over HTTP before a plugin can load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Remote {
    /// `http://host[:port]/path`.
    pub uri: String,
    /// The cluster to fetch it through.
    pub cluster: String,
    /// Expected SHA-256 of the body, lowercase hex.
    pub sha256: String,
    /// Fetch timeout (Envoy's `http_uri.timeout`).
    pub timeout: Duration,
    /// Where it was configured (for error messages).
    pub path: String,
}

/// A translated Wasm filter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WasmPlugin {
    /// The plugin definition (`file` is `xds-remote:<sha256>` while the code is remote).
    pub plugin: Plugin,
    /// The code to fetch, if remote.
    pub remote: Option<Remote>,
}

/// Translates the HTTP Wasm filter `filter_name` at `path`.
pub(crate) fn http_wasm(path: &str, filter_name: &str, any: &Any) -> Result<WasmPlugin, String> {
    let wasm =
        Wasm::decode(any.value.as_slice()).map_err(|e| format!("{path}.typed_config: {e}"))?;
    let path = format!("{path}.typed_config");
    let mut rest = wasm;
    let Some(config) = rest.config.take() else {
        return Err(format!("{path}.config: required"));
    };
    reject_rest(&path, &rest)?;
    plugin_config(&format!("{path}.config"), filter_name, config)
}

/// Translates the network Wasm filter `filter_name` at `path` (its plugin runs on each
/// connection of a TCP proxy listener: `proxy_on_new_connection`, `_downstream_data`, …).
pub(crate) fn network_wasm(path: &str, filter_name: &str, any: &Any) -> Result<WasmPlugin, String> {
    use envoy_types::pb::envoy::extensions::filters::network::wasm::v3::Wasm as NetworkWasm;
    let wasm = NetworkWasm::decode(any.value.as_slice())
        .map_err(|e| format!("{path}.typed_config: {e}"))?;
    let path = format!("{path}.typed_config");
    let mut rest = wasm;
    let Some(config) = rest.config.take() else {
        return Err(format!("{path}.config: required"));
    };
    reject_rest(&path, &rest)?;
    plugin_config(&format!("{path}.config"), filter_name, config)
}

/// A filter's `PluginConfig` (the same message in the HTTP and the network filter) at `cpath`.
fn plugin_config(
    cpath: &str,
    filter_name: &str,
    config: envoy_types::pb::envoy::extensions::wasm::v3::PluginConfig,
) -> Result<WasmPlugin, String> {
    let mut config = config;
    let name = if config.name.is_empty() {
        filter_name.to_owned()
    } else {
        std::mem::take(&mut config.name)
    };
    if name.is_empty() {
        return Err(format!("{cpath}.name: required (or a filter name)"));
    }
    let root_id = std::mem::take(&mut config.root_id);
    let plugin_configuration = config
        .configuration
        .take()
        .map(|a| configuration(&format!("{cpath}.configuration"), &a))
        .transpose()?;
    // `fail_open` is deprecated in favour of `failure_policy`, but istiod still renders it.
    #[expect(deprecated, reason = "istiod renders fail_open")]
    let fail_open = std::mem::take(&mut config.fail_open);
    let failure_policy = match XFailure::try_from(config.failure_policy) {
        Ok(XFailure::Unspecified) if fail_open => FailurePolicy::FailOpen,
        Ok(XFailure::Unspecified | XFailure::FailClosed) => FailurePolicy::FailClosed,
        Ok(XFailure::FailOpen) => FailurePolicy::FailOpen,
        Ok(XFailure::FailReload) => FailurePolicy::Reload,
        Err(_) => {
            return Err(format!(
                "{cpath}.failure_policy: unknown value {}",
                config.failure_policy
            ));
        }
    };
    config.failure_policy = 0;
    if config
        .allow_on_headers_stop_iteration
        .as_ref()
        .is_some_and(|b| !b.value)
    {
        config.allow_on_headers_stop_iteration = None;
    }
    let Some(plugin_config::Vm::VmConfig(mut vm)) = config.vm.take() else {
        return Err(format!("{cpath}.vm_config: required"));
    };
    reject_rest(cpath, &config)?;
    let vpath = format!("{cpath}.vm_config");
    let vm_id = std::mem::take(&mut vm.vm_id);
    match vm.runtime.as_str() {
        ""
        | "envoy.wasm.runtime.v8"
        | "envoy.wasm.runtime.wasmtime"
        | "envoy.wasm.runtime.wamr"
        | "envoy.wasm.runtime.wavm" => vm.runtime.clear(),
        other => {
            return Err(format!(
                "{vpath}.runtime: `{other}` is unimplemented (Weft runs .wasm modules on \
                 wasmtime; native `null` VM plugins are not available)"
            ));
        }
    }
    let vm_configuration = vm
        .configuration
        .take()
        .map(|a| configuration(&format!("{vpath}.configuration"), &a))
        .transpose()?;
    // Accepted: precompiled code is never used; a code cache miss never happens (the code is
    // fetched before the update is ACKed).
    vm.allow_precompiled = false;
    vm.nack_on_code_cache_miss = false;
    let mut env = BTreeMap::new();
    if let Some(vars) = vm.environment_variables.take() {
        for key in vars.host_env_keys {
            if let Ok(value) = std::env::var(&key) {
                env.insert(key, value);
            }
        }
        env.extend(vars.key_values);
    }
    let (file, remote) = code(&format!("{vpath}.code"), vm.code.take())?;
    reject_rest(&vpath, &vm)?;
    let mut plugin: Plugin = serde_json::from_value(serde_json::json!({
        "name": name,
        "file": file,
    }))
    .map_err(|e| format!("{cpath}: {e}"))?;
    plugin.root_id = root_id;
    plugin.vm_id = (!vm_id.is_empty()).then_some(vm_id);
    plugin.configuration = plugin_configuration;
    plugin.vm_configuration = vm_configuration;
    plugin.env = env;
    plugin.failure_policy = failure_policy;
    Ok(WasmPlugin { plugin, remote })
}

/// The code's file, or what to fetch.
fn code(
    path: &str,
    code: Option<envoy_types::pb::envoy::config::core::v3::AsyncDataSource>,
) -> Result<(String, Option<Remote>), String> {
    match code.and_then(|c| c.specifier) {
        None => Err(format!("{path}: required")),
        Some(async_data_source::Specifier::Local(local)) => match local.specifier {
            Some(data_source::Specifier::Filename(f)) if !f.is_empty() => {
                if !std::path::Path::new(&f).is_absolute() {
                    return Err(format!("{path}.local.filename: `{f}` must be absolute"));
                }
                Ok((f, None))
            }
            Some(data_source::Specifier::Filename(_)) | None => {
                Err(format!("{path}.local.filename: required"))
            }
            Some(_) => Err(format!(
                "{path}.local: only `filename` is implemented (inline bytes, inline strings \
                 and environment variables are not)"
            )),
        },
        Some(async_data_source::Specifier::Remote(r)) => {
            let rpath = format!("{path}.remote");
            let mut rest = r;
            let Some(mut uri) = rest.http_uri.take() else {
                return Err(format!("{rpath}.http_uri: required"));
            };
            let sha256 = std::mem::take(&mut rest.sha256).to_ascii_lowercase();
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{rpath}.sha256: 64 hex digits required"));
            }
            // Envoy retries a failed fetch; Weft fetches once per update (a failure NACKs it,
            // and the control plane's next push or the reconnection tries again).
            rest.retry_policy = None;
            reject_rest(&rpath, &rest)?;
            let upath = format!("{rpath}.http_uri");
            let cluster = match uri.http_upstream_type.take() {
                Some(http_uri::HttpUpstreamType::Cluster(c)) if !c.is_empty() => c,
                _ => return Err(format!("{upath}.cluster: required")),
            };
            let timeout = match uri.timeout.take() {
                Some(d) => duration(&format!("{upath}.timeout"), &d)?,
                None => Duration::from_secs(1),
            };
            let target = std::mem::take(&mut uri.uri);
            if !target.starts_with("http://") {
                return Err(format!(
                    "{upath}.uri: `{target}`: only http:// is implemented (https and oci are not)"
                ));
            }
            reject_rest(&upath, &uri)?;
            Ok((
                format!("{REMOTE_PREFIX}{sha256}"),
                Some(Remote {
                    uri: target,
                    cluster,
                    sha256,
                    timeout,
                    path: rpath,
                }),
            ))
        }
    }
}

/// A plugin or VM configuration: `StringValue` (and UTF-8 `BytesValue`) as a string, as Envoy
/// passes it; a `Struct` as its JSON (Envoy passes a `Struct`'s serialized protobuf bytes).
fn configuration(path: &str, any: &Any) -> Result<Value, String> {
    let short = any.type_url.rsplit('/').next().unwrap_or_default();
    match short {
        "google.protobuf.StringValue" => protobuf::StringValue::decode(any.value.as_slice())
            .map(|v| Value::String(v.value))
            .map_err(|e| format!("{path}: {e}")),
        "google.protobuf.BytesValue" => {
            let v = protobuf::BytesValue::decode(any.value.as_slice())
                .map_err(|e| format!("{path}: {e}"))?;
            String::from_utf8(v.value)
                .map(Value::String)
                .map_err(|_| format!("{path}: a BytesValue that is not UTF-8 is unimplemented"))
        }
        "google.protobuf.Struct" => protobuf::Struct::decode(any.value.as_slice())
            .map(|s| struct_json(&s))
            .map_err(|e| format!("{path}: {e}")),
        other => Err(format!(
            "{path}: `{other}` is unimplemented (StringValue, BytesValue or Struct)"
        )),
    }
}

pub(crate) fn struct_json(s: &protobuf::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &protobuf::Value) -> Value {
    use protobuf::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        // Whole numbers as integers (`3`, not `3.0`), as protobuf's JSON mapping prints them.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
            Value::from(*n as i64)
        }
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_json).collect()),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::extensions::wasm::v3 as w;
    use prost::Name;

    use super::*;

    fn filter(vm: w::VmConfig, configuration: Option<Any>) -> Any {
        let wasm = Wasm {
            config: Some(w::PluginConfig {
                name: "p".into(),
                configuration,
                vm: Some(w::plugin_config::Vm::VmConfig(vm)),
                ..Default::default()
            }),
        };
        Any {
            type_url: HTTP_WASM.into(),
            value: wasm.encode_to_vec(),
        }
    }

    fn local(file: &str) -> Option<core::AsyncDataSource> {
        Some(core::AsyncDataSource {
            specifier: Some(async_data_source::Specifier::Local(core::DataSource {
                specifier: Some(data_source::Specifier::Filename(file.into())),
                ..Default::default()
            })),
        })
    }

    #[test]
    fn maps_the_plugin_and_refuses_what_weft_cannot_do_by_name() {
        let vm = w::VmConfig {
            vm_id: "shared".into(),
            runtime: "envoy.wasm.runtime.v8".into(),
            code: local("/p.wasm"),
            ..Default::default()
        };
        let config = protobuf::Struct {
            fields: [(
                "n".to_owned(),
                protobuf::Value {
                    kind: Some(protobuf::value::Kind::NumberValue(3.0)),
                },
            )]
            .into(),
        };
        let any = Any {
            type_url: protobuf::Struct::type_url(),
            value: config.encode_to_vec(),
        };
        let p = http_wasm("f", "filter", &filter(vm.clone(), Some(any)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.plugin.name, "p");
        assert_eq!(p.plugin.file, "/p.wasm");
        assert_eq!(p.plugin.vm_id.as_deref(), Some("shared"));
        assert_eq!(p.plugin.configuration, Some(serde_json::json!({"n": 3})));
        assert_eq!(p.plugin.failure_policy, FailurePolicy::FailClosed);
        assert!(p.remote.is_none());

        let mut null = vm.clone();
        null.runtime = "envoy.wasm.runtime.null".into();
        let err = http_wasm("f", "x", &filter(null, None)).unwrap_err();
        assert!(err.starts_with("f.typed_config.config.vm_config.runtime: `envoy.wasm.runtime.null` is unimplemented"), "{err}");

        let mut relative = vm.clone();
        relative.code = local("p.wasm");
        let err = http_wasm("f", "x", &filter(relative, None)).unwrap_err();
        assert!(
            err.contains("code.local.filename: `p.wasm` must be absolute"),
            "{err}"
        );

        let mut restricted = vm.clone();
        restricted.capability_restriction_config = Some(w::CapabilityRestrictionConfig::default());
        let err = http_wasm("f", "x", &filter(restricted, None)).unwrap_err();
        assert!(
            err.starts_with(
                "f.typed_config.config.vm_config.capability_restriction_config: unimplemented"
            ),
            "{err}"
        );

        let mut remote = vm;
        remote.code = Some(core::AsyncDataSource {
            specifier: Some(async_data_source::Specifier::Remote(
                core::RemoteDataSource {
                    http_uri: Some(core::HttpUri {
                        uri: "https://h/p.wasm".into(),
                        http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster("c".into())),
                        ..Default::default()
                    }),
                    sha256: "ab".repeat(32),
                    ..Default::default()
                },
            )),
        });
        let err = http_wasm("f", "x", &filter(remote, None)).unwrap_err();
        assert!(
            err.contains("http_uri.uri: `https://h/p.wasm`: only http:// is implemented"),
            "{err}"
        );
    }
}
