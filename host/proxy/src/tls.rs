//! Mesh TLS in the data plane: listener TLS state (PeerAuthentication mode, acceptor,
//! authorization), the upstream TLS connector's stream type, per-connection peer identity, and
//! `x-forwarded-client-cert`.
//!
//! The certificate machinery (SPIFFE verifiers, rotating credentials, the CA) is `weft-tls`;
//! this module only wires it into listeners and clusters.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderValue;
use http::header::{HeaderMap, HeaderName};
use hyper_util::client::legacy::connect::{Connected, Connection};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use weft_config::schema::{self, ForwardClientCertDetails, TlsMode, TlsVersion};
use weft_tls::authz::{Authorization, Decision, SourceRule};
use weft_tls::config::{ClientOptions, MinVersion, ServerOptions};
use weft_tls::creds::{CredentialFiles, Credentials};
use weft_tls::verify::PeerRules;
use weft_tls::{PeerIdentity, TlsError};

/// `x-forwarded-client-cert`.
pub static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Istio's `connection_security_policy` label values.
pub mod policy {
    /// mTLS with a verified peer certificate.
    pub const MUTUAL_TLS: &str = "mutual_tls";
    /// Plaintext.
    pub const NONE: &str = "none";
}

fn resolve(base_dir: &Path, file: &str) -> std::path::PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base_dir.join(p)
    }
}

fn min_version(v: TlsVersion) -> MinVersion {
    match v {
        TlsVersion::Tls12 => MinVersion::Tls12,
        TlsVersion::Tls13 => MinVersion::Tls13,
    }
}

fn rules(list: &[schema::SourceRule]) -> Vec<SourceRule> {
    list.iter()
        .map(|r| SourceRule {
            principals: r.principals.clone(),
            namespaces: r.namespaces.clone(),
            trust_domains: r.trust_domains.clone(),
        })
        .collect()
}

/// A listener's TLS: mode, acceptor (following rotating credentials) and authorization.
pub struct ListenerTls {
    /// PeerAuthentication mode.
    pub mode: TlsMode,
    /// The acceptor.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The credentials (rotated by their watcher).
    pub creds: Arc<Credentials>,
    /// Who may send requests.
    pub authorization: Authorization,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("mode", &self.mode)
            .field("creds", &self.creds.files())
            .field("authorization", &self.authorization)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
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
            authorization: Authorization {
                allow: rules(&cfg.authorization.allow),
                deny: rules(&cfg.authorization.deny),
            },
        })))
    }
}

/// A cluster's TLS client side.
pub struct UpstreamTls {
    /// The connector.
    pub connector: tokio_rustls::TlsConnector,
    /// SNI to send (`None`: the endpoint's IP, which sends no SNI).
    pub sni: Option<rustls::pki_types::ServerName<'static>>,
    /// The credentials (rotated by their watcher).
    pub creds: Arc<Credentials>,
}

impl UpstreamTls {
    /// Loads the cluster's material and starts watching it.
    pub fn build(
        cfg: &schema::ClusterTls,
        protocol: schema::UpstreamProtocol,
        base_dir: &Path,
    ) -> Result<Arc<UpstreamTls>, TlsError> {
        let creds = Credentials::load(CredentialFiles {
            cert: resolve(base_dir, &cfg.cert_file),
            key: resolve(base_dir, &cfg.key_file),
            bundle: resolve(base_dir, &cfg.trust_bundle_file),
        })?;
        let alpn: Vec<Vec<u8>> = if cfg.alpn.is_empty() {
            match protocol {
                schema::UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
                schema::UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
            }
        } else {
            cfg.alpn.iter().map(|a| a.as_bytes().to_vec()).collect()
        };
        let client = weft_tls::config::client_config(
            creds.clone(),
            &ClientOptions {
                alpn,
                min_version: min_version(cfg.min_version),
                rules: PeerRules {
                    trust_domain: cfg.trust_domain.clone(),
                    allowed: cfg.match_identities.clone(),
                },
            },
        )?;
        let sni = match &cfg.sni {
            Some(s) => Some(
                rustls::pki_types::ServerName::try_from(s.clone())
                    .map_err(|e| TlsError::Rustls(format!("sni `{s}`: {e}")))?,
            ),
            None => None,
        };
        creds.watch();
        Ok(Arc::new(UpstreamTls {
            connector: tokio_rustls::TlsConnector::from(client),
            sni,
            creds,
        }))
    }
}

