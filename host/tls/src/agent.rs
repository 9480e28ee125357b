//! The sidecar's certificate agent (istio-agent's role): generates its key locally, sends a
//! CSR to `weft ca serve` (authenticated by a bootstrap token, or by its current certificate
//! once it has one), writes `cert.pem`, `key.pem` (0600) and `bundle.pem` into its output
//! directory, and renews at a fraction of the lifetime. Listeners and clusters point their
//! `tls` at those files; their watchers rotate the new material in without a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::string::Ia5String;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::ClientConfig;

use crate::TlsError;
use crate::ca_protocol::{ALPN, BUNDLE_PATH, MAX_ANSWER_BYTES, SIGN_PATH, TTL_HEADER, ca_identity};
use crate::creds::{
    CredentialFiles, Credentials, load_material, parse_bundle, unix_now, write_file,
};
use crate::spiffe::SpiffeId;
use crate::verify::{PeerRules, Roots, SpiffeServerVerifier};

/// What the agent needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `host:port` of the CA endpoint.
    pub ca_address: String,
    /// Bundle the CA endpoint is verified against.
    pub ca_bundle: PathBuf,
    /// Bootstrap token file (first certificate, or after the current one expired).
    pub token_file: Option<PathBuf>,
    /// The SPIFFE ID requested.
    pub spiffe_id: String,
    /// Where the files go.
    pub out_dir: PathBuf,
    /// Lifetime requested.
    pub ttl: Duration,
    /// Renew when this fraction of the lifetime has passed.
    pub renew_fraction: f64,
}

impl AgentConfig {
    /// The files the agent writes.
    pub fn files(&self) -> CredentialFiles {
        CredentialFiles {
            cert: self.out_dir.join("cert.pem"),
            key: self.out_dir.join("key.pem"),
            bundle: self.out_dir.join("bundle.pem"),
        }
    }
}

/// When to renew a certificate valid `not_before..not_after` (Unix seconds).
pub fn renew_at(not_before: i64, not_after: i64, fraction: f64) -> i64 {
    let life = (not_after - not_before).max(0) as f64;
    not_before + (life * fraction.clamp(0.05, 0.95)) as i64
}

/// How long to wait before the next attempt: until `renew_at`, or a short retry.
fn next_delay(renew: i64, now: i64) -> Duration {
    Duration::from_secs(renew.saturating_sub(now).max(1) as u64)
}

fn csr_err(what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Ca(format!("{what}: {e}"))
}

/// Makes a CSR for `spiffe_id` with a fresh key; returns (CSR PEM, key PEM). The key never
/// leaves the workload: only the CSR is sent to the CA.
pub fn new_csr(spiffe_id: &str) -> Result<(String, String), TlsError> {
    let id = SpiffeId::parse(spiffe_id).map_err(|e| TlsError::Ca(e.to_string()))?;
    let key = KeyPair::generate().map_err(|e| csr_err("generating the key", e))?;
    let mut p = CertificateParams::default();
    let uri = Ia5String::try_from(id.to_string()).map_err(|e| csr_err("URI SAN", e))?;
    p.subject_alt_names = vec![SanType::URI(uri)];
    let csr = p
        .serialize_request(&key)
        .map_err(|e| csr_err("making the CSR", e))?;
    let pem = csr.pem().map_err(|e| csr_err("encoding the CSR", e))?;
    Ok((pem, key.serialize_pem()))
}

/// The current certificate, if valid and for our identity.
fn current(cfg: &AgentConfig) -> Option<Arc<Credentials>> {
    let c = Credentials::load(cfg.files()).ok()?;
    let ours = c.current().identity.as_ref().map(ToString::to_string);
    (ours.as_deref() == Some(cfg.spiffe_id.as_str())).then_some(c)
}

