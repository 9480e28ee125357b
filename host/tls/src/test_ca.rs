//! A throw-away root CA for this crate's tests (the real one is `weft-ca`, which depends on
//! this crate).

use std::time::Duration;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// A self-signed root.
pub(crate) struct TestCa {
    key: KeyPair,
    cert_pem: String,
}

/// A leaf certificate and its key, PEM.
pub(crate) struct Leaf {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

impl TestCa {
    pub(crate) fn new(trust_domain: &str) -> TestCa {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "Test Root CA");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::from_secs(60);
        p.not_after = now + Duration::from_secs(3600);
        let cert_pem = p.self_signed(&key).expect("self-sign").pem();
        TestCa { key, cert_pem }
    }

    /// The trust bundle.
    pub(crate) fn bundle_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// A workload certificate for `spiffe_id`, valid for `ttl` (from a minute ago).
    pub(crate) fn issue(&self, spiffe_id: &str, ttl: Duration) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::default();
        let uri = Ia5String::try_from(spiffe_id).expect("URI SAN");
        p.subject_alt_names = vec![SanType::URI(uri)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::from_secs(60);
        p.not_after = now + ttl;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).expect("issuer");
        let cert = p.signed_by(&key, &issuer).expect("sign");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}
