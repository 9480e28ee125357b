//! rustls configurations for listeners (server) and clusters (client).

use std::sync::Arc;

use rustls::{ClientConfig, ServerConfig, SupportedProtocolVersion};

use crate::TlsError;
use crate::creds::Credentials;
use crate::verify::{PeerRules, SpiffeClientVerifier, SpiffeServerVerifier};

/// Lowest TLS version accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

fn versions(min: MinVersion) -> &'static [&'static SupportedProtocolVersion] {
    static BOTH: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static ONLY13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        MinVersion::Tls12 => &BOTH,
        MinVersion::Tls13 => &ONLY13,
    }
}

/// Options of a server (listener) configuration.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// ALPN protocols offered, in preference order (e.g. `h2`, `http/1.1`).
    pub alpn: Vec<Vec<u8>>,
    /// Lowest version.
    pub min_version: MinVersion,
    /// Peer identity rules.
    pub rules: PeerRules,
    /// Require a client certificate (mTLS); otherwise one is asked for but optional.
    pub require_client_cert: bool,
}

/// Builds a server configuration whose certificate and bundle follow `creds`.
pub fn server_config(
    creds: Arc<Credentials>,
    opts: &ServerOptions,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = Arc::new(SpiffeClientVerifier::new(
        creds.clone(),
        opts.rules.clone(),
        opts.require_client_cert,
    ));
    let mut cfg = ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(versions(opts.min_version))
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(creds);
    cfg.alpn_protocols = opts.alpn.clone();
    Ok(Arc::new(cfg))
}

/// Options of a client (cluster) configuration.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// ALPN protocols offered.
    pub alpn: Vec<Vec<u8>>,
    /// Lowest version.
    pub min_version: MinVersion,
    /// Peer identity rules (`allowed` is the cluster's `match_identities`).
    pub rules: PeerRules,
}

/// Builds a client configuration presenting `creds` and verifying servers with its bundle.
pub fn client_config(
    creds: Arc<Credentials>,
    opts: &ClientOptions,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = Arc::new(SpiffeServerVerifier::new(creds.clone(), opts.rules.clone()));
    let mut cfg = ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(versions(opts.min_version))
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(creds);
    cfg.alpn_protocols = opts.alpn.clone();
    Ok(Arc::new(cfg))
}
