//! The authz plugin's real `.wasm` in Weft's host (weft-plugin-test): policies, JWT (HS256,
//! RS256, ES256; inline and fetched JWKS), API keys, external authorization, metrics and
//! configuration errors.
#![expect(
    clippy::expect_used,
    reason = "token and plugin helpers outside #[test] functions report failure by panicking"
)]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};
use sha2::Sha256;
use weft_plugin_test::{CannedResponse, LocalReply, Outcome, TestPlugin};

const SECRET: &str = "harness-secret-0123456789abcdef0123456789";
const ISSUER: &str = "https://issuer.test";

// === tokens ===

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa_key() -> &'static rsa::RsaPrivateKey {
    static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("rsa keygen"))
}

fn ec_key() -> &'static p256::ecdsa::SigningKey {
    static KEY: OnceLock<p256::ecdsa::SigningKey> = OnceLock::new();
    KEY.get_or_init(|| p256::ecdsa::SigningKey::random(&mut rand_core::OsRng))
}

fn jwks() -> Value {
    let public = rsa_key().to_public_key();
    let point = ec_key().verifying_key().to_encoded_point(false);
    json!({"keys": [
        {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig",
         "n": b64(&public.n().to_bytes_be()), "e": b64(&public.e().to_bytes_be())},
        {"kty": "EC", "crv": "P-256", "kid": "ec-1",
         "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y"))}
    ]})
}

