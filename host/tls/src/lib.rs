//! Mesh security for Weft: the security half of a service mesh, done natively with rustls.
//!
//! - [`spiffe`]: SPIFFE IDs (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`) and principal patterns.
//! - [`peer`]: what a peer certificate says (its single URI SAN, subject, hash), checked strictly.
//! - [`verify`]: rustls verifiers that check the chain against the trust bundle, then the URI SAN
//!   instead of a DNS name.
//! - [`creds`]: certificate, key and bundle loaded from files, validated, swapped atomically on
//!   change (rotation without restart, followed with `weft-watch`; bad material is refused and
//!   the old keeps serving).
//! - [`config`]: rustls server and client configurations (TLS 1.2/1.3, ECDHE suites only).
//! - [`authz`]: listener authorization rules on the peer's identity.
//! - [`agent`]: the sidecar's renewing client: keeps a workload certificate from the CA in
//!   place, speaking [`ca_protocol`] with the CA's signing endpoint.
//!
//! The CA itself (issuing, signing, `weft ca serve`) is the crate `weft-ca`, built on this one.

#![forbid(unsafe_code)]

pub mod agent;
pub mod authz;
pub mod ca_protocol;
pub mod config;
pub mod creds;
pub mod error;
pub mod peer;
pub mod spiffe;
pub mod verify;

#[cfg(test)]
pub(crate) mod test_ca;

pub use error::TlsError;
pub use peer::PeerIdentity;
pub use spiffe::SpiffeId;

/// The crypto provider every Weft TLS config uses: ring, ECDHE key exchange only.
///
/// rustls implements no static-RSA or non-ephemeral suites, so every suite it offers is
/// forward-secret; the list is still spelled out so a new default cannot widen it silently.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite as cs, default_provider};
    let mut p = default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    std::sync::Arc::new(p)
}
