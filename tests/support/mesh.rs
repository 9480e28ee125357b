//! Mesh-TLS helpers: a CA writing workload credentials to files, and HTTP clients over
//! (m)TLS that report handshake failures as errors instead of panicking.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use weft_ca::{Ca, IssueRequest, Issued};
use weft_tls::config::{ClientOptions, MinVersion};
use weft_tls::creds::{CredentialFiles, Credentials};
use weft_tls::verify::{PeerRules, Roots, SpiffeServerVerifier};

use crate::Reply;

/// A CA for tests; credentials are written under its temporary directory.
pub struct Pki {
    /// The CA.
    pub ca: Ca,
    /// Where files go.
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Pki {
    /// A root CA for `trust_domain` in a fresh temporary directory.
    pub fn new(trust_domain: &str) -> Pki {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        Pki {
            ca: Ca::new_root(trust_domain, Duration::from_secs(24 * 3600)).expect("CA"),
            dir,
            _tmp: Some(tmp),
        }
    }

    /// `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn id(&self, ns: &str, sa: &str) -> String {
        format!("spiffe://{}/ns/{ns}/sa/{sa}", self.ca.trust_domain())
    }

    /// Issues `spiffe_id` for `ttl` into `<dir>/<name>/{cert,key,bundle}.pem`.
    pub fn issue(&self, name: &str, spiffe_id: &str, ttl: Duration) -> CredentialFiles {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let issued = self
            .ca
            .issue(&IssueRequest::new(spiffe_id, ttl))
            .expect("issue");
        let files = CredentialFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            bundle: dir.join("bundle.pem"),
        };
        std::fs::write(&files.bundle, self.ca.bundle_pem()).expect("bundle");
        std::fs::write(&files.key, &issued.key_pem).expect("key");
        std::fs::write(&files.cert, &issued.chain_pem).expect("cert");
        files
    }

    /// A certificate for `spiffe_id` signed by this CA, made like [`Ca::issue`]'s (same names,
    /// key usages and extensions) but whose validity ended an hour ago: an expired certificate
    /// without waiting for a short-lived one to run out.
    pub fn issue_expired(&self, spiffe_id: &str) -> Issued {
        use rcgen::string::Ia5String;
        use rcgen::{
            CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, SanType, SerialNumber,
        };
        // The CA key is private to `Ca`; its on-disk layout has it.
        let ca_dir = self.dir.join(".expired-issuer");
        self.ca.save(&ca_dir).expect("save the CA");
        let read = |f: &str| std::fs::read_to_string(ca_dir.join(f)).expect("CA file");
        let ca_key = KeyPair::from_pem(&read("ca-key.pem")).expect("CA key");
        let issuer = Issuer::from_ca_cert_pem(&read("ca-cert.pem"), &ca_key).expect("issuer");
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, self.ca.trust_domain());
        p.distinguished_name = dn;
        p.subject_alt_names = vec![SanType::URI(
            Ia5String::try_from(spiffe_id).expect("URI SAN"),
        )];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // Unique per call: a counter and the time (only uniqueness matters, not secrecy).
        static ISSUED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut serial = [0u8; 16];
        serial[..8].copy_from_slice(
            &ISSUED
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_be_bytes(),
        );
        serial[8..].copy_from_slice(
            &std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_be_bytes(),
        );
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        p.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - Duration::from_secs(2 * 3600);
        p.not_after = now - Duration::from_secs(3600);
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &issuer).expect("sign");
        Issued {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// YAML for a listener/cluster `tls` file triple.
pub fn tls_files_yaml(f: &CredentialFiles) -> String {
    format!(
        "cert_file: {}, key_file: {}, trust_bundle_file: {}",
        f.cert.display(),
        f.key.display(),
        f.bundle.display()
    )
}

/// Replaces `path` atomically (temporary file + rename), as Kubernetes and editors do.
pub fn replace(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("swap");
    std::fs::write(&tmp, data).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// What a TLS request saw.
#[derive(Debug)]
pub struct TlsReply {
    /// The HTTP reply.
    pub reply: Reply,
    /// SHA-256 (hex) of the server's leaf certificate.
    pub server_cert_hash: String,
    /// Negotiated ALPN.
    pub alpn: Option<Vec<u8>>,
}

/// `GET https://addr/path` with a client certificate (`client: Some`) or without, verifying
/// the server against `bundle` (trust domain `trust_domain`). Offers ALPN `h2` when `h2`.
pub async fn tls_get(
    addr: SocketAddr,
    client: Option<&CredentialFiles>,
    bundle: &Path,
    trust_domain: &str,
    h2: bool,
    path: &str,
) -> Result<TlsReply, String> {
    let alpn = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let rules = PeerRules {
        trust_domain: Some(trust_domain.to_owned()),
        allowed: Vec::new(),
    };
    let config = match client {
        Some(files) => {
            let creds = Credentials::load(files.clone()).map_err(|e| e.to_string())?;
            weft_tls::config::client_config(
                creds,
                &ClientOptions {
                    alpn,
                    min_version: MinVersion::Tls12,
                    rules,
                },
            )
            .map_err(|e| e.to_string())?
        }
        None => {
            let pem = std::fs::read(bundle).map_err(|e| e.to_string())?;
            let roots = weft_tls::creds::parse_bundle(bundle, &pem).map_err(|e| e.to_string())?;
            let verifier = SpiffeServerVerifier::with_roots(Roots::Fixed(Arc::new(roots)), rules);
            let mut c = rustls::ClientConfig::builder_with_provider(weft_tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            c.alpn_protocols = alpn;
            Arc::new(c)
        }
    };
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(
                rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
                tcp,
            )
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (_, conn) = tls.get_ref();
        let server_cert_hash = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| weft_tls::peer::hex(&sha256(c)))
            .unwrap_or_default();
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let req = Request::get(path)
            .header(http::header::HOST, "mesh.local")
            .body(Full::<Bytes>::default())
            .map_err(|e| e.to_string())?;
        let resp = if alpn.as_deref() == Some(b"h2") {
            let mut r = req;
            *r.version_mut() = http::Version::HTTP_2;
            *r.uri_mut() = format!("https://mesh.local{path}")
                .parse()
                .map_err(|e| format!("{e}"))?;
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            sender
                .send_request(r)
                .await
                .map_err(|e| format!("request: {e}"))?
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| format!("http1 handshake: {e}"))?;
            tokio::spawn(conn);
            sender
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?
        };
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(TlsReply {
            reply: Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            },
            server_cert_hash,
            alpn,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timed out".to_owned())?
}

fn sha256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

/// What a TLS upstream ([`tls_echo`]) saw of one accepted connection's handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The client's SPIFFE ID (the URI SAN of the certificate it presented).
    pub peer_id: String,
    /// SHA-256 (hex) of the client's leaf certificate.
    pub peer_cert_hash: String,
    /// The negotiated TLS version (`TLSv1_3`, ...).
    pub version: String,
}

/// SHA-256 (hex) of the leaf (first) certificate of `files.cert`.
pub fn leaf_sha256(files: &CredentialFiles) -> String {
    let pem = std::fs::read(&files.cert).expect("read cert");
    let certs = weft_tls::creds::parse_certs(&files.cert, &pem).expect("parse cert");
    let leaf = certs.first().expect("a certificate");
    weft_tls::peer::hex(&sha256(leaf))
}

/// A TLS echo server presenting `server`'s certificate and requiring a client certificate
/// that chains to `server`'s bundle and whose SPIFFE ID is one of `allowed_clients` (mTLS).
/// Every accepted connection reports its handshake on the channel (`Err` with the reason when
/// the handshake failed, e.g. a plaintext client), then gets its bytes echoed until it closes.
pub async fn tls_echo(
    server: &CredentialFiles,
    allowed_clients: &[String],
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<Handshake, String>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let creds = Credentials::load(server.clone()).expect("server credentials");
    let config = weft_tls::config::server_config(
        creds,
        &weft_tls::config::ServerOptions {
            alpn: Vec::new(),
            min_version: MinVersion::Tls12,
            rules: PeerRules {
                trust_domain: None,
                allowed: allowed_clients.to_vec(),
            },
            require_client_cert: true,
        },
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        let _ = tx.send(Err(format!("handshake: {e}")));
                        return;
                    }
                };
                let (_, conn) = tls.get_ref();
                let leaf = conn.peer_certificates().and_then(|c| c.first());
                let seen = Handshake {
                    peer_id: leaf
                        .and_then(|c| weft_tls::peer::identity(c).ok())
                        .map(|id| id.uri_san)
                        .unwrap_or_default(),
                    peer_cert_hash: leaf
                        .map(|c| weft_tls::peer::hex(&sha256(c)))
                        .unwrap_or_default(),
                    version: conn
                        .protocol_version()
                        .map(|v| format!("{v:?}"))
                        .unwrap_or_default(),
                };
                let _ = tx.send(Ok(seen));
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, rx)
}