/// Starts the certificate agent of the `identity` block: a valid certificate is in place when
/// this returns, and renewals run in the background.
pub async fn start_agent(id: &schema::Identity, base_dir: &Path) -> Result<(), TlsError> {
    weft_tls::agent::start(weft_tls::agent::AgentConfig {
        ca_address: id.ca_address.clone(),
        ca_bundle: resolve(base_dir, &id.ca_trust_bundle_file),
        token_file: id
            .bootstrap_token_file
            .as_deref()
            .map(|f| resolve(base_dir, f)),
        spiffe_id: id.spiffe_id.clone(),
        out_dir: resolve(base_dir, &id.output_dir),
        ttl: id.ttl,
        renew_fraction: id.renew_fraction,
    })
    .await
}

fn creds_json(owner: String, creds: &Credentials) -> serde_json::Value {
    let m = creds.current();
    serde_json::json!({
        "owner": owner,
        "cert_file": creds.files().cert.display().to_string(),
        "identity": m.identity.as_ref().map(ToString::to_string),
        "valid_from": weft_tls::creds::rfc3339(m.not_before),
        "expiration_time": weft_tls::creds::rfc3339(m.not_after),
        "days_until_expiration": (m.not_after - weft_tls::creds::unix_now()) / 86_400,
        "rotations": creds.rotations.load(std::sync::atomic::Ordering::Relaxed),
        "refused_rotations": creds.refusals.load(std::sync::atomic::Ordering::Relaxed),
        "last_refusal": creds.last_error(),
    })
}

/// `GET /certs`: the certificates in use (Envoy's admin endpoint of that name), with rotation
/// state.
pub fn certs_json(g: &crate::generation::Generation) -> serde_json::Value {
    let mut out = Vec::new();
    let mut names: Vec<&String> = g.listeners.keys().collect();
    names.sort();
    for name in names {
        if let Some(crate::generation::ListenerGen::Http(h)) = g.listeners.get(name).map(|l| &**l)
            && let Some(t) = &h.tls
        {
            out.push(creds_json(format!("listener {name}"), &t.creds));
        }
    }
    for c in g.clusters.iter() {
        if let Some(t) = &c.tls {
            out.push(creds_json(format!("cluster {}", c.name), &t.creds));
        }
    }
    serde_json::json!({ "certificates": out })
}

/// What a downstream connection's security is.
#[derive(Debug, Clone, Default)]
pub struct ConnSecurity {
    /// Whether TLS was used at all.
    pub tls: bool,
    /// The verified peer (mTLS).
    pub peer: Option<PeerIdentity>,
    /// Our own URI SAN on this connection.
    pub local_uri: Option<String>,
    /// Negotiated TLS version (`TLSv1.3`).
    pub version: Option<&'static str>,
    /// SNI the client sent.
    pub sni: Option<String>,
}

impl ConnSecurity {
    /// Reads the peer identity and parameters off a finished server handshake.
    pub fn from_server(conn: &rustls::ServerConnection, creds: &Credentials) -> ConnSecurity {
        let peer = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| weft_tls::peer::identity(leaf).ok());
        let version = conn.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "unknown",
        });
        ConnSecurity {
            tls: true,
            peer,
            local_uri: creds.current().identity.as_ref().map(ToString::to_string),
            version,
            sni: conn.server_name().map(str::to_owned),
        }
    }

    /// Whether the peer was authenticated with a certificate.
    pub fn mtls(&self) -> bool {
        self.peer.is_some()
    }

    /// Istio's `connection_security_policy`.
    pub fn policy(&self) -> &'static str {
        if self.mtls() {
            policy::MUTUAL_TLS
        } else {
            policy::NONE
        }
    }
}

