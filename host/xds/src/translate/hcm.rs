//! The HTTP connection manager's connection-level settings, as istiod renders them for a
//! sidecar: timeouts, `x-forwarded-for` and path handling, the `server` header, client
//! certificate forwarding, upgrades, the request ID extension, tracing and access logs. Each
//! field is moved out of `hcm` when mapped, so what remains is checked by the caller.

use envoy_types::pb::envoy::config::accesslog::v3::access_log;
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
use envoy_types::pb::envoy::config::core::v3::{SubstitutionFormatString, data_source};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log::AccessLogFormat,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager as m,
};
use prost::Message;
use weft_config::observe::ListenerAccessLog;
use weft_config::schema::ForwardClientCertDetails;
use weft_config::schema::{Listener, ServerHeaderTransformation};

use super::duration;
use crate::fields::reject_rest;

const UUID_REQUEST_ID: &str =
    "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig";
const FILE_ACCESS_LOG: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";

/// Maps the connection-level fields of `hcm` (at `hpath`) onto `out`.
pub(crate) fn settings(
    hpath: &str,
    hcm: &mut HttpConnectionManager,
    out: &mut Listener,
) -> Result<(), String> {
    if let Some(t) = hcm.stream_idle_timeout.take() {
        out.http.stream_idle_timeout = duration(&format!("{hpath}.stream_idle_timeout"), &t)?;
    }
    if let Some(t) = hcm.request_timeout.take() {
        out.http.request_timeout = duration(&format!("{hpath}.request_timeout"), &t)?;
    }
    // Envoy's defaults where the field is unset: no `x-forwarded-for` append, no path
    // normalization, the `server` header overwritten with `envoy`.
    out.http.use_remote_address = hcm.use_remote_address.take().is_some_and(|b| b.value);
    out.http.normalize_path = hcm.normalize_path.take().is_some_and(|b| b.value);
    out.http.merge_slashes = std::mem::take(&mut hcm.merge_slashes);
    match m::PathWithEscapedSlashesAction::try_from(hcm.path_with_escaped_slashes_action) {
        Ok(
            m::PathWithEscapedSlashesAction::ImplementationSpecificDefault
            | m::PathWithEscapedSlashesAction::KeepUnchanged,
        ) => hcm.path_with_escaped_slashes_action = 0,
        _ => {
            return Err(format!(
                "{hpath}.path_with_escaped_slashes_action: only KEEP_UNCHANGED is implemented"
            ));
        }
    }
    out.http.server_header_transformation =
        match m::ServerHeaderTransformation::try_from(hcm.server_header_transformation) {
            Ok(m::ServerHeaderTransformation::Overwrite) => ServerHeaderTransformation::Overwrite,
            Ok(m::ServerHeaderTransformation::AppendIfAbsent) => {
                ServerHeaderTransformation::AppendIfAbsent
            }
            Ok(m::ServerHeaderTransformation::PassThrough) => {
                ServerHeaderTransformation::PassThrough
            }
            Err(_) => {
                return Err(format!(
                    "{hpath}.server_header_transformation: unknown value {}",
                    hcm.server_header_transformation
                ));
            }
        };
    hcm.server_header_transformation = 0;
    let server_name = std::mem::take(&mut hcm.server_name);
    if !server_name.is_empty() {
        out.http.server_name = server_name;
    }
    out.forward_client_cert_details =
        match m::ForwardClientCertDetails::try_from(hcm.forward_client_cert_details) {
            Ok(m::ForwardClientCertDetails::Sanitize) => ForwardClientCertDetails::Sanitize,
            Ok(m::ForwardClientCertDetails::ForwardOnly) => ForwardClientCertDetails::ForwardOnly,
            Ok(m::ForwardClientCertDetails::AppendForward) => {
                ForwardClientCertDetails::AppendForward
            }
            Ok(m::ForwardClientCertDetails::SanitizeSet) => ForwardClientCertDetails::SanitizeSet,
            Ok(m::ForwardClientCertDetails::AlwaysForwardOnly) => {
                ForwardClientCertDetails::AlwaysForwardOnly
            }
            Err(_) => {
                return Err(format!(
                    "{hpath}.forward_client_cert_details: unknown value {}",
                    hcm.forward_client_cert_details
                ));
            }
        };
    hcm.forward_client_cert_details = 0;
    if let Some(d) = hcm.set_current_client_cert_details.take() {
        // Weft's element always carries By, Hash, Subject and URI (SPIFFE certificates have
        // no DNS SANs); the PEM certificate or chain is not implemented.
        if d.cert || d.chain {
            return Err(format!(
                "{hpath}.set_current_client_cert_details: cert and chain are unimplemented"
            ));
        }
    }
    for (i, u) in std::mem::take(&mut hcm.upgrade_configs)
        .into_iter()
        .enumerate()
    {
        let upath = format!("{hpath}.upgrade_configs[{i}]");
        if !u.upgrade_type.eq_ignore_ascii_case("websocket") {
            return Err(format!(
                "{upath}.upgrade_type: `{}` is unimplemented (websocket is)",
                u.upgrade_type
            ));
        }
        if u.enabled.is_some_and(|b| !b.value) || !u.filters.is_empty() {
            return Err(format!(
                "{upath}: a disabled websocket upgrade or upgrade filters are unimplemented"
            ));
        }
    }
    if let Some(ext) = hcm.request_id_extension.take() {
        let type_url = ext.typed_config.as_ref().map(|a| a.type_url.as_str());
        if type_url.is_some_and(|t| t != UUID_REQUEST_ID) {
            return Err(format!(
                "{hpath}.request_id_extension: `{}` is unimplemented (the UUID extension is)",
                type_url.unwrap_or_default()
            ));
        }
    }
    // Spans follow the bootstrap's `tracing` section (collector, sampling); the HCM's
    // sampling percentages, custom tags and provider are not read (docs/xds.md).
    hcm.tracing = None;
    let logs = std::mem::take(&mut hcm.access_log);
    if logs.len() > 1 {
        return Err(format!(
            "{hpath}.access_log: more than one access log is unimplemented"
        ));
    }
    if let Some(log) = logs.into_iter().next() {
        out.access_log = Some(access_log(&format!("{hpath}.access_log[0]"), log)?);
    }
    Ok(())
}

