//! The authz plugin's pure parts, natively: its settings parser and policy evaluation, path
//! normalisation (idempotent, so a path cannot mean two things to two policies), and JWT
//! decoding, signature checks and claim validation. Never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_authz::config::Compiled;
use weft_authz::jwt::{self, Jwks};
use weft_authz::policy::{RequestAttrs, normalize_path};

fuzz_target!(|data: &[u8]| {
    // settings JSON \0 path \0 token \0 header lines
    let mut parts = data.split(|b| *b == 0);
    let settings = parts.next().unwrap_or_default();
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let token = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let headers: Vec<(String, String)> = String::from_utf8_lossy(parts.next().unwrap_or_default())
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();

    let normalized = normalize_path(&path);
    assert_eq!(
        normalize_path(&normalized),
        normalized,
        "normalize_path is not idempotent for {path:?}"
    );

    let jwks = Jwks::hmac_secret(b"fuzz-secret");
    let mut principal = None;
    let mut claims = None;
    if let Ok(t) = jwt::decode(&token) {
        let _ = t.issuer();
        if t.verify_signature(&jwks).is_ok()
            && t.validate_claims("fuzz", &["aud".to_owned()], 1_700_000_000, 60)
                .is_ok()
        {
            principal = t.principal();
            claims = Some(t.claims.clone());
        }
    }
    if let Ok(compiled) = Compiled::parse(settings) {
        let attrs = RequestAttrs {
            method: "GET".into(),
            host: "api.example.com".into(),
            path: normalized,
            destination_port: Some(8080),
            source_ip: "10.1.2.3".parse().ok(),
            peer_principal: Some("cluster.local/ns/default/sa/web".into()),
            headers,
            request_principal: principal,
            claims,
            ..RequestAttrs::default()
        };
        let evaluation = compiled.policies.evaluate(&attrs);
        let _ = compiled
            .policies
            .denial_needs_credentials(&evaluation.verdict);
    }
});
