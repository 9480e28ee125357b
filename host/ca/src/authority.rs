//! The built-in CA (Citadel's role): a root or an intermediate, issuing SPIFFE workload
//! certificates directly or from a CSR (so a workload's private key never leaves it).
//!
//! On disk a CA is Istio's "plugged-in CA" layout: `ca-cert.pem`, `ca-key.pem`,
//! `root-cert.pem` and `cert-chain.pem` (the CA certificate up to, not including, the root).
//!
//! CSRs are made by the workload's agent (`weft_tls::agent::new_csr`); files are written with
//! `weft_tls::creds::write_file` (temporary file and rename, private keys 0600).

use std::path::Path;
use std::time::Duration;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use weft_tls::TlsError;
use weft_tls::creds::{parse_bundle, parse_certs, write_file};
use weft_tls::spiffe::{SpiffeId, is_trust_domain};
use weft_tls::verify::{Usage, verify_chain};

/// Clock skew allowed for: certificates start this long before they are issued.
const BACKDATE: Duration = Duration::from_secs(60);
/// Longest workload certificate issued.
pub const MAX_WORKLOAD_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// A CA that can sign: its certificate, key, chain and the root.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
    /// This CA's certificate and any intermediates above it, excluding the root.
    chain_pem: String,
    root_pem: String,
    trust_domain: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// What a workload certificate is issued for.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// The SPIFFE ID (the single URI SAN).
    pub spiffe_id: String,
    /// Lifetime.
    pub ttl: Duration,
    /// Extra DNS SANs (optional).
    pub dns_names: Vec<String>,
}

impl IssueRequest {
    /// A request for `spiffe_id` valid for `ttl`.
    pub fn new(spiffe_id: &str, ttl: Duration) -> IssueRequest {
        IssueRequest {
            spiffe_id: spiffe_id.to_owned(),
            ttl,
            dns_names: Vec::new(),
        }
    }
}

