//! `envoy.transport_sockets.tls` on a cluster (`UpstreamTlsContext`) → the cluster's `tls`, and
//! on a listener's filter chain (`DownstreamTlsContext`) → the listener's `tls`: mTLS with
//! certificate files and SPIFFE validation.
//!
//! Weft's upstream TLS always presents a client certificate and verifies the upstream's SPIFFE
//! ID (URI SAN) against a trust domain; an Envoy context that asks for something else (no
//! client certificate, DNS SAN matching, secrets by SDS) is NACKed naming the field.

use envoy_types::pb::envoy::config::core::v3::{DataSource, TransportSocket, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, DownstreamTlsContext, UpstreamTlsContext, common_tls_context,
    subject_alt_name_matcher::SanType, tls_parameters::TlsProtocol,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use prost::Message;
use weft_config::schema::{ClusterTls, ListenerTls, TlsMode, TlsVersion};

use crate::fields::reject_rest;

const UPSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const DOWNSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const RAW_BUFFER: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

fn file(path: &str, d: Option<DataSource>) -> Result<String, String> {
    match d.and_then(|d| d.specifier) {
        Some(data_source::Specifier::Filename(f)) if !f.is_empty() => Ok(f),
        None => Err(format!("{path}: required")),
        Some(_) => Err(format!(
            "{path}: only `filename` is implemented (inline data and environment variables are not)"
        )),
    }
}

/// A cluster's `transport_socket`: `None` for plaintext (`raw_buffer`), or its TLS.
/// A TLS context and the SDS secrets it refers to.
pub(crate) type WithSecrets<T> = Option<(T, Vec<String>)>;

pub(crate) fn upstream(
    path: &str,
    socket: TransportSocket,
) -> Result<WithSecrets<ClusterTls>, String> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    let any = match socket.config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        None if socket.name == "envoy.transport_sockets.raw_buffer" => return Ok(None),
        None => return Err(format!("{path}.typed_config: required")),
    };
    if any.type_url == RAW_BUFFER {
        return Ok(None);
    }
    if any.type_url != UPSTREAM_TLS {
        return Err(format!(
            "{path}.typed_config: `{}` is unimplemented (UpstreamTlsContext, RawBuffer)",
            any.type_url
        ));
    }
    let ctx = UpstreamTlsContext::decode(any.value.as_slice())
        .map_err(|e| format!("{path}.typed_config: {e}"))?;
    let path = format!("{path}.typed_config");
    let mut rest = ctx;
    let sni = std::mem::take(&mut rest.sni);
    let common = rest.common_tls_context.take().unwrap_or_default();
    reject_rest(&path, &rest)?;
    let c = common_context(&format!("{path}.common_tls_context"), common)?;
    Ok(Some((
        ClusterTls {
            sni: (!sni.is_empty()).then_some(sni),
            cert_file: c.cert_file,
            key_file: c.key_file,
            trust_bundle_file: c.trust_bundle_file,
            trust_domain: c.trust_domain,
            match_identities: c.match_identities,
            alpn: c.alpn,
            min_version: c.min_version,
            endpoint_match: None,
        },
        c.secrets,
    )))
}

/// A filter chain's `transport_socket`: `None` for plaintext, or the listener's TLS (mTLS:
/// clients must present a certificate chaining to the trusted CA, in the trust domain).
pub(crate) fn downstream(
    path: &str,
    socket: TransportSocket,
) -> Result<WithSecrets<ListenerTls>, String> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    let any = match socket.config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        None if socket.name == "envoy.transport_sockets.raw_buffer" => return Ok(None),
        None => return Err(format!("{path}.typed_config: required")),
    };
    if any.type_url == RAW_BUFFER {
        return Ok(None);
    }
    if any.type_url != DOWNSTREAM_TLS {
        return Err(format!(
            "{path}.typed_config: `{}` is unimplemented (DownstreamTlsContext, RawBuffer)",
            any.type_url
        ));
    }
    let ctx = DownstreamTlsContext::decode(any.value.as_slice())
        .map_err(|e| format!("{path}.typed_config: {e}"))?;
    let path = format!("{path}.typed_config");
    let mut rest = ctx;
    if !rest
        .require_client_certificate
        .take()
        .is_some_and(|b| b.value)
    {
        return Err(format!(
            "{path}.require_client_certificate: must be true (Weft's listener TLS is mTLS; TLS \
             without client certificates is unimplemented)"
        ));
    }
    let common = rest.common_tls_context.take().unwrap_or_default();
    reject_rest(&path, &rest)?;
    let cpath = format!("{path}.common_tls_context");
    let c = common_context(&cpath, common)?;
    if !c.match_identities.is_empty() {
        return Err(format!(
            "{cpath}.validation_context.match_typed_subject_alt_names: unimplemented on a \
             listener (Envoy fails the handshake; Weft authorizes peers per request: use an \
             AuthorizationPolicy-style `tls.authorization` in the file)"
        ));
    }
    let mut tls: ListenerTls = serde_json::from_value(serde_json::json!({
        "cert_file": c.cert_file,
        "key_file": c.key_file,
        "trust_bundle_file": c.trust_bundle_file,
    }))
    .map_err(|e| format!("{path}: {e}"))?;
    tls.mode = TlsMode::Strict;
    if !c.alpn.is_empty() {
        tls.alpn = c.alpn;
    }
    tls.min_version = c.min_version;
    Ok(Some((tls, c.secrets)))
}