/// Obtains a certificate now; returns (issued at, not_after). The issue time is the agent's
/// own clock, not the certificate's backdated `not_before`, so renewal timing follows the
/// requested lifetime.
pub async fn fetch_once(cfg: &AgentConfig) -> Result<(i64, i64), TlsError> {
    let id = SpiffeId::parse(&cfg.spiffe_id).map_err(|e| TlsError::Ca(e.to_string()))?;
    let bundle_pem = std::fs::read(&cfg.ca_bundle).map_err(|source| TlsError::Read {
        path: cfg.ca_bundle.clone(),
        source,
    })?;
    let roots = Arc::new(parse_bundle(&cfg.ca_bundle, &bundle_pem)?);
    // Only the CA's own identity may answer: a workload certificate of the same trust domain
    // (which also carries serverAuth) must not be able to pose as the CA and collect the
    // bootstrap token or hand out another trust bundle.
    let verifier = Arc::new(SpiffeServerVerifier::with_roots(
        Roots::Fixed(roots.clone()),
        PeerRules {
            trust_domain: Some(id.trust_domain().to_owned()),
            allowed: vec![ca_identity(id.trust_domain())],
        },
    ));
    let builder = ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let held = current(cfg);
    let mut config = match &held {
        Some(c) => builder.with_client_cert_resolver(c.clone()),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    let token = match (&held, &cfg.token_file) {
        (Some(_), _) => None,
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .map_err(|source| TlsError::Read {
                    path: f.clone(),
                    source,
                })?
                .trim()
                .to_owned(),
        ),
        (None, None) => {
            return Err(TlsError::Ca(
                "no valid certificate held and no bootstrap token file".into(),
            ));
        }
    };

    let (csr, key_pem) = new_csr(&cfg.spiffe_id)?;
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(SIGN_PATH)
        .header(http::header::HOST, cfg.ca_address.as_str())
        .header(TTL_HEADER, cfg.ttl.as_secs().to_string());
    if let Some(t) = &token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(csr)))
        .map_err(|e| TlsError::Ca(e.to_string()))?;
    let chain = call(&cfg.ca_address, Arc::new(config.clone()), req).await?;
    let bundle_req = Request::builder()
        .method(Method::GET)
        .uri(BUNDLE_PATH)
        .header(http::header::HOST, cfg.ca_address.as_str())
        .body(Full::new(Bytes::new()))
        .map_err(|e| TlsError::Ca(e.to_string()))?;
    let bundle = call(&cfg.ca_address, Arc::new(config), bundle_req).await?;

    // Check everything before writing: a bad answer must not replace good files. The issued
    // chain must verify against the bundle this agent was configured with, and the returned
    // bundle must still hold those anchors, so the answer cannot move the trust elsewhere.
    let files = cfg.files();
    let issued = crate::creds::parse_certs(&files.cert, chain.as_bytes())?;
    let (leaf, intermediates) = issued.split_first().ok_or_else(|| {
        TlsError::Ca(format!(
            "{}: the CA returned no certificate",
            cfg.ca_address
        ))
    })?;
    crate::verify::verify_chain(&roots, leaf, intermediates, crate::verify::Usage::Client)
        .map_err(|e| {
            TlsError::Ca(format!(
                "{}: the issued certificate does not chain to {}: {e}",
                cfg.ca_address,
                cfg.ca_bundle.display()
            ))
        })?;
    let configured = crate::creds::parse_certs(&cfg.ca_bundle, &bundle_pem)?;
    let returned = crate::creds::parse_certs(&files.bundle, bundle.as_bytes())?;
    if !configured.iter().all(|c| returned.contains(c)) {
        return Err(TlsError::Ca(format!(
            "{}: the returned trust bundle lacks the anchors of {}",
            cfg.ca_address,
            cfg.ca_bundle.display()
        )));
    }
    let m = crate::creds::material_from_pem(
        &files,
        chain.as_bytes(),
        key_pem.as_bytes(),
        bundle.as_bytes(),
        unix_now(),
    )?;
    std::fs::create_dir_all(&cfg.out_dir).map_err(|source| TlsError::Write {
        path: cfg.out_dir.clone(),
        source,
    })?;
    write_file(&files.bundle, &bundle, false)?;
    write_file(&files.key, &key_pem, true)?;
    write_file(&files.cert, &chain, false)?;
    Ok((unix_now().min(m.not_after), m.not_after))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn call(
    address: &str,
    config: Arc<ClientConfig>,
    req: Request<Full<Bytes>>,
) -> Result<String, TlsError> {
    let err =
        |what: &str, e: &dyn std::fmt::Display| TlsError::Ca(format!("{address}: {what}: {e}"));
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(address),
    )
    .await
    .map_err(|_| err("connect", &"timed out"))?
    .map_err(|e| err("connect", &e))?;
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| err("server name", &e))?;
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| err("TLS handshake", &"timed out"))?
    .map_err(|e| err("TLS handshake", &e))?;
    let (mut sender, conn) = tokio::time::timeout(
        Duration::from_secs(10),
        hyper::client::conn::http1::handshake(TokioIo::new(tls)),
    )
    .await
    .map_err(|_| err("HTTP handshake", &"timed out"))?
    .map_err(|e| err("HTTP handshake", &e))?;
    // The connection task ends with this call (its sender is dropped on return).
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let _abort = AbortOnDrop(driver);
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .map_err(|_| err("request", &"timed out"))?
        .map_err(|e| err("request", &e))?;
    let status = resp.status();
    // A chain or bundle is a few KiB; bound the body and the time to read it.
    let body = tokio::time::timeout(
        Duration::from_secs(10),
        http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES).collect(),
    )
    .await
    .map_err(|_| err("response body", &"timed out"))?
    .map_err(|e| err("response body", &e))?
    .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if status != StatusCode::OK {
        return Err(err(&format!("CA answered {status}"), &text.trim()));
    }
    Ok(text)
}

