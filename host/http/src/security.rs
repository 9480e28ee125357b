//! The downstream connection's security as the request path sees it: TLS parameters and the
//! verified peer identity, peer authorization, Istio's `connection_security_policy`, and
//! `x-forwarded-client-cert`.

use http::HeaderValue;
use http::header::{HeaderMap, HeaderName};
use weft_config::schema::{self, ForwardClientCertDetails};
use weft_tls::PeerIdentity;
use weft_tls::authz::{Authorization, Decision, SourceRule};
use weft_tls::creds::Credentials;

/// `x-forwarded-client-cert`.
pub static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Istio's `connection_security_policy` label values.
pub mod policy {
    /// mTLS with a verified peer certificate.
    pub const MUTUAL_TLS: &str = "mutual_tls";
    /// Plaintext.
    pub const NONE: &str = "none";
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

/// Builds a listener's authorization rules from its configuration.
pub fn authorization(cfg: &schema::ListenerTls) -> Authorization {
    Authorization {
        allow: rules(&cfg.authorization.allow),
        deny: rules(&cfg.authorization.deny),
    }
}

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

/// Whether a request from `sec` passes `authorization`.
pub fn authorize(authorization: &Authorization, sec: Option<&ConnSecurity>) -> Decision {
    if authorization.is_empty() {
        return Decision::Allow;
    }
    let peer = sec.and_then(|s| s.peer.as_ref()).map(|p| &p.spiffe);
    authorization.decide(peer)
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