/// What Weft takes of a `CommonTlsContext`.
struct Common {
    cert_file: String,
    key_file: String,
    trust_bundle_file: String,
    trust_domain: Option<String>,
    match_identities: Vec<String>,
    alpn: Vec<String>,
    min_version: TlsVersion,
    /// SDS secrets it refers to.
    secrets: Vec<String>,
}

/// The path prefix of a file that is an SDS secret's: `xds-sds:<name>/{cert,key,bundle}.pem`
/// (the client writes the secret there and points the path at it).
pub(crate) const SDS_PREFIX: &str = "xds-sds:";

/// An SDS secret's name; only ADS (or no config source, meaning the same) is followed.
fn sds_name(
    path: &str,
    c: envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig,
) -> Result<String, String> {
    super::ads_only(&format!("{path}.sds_config"), c.sds_config.as_ref())?;
    if c.name.is_empty() || c.name.contains('/') || c.name == "." || c.name == ".." {
        return Err(format!(
            "{path}.name: `{}` is not a usable secret name",
            c.name
        ));
    }
    Ok(c.name)
}

fn common_context(
    cpath: &str,
    common: envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CommonTlsContext,
) -> Result<Common, String> {
    let cpath = cpath.to_owned();
    let mut common = common;
    let alpn = std::mem::take(&mut common.alpn_protocols);
    let mut min_version = TlsVersion::Tls12;
    if let Some(params) = common.tls_params.take() {
        let ppath = format!("{cpath}.tls_params");
        let mut p = params;
        min_version = match TlsProtocol::try_from(p.tls_minimum_protocol_version) {
            Ok(TlsProtocol::TlsAuto | TlsProtocol::TlSv12) => TlsVersion::Tls12,
            Ok(TlsProtocol::TlSv13) => TlsVersion::Tls13,
            _ => {
                return Err(format!(
                    "{ppath}.tls_minimum_protocol_version: only TLSv1_2 and TLSv1_3 are implemented"
                ));
            }
        };
        p.tls_minimum_protocol_version = 0;
        if matches!(
            TlsProtocol::try_from(p.tls_maximum_protocol_version),
            Ok(TlsProtocol::TlsAuto | TlsProtocol::TlSv13)
        ) {
            p.tls_maximum_protocol_version = 0;
        }
        reject_rest(&ppath, &p)?;
    }
    let mut secrets = Vec::new();
    let sds_certs = std::mem::take(&mut common.tls_certificate_sds_secret_configs);
    let certs = std::mem::take(&mut common.tls_certificates);
    let (cert_file, key_file) = if sds_certs.is_empty() {
        let [cert] = <[_; 1]>::try_from(certs).map_err(|c: Vec<_>| {
            format!(
                "{cpath}.tls_certificates: exactly one certificate is required (Weft's TLS is mTLS; got {})",
                c.len()
            )
        })?;
        let tpath = format!("{cpath}.tls_certificates[0]");
        let mut cert = cert;
        let cert_file = file(
            &format!("{tpath}.certificate_chain"),
            cert.certificate_chain.take(),
        )?;
        let key_file = file(&format!("{tpath}.private_key"), cert.private_key.take())?;
        reject_rest(&tpath, &cert)?;
        (cert_file, key_file)
    } else {
        if !certs.is_empty() {
            return Err(format!(
                "{cpath}.tls_certificates: not with tls_certificate_sds_secret_configs"
            ));
        }
        let [sds] = <[_; 1]>::try_from(sds_certs).map_err(|c: Vec<_>| {
            format!(
                "{cpath}.tls_certificate_sds_secret_configs: exactly one is implemented (got {})",
                c.len()
            )
        })?;
        let name = sds_name(
            &format!("{cpath}.tls_certificate_sds_secret_configs[0]"),
            sds,
        )?;
        secrets.push(name.clone());
        (
            format!("{SDS_PREFIX}{name}/cert.pem"),
            format!("{SDS_PREFIX}{name}/key.pem"),
        )
    };
    let (validation, sds_bundle) = match common.validation_context_type.take() {
        Some(common_tls_context::ValidationContextType::ValidationContext(v)) => (v, None),
        Some(common_tls_context::ValidationContextType::CombinedValidationContext(c)) => {
            #[expect(
                deprecated,
                reason = "a deprecated field that changes behaviour is refused"
            )]
            let provider = c.validation_context_certificate_provider.is_some()
                || c.validation_context_certificate_provider_instance.is_some();
            if provider {
                return Err(format!(
                    "{cpath}.combined_validation_context.validation_context_certificate_provider: unimplemented"
                ));
            }
            let sds = c
                .validation_context_sds_secret_config
                .map(|s| {
                    sds_name(
                        &format!("{cpath}.combined_validation_context.validation_context_sds_secret_config"),
                        s,
                    )
                })
                .transpose()?;
            (c.default_validation_context.unwrap_or_default(), sds)
        }
        Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            let name = sds_name(&format!("{cpath}.validation_context_sds_secret_config"), s)?;
            (CertificateValidationContext::default(), Some(name))
        }
        Some(_) => {
            return Err(format!(
                "{cpath}.validation_context_certificate_provider: unimplemented"
            ));
        }
        None => {
            return Err(format!(
                "{cpath}.validation_context: required (Weft always verifies the peer)"
            ));
        }
    };
    let mut validation = validation;
    if let Some(name) = &sds_bundle {
        if validation.trusted_ca.is_some() {
            return Err(format!(
                "{cpath}.combined_validation_context.default_validation_context.trusted_ca: not with an SDS validation context"
            ));
        }
        secrets.push(name.clone());
        validation.trusted_ca = Some(DataSource {
            specifier: Some(data_source::Specifier::Filename(format!(
                "{SDS_PREFIX}{name}/bundle.pem"
            ))),
            ..Default::default()
        });
    }
    reject_rest(&cpath, &common)?;
    let (trust_bundle_file, trust_domain, match_identities) =
        validation_context(&format!("{cpath}.validation_context"), validation)?;
    Ok(Common {
        cert_file,
        key_file,
        trust_bundle_file,
        trust_domain,
        match_identities,
        alpn,
        min_version,
        secrets,
    })
}

