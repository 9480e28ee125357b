//! JSON Web Tokens (RFC 7519) signed with HS256, RS256 or ES256, and JSON Web Key Sets
//! (RFC 7517). Pure: the caller passes the time and the keys.
//!
//! What is refused: `alg: none` and every other algorithm, an algorithm that does not fit the
//! key type (an RSA public key used as an HMAC secret, …), a key whose `alg` or `use` says it is
//! for something else, `crit` headers, RSA moduli under 2048 bits, and tokens over
//! [`MAX_TOKEN_BYTES`].

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Verifier as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The longest token looked at; longer ones are malformed (Envoy's header limit is 60 KiB, a
/// real token is rarely over 2 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The most keys a JWKS may hold.
pub const MAX_KEYS: usize = 64;
/// The most keys a token's signature is tried against (when it has no `kid`).
const MAX_CANDIDATES: usize = 8;
/// The smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// Base64url, padding optional (some JWKS publishers pad `n` and `e`).
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Base64url without padding, for encoding (tests and tools).
pub fn b64_encode(bytes: &[u8]) -> String {
    general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url with or without padding.
pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    B64.decode(text).ok()
}

/// Why a token was refused. [`JwtError::code`] is the reason sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts of JSON, or too long.
    Malformed,
    /// `alg` is not HS256, RS256 or ES256 (or `crit` is set).
    UnsupportedAlg,
    /// No key of the provider fits the token's `kid` and `alg`.
    UnknownKey,
    /// The signature does not verify.
    InvalidSignature,
    /// `exp` is in the past (beyond the clock skew).
    Expired,
    /// `nbf` is in the future (beyond the clock skew).
    NotYetValid,
    /// `aud` names none of the provider's audiences.
    Audience,
    /// `iss` is not the provider's issuer.
    Issuer,
}

impl JwtError {
    /// The machine-readable reason (`jwt_expired`, …).
    pub fn code(self) -> &'static str {
        match self {
            JwtError::Malformed => "jwt_malformed",
            JwtError::UnsupportedAlg => "jwt_unsupported_alg",
            JwtError::UnknownKey => "jwt_unknown_key",
            JwtError::InvalidSignature => "jwt_invalid_signature",
            JwtError::Expired => "jwt_expired",
            JwtError::NotYetValid => "jwt_not_yet_valid",
            JwtError::Audience => "jwt_audience",
            JwtError::Issuer => "jwt_issuer",
        }
    }

    /// A sentence for the reply body.
    pub fn message(self) -> &'static str {
        match self {
            JwtError::Malformed => "the bearer token is not a well-formed JWT",
            JwtError::UnsupportedAlg => "the JWT's algorithm is not accepted",
            JwtError::UnknownKey => "no key matches the JWT's key id and algorithm",
            JwtError::InvalidSignature => "the JWT's signature is invalid",
            JwtError::Expired => "the JWT has expired",
            JwtError::NotYetValid => "the JWT is not valid yet",
            JwtError::Audience => "the JWT's audience is not accepted",
            JwtError::Issuer => "the JWT's issuer is not accepted",
        }
    }
}

/// A signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// HMAC with SHA-256.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl Alg {
    fn parse(name: &str) -> Option<Alg> {
        match name {
            "HS256" => Some(Alg::Hs256),
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            _ => None,
        }
    }
}

/// Verification key material.
#[derive(Clone)]
pub enum KeyMaterial {
    /// An HMAC secret (`kty: oct`, or the provider's `secret`).
    Hmac(Vec<u8>),
    /// An RSA public key.
    Rsa(Box<rsa::pkcs1v15::VerifyingKey<Sha256>>),
    /// A P-256 public key.
    Ec(Box<p256::ecdsa::VerifyingKey>),
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyMaterial::Hmac(_) => "Hmac(..)",
            KeyMaterial::Rsa(_) => "Rsa(..)",
            KeyMaterial::Ec(_) => "Ec(..)",
        })
    }
}

impl KeyMaterial {
    fn alg(&self) -> Alg {
        match self {
            KeyMaterial::Hmac(_) => Alg::Hs256,
            KeyMaterial::Rsa(_) => Alg::Rs256,
            KeyMaterial::Ec(_) => Alg::Es256,
        }
    }
}

/// One verification key.
#[derive(Debug, Clone)]
pub struct Key {
    /// `kid`, when the JWK has one.
    pub kid: Option<String>,
    /// The key.
    pub material: KeyMaterial,
}

/// A JSON Web Key Set, reduced to the keys this plugin can verify with.
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    /// The usable keys.
    pub keys: Vec<Key>,
}