fn sign(alg: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = match alg {
        "HS256" => {
            let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("mac");
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
    format!("{input}.{}", b64(&sig))
}

fn start() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn now(plugin: &TestPlugin) -> u64 {
    plugin
        .clock()
        .now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

fn claims(plugin: &TestPlugin, sub: &str) -> Value {
    json!({"iss": ISSUER, "sub": sub, "aud": "orders", "exp": now(plugin) + 300,
           "groups": ["dev"], "email": "alice@example.com"})
}

fn load(config: Value) -> TestPlugin {
    TestPlugin::builder(weft_plugin_test::this_plugin!())
        .configuration_json(config)
        .start_time(start())
        .load()
        .expect("the plugin loads")
}

fn reply(out: Outcome) -> LocalReply {
    out.expect_reply()
}

#[track_caller]
fn assert_rejected(out: Outcome, status: u16, reason: &str) -> LocalReply {
    let r = reply(out);
    assert_eq!(r.status, status, "{}", r.body_text());
    assert_eq!(
        r.header("x-weft-authz-reason").as_deref(),
        Some(reason),
        "{}",
        r.body_text()
    );
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let body = r.json();
    let code = if status == 401 {
        "unauthenticated"
    } else {
        "forbidden"
    };
    assert_eq!(body["error"], code);
    assert_eq!(body["reason"], reason);
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    r
}

// === policies ===

fn policy_config() -> Value {
    json!({"policies": [
        {"name": "no-admin", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}]},
        {"name": "public", "action": "ALLOW", "rules": [
            {"to": [{"operation": {"methods": ["GET", "HEAD"], "paths": ["/public/*", "/admin/*"]}}]},
            {"from": [{"source": {"ip_blocks": ["10.0.0.0/8"], "not_principals": ["cluster.local/ns/untrusted/*"]}}],
             "to": [{"operation": {"paths": ["/internal/*"], "ports": ["8443"]}}]}
        ]},
        {"name": "watch-exports", "action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["*.csv"]}}]}]}
    ]})
}

#[test]
fn deny_before_allow_and_no_allow_match() {
    let plugin = load(policy_config());
    assert!(
        plugin
            .request()
            .path("/public/a?x=1")
            .send_request()
            .is_continue()
    );
    let r = assert_rejected(
        plugin.request().path("/admin/users").send_request(),
        403,
        "denied_by_policy:no-admin",
    );
    assert!(r.header("www-authenticate").is_none());
    // Normalized before matching: no way around the DENY with dot segments or escapes.
    for sneaky in [
        "/public/../admin/users",
        "//admin/users",
        "/%61dmin/users",
        "/public/./../admin/x",
    ] {
        assert_rejected(
            plugin.request().path(sneaky).send_request(),
            403,
            "denied_by_policy:no-admin",
        );
    }
    assert_rejected(
        plugin.request().path("/other").send_request(),
        403,
        "no_allow_match",
    );
    assert_rejected(
        plugin
            .request()
            .method("POST")
            .path("/public/a")
            .send_request(),
        403,
        "no_allow_match",
    );
    assert_eq!(
        plugin.counter("authz_decisions_total;decision=allow"),
        Some(1)
    );
    assert_eq!(
        plugin.counter("authz_decisions_total;decision=deny"),
        Some(7)
    );
    assert_eq!(
        plugin.counter("authz_denials_total;reason=denied_by_policy"),
        Some(5)
    );
    assert_eq!(
        plugin.counter("authz_denials_total;reason=no_allow_match"),
        Some(2)
    );
    assert_eq!(
        plugin.counter("authz_policy_matches_total;policy=no-admin;action=DENY"),
        Some(5)
    );
}

#[test]
fn sources_ports_and_audit() {
    let plugin = load(policy_config());
    let internal = |ip: &str, port: u64, peer: Option<&str>| {
        let mut ex = plugin
            .request()
            .path("/internal/report.csv")
            .property("source.address", format!("{ip}:5555"))
            .property_u64("destination.port", port);
        if let Some(peer) = peer {
            ex = ex.property("connection.uri_san_peer_certificate", peer);
        }
        ex.send_request()
    };
    assert!(internal("10.1.2.3", 8443, None).is_continue());
    assert_rejected(internal("192.168.1.1", 8443, None), 403, "no_allow_match");
    assert_rejected(internal("10.1.2.3", 8080, None), 403, "no_allow_match");
    assert!(
        internal(
            "10.1.2.3",
            8443,
            Some("spiffe://cluster.local/ns/web/sa/app")
        )
        .is_continue()
    );
    assert_rejected(
        internal(
            "10.1.2.3",
            8443,
            Some("spiffe://cluster.local/ns/untrusted/sa/x"),
        ),
        403,
        "no_allow_match",
    );
    // AUDIT matched every one of them, and changed no decision.
    assert_eq!(
        plugin.counter("authz_decisions_total;decision=audit"),
        Some(5)
    );
    assert_eq!(
        plugin.counter("authz_policy_matches_total;policy=watch-exports;action=AUDIT"),
        Some(5)
    );
    assert!(plugin.logged("audit: policy watch-exports matched GET /internal/report.csv"));
}

#[test]
fn no_policies_allow_everything() {
    let plugin = load(json!({}));
    assert!(
        plugin
            .request()
            .path("/anything")
            .send_request()
            .is_continue()
    );
    assert_eq!(
        plugin.counter("authz_decisions_total;decision=allow"),
        Some(1)
    );
}

// === JWT ===

fn jwt_config() -> Value {
    json!({
        "jwt": {"providers": [{
            "name": "main", "issuer": ISSUER, "audiences": ["orders"],
            "secret": SECRET, "jwks": jwks(),
            "output_claim_to_headers": [{"header": "x-user-email", "claim": "email"}]
        }]},
        "policies": [
            {"name": "admins-only", "action": "DENY", "rules": [{
                "to": [{"operation": {"paths": ["/admin/*"]}}],
                "when": [{"key": "request.auth.claims[groups]", "not_values": ["admin"]}]
            }]},
            {"name": "signed-in", "action": "ALLOW", "rules": [
                {"from": [{"source": {"request_principals": ["https://issuer.test/*"]}}]},
                {"to": [{"operation": {"paths": ["/health"]}}]}
            ]}
        ]
    })
}

#[test]
fn jwt_each_algorithm_is_accepted() {
    let plugin = load(jwt_config());
    for (alg, kid) in [
        ("HS256", None),
        ("RS256", Some("rsa-1")),
        ("ES256", Some("ec-1")),
        ("ES256", None),
    ] {
        let token = sign(alg, kid, &claims(&plugin, "alice"));
        let mut ex = plugin
            .request()
            .path("/orders")
            .header("authorization", &format!("Bearer {token}"))
            .header("x-user-email", "forged@example.com");
        assert_eq!(ex.send_request(), Outcome::Continue, "{alg}");
        // The token is not forwarded; the claim header is the plugin's, not the client's.
        assert_eq!(ex.request_header("authorization"), None, "{alg}");
        assert_eq!(
            ex.request_header("x-user-email").as_deref(),
            Some("alice@example.com")
        );
    }
    assert_eq!(
        plugin.counter("authz_decisions_total;decision=allow"),
        Some(4)
    );
}

#[test]
fn jwt_failures_are_401_with_the_reason() {
    let plugin = load(jwt_config());
    let send = |token: &str| {
        plugin
            .request()
            .path("/orders")
            .header("authorization", &format!("Bearer {token}"))
            .send_request()
    };
    // Expired: only once the clock is past exp + the 60 s skew.
    let token = sign("RS256", Some("rsa-1"), &claims(&plugin, "alice"));
    plugin.clock().advance(Duration::from_secs(300 + 60));
    assert!(send(&token).is_continue(), "inside the clock skew");
    plugin.clock().advance(Duration::from_secs(2));
    let r = assert_rejected(send(&token), 401, "jwt_expired");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer") && v.contains("invalid_token"))
    );

    let mut c = claims(&plugin, "alice");
    c["aud"] = json!("billing");
    assert_rejected(send(&sign("ES256", Some("ec-1"), &c)), 401, "jwt_audience");
    let mut c = claims(&plugin, "alice");
    c["iss"] = json!("https://evil.test");
    assert_rejected(send(&sign("HS256", None, &c)), 401, "jwt_issuer");
    // Someone else's claims under a valid signature.
    let good = sign("HS256", None, &claims(&plugin, "alice"));
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims(&plugin, "root").to_string().as_bytes()),
        parts[2]
    );
    assert_rejected(send(&forged), 401, "jwt_invalid_signature");
    assert_rejected(
        send(&sign("none", None, &claims(&plugin, "alice"))),
        401,
        "jwt_unsupported_alg",
    );
    assert_rejected(
        send(&sign("RS256", Some("unknown"), &claims(&plugin, "a"))),
        401,
        "jwt_unknown_key",
    );
    assert_rejected(send("not-a-jwt"), 401, "jwt_malformed");
    assert_rejected(send(&"A".repeat(40_000)), 401, "jwt_malformed");
    // Bytes outside the base64url alphabet (obs-text: a DEL would be refused by the proxy's
    // HTTP parser before any plugin, and the harness refuses it likewise).
    assert_rejected(send("e30.e30.\u{80}\u{ff}"), 401, "jwt_malformed");
    assert_eq!(
        plugin.counter("authz_decisions_total;decision=unauthenticated"),
        Some(9)
    );
    assert_eq!(
        plugin.counter("authz_denials_total;reason=jwt_expired"),
        Some(1)
    );
    assert!(!plugin.is_broken());
}

