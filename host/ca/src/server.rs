//! The CA's signing endpoint (`weft ca serve`): HTTPS, HTTP/1.1, speaking the protocol of
//! [`weft_tls::ca_protocol`] (`POST /v1/sign` with a CSR, `GET /v1/bundle`).
//!
//! A signing caller is authenticated either by its current workload certificate (mTLS: it may
//! only renew its own SPIFFE ID) or by a bootstrap token (`authorization: Bearer <token>`: it
//! may ask for IDs matching the token's pattern). The endpoint presents a certificate for
//! [`ca_identity`], the only identity agents accept as the CA.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use weft_tls::TlsError;
use weft_tls::ca_protocol::{ALPN, BUNDLE_PATH, MAX_CSR_BYTES, SIGN_PATH, TTL_HEADER};
use weft_tls::config::{MinVersion, ServerOptions};
use weft_tls::creds::Credentials;
use weft_tls::spiffe::{SpiffeId, pattern_matches};
use weft_tls::verify::PeerRules;

use crate::authority::{Ca, IssueRequest, csr_uri};

pub use weft_tls::ca_protocol::ca_identity;

/// A bootstrap token and the SPIFFE IDs (pattern) it may ask for.
#[derive(Debug, Clone)]
pub struct Token {
    /// The secret.
    pub token: String,
    /// `spiffe://td/ns/x/sa/y`, or a pattern (`spiffe://td/ns/x/*`).
    pub pattern: String,
}

