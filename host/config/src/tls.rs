//! The mesh-security part of the schema: listener and cluster TLS, peer authorization,
//! client-certificate forwarding and the certificate agent. Names follow Istio and Envoy:
//! PeerAuthentication modes, AuthorizationPolicy `from.source`, Envoy's
//! `forward_client_cert_details`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// PeerAuthentication mode of a listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// mTLS only: a client without a valid certificate is refused.
    #[default]
    Strict,
    /// mTLS and plaintext on the same port, told apart by the first bytes.
    Permissive,
    /// Plaintext only (the TLS block is ignored).
    Disable,
}

/// Lowest TLS version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum TlsVersion {
    /// TLS 1.2 (and 1.3).
    #[default]
    #[serde(rename = "TLSv1_2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "TLSv1_3")]
    Tls13,
}

/// A listener's TLS (server side).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// `strict` (default), `permissive` or `disable`.
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM certificate chain (leaf first), relative to the configuration file. Watched.
    #[serde(default)]
    pub cert_file: String,
    /// PEM private key. Watched.
    #[serde(default)]
    pub key_file: String,
    /// PEM trust bundle clients are verified against. Watched.
    #[serde(default)]
    pub trust_bundle_file: String,
    /// Trust domain clients must belong to; defaults to our own certificate's.
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// ALPN protocols offered, in order (`h2`, `http/1.1`).
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    /// `TLSv1_2` (default) or `TLSv1_3`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Who may connect, by peer identity.
    #[serde(default)]
    pub authorization: Authorization,
}

/// Allow and deny rules on the peer identity (AuthorizationPolicy `from.source`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// Requests from a peer matching any rule pass (all pass when empty).
    #[serde(default)]
    pub allow: Vec<SourceRule>,
    /// Requests from a peer matching any rule get 403 (checked first).
    #[serde(default)]
    pub deny: Vec<SourceRule>,
}

/// One rule; every field given must match (any entry of it). Patterns: exact, `*`, `prefix*`,
/// `*suffix`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRule {
    /// Peer SPIFFE IDs, with or without `spiffe://` (`cluster.local/ns/a/sa/b`).
    #[serde(default)]
    pub principals: Vec<String>,
    /// Peer namespaces (`/ns/<ns>/` of the SPIFFE ID).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Peer trust domains.
    #[serde(default)]
    pub trust_domains: Vec<String>,
}

/// Envoy's `forward_client_cert_details`: what happens to `x-forwarded-client-cert`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardClientCertDetails {
    /// Remove the header (default).
    #[default]
    Sanitize,
    /// Forward it unchanged on mTLS connections (removed otherwise).
    ForwardOnly,
    /// On mTLS connections append this hop's client details (removed otherwise).
    AppendForward,
    /// On mTLS connections replace it with this hop's client details (removed otherwise).
    SanitizeSet,
    /// Forward it unchanged whatever the connection.
    AlwaysForwardOnly,
}

/// A cluster's TLS (client side).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// SNI sent (none when unset and the endpoint is an IP).
    #[serde(default)]
    pub sni: Option<String>,
    /// PEM certificate chain presented to the upstream. Watched.
    pub cert_file: String,
    /// PEM private key. Watched.
    pub key_file: String,
    /// PEM trust bundle the upstream is verified against. Watched.
    pub trust_bundle_file: String,
    /// Trust domain the upstream must belong to; defaults to our own certificate's.
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// SPIFFE IDs (or patterns) the upstream must have; any in the trust domain when empty.
    #[serde(default)]
    pub match_identities: Vec<String>,
    /// ALPN offered; defaults to `h2` for `protocol: http2`, `http/1.1` otherwise.
    #[serde(default)]
    pub alpn: Vec<String>,
    /// `TLSv1_2` (default) or `TLSv1_3`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// With labels here, TLS is used only to the endpoints whose `labels` include all of them;
    /// the others are reached in plaintext (Envoy's `transport_socket_matches`, Istio's auto
    /// mTLS: `{ tlsMode: istio }`). Unset: every endpoint over TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_match: Option<std::collections::BTreeMap<String, String>>,
}

impl ClusterTls {
    /// Whether an endpoint with `labels` is reached over TLS.
    pub fn applies_to(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.endpoint_match
            .as_ref()
            .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }
}

/// The certificate agent (istio-agent's role): gets this sidecar's certificate from a
/// `weft ca serve` endpoint with a locally generated key and renews it before expiry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// `host:port` of the CA's signing endpoint (HTTPS).
    pub ca_address: String,
    /// PEM bundle the CA endpoint's certificate is verified against (also written out as the
    /// workload's trust bundle until the CA sends its own).
    pub ca_trust_bundle_file: String,
    /// File holding the bootstrap token (used when no valid certificate is held yet).
    #[serde(default)]
    pub bootstrap_token_file: Option<String>,
    /// The SPIFFE ID requested.
    pub spiffe_id: String,
    /// Directory where `cert.pem`, `key.pem` (mode 0600) and `bundle.pem` are written; point
    /// listener and cluster `tls` at these files.
    pub output_dir: String,
    /// Certificate lifetime requested.
    #[serde(default = "default_identity_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Renew when this fraction of the lifetime has passed (0.1–0.9).
    #[serde(default = "default_renew_fraction")]
    pub renew_fraction: f64,
}

fn default_alpn() -> Vec<String> {
    vec!["h2".to_owned(), "http/1.1".to_owned()]
}

fn default_identity_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_renew_fraction() -> f64 {
    0.5
}