impl Jwks {
    /// Parses a JWKS document. Keys of other types, curves, algorithms or uses are skipped
    /// (a JWKS often also publishes encryption keys); an RSA key under 2048 bits, or a key that
    /// claims a supported type but does not decode, is an error. A set with no usable key is an
    /// error.
    pub fn parse(json: &[u8]) -> Result<Jwks, String> {
        let doc: Value =
            serde_json::from_slice(json).map_err(|e| format!("not JSON: {}", strip_pos(&e)))?;
        let Some(list) = doc.get("keys").and_then(Value::as_array) else {
            return Err("no `keys` array".into());
        };
        if list.len() > MAX_KEYS {
            return Err(format!("more than {MAX_KEYS} keys"));
        }
        let mut keys = Vec::new();
        for (i, jwk) in list.iter().enumerate() {
            match parse_jwk(jwk) {
                Ok(Some(key)) => keys.push(key),
                Ok(None) => {}
                Err(e) => return Err(format!("keys[{i}]: {e}")),
            }
        }
        if keys.is_empty() {
            return Err("no usable HS256, RS256 or ES256 key".into());
        }
        Ok(Jwks { keys })
    }

    /// A set holding one HMAC secret.
    pub fn hmac_secret(secret: &[u8]) -> Jwks {
        Jwks {
            keys: vec![Key {
                kid: None,
                material: KeyMaterial::Hmac(secret.to_vec()),
            }],
        }
    }
}

fn strip_pos(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

fn str_field<'a>(jwk: &'a Value, name: &str) -> Option<&'a str> {
    jwk.get(name).and_then(Value::as_str)
}

fn bytes_field(jwk: &Value, name: &str) -> Result<Vec<u8>, String> {
    let text = str_field(jwk, name).ok_or_else(|| format!("`{name}` is missing"))?;
    b64_decode(text).ok_or_else(|| format!("`{name}` is not base64url"))
}

fn parse_jwk(jwk: &Value) -> Result<Option<Key>, String> {
    if let Some(usage) = str_field(jwk, "use")
        && usage != "sig"
    {
        return Ok(None);
    }
    let declared = str_field(jwk, "alg");
    let material = match str_field(jwk, "kty") {
        Some("RSA") => {
            if declared.is_some_and(|a| a != "RS256") {
                return Ok(None);
            }
            let n = bytes_field(jwk, "n")?;
            let e = bytes_field(jwk, "e")?;
            let n = rsa::BigUint::from_bytes_be(&n);
            if n.bits() < MIN_RSA_BITS {
                return Err(format!(
                    "RSA modulus of {} bits is under {MIN_RSA_BITS}",
                    n.bits()
                ));
            }
            let public = rsa::RsaPublicKey::new(n, rsa::BigUint::from_bytes_be(&e))
                .map_err(|e| format!("invalid RSA key: {e}"))?;
            KeyMaterial::Rsa(Box::new(rsa::pkcs1v15::VerifyingKey::new(public)))
        }
        Some("EC") => {
            if str_field(jwk, "crv") != Some("P-256") || declared.is_some_and(|a| a != "ES256") {
                return Ok(None);
            }
            let x = bytes_field(jwk, "x")?;
            let y = bytes_field(jwk, "y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes".into());
            }
            let point = p256::EncodedPoint::from_affine_coordinates(
                p256::FieldBytes::from_slice(&x),
                p256::FieldBytes::from_slice(&y),
                false,
            );
            let key = p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                .map_err(|_| "the point is not on P-256".to_owned())?;
            KeyMaterial::Ec(Box::new(key))
        }
        Some("oct") => {
            if declared.is_some_and(|a| a != "HS256") {
                return Ok(None);
            }
            let k = bytes_field(jwk, "k")?;
            if k.len() < 32 {
                return Err("an HS256 key must be at least 32 bytes".into());
            }
            KeyMaterial::Hmac(k)
        }
        _ => return Ok(None),
    };
    Ok(Some(Key {
        kid: str_field(jwk, "kid").map(str::to_owned),
        material,
    }))
}

/// A decoded (not yet verified) token.
#[derive(Debug, Clone)]
pub struct Token<'a> {
    alg: Alg,
    kid: Option<String>,
    /// The claims.
    pub claims: Map<String, Value>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

/// Decodes a compact JWS. Fails on anything but three base64url parts whose first two are
/// JSON objects, an unsupported `alg`, or a `crit` header.
pub fn decode(token: &str) -> Result<Token<'_>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header = json_object(h)?;
    let claims = json_object(p)?;
    let signature = b64_decode(s).ok_or(JwtError::Malformed)?;
    if header.contains_key("crit") {
        return Err(JwtError::UnsupportedAlg);
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(Alg::parse)
        .ok_or(JwtError::UnsupportedAlg)?;
    let kid = header.get("kid").and_then(Value::as_str).map(str::to_owned);
    Ok(Token {
        alg,
        kid,
        claims,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
    })
}