#[test]
fn missing_token_is_401_only_where_credentials_are_needed() {
    let plugin = load(jwt_config());
    assert!(
        plugin
            .request()
            .path("/health")
            .send_request()
            .is_continue()
    );
    let r = assert_rejected(
        plugin.request().path("/orders").send_request(),
        401,
        "no_credentials",
    );
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"weft\"")
    );
    // A token in the query (access_token) works too, and is removed from the path.
    let token = sign("HS256", None, &claims(&plugin, "bob"));
    let mut ex = plugin
        .request()
        .path(&format!("/orders?access_token={token}&page=2"));
    assert!(ex.send_request().is_continue());
    assert_eq!(
        ex.request_header(":path").as_deref(),
        Some("/orders?page=2")
    );
    // Signed in but not an admin: 403 from the DENY policy that reads claims.
    let token = sign("HS256", None, &claims(&plugin, "bob"));
    assert_rejected(
        plugin
            .request()
            .path("/admin/x")
            .header("authorization", &format!("Bearer {token}"))
            .send_request(),
        403,
        "denied_by_policy:admins-only",
    );
    let mut admin = claims(&plugin, "root");
    admin["groups"] = json!(["dev", "admin"]);
    let token = sign("HS256", None, &admin);
    assert!(
        plugin
            .request()
            .path("/admin/x")
            .header("authorization", &format!("Bearer {token}"))
            .send_request()
            .is_continue()
    );
}

// === fetched JWKS ===

fn remote_config() -> Value {
    json!({
        "jwt": {"providers": [{
            "name": "idp", "issuer": ISSUER,
            "jwks_uri": "https://idp.test/.well-known/jwks.json", "jwks_cluster": "idp",
            "cache_duration_seconds": 300
        }]},
        "policies": [{"name": "signed-in", "action": "ALLOW", "rules": [
            {"from": [{"source": {"request_principals": ["*"]}}]}]}]
    })
}

fn remote_plugin() -> TestPlugin {
    TestPlugin::builder(weft_plugin_test::this_plugin!())
        .configuration_json(remote_config())
        .start_time(start())
        .callout("idp", CannedResponse::new(200).json(&jwks()))
        .load()
        .expect("loads")
}

