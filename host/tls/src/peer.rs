//! What a certificate says about its holder, read strictly: an X509-SVID carries exactly one
//! URI SAN, a SPIFFE ID, and no SAN entry may hide a NUL byte.

use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::{SpiffeError, SpiffeId, pattern_matches};

/// Why a certificate's identity is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SanError {
    /// Not a parsable X.509 certificate (or its SAN extension is malformed).
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
    /// No URI SAN.
    #[error("certificate has no URI SAN (SPIFFE ID)")]
    NoUriSan,
    /// More than one URI SAN: ambiguous identity.
    #[error("certificate has {0} URI SANs; exactly one SPIFFE ID is allowed")]
    SeveralUriSans(usize),
    /// A SAN entry with a NUL byte (a classic name-truncation attack).
    #[error("certificate has a SAN entry containing a NUL byte")]
    Nul,
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN is not a SPIFFE ID: {0}")]
    NotSpiffe(#[from] SpiffeError),
    /// Trust domain differs from the expected one.
    #[error("peer trust domain `{got}` is not `{want}`")]
    WrongTrustDomain {
        /// The peer's.
        got: String,
        /// Ours.
        want: String,
    },
    /// The SPIFFE ID is not among the allowed identities.
    #[error("peer identity `{0}` is not among the allowed identities")]
    NotAllowed(String),
}

/// A peer's identity as read from its leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The SPIFFE ID (the single URI SAN).
    pub spiffe: SpiffeId,
    /// The URI SAN exactly as in the certificate.
    pub uri_san: String,
    /// The subject DN (RFC 4514 form), possibly empty.
    pub subject: String,
    /// SHA-256 of the DER certificate, lowercase hex (XFCC `Hash`).
    pub hash_hex: String,
    /// The leaf certificate, PEM-free DER.
    pub der: Vec<u8>,
}

/// Facts about a certificate needed beyond the identity.
#[derive(Debug, Clone)]
pub struct CertFacts {
    /// URI SANs.
    pub uri_sans: Vec<String>,
    /// Subject DN.
    pub subject: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// Whether any SAN entry contains NUL.
    pub has_nul: bool,
}

/// Parses `der` and gathers its SANs, subject and validity.
pub fn facts(der: &[u8]) -> Result<CertFacts, SanError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| SanError::Parse(e.to_string()))?;
    let mut uri_sans = Vec::new();
    let mut has_nul = false;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SanError::Parse(e.to_string()))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            let text: Option<&str> = match name {
                GeneralName::URI(u) => {
                    uri_sans.push((*u).to_owned());
                    Some(u)
                }
                GeneralName::DNSName(d) => Some(d),
                GeneralName::RFC822Name(e) => Some(e),
                _ => None,
            };
            if text.is_some_and(|t| t.contains('\0')) {
                has_nul = true;
            }
        }
    }
    Ok(CertFacts {
        uri_sans,
        subject: cert.subject().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        has_nul,
    })
}

/// Reads the single SPIFFE ID of a leaf certificate, refusing NULs and several URI SANs.
pub fn identity(der: &[u8]) -> Result<PeerIdentity, SanError> {
    let f = facts(der)?;
    if f.has_nul {
        return Err(SanError::Nul);
    }
    let uri = match f.uri_sans.as_slice() {
        [] => return Err(SanError::NoUriSan),
        [one] => one.clone(),
        many => return Err(SanError::SeveralUriSans(many.len())),
    };
    let spiffe = SpiffeId::parse(&uri)?;
    Ok(PeerIdentity {
        spiffe,
        uri_san: uri,
        subject: f.subject,
        hash_hex: hex(&Sha256::digest(der)),
        der: der.to_vec(),
    })
}

/// What a verifier demands of a peer's identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityPolicy {
    /// Required trust domain (any when `None`).
    pub trust_domain: Option<String>,
    /// Allowed SPIFFE IDs or patterns (`*`, `prefix*`, `*suffix`); any when empty.
    pub allowed: Vec<String>,
}

impl IdentityPolicy {
    /// Checks `der`'s identity against the policy.
    pub fn check(&self, der: &[u8]) -> Result<PeerIdentity, SanError> {
        let id = identity(der)?;
        if let Some(td) = &self.trust_domain
            && id.spiffe.trust_domain() != td
        {
            return Err(SanError::WrongTrustDomain {
                got: id.spiffe.trust_domain().to_owned(),
                want: td.clone(),
            });
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|p| pattern_matches(p, &id.uri_san))
        {
            return Err(SanError::NotAllowed(id.uri_san));
        }
        Ok(id)
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType, string::Ia5String};

    fn cert_with(sans: Vec<SanType>) -> Vec<u8> {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(Ia5String::try_from(s).expect("ia5"))
    }

    #[test]
    fn one_spiffe_uri_is_accepted() {
        let der = cert_with(vec![uri("spiffe://cluster.local/ns/a/sa/b")]);
        let id = identity(&der).expect("identity");
        assert_eq!(id.spiffe.to_string(), "spiffe://cluster.local/ns/a/sa/b");
        assert_eq!(id.hash_hex.len(), 64);
    }

    #[test]
    fn several_uris_nul_and_missing_are_refused() {
        let two = cert_with(vec![
            uri("spiffe://cluster.local/ns/a/sa/b"),
            uri("spiffe://cluster.local/ns/a/sa/c"),
        ]);
        assert_eq!(identity(&two), Err(SanError::SeveralUriSans(2)));
        let nul = cert_with(vec![uri("spiffe://cluster.local/ns/a/sa/b\0.evil")]);
        assert_eq!(identity(&nul), Err(SanError::Nul));
        let dns_nul = cert_with(vec![
            uri("spiffe://cluster.local/ns/a/sa/b"),
            SanType::DnsName(Ia5String::try_from("a\0b").expect("ia5")),
        ]);
        assert_eq!(identity(&dns_nul), Err(SanError::Nul));
        let none = cert_with(vec![SanType::DnsName(
            Ia5String::try_from("example.com").expect("ia5"),
        )]);
        assert_eq!(identity(&none), Err(SanError::NoUriSan));
        let not_spiffe = cert_with(vec![uri("https://example.com/x")]);
        assert!(matches!(identity(&not_spiffe), Err(SanError::NotSpiffe(_))));
    }

    #[test]
    fn policy_checks_trust_domain_and_identities() {
        let der = cert_with(vec![uri("spiffe://cluster.local/ns/a/sa/b")]);
        let mut p = IdentityPolicy {
            trust_domain: Some("other.org".into()),
            allowed: vec![],
        };
        assert!(matches!(
            p.check(&der),
            Err(SanError::WrongTrustDomain { .. })
        ));
        p.trust_domain = Some("cluster.local".into());
        p.allowed = vec!["spiffe://cluster.local/ns/a/sa/x".into()];
        assert!(matches!(p.check(&der), Err(SanError::NotAllowed(_))));
        p.allowed.push("cluster.local/ns/a/*".into());
        assert!(p.check(&der).is_ok());
    }
}