fn json_object(part: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = b64_decode(part).ok_or(JwtError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed),
    }
}

impl Token<'_> {
    /// The `iss` claim.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    /// Verifies the signature with the keys of `jwks` that fit the token's `kid` and `alg`.
    pub fn verify_signature(&self, jwks: &Jwks) -> Result<(), JwtError> {
        let candidates = jwks.keys.iter().filter(|k| {
            k.material.alg() == self.alg
                && match (&self.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        });
        let mut tried = 0;
        for key in candidates.take(MAX_CANDIDATES) {
            tried += 1;
            if verify(
                &key.material,
                self.signing_input.as_bytes(),
                &self.signature,
            ) {
                return Ok(());
            }
        }
        if tried == 0 {
            Err(JwtError::UnknownKey)
        } else {
            Err(JwtError::InvalidSignature)
        }
    }

    /// Checks `iss`, `aud` (when `audiences` is not empty), `exp` and `nbf` at `now` (seconds
    /// since the epoch) with `skew` seconds of tolerance.
    pub fn validate_claims(
        &self,
        issuer: &str,
        audiences: &[String],
        now: u64,
        skew: u64,
    ) -> Result<(), JwtError> {
        if self.issuer() != Some(issuer) {
            return Err(JwtError::Issuer);
        }
        if let Some(exp) = self.claims.get("exp") {
            let exp = exp.as_f64().ok_or(JwtError::Malformed)?;
            if (now as f64) > exp + skew as f64 {
                return Err(JwtError::Expired);
            }
        }
        if let Some(nbf) = self.claims.get("nbf") {
            let nbf = nbf.as_f64().ok_or(JwtError::Malformed)?;
            if (now as f64) + (skew as f64) < nbf {
                return Err(JwtError::NotYetValid);
            }
        }
        if !audiences.is_empty() {
            let ok = match self.claims.get("aud") {
                Some(Value::String(a)) => audiences.contains(a),
                Some(Value::Array(list)) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| audiences.iter().any(|want| want == a)),
                _ => false,
            };
            if !ok {
                return Err(JwtError::Audience);
            }
        }
        Ok(())
    }

    /// Istio's request principal: `iss/sub`.
    pub fn principal(&self) -> Option<String> {
        let iss = self.issuer()?;
        let sub = self.claims.get("sub").and_then(Value::as_str)?;
        Some(format!("{iss}/{sub}"))
    }
}

fn verify(key: &KeyMaterial, message: &[u8], signature: &[u8]) -> bool {
    match key {
        KeyMaterial::Hmac(secret) => {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                return false;
            };
            mac.update(message);
            mac.verify_slice(signature).is_ok()
        }
        KeyMaterial::Rsa(key) => rsa::pkcs1v15::Signature::try_from(signature)
            .is_ok_and(|sig| key.verify(message, &sig).is_ok()),
        KeyMaterial::Ec(key) => {
            // JWS carries ECDSA signatures as r || s, 32 bytes each (RFC 7518 §3.4), not DER.
            signature.len() == 64
                && p256::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|sig| key.verify(message, &sig).is_ok())
        }
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
pub(crate) mod test_keys {
    //! Keys and signers for tests: generated once per test process.

    use super::*;
    use p256::ecdsa::signature::Signer as _;
    use serde_json::json;
    use std::sync::OnceLock;

    pub const HS_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";

