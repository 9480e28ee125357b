//! The CA's signing endpoint (`weft ca serve`): HTTPS, HTTP/1.1.
//!
//! - `POST /v1/sign` with a PEM CSR as the body. The caller is authenticated either by its
//!   current workload certificate (mTLS: it may only renew its own SPIFFE ID) or by a bootstrap
//!   token (`authorization: Bearer <token>`: it may ask for IDs matching the token's pattern).
//!   The optional `x-weft-ttl` header asks for a lifetime in seconds (capped). The answer is the
//!   PEM chain (leaf first). Only public keys travel: the workload keeps its private key.
//! - `GET /v1/bundle`: the trust bundle (root certificate), PEM.

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

use crate::TlsError;
use crate::ca::{Ca, IssueRequest, csr_uri};
use crate::config::{MinVersion, ServerOptions};
use crate::creds::Credentials;
use crate::spiffe::{SpiffeId, pattern_matches};
use crate::verify::PeerRules;

/// Largest CSR accepted.
const MAX_BODY: usize = 16 * 1024;

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

/// The identity the signing endpoint presents (agents accept no other):
/// `spiffe://<td>/ns/weft-system/sa/weft-ca`.
pub fn ca_identity(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/ns/weft-system/sa/weft-ca")
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
    let config = crate::config::server_config(
        creds,
        &ServerOptions {
            alpn: vec![b"http/1.1".to_vec()],
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
                .and_then(|leaf| crate::peer::identity(leaf).ok())
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
        (&Method::GET, "/v1/bundle") => reply(StatusCode::OK, state.ca.bundle_pem()),
        (&Method::POST, "/v1/sign") => {
            let token = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned);
            let ttl = req
                .headers()
                .get("x-weft-ttl")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(state.opts.default_ttl, Duration::from_secs)
                .min(state.opts.max_ttl);
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
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