/// An issued certificate.
#[derive(Clone)]
pub struct Issued {
    /// Leaf followed by the CA chain (excluding the root), PEM.
    pub chain_pem: String,
    /// The private key, PEM (empty when issued from a CSR).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    /// The private key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("chain_pem", &self.chain_pem)
            .field(
                "key_pem",
                &if self.key_pem.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

fn ca_err(what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Ca(format!("{what}: {e}"))
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    if weft_tls::provider().secure_random.fill(&mut bytes).is_err() {
        // ring's system RNG does not fail in practice; fall back to the clock.
        bytes = OffsetDateTime::now_utc()
            .unix_timestamp_nanos()
            .to_be_bytes();
    }
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, ttl: Duration) {
    // At most a century: larger values would overflow the date (and mean nothing).
    let ttl = ttl.min(Duration::from_secs(100 * 365 * 24 * 3600));
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + ttl;
}

fn ca_params(
    trust_domain: &str,
    cn: &str,
    ttl: Duration,
    path_len: Option<u8>,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = match path_len {
        Some(n) => IsCa::Ca(BasicConstraints::Constrained(n)),
        None => IsCa::Ca(BasicConstraints::Unconstrained),
    };
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, ttl);
    p
}

impl Ca {
    /// Creates a self-signed root CA for `trust_domain`.
    pub fn new_root(trust_domain: &str, ttl: Duration) -> Result<Ca, TlsError> {
        if !is_trust_domain(trust_domain) {
            return Err(TlsError::Ca(format!(
                "`{trust_domain}` is not a valid trust domain"
            )));
        }
        let key = KeyPair::generate().map_err(|e| ca_err("generating the key", e))?;
        let params = ca_params(trust_domain, "Weft Root CA", ttl, None);
        let cert = params
            .self_signed(&key)
            .map_err(|e| ca_err("self-signing", e))?;
        let pem = cert.pem();
        Ok(Ca {
            cert_pem: pem.clone(),
            key,
            chain_pem: pem.clone(),
            root_pem: pem,
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// Creates an intermediate CA signed by `self`.
    pub fn new_intermediate(&self, ttl: Duration) -> Result<Ca, TlsError> {
        let key = KeyPair::generate().map_err(|e| ca_err("generating the key", e))?;
        let params = ca_params(&self.trust_domain, "Weft Intermediate CA", ttl, Some(0));
        let issuer = self.issuer()?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| ca_err("signing the intermediate", e))?;
        let pem = cert.pem();
        let chain_pem = if self.cert_pem == self.root_pem {
            pem.clone()
        } else {
            format!("{pem}{}", self.chain_pem)
        };
        Ok(Ca {
            cert_pem: pem,
            key,
            chain_pem,
            root_pem: self.root_pem.clone(),
            trust_domain: self.trust_domain.clone(),
        })
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, TlsError> {
        Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(|e| ca_err("reading the CA certificate", e))
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The trust bundle workloads verify peers against (the root certificate).
    pub fn bundle_pem(&self) -> String {
        self.root_pem.clone()
    }

    /// The CA certificate.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn leaf_params(&self, req: &IssueRequest) -> Result<CertificateParams, TlsError> {
        let id = SpiffeId::parse(&req.spiffe_id).map_err(|e| TlsError::Ca(e.to_string()))?;
        if id.trust_domain() != self.trust_domain {
            return Err(TlsError::Ca(format!(
                "`{}` is outside this CA's trust domain `{}`",
                req.spiffe_id, self.trust_domain
            )));
        }
        if req.ttl.is_zero() || req.ttl > MAX_WORKLOAD_TTL {
            return Err(TlsError::Ca("ttl must be within 1s..=90d".into()));
        }
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, self.trust_domain.as_str());
        p.distinguished_name = dn;
        let uri = Ia5String::try_from(id.to_string()).map_err(|e| ca_err("URI SAN", e))?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        for d in &req.dns_names {
            let name = Ia5String::try_from(d.as_str()).map_err(|e| ca_err("DNS SAN", e))?;
            p.subject_alt_names.push(SanType::DnsName(name));
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        validity(&mut p, req.ttl);
        Ok(p)
    }

    fn with_chain(&self, leaf_pem: String) -> String {
        if self.cert_pem == self.root_pem {
            leaf_pem
        } else {
            format!("{leaf_pem}{}", self.chain_pem)
        }
    }

    /// Issues a certificate and a fresh key (for operators and tests; workloads use CSRs).
    pub fn issue(&self, req: &IssueRequest) -> Result<Issued, TlsError> {
        let params = self.leaf_params(req)?;
        let key = KeyPair::generate().map_err(|e| ca_err("generating the key", e))?;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(|e| ca_err("signing", e))?;
        Ok(Issued {
            chain_pem: self.with_chain(cert.pem()),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a CSR for `req.spiffe_id` (the identity the caller was authorized for). Only the
    /// CSR's public key is used: its requested names and extensions are replaced, and a CSR
    /// asking for a different URI SAN is refused.
    pub fn sign_csr(&self, csr_pem: &str, req: &IssueRequest) -> Result<String, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| ca_err("parsing the CSR", e))?;
        for san in &csr.params.subject_alt_names {
            if let SanType::URI(u) = san
                && u.as_str() != req.spiffe_id
            {
                return Err(TlsError::Ca(format!(
                    "CSR asks for `{}`, caller is authorized for `{}`",
                    u.as_str(),
                    req.spiffe_id
                )));
            }
        }
        let params = self.leaf_params(req)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer()?)
            .map_err(|e| ca_err("signing", e))?;
        Ok(self.with_chain(cert.pem()))
    }

    /// Writes the CA in Istio's plugged-in layout; the key file is created mode 0600.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_owned(),
            source,
        })?;
        write_file(&dir.join("ca-cert.pem"), &self.cert_pem, false)?;
        write_file(&dir.join("ca-key.pem"), &self.key.serialize_pem(), true)?;
        write_file(&dir.join("root-cert.pem"), &self.root_pem, false)?;
        write_file(&dir.join("cert-chain.pem"), &self.chain_pem, false)?;
        Ok(())
    }

