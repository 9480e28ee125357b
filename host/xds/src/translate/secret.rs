//! SDS: `envoy.extensions.transport_sockets.tls.v3.Secret` → the PEM files a TLS context of
//! Weft reads: a TLS certificate (`cert.pem`, `key.pem`) or a validation context
//! (`bundle.pem`). The client writes them under `xds.secrets_dir/<name>/` and points the
//! clusters' and listeners' `tls` at them; a new version rewrites them, and Weft's certificate
//! watcher takes it without a restart.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};

use crate::fields::reject_rest;

/// A secret's files: file name (`cert.pem`, `key.pem`, `bundle.pem`) → bytes.
pub(crate) type SecretFiles = BTreeMap<&'static str, Vec<u8>>;

fn bytes(path: &str, d: Option<DataSource>) -> Result<Vec<u8>, String> {
    match d.and_then(|d| d.specifier) {
        Some(data_source::Specifier::InlineBytes(b)) if !b.is_empty() => Ok(b),
        Some(data_source::Specifier::InlineString(s)) if !s.is_empty() => Ok(s.into_bytes()),
        Some(data_source::Specifier::Filename(f)) => {
            std::fs::read(&f).map_err(|e| format!("{path}.filename: `{f}`: {e}"))
        }
        Some(data_source::Specifier::EnvironmentVariable(_)) => {
            Err(format!("{path}.environment_variable: unimplemented"))
        }
        _ => Err(format!("{path}: required")),
    }
}

/// Translates one secret: its name and files.
pub(crate) fn translate(s: Secret) -> Result<(String, SecretFiles), String> {
    let name = s.name.clone();
    let path = format!("secret \"{name}\"");
    if name.is_empty() {
        return Err("secret: name must not be empty".into());
    }
    let mut files = SecretFiles::new();
    match s.r#type {
        Some(secret::Type::TlsCertificate(c)) => {
            let tpath = format!("{path}.tls_certificate");
            let mut c = c;
            files.insert(
                "cert.pem",
                bytes(
                    &format!("{tpath}.certificate_chain"),
                    c.certificate_chain.take(),
                )?,
            );
            files.insert(
                "key.pem",
                bytes(&format!("{tpath}.private_key"), c.private_key.take())?,
            );
            reject_rest(&tpath, &c)?;
        }
        Some(secret::Type::ValidationContext(v)) => {
            let vpath = format!("{path}.validation_context");
            let mut v = v;
            files.insert(
                "bundle.pem",
                bytes(&format!("{vpath}.trusted_ca"), v.trusted_ca.take())?,
            );
            reject_rest(&vpath, &v)?;
        }
        Some(_) => {
            return Err(format!(
                "{path}: only tls_certificate and validation_context secrets are implemented"
            ));
        }
        None => {
            return Err(format!(
                "{path}: a tls_certificate or validation_context is required"
            ));
        }
    }
    Ok((name, files))
}