#[test]
fn jwks_is_fetched_on_tick_cached_and_refreshed() {
    let plugin = remote_plugin();
    assert!(plugin.tick(), "a tick period is set");
    let calls = plugin.callouts();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].cluster, "idp");
    assert_eq!(
        calls[0].header(":path").as_deref(),
        Some("/.well-known/jwks.json")
    );
    assert_eq!(calls[0].header(":authority").as_deref(), Some("idp.test"));
    assert_eq!(
        plugin.counter("authz_jwks_fetch_total;cluster=idp;result=success"),
        Some(1)
    );

    for alg in ["RS256", "ES256", "RS256"] {
        let kid = if alg == "RS256" { "rsa-1" } else { "ec-1" };
        let token = sign(alg, Some(kid), &claims(&plugin, "alice"));
        let out = plugin
            .request()
            .header("authorization", &format!("Bearer {token}"))
            .send_request();
        assert_eq!(out, Outcome::Continue, "{alg}");
    }
    plugin.tick();
    assert_eq!(
        plugin.callouts().len(),
        1,
        "cached: no new fetch while fresh"
    );

    plugin.clock().advance(Duration::from_secs(301));
    plugin.tick();
    assert_eq!(
        plugin.callouts().len(),
        2,
        "refetched after the cache duration"
    );
    assert_eq!(
        plugin.counter("authz_jwks_fetch_total;cluster=idp;result=success"),
        Some(2)
    );

    // A failed refresh keeps the keys it had.
    plugin.set_callout("idp", CannedResponse::new(500));
    plugin.clock().advance(Duration::from_secs(301));
    plugin.tick();
    assert_eq!(
        plugin.counter("authz_jwks_fetch_total;cluster=idp;result=error"),
        Some(1)
    );
    assert!(plugin.logged("JWKS fetch from cluster idp"));
    let token = sign("RS256", Some("rsa-1"), &claims(&plugin, "alice"));
    assert!(
        plugin
            .request()
            .header("authorization", &format!("Bearer {token}"))
            .send_request()
            .is_continue()
    );
    // The next tick is within the backoff: no new call.
    plugin.tick();
    assert_eq!(plugin.callouts().len(), 3);
}

#[test]
fn a_refreshed_jwks_drops_removed_keys_even_for_cached_tokens() {
    let plugin = remote_plugin();
    plugin.tick();
    let token = sign("RS256", Some("rsa-1"), &claims(&plugin, "alice"));
    let send = || {
        plugin
            .request()
            .header("authorization", &format!("Bearer {token}"))
            .send_request()
    };
    for _ in 0..4 {
        assert_eq!(
            send(),
            Outcome::Continue,
            "verified, then served from the cache"
        );
    }
    let mut rotated = jwks();
    rotated["keys"].as_array_mut().expect("keys").remove(0);
    plugin.set_callout("idp", CannedResponse::new(200).json(&rotated));
    plugin.clock().advance(Duration::from_secs(301));
    plugin.tick();
    assert_eq!(plugin.callouts().len(), 2);
    for _ in 0..2 {
        assert_rejected(send(), 401, "jwt_unknown_key");
    }
}

#[test]
fn first_request_fetches_the_jwks_itself() {
    let plugin = remote_plugin();
    let token = sign("ES256", Some("ec-1"), &claims(&plugin, "alice"));
    let out = plugin
        .request()
        .header("authorization", &format!("Bearer {token}"))
        .send_request();
    assert_eq!(out, Outcome::Continue);
    assert_eq!(plugin.callouts().len(), 1);
    // The fetched set is in shared data: the next tick does not fetch again.
    plugin.tick();
    assert_eq!(plugin.callouts().len(), 1);
    let out = plugin
        .request()
        .header("authorization", &format!("Bearer {token}"))
        .send_request();
    assert_eq!(out, Outcome::Continue);
    assert_eq!(plugin.callouts().len(), 1);
}

#[test]
fn unreachable_jwks_is_401() {
    let plugin = TestPlugin::builder(weft_plugin_test::this_plugin!())
        .configuration_json(remote_config())
        .start_time(start())
        .failing_callout("idp")
        .load()
        .expect("loads");
    let token = sign("RS256", Some("rsa-1"), &claims(&plugin, "alice"));
    assert_rejected(
        plugin
            .request()
            .header("authorization", &format!("Bearer {token}"))
            .send_request(),
        401,
        "jwks_unavailable",
    );
    assert_eq!(
        plugin.counter("authz_jwks_fetch_total;cluster=idp;result=error"),
        Some(1)
    );
}

