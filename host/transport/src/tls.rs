//! Listener TLS: the PeerAuthentication mode, the acceptor following rotating credentials,
//! and the TLS metric families.

use std::path::Path;
use std::sync::Arc;

use weft_config::schema::{self, TlsMode};
use weft_tls::TlsError;
use weft_tls::config::ServerOptions;
use weft_tls::creds::{CredentialFiles, Credentials};
use weft_tls::verify::PeerRules;
use weft_upstream::tls::{min_version, resolve};

/// A listener's TLS: mode, acceptor (following rotating credentials) and authorization.
pub struct ListenerTls {
    /// PeerAuthentication mode.
    pub mode: TlsMode,
    /// The acceptor.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The credentials (rotated by their watcher).
    pub creds: Arc<Credentials>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("mode", &self.mode)
            .field("creds", &self.creds.files())
            .finish_non_exhaustive()
    }
}

impl ListenerTls {
    /// Loads the listener's material (errors name the file) and starts watching it.
    pub fn build(
        cfg: &schema::ListenerTls,
        base_dir: &Path,
    ) -> Result<Option<Arc<ListenerTls>>, TlsError> {
        if cfg.mode == TlsMode::Disable {
            return Ok(None);
        }
        let creds = Credentials::load(CredentialFiles {
            cert: resolve(base_dir, &cfg.cert_file),
            key: resolve(base_dir, &cfg.key_file),
            bundle: resolve(base_dir, &cfg.trust_bundle_file),
        })?;
        let server = weft_tls::config::server_config(
            creds.clone(),
            &ServerOptions {
                alpn: cfg.alpn.iter().map(|a| a.as_bytes().to_vec()).collect(),
                min_version: min_version(cfg.min_version),
                rules: PeerRules {
                    trust_domain: cfg.trust_domain.clone(),
                    allowed: Vec::new(),
                },
                require_client_cert: true,
            },
        )?;
        creds.watch();
        Ok(Some(Arc::new(ListenerTls {
            mode: cfg.mode,
            acceptor: tokio_rustls::TlsAcceptor::from(server),
            creds,
        })))
    }
}