/// Makes sure a valid certificate is in place (fetching one if missing, expired or due), then
/// keeps renewing it in the background for the life of the runtime.
pub async fn start(cfg: AgentConfig) -> Result<(), TlsError> {
    let mut validity = match load_material(&cfg.files()) {
        Ok(m)
            if m.identity.as_ref().map(ToString::to_string).as_deref()
                == Some(cfg.spiffe_id.as_str())
                && renew_at(m.not_before, m.not_after, cfg.renew_fraction) > unix_now() =>
        {
            (m.not_before, m.not_after)
        }
        _ => fetch_once(&cfg).await?,
    };
    tracing::info!(id = %cfg.spiffe_id, not_after = %crate::creds::rfc3339(validity.1), "workload certificate in place");
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            let renew = renew_at(validity.0, validity.1, cfg.renew_fraction);
            tokio::time::sleep(next_delay(renew, unix_now())).await;
            match fetch_once(&cfg).await {
                Ok(v) => {
                    tracing::info!(id = %cfg.spiffe_id, not_after = %crate::creds::rfc3339(v.1), "workload certificate renewed");
                    validity = v;
                    backoff = Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::error!(error = %e, "certificate renewal failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_timing() {
        assert_eq!(renew_at(1000, 2000, 0.5), 1500);
        assert_eq!(renew_at(1000, 2000, 0.8), 1800);
        // Clamped: never at the very start or the very end.
        assert_eq!(renew_at(0, 1000, 0.0), 50);
        assert_eq!(renew_at(0, 1000, 1.0), 950);
        assert_eq!(renew_at(10, 5, 0.5), 10, "inverted validity renews at once");
        assert_eq!(next_delay(100, 200), Duration::from_secs(1));
        assert_eq!(next_delay(300, 200), Duration::from_secs(100));
    }

    #[test]
    fn csr_asks_for_the_spiffe_id_only() {
        let (csr, key) = new_csr("spiffe://cluster.local/ns/a/sa/b").expect("csr");
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr).expect("parse");
        let uris: Vec<&str> = parsed
            .params
            .subject_alt_names
            .iter()
            .filter_map(|s| match s {
                SanType::URI(u) => Some(u.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(uris, ["spiffe://cluster.local/ns/a/sa/b"]);
        assert!(key.contains("PRIVATE KEY"));
        assert!(new_csr("https://example.org/not-spiffe").is_err());
    }
}