// === API keys ===

#[test]
fn api_keys() {
    let plugin = load(json!({
        "api_keys": {"keys": [{"name": "ci", "key": "ci-secret-0123456789"},
                              {"name": "ops", "key_sha256": "6de6bca2d1e4d3c1fa3c2a4ff7c4b0bd8a6f5b7e22f1d1b2c3e4f5a6b7c8d9e0"}],
                     "from_query": "api_key"},
        "policies": [{"name": "ci-only-deploy", "action": "DENY", "rules": [{
            "from": [{"source": {"not_request_principals": ["api-key/ci"]}}],
            "to": [{"operation": {"paths": ["/deploy"]}}]}]}]
    }));
    assert_rejected(plugin.request().send_request(), 401, "no_credentials");
    assert_rejected(
        plugin
            .request()
            .header("x-api-key", "wrong-key-0123456789")
            .send_request(),
        401,
        "api_key_invalid",
    );
    let mut ex = plugin
        .request()
        .path("/deploy")
        .header("x-api-key", "ci-secret-0123456789");
    assert!(ex.send_request().is_continue());
    assert_eq!(
        ex.request_header("x-api-key"),
        None,
        "the key is not forwarded"
    );
    assert!(
        plugin
            .request()
            .path("/deploy?api_key=ci-secret-0123456789")
            .send_request()
            .is_continue()
    );
    let r = reply(plugin.request().header("x-api-key", "wrong").send_request());
    assert!(
        r.header("www-authenticate").is_none(),
        "no Bearer challenge without JWT providers"
    );
    assert_eq!(
        plugin.counter("authz_denials_total;reason=api_key_invalid"),
        Some(2)
    );
}

// === external authorization ===

fn ext_config(failure_mode_allow: bool) -> Value {
    json!({"ext_authz": {
        "cluster": "authz", "path_prefix": "/check", "timeout_ms": 500,
        "allowed_request_headers": ["authorization", "x-tenant-*"],
        "headers_to_upstream": ["x-user-id"],
        "headers_to_client": ["www-authenticate", "content-type"],
        "failure_mode_allow": failure_mode_allow
    }})
}

fn ext_plugin(failure_mode_allow: bool, answer: Option<CannedResponse>) -> TestPlugin {
    let b = TestPlugin::builder(weft_plugin_test::this_plugin!())
        .configuration_json(ext_config(failure_mode_allow))
        .start_time(start());
    let b = match answer {
        Some(a) => b.callout("authz", a),
        None => b.failing_callout("authz"),
    };
    b.load().expect("loads")
}

#[test]
fn ext_authz_allows_and_copies_headers_upstream() {
    let plugin = ext_plugin(
        false,
        Some(
            CannedResponse::new(200)
                .header("x-user-id", "u-42")
                .header("x-other", "no"),
        ),
    );
    let mut ex = plugin
        .request()
        .method("POST")
        .path("/orders?id=1")
        .authority("shop.test")
        .header("authorization", "Basic abc")
        .header("x-tenant-id", "acme")
        .header("cookie", "s=1")
        .header("x-user-id", "forged");
    assert_eq!(ex.send_request(), Outcome::Continue);
    assert_eq!(ex.request_header("x-user-id").as_deref(), Some("u-42"));
    assert_eq!(ex.request_header("x-other"), None);
    let calls = plugin.callouts();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.cluster, "authz");
    assert_eq!(call.header(":path").as_deref(), Some("/check/orders?id=1"));
    assert_eq!(call.header(":method").as_deref(), Some("POST"));
    assert_eq!(call.header(":authority").as_deref(), Some("shop.test"));
    assert_eq!(call.header("authorization").as_deref(), Some("Basic abc"));
    assert_eq!(call.header("x-tenant-id").as_deref(), Some("acme"));
    assert_eq!(
        call.header("cookie"),
        None,
        "not in allowed_request_headers"
    );
    assert_eq!(call.timeout, Duration::from_millis(500));
    assert_eq!(
        plugin.counter("authz_ext_authz_total;result=allow"),
        Some(1)
    );
}