    pub fn rsa_key() -> &'static rsa::RsaPrivateKey {
        static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| {
            let mut rng = rand_core::OsRng;
            rsa::RsaPrivateKey::new(&mut rng, 2048).expect("rsa keygen")
        })
    }

    pub fn ec_key() -> &'static p256::ecdsa::SigningKey {
        static KEY: OnceLock<p256::ecdsa::SigningKey> = OnceLock::new();
        KEY.get_or_init(|| p256::ecdsa::SigningKey::random(&mut rand_core::OsRng))
    }

    pub fn rsa_jwk(kid: &str) -> Value {
        use rsa::traits::PublicKeyParts;
        let public = rsa_key().to_public_key();
        json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
               "n": b64_encode(&public.n().to_bytes_be()), "e": b64_encode(&public.e().to_bytes_be())})
    }

    pub fn ec_jwk(kid: &str) -> Value {
        let point = ec_key().verifying_key().to_encoded_point(false);
        json!({"kty": "EC", "crv": "P-256", "kid": kid,
               "x": b64_encode(point.x().expect("x")), "y": b64_encode(point.y().expect("y"))})
    }

    pub fn oct_jwk(kid: &str) -> Value {
        json!({"kty": "oct", "kid": kid, "k": b64_encode(HS_SECRET)})
    }

    /// Signs `claims` with `alg` (`HS256`, `RS256`, `ES256`, or anything else unsigned).
    pub fn sign(alg: &str, kid: Option<&str>, claims: &Value) -> String {
        let mut header = json!({"alg": alg, "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        let input = format!(
            "{}.{}",
            b64_encode(header.to_string().as_bytes()),
            b64_encode(claims.to_string().as_bytes())
        );
        let sig = match alg {
            "HS256" => {
                let mut mac = Hmac::<Sha256>::new_from_slice(HS_SECRET).expect("mac");
                mac.update(input.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
            "RS256" => {
                let key = rsa::pkcs1v15::SigningKey::<Sha256>::new(rsa_key().clone());
                let sig: rsa::pkcs1v15::Signature = key.sign(input.as_bytes());
                rsa::signature::SignatureEncoding::to_vec(&sig)
            }
            "ES256" => {
                let sig: p256::ecdsa::Signature = ec_key().sign(input.as_bytes());
                sig.to_bytes().to_vec()
            }
            _ => Vec::new(),
        };
        format!("{input}.{}", b64_encode(&sig))
    }
}

#[cfg(test)]
mod tests {
    use super::test_keys::*;
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn claims() -> Value {
        json!({"iss": "https://issuer.example", "sub": "alice", "aud": ["api", "other"],
               "exp": NOW + 300, "nbf": NOW - 10, "groups": ["admin"]})
    }

    fn all_keys() -> Jwks {
        Jwks::parse(
            json!({"keys": [rsa_jwk("r1"), ec_jwk("e1"), oct_jwk("h1"),
                            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
                            {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]})
            .to_string()
            .as_bytes(),
        )
        .expect("jwks")
    }

    fn check(token: &str, jwks: &Jwks, audiences: &[&str], now: u64) -> Result<(), JwtError> {
        let t = decode(token)?;
        t.verify_signature(jwks)?;
        let aud: Vec<String> = audiences.iter().map(|s| (*s).to_owned()).collect();
        t.validate_claims("https://issuer.example", &aud, now, 60)
    }

    #[test]
    fn each_algorithm_verifies() {
        let jwks = all_keys();
        assert_eq!(jwks.keys.len(), 3, "enc and OKP keys skipped");
        for (alg, kid) in [("HS256", "h1"), ("RS256", "r1"), ("ES256", "e1")] {
            let token = sign(alg, Some(kid), &claims());
            assert_eq!(check(&token, &jwks, &["api"], NOW), Ok(()), "{alg}");
            let no_kid = sign(alg, None, &claims());
            assert_eq!(check(&no_kid, &jwks, &[], NOW), Ok(()), "{alg} without kid");
            let t = decode(&token).expect("decode");
            assert_eq!(
                t.principal().as_deref(),
                Some("https://issuer.example/alice")
            );
        }
    }

    #[test]
    fn tampering_and_wrong_keys_fail() {
        let jwks = all_keys();
        for alg in ["HS256", "RS256", "ES256"] {
            let token = sign(alg, None, &claims());
            let (input, _) = token.rsplit_once('.').expect("parts");
            let (header, _) = input.split_once('.').expect("parts");
            let forged =
                json!({"iss": "https://issuer.example", "sub": "mallory", "exp": NOW + 300});
            let tampered = format!(
                "{header}.{}.{}",
                b64_encode(forged.to_string().as_bytes()),
                token.rsplit_once('.').expect("sig").1
            );
            assert_eq!(
                check(&tampered, &jwks, &[], NOW),
                Err(JwtError::InvalidSignature),
                "{alg}"
            );
        }
        let token = sign("RS256", Some("nope"), &claims());
        assert_eq!(check(&token, &jwks, &[], NOW), Err(JwtError::UnknownKey));
        // Only an HMAC key in the set: an RS256 token has no candidate.
        let hs_only = Jwks::hmac_secret(HS_SECRET);
        assert_eq!(
            check(&sign("RS256", None, &claims()), &hs_only, &[], NOW),
            Err(JwtError::UnknownKey)
        );
    }

    #[test]
    fn algorithm_confusion_and_none_are_refused() {
        // HS256 "signed" with the RSA public key's bytes as the secret: there is no oct key in
        // this set, so the token finds no candidate key.
        let rsa_only =
            Jwks::parse(json!({"keys": [rsa_jwk("r1")]}).to_string().as_bytes()).expect("jwks");
        assert_eq!(
            check(&sign("HS256", Some("r1"), &claims()), &rsa_only, &[], NOW),
            Err(JwtError::UnknownKey)
        );
        assert_eq!(
            check(&sign("none", None, &claims()), &all_keys(), &[], NOW),
            Err(JwtError::UnsupportedAlg)
        );
        assert_eq!(
            check(&sign("HS512", None, &claims()), &all_keys(), &[], NOW),
            Err(JwtError::UnsupportedAlg)
        );
        // A key that declares another alg is skipped.
        let mut jwk = rsa_jwk("r1");
        jwk["alg"] = json!("PS256");
        assert!(
            Jwks::parse(json!({"keys": [jwk]}).to_string().as_bytes()).is_err(),
            "no usable key"
        );
        // crit
        let header = b64_encode(br#"{"alg":"HS256","crit":["exp"]}"#);
        let body = b64_encode(claims().to_string().as_bytes());
        assert_eq!(
            decode(&format!("{header}.{body}.AAAA")).err(),
            Some(JwtError::UnsupportedAlg)
        );
    }

    #[test]
    fn claims_are_checked() {
        let jwks = all_keys();
        let token = sign("HS256", None, &claims());
        assert_eq!(
            check(&token, &jwks, &["api"], NOW + 300 + 60),
            Ok(()),
            "inside the skew"
        );
        assert_eq!(
            check(&token, &jwks, &["api"], NOW + 300 + 61),
            Err(JwtError::Expired)
        );
        assert_eq!(
            check(&token, &jwks, &["api"], NOW - 71),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(check(&token, &jwks, &["web"], NOW), Err(JwtError::Audience));
        let mut c = claims();
        c["aud"] = json!("api");
        assert_eq!(
            check(&sign("HS256", None, &c), &jwks, &["api"], NOW),
            Ok(()),
            "string aud"
        );
        c["iss"] = json!("https://evil.example");
        assert_eq!(
            check(&sign("HS256", None, &c), &jwks, &["api"], NOW),
            Err(JwtError::Issuer)
        );
        let mut c = claims();
        c["exp"] = json!("tomorrow");
        assert_eq!(
            check(&sign("HS256", None, &c), &jwks, &[], NOW),
            Err(JwtError::Malformed)
        );
        let mut c = claims();
        c.as_object_mut().expect("obj").remove("aud");
        assert_eq!(
            check(&sign("HS256", None, &c), &jwks, &["api"], NOW),
            Err(JwtError::Audience)
        );
    }

    #[test]
    fn garbage_never_panics() {
        for bad in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b.c.d",
            "!!!.???.***",
            "eyJhbGciOiJIUzI1NiJ9..",
            "eyJhbGciOiJIUzI1NiJ9.W10.AA", // payload is an array
            "\u{0}\u{1}.\u{ff}.x",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(decode(&long).err(), Some(JwtError::Malformed));
        // A short ES256 signature is simply invalid.
        let token = sign("ES256", None, &claims());
        let (input, _) = token.rsplit_once('.').expect("parts");
        let short = format!("{input}.{}", b64_encode(&[1u8; 10]));
        assert_eq!(
            check(&short, &all_keys(), &[], NOW),
            Err(JwtError::InvalidSignature)
        );
    }

    #[test]
    fn jwks_errors_say_why() {
        assert!(Jwks::parse(b"nope").expect_err("json").contains("not JSON"));
        assert!(Jwks::parse(b"{}").expect_err("keys").contains("keys"));
        let e =
            Jwks::parse(br#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#).expect_err("small");
        assert!(e.contains("keys[0]: RSA modulus"), "{e}");
        let e = Jwks::parse(br#"{"keys":[{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"}]}"#)
            .expect_err("short");
        assert!(e.contains("32 bytes"), "{e}");
        let e =
            Jwks::parse(br#"{"keys":[{"kty":"oct","k":"c2hvcnQ"}]}"#).expect_err("short secret");
        assert!(e.contains("at least 32 bytes"), "{e}");
        use rsa::traits::PublicKeyParts;
        let public = rsa_key().to_public_key();
        let mut padded = rsa_jwk("p");
        padded["n"] = json!(general_purpose::URL_SAFE.encode(public.n().to_bytes_be()));
        padded["e"] = json!(general_purpose::URL_SAFE.encode(public.e().to_bytes_be()));
        assert!(
            Jwks::parse(json!({"keys": [padded]}).to_string().as_bytes()).is_ok(),
            "padding tolerated"
        );
    }
}
