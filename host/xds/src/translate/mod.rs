//! Envoy resources translated into Weft's configuration model (`weft-config` schema types).
//!
//! Each translator takes the decoded resource and returns Weft's form, or an error naming the
//! resource and the field: every field a translator does not map is checked to be unset
//! ([`crate::fields`]), so a resource that asks for something Weft does not do is NACKed
//! instead of being served differently from what the control plane meant. The fields read
//! and the fields ignored (those that change no behaviour Weft has) are listed in docs/xds.md.

pub(crate) mod capture;
pub(crate) mod cluster;
pub(crate) mod endpoint;
pub(crate) mod hcm;
pub(crate) mod lds;
pub(crate) mod listener;
pub(crate) mod native;
pub(crate) mod route;
pub(crate) mod secret;
pub(crate) mod tls;
pub(crate) mod wasm;

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::ConfigSource;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::google::protobuf;

/// A protobuf duration as a std one (negative → error).
pub(crate) fn duration(path: &str, d: &protobuf::Duration) -> Result<Duration, String> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(format!("{path}: negative duration"));
    }
    Ok(Duration::from_secs(d.seconds as u64) + Duration::from_nanos(d.nanos as u64))
}

/// Only ADS config sources (`ads: {}`), or none (meaning the same), are followed.
pub(crate) fn ads_only(path: &str, source: Option<&ConfigSource>) -> Result<(), String> {
    match source.and_then(|s| s.config_source_specifier.as_ref()) {
        None | Some(ConfigSourceSpecifier::Ads(_)) => Ok(()),
        Some(ConfigSourceSpecifier::ApiConfigSource(_)) => Err(format!(
            "{path}: only `ads` config sources are implemented (got api_config_source)"
        )),
        Some(_) => Err(format!(
            "{path}: only `ads` config sources are implemented (got a file path or `self`)"
        )),
    }
}

/// An Envoy socket address as `ip:port` (or `name:port` when `allow_names`).
pub(crate) fn socket_address(
    path: &str,
    a: Option<&envoy_types::pb::envoy::config::core::v3::Address>,
) -> Result<(String, u16), String> {
    use envoy_types::pb::envoy::config::core::v3::address::Address as A;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    let Some(A::SocketAddress(sa)) = a.and_then(|a| a.address.as_ref()) else {
        return Err(format!(
            "{path}: a socket_address is required (pipes and internal addresses are unimplemented)"
        ));
    };
    if sa.protocol != 0 {
        return Err(format!("{path}.protocol: only TCP is implemented"));
    }
    let port = match sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) => {
            u16::try_from(p).map_err(|_| format!("{path}.port_value: {p} is not a port"))?
        }
        Some(PortSpecifier::NamedPort(_)) => {
            return Err(format!("{path}.named_port: unimplemented"));
        }
        None => return Err(format!("{path}.port_value: required")),
    };
    Ok((sa.address.clone(), port))
}