#[test]
fn ext_authz_denial_is_forwarded_to_the_client() {
    let plugin = ext_plugin(
        false,
        Some(
            CannedResponse::new(401)
                .header("www-authenticate", "Basic realm=\"shop\"")
                .header("x-internal", "secret")
                .header("content-type", "text/plain")
                .body("who are you?"),
        ),
    );
    let r = reply(plugin.request().send_request());
    assert_eq!(r.status, 401);
    assert_eq!(r.body_text(), "who are you?");
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Basic realm=\"shop\"")
    );
    assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(r.header("x-internal"), None, "not in headers_to_client");
    assert_eq!(
        r.header("x-weft-authz-reason").as_deref(),
        Some("ext_authz_denied")
    );
    plugin.set_callout("authz", CannedResponse::new(403));
    let r = assert_rejected(plugin.request().send_request(), 403, "ext_authz_denied");
    assert_eq!(r.json()["error"], "forbidden");
    assert_eq!(plugin.counter("authz_ext_authz_total;result=deny"), Some(2));
}

#[test]
fn ext_authz_unavailable_fails_closed_or_open() {
    let closed = ext_plugin(false, None);
    assert_rejected(
        closed.request().send_request(),
        403,
        "ext_authz_unavailable",
    );
    closed.set_callout("authz", CannedResponse::new(503));
    assert_rejected(
        closed.request().send_request(),
        403,
        "ext_authz_unavailable",
    );
    assert_eq!(
        closed.counter("authz_ext_authz_total;result=error"),
        Some(2)
    );

    let open = ext_plugin(true, None);
    let mut ex = open
        .request()
        .header("x-weft-authz-failure-mode-allowed", "forged");
    assert_eq!(ex.send_request(), Outcome::Continue);
    assert_eq!(
        ex.request_header("x-weft-authz-failure-mode-allowed")
            .as_deref(),
        Some("true")
    );
    let mut ex = open.request();
    assert_eq!(ex.send_request(), Outcome::Continue);
    open.set_callout("authz", CannedResponse::new(200));
    let mut ex = open
        .request()
        .header("x-weft-authz-failure-mode-allowed", "forged");
    assert_eq!(ex.send_request(), Outcome::Continue);
    assert_eq!(
        ex.request_header("x-weft-authz-failure-mode-allowed"),
        None,
        "a client cannot forge it"
    );
    assert_eq!(
        open.counter("authz_ext_authz_total;result=error_allowed"),
        Some(2)
    );
}

#[test]
fn custom_policies_select_what_goes_to_ext_authz() {
    let mut config = ext_config(false);
    config["policies"] = json!([{"name": "ext-for-api", "action": "CUSTOM",
                                 "rules": [{"to": [{"operation": {"paths": ["/api/*"]}}]}]}]);
    let plugin = TestPlugin::builder(weft_plugin_test::this_plugin!())
        .configuration_json(config)
        .callout("authz", CannedResponse::new(403))
        .load()
        .expect("loads");
    assert!(
        plugin
            .request()
            .path("/static/app.js")
            .send_request()
            .is_continue()
    );
    assert!(plugin.callouts().is_empty());
    assert_rejected(
        plugin.request().path("/api/x").send_request(),
        403,
        "ext_authz_denied",
    );
    assert_eq!(plugin.callouts().len(), 1);
}

// === configuration ===

#[test]
fn bad_configurations_are_refused_naming_the_field() {
    for (config, needle) in [
        (
            json!({"policies": [{"name": "p", "action": "ALLOW", "rules": [{"from": [{"source": {"ip_blocks": ["10.0.0.0/33"]}}]}]}]}),
            "policies[0].rules[0].from[0].source.ip_blocks[0]: invalid CIDR \"10.0.0.0/33\"",
        ),
        (
            json!({"policies": [{"name": "p", "action": "PERMIT"}]}),
            "policies[0].action",
        ),
        (
            json!({"jwt": {"providers": [{"name": "p", "issuer": "i", "secret": "short"}]}}),
            "jwt.providers[0].secret",
        ),
        (
            json!({"ext_authz": {"cluster": "c", "status_on_error": 42}}),
            "ext_authz.status_on_error",
        ),
        (json!({"unknown": 1}), "unknown field `unknown`"),
    ] {
        let failure = TestPlugin::builder(weft_plugin_test::this_plugin!())
            .configuration_json(config.clone())
            .load()
            .err()
            .unwrap_or_else(|| panic!("{config} was accepted"));
        assert!(failure.logged(needle), "{config}: {:?}", failure.logs);
    }
}