/// Reads a token file: one `<token> <spiffe-id-pattern>` per line; `#` starts a comment.
pub fn load_tokens(path: &Path) -> Result<Vec<Token>, TlsError> {
    let text = std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(t), Some(p), None) if t.len() >= 16 => out.push(Token {
                token: t.to_owned(),
                pattern: p.to_owned(),
            }),
            _ => {
                return Err(TlsError::Pem {
                    path: path.to_owned(),
                    what: format!(
                        "line {}: expected `<token of 16+ characters> <spiffe-id-pattern>`",
                        i + 1
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// Options of the signing endpoint.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Bootstrap tokens.
    pub tokens: Vec<Token>,
    /// Lifetime when the caller asks for none.
    pub default_ttl: Duration,
    /// Longest lifetime granted.
    pub max_ttl: Duration,
}

struct State {
    ca: Ca,
    opts: ServeOptions,
}

/// The endpoint's own TLS credentials: a certificate from `ca` for [`ca_identity`].
pub fn server_credentials(ca: &Ca) -> Result<Arc<Credentials>, TlsError> {
    let id = ca_identity(ca.trust_domain());
    let mut req = IssueRequest::new(&id, Duration::from_secs(30 * 24 * 3600));
    req.dns_names = vec!["localhost".into()];
    let issued = ca.issue(&req)?;
    Credentials::from_pem(
        "weft-ca",
        issued.chain_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        ca.bundle_pem().as_bytes(),
    )
}

/// Serves until the listener fails; each connection runs on its own task.
pub async fn serve(ca: Ca, listener: TcpListener, opts: ServeOptions) -> Result<(), TlsError> {
    let creds = server_credentials(&ca)?;
    let config = weft_tls::config::server_config(
        creds,
        &ServerOptions {
            alpn: vec![ALPN.to_vec()],
            min_version: MinVersion::Tls12,
            rules: PeerRules {
                trust_domain: Some(ca.trust_domain().to_owned()),
                allowed: Vec::new(),
            },
            require_client_cert: false,
        },
    )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let state = Arc::new(State { ca, opts });
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "CA: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "CA: TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
            let caller = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|leaf| weft_tls::peer::identity(leaf).ok())
                .map(|p| p.spiffe);
            let svc = service_fn(move |req| {
                let state = state.clone();
                let caller = caller.clone();
                async move { Ok::<_, Infallible>(handle(req, &state, caller.as_ref(), peer).await) }
            });
            // A CSR exchange is short: bound each connection so a slow client cannot hold one.
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), svc);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn handle(
    req: Request<Incoming>,
    state: &State,
    caller: Option<&SpiffeId>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, BUNDLE_PATH) => reply(StatusCode::OK, state.ca.bundle_pem()),
        (&Method::POST, SIGN_PATH) => {
            let token = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned);
            let ttl = req
                .headers()
                .get(TTL_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(state.opts.default_ttl, Duration::from_secs)
                .min(state.opts.max_ttl);
            let body = match Limited::new(req.into_body(), MAX_CSR_BYTES).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "CSR too large\n"),
            };
            let Ok(csr) = std::str::from_utf8(&body) else {
                return reply(StatusCode::BAD_REQUEST, "CSR must be PEM\n");
            };
            let wanted = match csr_uri(csr) {
                Ok(u) => u,
                Err(e) => return reply(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
            let authorized = match (caller, token) {
                (Some(id), _) => id.to_string() == wanted,
                (None, Some(t)) => state.opts.tokens.iter().any(|k| {
                    constant_time_eq(k.token.as_bytes(), t.as_bytes())
                        && pattern_matches(&k.pattern, &wanted)
                }),
                (None, None) => false,
            };
            if !authorized {
                tracing::warn!(%peer, %wanted, "CA: signing refused (not authorized for this identity)");
                return reply(
                    StatusCode::FORBIDDEN,
                    format!("not authorized to obtain `{wanted}`\n"),
                );
            }
            match state.ca.sign_csr(csr, &IssueRequest::new(&wanted, ttl)) {
                Ok(chain) => {
                    tracing::info!(%peer, id = %wanted, ttl_s = ttl.as_secs(), renewal = caller.is_some(), "CA: certificate issued");
                    reply(StatusCode::OK, chain)
                }
                Err(e) => reply(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_tls::agent::{AgentConfig, fetch_once};

    /// The renewing agent of `weft-tls` against this endpoint.
    #[tokio::test]
    async fn bootstrap_then_renew_with_certificate() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = Ca::new_root("cluster.local", Duration::from_secs(3600)).expect("ca");
        let bundle = dir.path().join("ca-bundle.pem");
        std::fs::write(&bundle, ca.bundle_pem()).expect("w");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "0123456789abcdef0123\n").expect("w");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(
            ca,
            listener,
            ServeOptions {
                tokens: vec![Token {
                    token: "0123456789abcdef0123".into(),
                    pattern: "spiffe://cluster.local/ns/default/*".into(),
                }],
                default_ttl: Duration::from_secs(600),
                max_ttl: Duration::from_secs(3600),
            },
        ));
        let mut cfg = AgentConfig {
            ca_address: addr.to_string(),
            ca_bundle: bundle,
            token_file: Some(token_file.clone()),
            spiffe_id: "spiffe://cluster.local/ns/default/sa/web".into(),
            out_dir: dir.path().join("out"),
            ttl: Duration::from_secs(120),
            renew_fraction: 0.5,
        };
        let (nb, na) = fetch_once(&cfg).await.expect("bootstrap");
        assert!(na - nb <= 120 + 60, "ttl honoured");
        let first = std::fs::read(cfg.files().cert).expect("cert");
        // Renewal authenticates with the certificate: no token needed.
        cfg.token_file = None;
        fetch_once(&cfg)
            .await
            .expect("renewal with the current certificate");
        assert_ne!(std::fs::read(cfg.files().cert).expect("cert"), first);
        // A token cannot get an identity outside its pattern.
        let mut other = cfg.clone();
        other.out_dir = dir.path().join("other");
        other.token_file = Some(token_file);
        other.spiffe_id = "spiffe://cluster.local/ns/kube-system/sa/admin".into();
        let e = fetch_once(&other).await.expect_err("refused");
        assert!(e.to_string().contains("403"), "{e}");
    }
}