/// Whether a request from `sec` passes `tls`'s authorization.
pub fn authorize(tls: &ListenerTls, sec: Option<&ConnSecurity>) -> Decision {
    if tls.authorization.is_empty() {
        return Decision::Allow;
    }
    let peer = sec.and_then(|s| s.peer.as_ref()).map(|p| &p.spiffe);
    tls.authorization.decide(peer)
}

fn quote_if_needed(v: &str) -> String {
    if v.contains([',', ';', '=', '"']) {
        format!("\"{}\"", v.replace('"', "\\\""))
    } else {
        v.to_owned()
    }
}

/// This hop's element of `x-forwarded-client-cert`, Envoy's format:
/// `By=<our URI SAN>;Hash=<sha256 hex>;Subject="<subject>";URI=<peer URI SAN>`.
pub fn xfcc_element(sec: &ConnSecurity) -> Option<String> {
    let peer = sec.peer.as_ref()?;
    let mut parts = Vec::with_capacity(4);
    if let Some(by) = &sec.local_uri {
        parts.push(format!("By={}", quote_if_needed(by)));
    }
    parts.push(format!("Hash={}", peer.hash_hex));
    // Backslashes first, then quotes: a peer-chosen subject cannot close the quoted value
    // early and append fields (`;URI=…`) of its own.
    parts.push(format!(
        "Subject=\"{}\"",
        peer.subject.replace('\\', "\\\\").replace('"', "\\\"")
    ));
    parts.push(format!("URI={}", quote_if_needed(&peer.uri_san)));
    Some(parts.join(";"))
}

/// Applies `mode` to the request's `x-forwarded-client-cert`.
pub fn apply_xfcc(
    headers: &mut HeaderMap,
    mode: ForwardClientCertDetails,
    sec: Option<&ConnSecurity>,
) {
    let mtls = sec.is_some_and(ConnSecurity::mtls);
    match mode {
        ForwardClientCertDetails::AlwaysForwardOnly => {}
        ForwardClientCertDetails::Sanitize => {
            headers.remove(&XFCC);
        }
        ForwardClientCertDetails::ForwardOnly => {
            if !mtls {
                headers.remove(&XFCC);
            }
        }
        ForwardClientCertDetails::AppendForward | ForwardClientCertDetails::SanitizeSet => {
            if !mtls {
                headers.remove(&XFCC);
                return;
            }
            let Some(element) = sec.and_then(xfcc_element) else {
                return;
            };
            let value = match (mode, headers.get(&XFCC).and_then(|v| v.to_str().ok())) {
                (ForwardClientCertDetails::AppendForward, Some(prev)) if !prev.is_empty() => {
                    format!("{prev},{element}")
                }
                _ => element,
            };
            match HeaderValue::from_str(&value) {
                Ok(v) => {
                    headers.insert(XFCC.clone(), v);
                }
                Err(_) => {
                    headers.remove(&XFCC);
                }
            }
        }
    }
}

/// An upstream connection: plaintext or TLS.
#[derive(Debug)]
pub enum UpstreamIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        match self {
            UpstreamIo::Plain(s) => s.connected(),
            UpstreamIo::Tls(s) => {
                let (tcp, conn) = s.get_ref();
                let c = tcp.connected();
                if conn.alpn_protocol() == Some(b"h2") {
                    c.negotiated_h2()
                } else {
                    c
                }
            }
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Labels of the security series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecurityLabels {
    /// Listener name.
    pub listener: String,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: String,
}

/// Labels of per-listener TLS counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsListenerLabels {
    /// Listener name.
    pub listener: String,
}