/// The trust bundle, the trust domain and the SPIFFE IDs (patterns) of a validation context.
fn validation_context(
    path: &str,
    v: CertificateValidationContext,
) -> Result<(String, Option<String>, Vec<String>), String> {
    let mut rest = v;
    let bundle = file(&format!("{path}.trusted_ca"), rest.trusted_ca.take())?;
    let mut identities = Vec::new();
    let mut domains = std::collections::BTreeSet::new();
    for (i, m) in std::mem::take(&mut rest.match_typed_subject_alt_names)
        .into_iter()
        .enumerate()
    {
        let mpath = format!("{path}.match_typed_subject_alt_names[{i}]");
        if m.san_type != SanType::Uri as i32 {
            return Err(format!(
                "{mpath}.san_type: only URI (SPIFFE ID) matching is implemented"
            ));
        }
        let matcher = m.matcher.unwrap_or_default();
        if matcher.ignore_case {
            return Err(format!("{mpath}.matcher.ignore_case: unimplemented"));
        }
        let pattern = match matcher.match_pattern {
            Some(MatchPattern::Exact(s)) => s,
            Some(MatchPattern::Prefix(s)) => format!("{s}*"),
            Some(MatchPattern::Suffix(s)) => format!("*{s}"),
            _ => {
                return Err(format!(
                    "{mpath}.matcher: only exact, prefix and suffix are implemented"
                ));
            }
        };
        if let Some(td) = pattern
            .strip_prefix("spiffe://")
            .and_then(|r| r.split('/').next())
            .filter(|td| !td.is_empty() && !td.contains('*'))
        {
            domains.insert(td.to_owned());
        }
        identities.push(pattern);
    }
    if domains.len() > 1 {
        return Err(format!(
            "{path}.match_typed_subject_alt_names: SPIFFE IDs of more than one trust domain are unimplemented"
        ));
    }
    reject_rest(path, &rest)?;
    Ok((bundle, domains.into_iter().next(), identities))
}
