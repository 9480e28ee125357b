//! rustls verifiers for mesh peers: the chain is verified against the *current* trust bundle
//! (so a rotated bundle takes effect for the next handshake), then the leaf's identity is
//! checked instead of a DNS name: exactly one URI SAN, no NUL, a SPIFFE ID in the expected
//! trust domain, optionally among allowed identities.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore};

use crate::creds::Credentials;
use crate::peer::{IdentityPolicy, SanError};

/// Which extended key usage the leaf must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server.
    Server,
    /// TLS client.
    Client,
}

/// Verifies `leaf` (with `intermediates`) up to a root of `roots`, now.
pub fn verify_chain(
    roots: &RootCertStore,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    usage: Usage,
) -> Result<(), Error> {
    verify_chain_at(roots, leaf, intermediates, usage, UnixTime::now())
}

fn verify_chain_at(
    roots: &RootCertStore,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    usage: Usage,
    now: UnixTime,
) -> Result<(), Error> {
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(pki_error)?;
    let algs = crate::provider().signature_verification_algorithms.all;
    let eku = match usage {
        Usage::Server => webpki::KeyUsage::server_auth(),
        Usage::Client => webpki::KeyUsage::client_auth(),
    };
    cert.verify_for_usage(algs, &roots.roots, intermediates, now, eku, None, None)
        .map(|_| ())
        .map_err(pki_error)
}

fn pki_error(e: webpki::Error) -> Error {
    use webpki::Error as E;
    let c = match e {
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        other => {
            CertificateError::Other(rustls::OtherError(Arc::new(ChainError(other.to_string()))))
        }
    };
    Error::InvalidCertificate(c)
}

#[derive(Debug)]
struct ChainError(String);
impl std::fmt::Display for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ChainError {}

fn identity_error(e: SanError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

/// The identity rules of one side, resolved per handshake: an explicit trust domain, or else
/// our own certificate's.
#[derive(Debug, Clone)]
pub struct PeerRules {
    /// Required trust domain; `None` means the trust domain of our own SPIFFE ID (any when we
    /// have none).
    pub trust_domain: Option<String>,
    /// Allowed peer identities (patterns); any when empty.
    pub allowed: Vec<String>,
}

/// Where a verifier's trust bundle comes from.
#[derive(Debug, Clone)]
pub enum Roots {
    /// The bundle of rotating credentials (and their trust domain as the default).
    Creds(Arc<Credentials>),
    /// A fixed bundle (e.g. the CA bundle of a workload that has no certificate yet).
    Fixed(Arc<RootCertStore>),
}

impl Roots {
    fn get(&self) -> (Arc<RootCertStore>, Option<String>) {
        match self {
            Roots::Creds(c) => {
                let m = c.current();
                (m.roots.clone(), m.trust_domain().map(str::to_owned))
            }
            Roots::Fixed(r) => (r.clone(), None),
        }
    }
}

impl PeerRules {
    fn policy(&self, own_td: Option<String>) -> IdentityPolicy {
        IdentityPolicy {
            trust_domain: self.trust_domain.clone().or(own_td),
            allowed: self.allowed.clone(),
        }
    }
}

/// Verifies servers (used by clusters): chain against the bundle, then the SPIFFE identity.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Roots,
    rules: PeerRules,
}

impl SpiffeServerVerifier {
    /// A verifier using `creds`' bundle.
    pub fn new(creds: Arc<Credentials>, rules: PeerRules) -> SpiffeServerVerifier {
        SpiffeServerVerifier {
            roots: Roots::Creds(creds),
            rules,
        }
    }

    /// A verifier using a fixed bundle.
    pub fn with_roots(roots: Roots, rules: PeerRules) -> SpiffeServerVerifier {
        SpiffeServerVerifier { roots, rules }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let (roots, own_td) = self.roots.get();
        verify_chain_at(&roots, end_entity, intermediates, Usage::Server, now)?;
        self.rules
            .policy(own_td)
            .check(end_entity)
            .map_err(identity_error)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        handshake_signature(Tls::V12, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        handshake_signature(Tls::V13, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        crate::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[derive(Clone, Copy)]
enum Tls {
    V12,
    V13,
}

/// The handshake signature check both verifiers share (our provider's algorithms).
fn handshake_signature(
    version: Tls,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, Error> {
    let algs = &crate::provider().signature_verification_algorithms;
    match version {
        Tls::V12 => rustls::crypto::verify_tls12_signature(message, cert, dss, algs),
        Tls::V13 => rustls::crypto::verify_tls13_signature(message, cert, dss, algs),
    }
}

/// Verifies clients (used by listeners): chain against the bundle, then the SPIFFE identity.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    creds: Arc<Credentials>,
    rules: PeerRules,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    /// A verifier using `creds`' bundle; `mandatory` refuses clients without a certificate.
    pub fn new(creds: Arc<Credentials>, rules: PeerRules, mandatory: bool) -> SpiffeClientVerifier {
        SpiffeClientVerifier {
            creds,
            rules,
            mandatory,
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let m = self.creds.current();
        verify_chain_at(&m.roots, end_entity, intermediates, Usage::Client, now)?;
        self.rules
            .policy(m.trust_domain().map(str::to_owned))
            .check(end_entity)
            .map_err(identity_error)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        handshake_signature(Tls::V12, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        handshake_signature(Tls::V13, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        crate::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