/// The TLS metric families.
#[derive(Debug, Clone, Default)]
pub struct TlsMetrics {
    /// Downstream connections by `connection_security_policy`.
    pub cx_security: Family<SecurityLabels, Counter>,
    /// Failed downstream TLS handshakes (bad or missing certificate, plaintext in strict…).
    pub handshake_error: Family<TlsListenerLabels, Counter>,
    /// Requests refused by listener authorization (403).
    pub rbac_denied: Family<TlsListenerLabels, Counter>,
}

impl TlsMetrics {
    /// Registers the families.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "downstream_cx_security",
            "Downstream connections by Istio connection_security_policy (mutual_tls, none)",
            self.cx_security.clone(),
        );
        reg.register(
            "downstream_tls_handshake_error",
            "Downstream TLS handshakes that failed",
            self.handshake_error.clone(),
        );
        reg.register(
            "downstream_rq_rbac_denied",
            "Requests denied by listener authorization rules",
            self.rbac_denied.clone(),
        );
    }

    /// Counts a connection.
    pub fn connection(&self, listener: &str, policy: &str) {
        self.cx_security
            .get_or_create(&SecurityLabels {
                listener: listener.to_owned(),
                connection_security_policy: policy.to_owned(),
            })
            .inc();
    }

    /// Counts a failed handshake.
    pub fn handshake_failed(&self, listener: &str) {
        self.handshake_error
            .get_or_create(&TlsListenerLabels {
                listener: listener.to_owned(),
            })
            .inc();
    }

    /// Counts a denied request.
    pub fn denied(&self, listener: &str) {
        self.rbac_denied
            .get_or_create(&TlsListenerLabels {
                listener: listener.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sec() -> ConnSecurity {
        ConnSecurity {
            tls: true,
            peer: Some(PeerIdentity {
                spiffe: weft_tls::SpiffeId::parse("spiffe://cluster.local/ns/a/sa/client")
                    .expect("id"),
                uri_san: "spiffe://cluster.local/ns/a/sa/client".into(),
                subject: "O=cluster.local".into(),
                hash_hex: "ab".repeat(32),
                der: Vec::new(),
            }),
            local_uri: Some("spiffe://cluster.local/ns/b/sa/server".into()),
            version: Some("TLSv1.3"),
            sni: None,
        }
    }

    #[test]
    fn xfcc_modes() {
        let s = sec();
        let mut h = HeaderMap::new();
        h.insert(XFCC.clone(), HeaderValue::from_static("By=x;URI=y"));
        let mut a = h.clone();
        apply_xfcc(&mut a, ForwardClientCertDetails::Sanitize, Some(&s));
        assert!(a.get(&XFCC).is_none());
        let mut a = h.clone();
        apply_xfcc(&mut a, ForwardClientCertDetails::ForwardOnly, None);
        assert!(a.get(&XFCC).is_none(), "plaintext: sanitized");
        let mut a = h.clone();
        apply_xfcc(&mut a, ForwardClientCertDetails::AlwaysForwardOnly, None);
        assert_eq!(a.get(&XFCC).map(|v| v.as_bytes()), Some(&b"By=x;URI=y"[..]));
        let mut a = h.clone();
        apply_xfcc(&mut a, ForwardClientCertDetails::AppendForward, Some(&s));
        let v = a
            .get(&XFCC)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            v.starts_with("By=x;URI=y,By=spiffe://cluster.local/ns/b/sa/server;Hash="),
            "{v}"
        );
        assert!(
            v.ends_with(";Subject=\"O=cluster.local\";URI=spiffe://cluster.local/ns/a/sa/client"),
            "{v}"
        );
        let mut a = h.clone();
        apply_xfcc(&mut a, ForwardClientCertDetails::SanitizeSet, Some(&s));
        let v = a
            .get(&XFCC)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(v.starts_with("By=spiffe://"), "{v}");
    }
}