    /// Loads a CA saved by [`Ca::save`] (or Istio's plugged-in CA files).
    pub fn load(dir: &Path) -> Result<Ca, TlsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| TlsError::Read { path, source })
        };
        let cert_pem = read("ca-cert.pem")?;
        let key_pem = read("ca-key.pem")?;
        let root_pem = read("root-cert.pem")?;
        let chain_pem = read("cert-chain.pem").unwrap_or_else(|_| cert_pem.clone());
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Pem {
            path: dir.join("ca-key.pem"),
            what: format!("not a usable private key: {e}"),
        })?;
        let path = dir.join("ca-cert.pem");
        let der = parse_certs(&path, cert_pem.as_bytes())?;
        let trust_domain = trust_domain_of(&der[0]).ok_or_else(|| TlsError::Pem {
            path: path.clone(),
            what: "the CA certificate's subject has no O (organization) naming a trust domain"
                .into(),
        })?;
        let ca = Ca {
            cert_pem,
            key,
            chain_pem,
            root_pem,
            trust_domain,
        };
        // The key must belong to the certificate: sign something and check it chains.
        let probe = ca.issue(&IssueRequest::new(
            &format!("spiffe://{}/probe", ca.trust_domain),
            Duration::from_secs(60),
        ))?;
        let leaf = parse_certs(&path, probe.chain_pem.as_bytes())?;
        let roots = parse_bundle(&dir.join("root-cert.pem"), ca.root_pem.as_bytes())?;
        verify_chain(&roots, &leaf[0], &leaf[1..], Usage::Server).map_err(|_| {
            TlsError::KeyMismatch {
                cert: path,
                key: dir.join("ca-key.pem"),
            }
        })?;
        Ok(ca)
    }
}

fn trust_domain_of(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let org = cert.subject().iter_organization().next()?;
    let td = org.as_str().ok()?.to_owned();
    is_trust_domain(&td).then_some(td)
}

/// The URI SAN a CSR asks for (exactly one required).
pub fn csr_uri(csr_pem: &str) -> Result<String, TlsError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| ca_err("parsing the CSR", e))?;
    let uris: Vec<String> = csr
        .params
        .subject_alt_names
        .iter()
        .filter_map(|s| match s {
            SanType::URI(u) => Some(u.as_str().to_owned()),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(TlsError::Ca(format!(
            "the CSR must ask for exactly one URI SAN (it has {})",
            uris.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_intermediate_issue_and_csr() {
        let root = Ca::new_root("cluster.local", Duration::from_secs(3600)).expect("root");
        let inter = root
            .new_intermediate(Duration::from_secs(3600))
            .expect("intermediate");
        let issued = inter
            .issue(&IssueRequest::new(
                "spiffe://cluster.local/ns/a/sa/b",
                Duration::from_secs(60),
            ))
            .expect("issue");
        let p = Path::new("x.pem");
        let chain = parse_certs(p, issued.chain_pem.as_bytes()).expect("chain");
        assert_eq!(chain.len(), 2, "leaf + intermediate");
        let roots = parse_bundle(p, inter.bundle_pem().as_bytes()).expect("roots");
        verify_chain(&roots, &chain[0], &chain[1..], Usage::Client).expect("chains to the root");

        let (csr, _key) =
            weft_tls::agent::new_csr("spiffe://cluster.local/ns/a/sa/b").expect("csr");
        let req = IssueRequest::new("spiffe://cluster.local/ns/a/sa/b", Duration::from_secs(60));
        inter.sign_csr(&csr, &req).expect("signed");
        let other = IssueRequest::new("spiffe://cluster.local/ns/a/sa/x", Duration::from_secs(60));
        assert!(
            inter.sign_csr(&csr, &other).is_err(),
            "identity mismatch refused"
        );
        let foreign = IssueRequest::new("spiffe://evil.org/ns/a/sa/b", Duration::from_secs(60));
        assert!(
            inter.issue(&foreign).is_err(),
            "foreign trust domain refused"
        );
    }

    #[test]
    fn save_and_load() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = Ca::new_root("example.org", Duration::from_secs(3600)).expect("root");
        root.save(dir.path()).expect("save");
        let loaded = Ca::load(dir.path()).expect("load");
        assert_eq!(loaded.trust_domain(), "example.org");
        // A key of another CA is refused.
        let other = Ca::new_root("example.org", Duration::from_secs(3600)).expect("other");
        std::fs::write(dir.path().join("ca-key.pem"), other.key.serialize_pem()).expect("w");
        assert!(Ca::load(dir.path()).is_err());
    }
}