/// One file access log → the listener's access-log format (the lines go where the bootstrap's
/// `access_log.path` says).
fn access_log(
    path: &str,
    log: envoy_types::pb::envoy::config::accesslog::v3::AccessLog,
) -> Result<ListenerAccessLog, String> {
    if log.filter.is_some() {
        return Err(format!("{path}.filter: unimplemented"));
    }
    let Some(access_log::ConfigType::TypedConfig(any)) = log.config_type else {
        return Err(format!("{path}.typed_config: required"));
    };
    if any.type_url != FILE_ACCESS_LOG {
        return Err(format!(
            "{path}.typed_config: `{}` is unimplemented (FileAccessLog is)",
            any.type_url
        ));
    }
    let file = FileAccessLog::decode(any.value.as_slice()).map_err(|e| format!("{path}: {e}"))?;
    let mut out = ListenerAccessLog::default();
    #[expect(
        deprecated,
        reason = "older control planes still send the deprecated forms"
    )]
    match file.access_log_format {
        // Envoy's default line.
        None => out.format = Some(weft_config::observe::LogPreset::Envoy),
        Some(AccessLogFormat::Format(f)) => out.text_format = Some(f),
        Some(AccessLogFormat::JsonFormat(s)) => {
            out.json_format = Some(json_fields(&s));
        }
        Some(AccessLogFormat::LogFormat(f)) => {
            format_string(&format!("{path}.log_format"), f, &mut out)?;
        }
        Some(AccessLogFormat::TypedJsonFormat(_)) => {
            return Err(format!("{path}.typed_json_format: unimplemented"));
        }
    }
    Ok(out)
}

fn format_string(
    path: &str,
    f: SubstitutionFormatString,
    out: &mut ListenerAccessLog,
) -> Result<(), String> {
    let mut rest = f;
    #[expect(deprecated, reason = "older control planes still send text_format")]
    match rest.format.take() {
        Some(Format::TextFormat(t)) => out.text_format = Some(t),
        Some(Format::TextFormatSource(d)) => match d.specifier {
            Some(data_source::Specifier::InlineString(t)) => out.text_format = Some(t),
            _ => {
                return Err(format!(
                    "{path}.text_format_source: only inline_string is implemented"
                ));
            }
        },
        Some(Format::JsonFormat(s)) => out.json_format = Some(json_fields(&s)),
        None => out.format = Some(weft_config::observe::LogPreset::Envoy),
    }
    reject_rest(path, &rest)
}

fn json_fields(
    s: &envoy_types::pb::google::protobuf::Struct,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    match super::wasm::struct_json(s) {
        serde_json::Value::Object(m) => m.into_iter().collect(),
        _ => std::collections::BTreeMap::new(),
    }
}
