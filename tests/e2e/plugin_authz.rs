//! End to end: the shipped `authz` plugin through a running Weft (and once through Envoy 1.40).
//!
//! An echo upstream reports the request it got, so each test checks what went upstream (token
//! stripped, claim headers set) as well as what the client got (401 / 403 with a JSON body and
//! a reason header).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use weft_e2e::envoy::{EnvoyPlugin, TestEnvoy, require_envoy};
use weft_e2e::plugins::shipped_plugin;
use weft_e2e::upstream::{closed_port, echo, serve};
use weft_e2e::{Reply, TestProxy, get_with, metric_value, raw};

/// The HS256 secret the tokens below are signed with.
const SECRET: &str = "e2e-secret-0123456789abcdef0123456789";

/// Tokens signed once with [`SECRET`] (the e2e crate carries no crypto); regenerate with:
///
/// ```text
/// python3 -c 'import hmac,hashlib,base64,json
/// b=lambda x:base64.urlsafe_b64encode(x).rstrip(b"=").decode()
/// s=b"e2e-secret-0123456789abcdef0123456789"
/// h=b(json.dumps({"alg":"HS256","typ":"JWT"},separators=(",",":")).encode())
/// p=b(json.dumps(CLAIMS,separators=(",",":")).encode())
/// print(h+"."+p+"."+b(hmac.new(s,(h+"."+p).encode(),hashlib.sha256).digest()))'
/// ```
///
/// `{"iss":"https://issuer.e2e","sub":"alice","aud":"orders","exp":4102444800,"email":"alice@example.com"}`
const VALID: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2lzc3Vlci5lMmUiLCJzdWIiOiJhbGljZSIsImF1ZCI6Im9yZGVycyIsImV4cCI6NDEwMjQ0NDgwMCwiZW1haWwiOiJhbGljZUBleGFtcGxlLmNvbSJ9.wP5y5nI9CVT6oo1gZRKOTC0of0E5m06EIWROHrA5ONg";
/// `{"iss":"https://issuer.e2e","sub":"alice","aud":"orders","exp":1000000000}` (2001).
const EXPIRED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2lzc3Vlci5lMmUiLCJzdWIiOiJhbGljZSIsImF1ZCI6Im9yZGVycyIsImV4cCI6MTAwMDAwMDAwMH0.kX72-E8aJ89s1x6fGV_0iL3ZT4Sb6-1iPUUe8dKkJIc";

/// A text as a YAML scalar (JSON strings are YAML): the configuration reaches the plugin as is.
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// JWT required everywhere but `/health`; `/admin/*` denied to everyone.
fn jwt_configuration() -> String {
    serde_json::json!({
        "jwt": {"providers": [{
            "name": "e2e", "issuer": "https://issuer.e2e", "audiences": ["orders"], "secret": SECRET,
            "output_claim_to_headers": [{"header": "x-user-email", "claim": "email"}]
        }]},
        "policies": [
            {"name": "no-admin", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}]},
            {"name": "signed-in", "action": "ALLOW", "rules": [
                {"from": [{"source": {"request_principals": ["https://issuer.e2e/*"]}}]},
                {"to": [{"operation": {"paths": ["/health"]}}]}
            ]}
        ]
    })
    .to_string()
}

/// Weft with the plugin (named `name`) on listener `main` in front of `up`, plus `extra`
/// clusters. Plugin metrics are process-wide by plugin name, so tests running side by side
/// use different names.
async fn weft(name: &str, up: SocketAddr, config: &str, extra: &[(&str, SocketAddr)]) -> TestProxy {
    let mut clusters = format!("  - {{ name: up, endpoints: [{{ address: \"{up}\" }}] }}\n");
    for (cluster, addr) in extra {
        clusters.push_str(&format!(
            "  - {{ name: {cluster}, endpoints: [{{ address: \"{addr}\" }}] }}\n"
        ));
    }
    TestProxy::start(&format!(
        r#"
plugins:
  - name: {name}
    file: {file}
    configuration: {config}
    failure_policy: fail_closed
listeners:
  - name: main
    address: 127.0.0.1:0
    plugins: [{{ name: {name} }}]
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: up }} }}]
clusters:
{clusters}"#,
        file = quoted(&shipped_plugin("authz")),
        config = quoted(config),
    ))
    .await
}

#[track_caller]
fn assert_rejected(r: &Reply, status: u16, reason: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(
        r.header("x-weft-authz-reason"),
        Some(reason),
        "{}",
        r.text()
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["reason"], reason, "{body}");
    let error = if status == 401 {
        "unauthenticated"
    } else {
        "forbidden"
    };
    assert_eq!(body["error"], error, "{body}");
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn jwt_and_policies_decide_through_weft() {
    let up = echo("up").await;
    let p = weft("authz-jwt", up, &jwt_configuration(), &[]).await;

    let r = get_with(&p.url("main", "/orders"), &[]).await;
    assert_rejected(&r, 401, "no_credentials");
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"weft\""));

    let r = get_with(
        &p.url("main", "/orders?page=2"),
        &[
            ("authorization", &bearer(VALID)),
            ("x-user-email", "forged@example.com"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["path"], "/orders?page=2");
    assert_eq!(seen["headers"]["x-user-email"], "alice@example.com");
    assert!(
        seen["headers"].get("authorization").is_none(),
        "the token is not forwarded: {seen}"
    );

    let r = get_with(
        &p.url("main", "/admin/users"),
        &[("authorization", &bearer(VALID))],
    )
    .await;
    assert_rejected(&r, 403, "denied_by_policy:no-admin");
    let r = get_with(
        &p.url("main", "/public/../admin/users"),
        &[("authorization", &bearer(VALID))],
    )
    .await;
    assert_eq!(r.status, 403, "dot segments do not get around the DENY");

    let r = get_with(
        &p.url("main", "/orders"),
        &[("authorization", &bearer(EXPIRED))],
    )
    .await;
    assert_rejected(&r, 401, "jwt_expired");
    let r = get_with(
        &p.url("main", "/orders"),
        &[("authorization", "Bearer not.a.jwt")],
    )
    .await;
    assert_rejected(&r, 401, "jwt_malformed");
    let r = get_with(&p.url("main", "/health"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Bytes that are not UTF-8 in the token: refused, never a trap (which would be a 503).
    let answer = raw(
        p.addr("main"),
        b"GET /orders HTTP/1.1\r\nhost: x\r\nauthorization: Bearer \xff\xfe.\xc3(.\x80\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("jwt_malformed"), "{answer}");

    let metrics = p.metrics().await;
    let series = |labels: &str| {
        metric_value(
            &metrics,
            &format!("weft_wasmcustom_authz_decisions_total{{plugin=\"authz-jwt\",{labels}}}"),
        )
    };
    assert_eq!(series("decision=\"allow\""), 2.0, "{metrics}");
    assert_eq!(series("decision=\"deny\""), 2.0, "{metrics}");
    assert_eq!(series("decision=\"unauthenticated\""), 4.0, "{metrics}");
}

/// A small authorization service: `Bearer let-me-in` is user 42, anything else is refused.
async fn authz_service(calls: Arc<AtomicU64>) -> SocketAddr {
    serve(move |req: http::Request<hyper::body::Incoming>| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::Relaxed);
            let ok = req.uri().path().starts_with("/check/")
                && req
                    .headers()
                    .get("authorization")
                    .is_some_and(|v| v == "Bearer let-me-in");
            let builder = http::Response::builder();
            let resp = if ok {
                builder.status(200).header("x-user-id", "42")
            } else {
                builder
                    .status(403)
                    .header("content-type", "text/plain")
                    .header("x-authz-detail", "unknown caller")
            };
            let body = if ok { "" } else { "go away" };
            resp.body(Full::new(Bytes::from(body))).expect("response")
        }
    })
    .await
}

fn ext_configuration(failure_mode_allow: bool) -> String {
    serde_json::json!({"ext_authz": {
        "cluster": "authz-service", "path_prefix": "/check", "timeout_ms": 2000,
        "headers_to_upstream": ["x-user-id"],
        "headers_to_client": ["content-type", "x-authz-detail"],
        "failure_mode_allow": failure_mode_allow
    }})
    .to_string()
}

#[tokio::test]
async fn ext_authz_allows_denies_and_fails_closed_through_weft() {
    let up = echo("up").await;
    let calls = Arc::new(AtomicU64::new(0));
    let service = authz_service(calls.clone()).await;
    let p = weft(
        "authz-ext",
        up,
        &ext_configuration(false),
        &[("authz-service", service)],
    )
    .await;

    let r = get_with(
        &p.url("main", "/orders"),
        &[
            ("authorization", "Bearer let-me-in"),
            ("x-user-id", "forged"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-user-id"], "42");

    let r = get_with(
        &p.url("main", "/orders"),
        &[("authorization", "Bearer nope")],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.text(), "go away");
    assert_eq!(r.header("x-authz-detail"), Some("unknown caller"));
    assert_eq!(r.header("x-weft-authz-reason"), Some("ext_authz_denied"));
    assert_eq!(calls.load(Ordering::Relaxed), 2);

    // The service is down: fail closed (403), or open when configured so.
    let down = closed_port().await;
    let closed = weft(
        "authz-closed",
        up,
        &ext_configuration(false),
        &[("authz-service", down)],
    )
    .await;
    let r = get_with(&closed.url("main", "/orders"), &[]).await;
    assert_rejected(&r, 403, "ext_authz_unavailable");

    let open = weft(
        "authz-open",
        up,
        &ext_configuration(true),
        &[("authz-service", down)],
    )
    .await;
    let r = get_with(&open.url("main", "/orders"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["headers"]["x-weft-authz-failure-mode-allowed"],
        "true"
    );
}

#[tokio::test]
async fn envoy_runs_the_same_wasm_and_decides_the_same() {
    let Some(binary) = require_envoy() else {
        eprintln!("WEFT_SKIP_ENVOY=1: skipping the Envoy run");
        return;
    };
    let up = echo("up").await;
    let plugin = EnvoyPlugin::new("authz", &shipped_plugin("authz"), &jwt_configuration());
    let envoy = TestEnvoy::start(&binary, &[plugin], up, &[]).await;

    let r = get_with(
        &envoy.url("/admin/users"),
        &[("authorization", &bearer(VALID))],
    )
    .await;
    assert_rejected(&r, 403, "denied_by_policy:no-admin");
    let r = get_with(&envoy.url("/orders"), &[]).await;
    assert_rejected(&r, 401, "no_credentials");
    let r = get_with(&envoy.url("/orders"), &[("authorization", &bearer(VALID))]).await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), envoy.log());
    let seen = r.json();
    assert_eq!(
        seen["headers"]["x-user-email"], "alice@example.com",
        "{seen}"
    );
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
}

#[tokio::test]
async fn envoy_calls_the_external_service_through_its_cluster() {
    let Some(binary) = require_envoy() else {
        eprintln!("WEFT_SKIP_ENVOY=1: skipping the Envoy run");
        return;
    };
    let up = echo("up").await;
    let calls = Arc::new(AtomicU64::new(0));
    let service = authz_service(calls.clone()).await;
    let plugin = EnvoyPlugin::new("authz", &shipped_plugin("authz"), &ext_configuration(false));
    let envoy = TestEnvoy::start(&binary, &[plugin], up, &[("authz-service", service)]).await;

    let r = get_with(
        &envoy.url("/orders"),
        &[("authorization", "Bearer let-me-in")],
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), envoy.log());
    assert_eq!(r.json()["headers"]["x-user-id"], "42");
    let r = get_with(&envoy.url("/orders"), &[("authorization", "Bearer nope")]).await;
    assert_eq!(r.status, 403, "{}\n{}", r.text(), envoy.log());
    assert_eq!(r.text(), "go away");
    assert_eq!(r.header("x-weft-authz-reason"), Some("ext_authz_denied"));
    assert_eq!(calls.load(Ordering::Relaxed), 2);
}

/// A JWKS server holding [`SECRET`] as an `oct` key (base64url), counting its fetches.
async fn jwks_server(fetches: Arc<AtomicU64>) -> SocketAddr {
    serve(move |req: http::Request<hyper::body::Incoming>| {
        let fetches = fetches.clone();
        async move {
            fetches.fetch_add(1, Ordering::Relaxed);
            let body = if req.uri().path() == "/.well-known/jwks.json" {
                r#"{"keys":[{"kty":"oct","kid":"e2e","k":"ZTJlLXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OQ"}]}"#
            } else {
                "{}"
            };
            http::Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .expect("response")
        }
    })
    .await
}

#[tokio::test]
async fn jwks_is_fetched_through_a_cluster_and_cached() {
    let up = echo("up").await;
    let fetches = Arc::new(AtomicU64::new(0));
    let idp = jwks_server(fetches.clone()).await;
    let config = serde_json::json!({
        "jwt": {"providers": [{
            "name": "idp", "issuer": "https://issuer.e2e", "audiences": ["orders"],
            "jwks_uri": "http://idp.e2e/.well-known/jwks.json", "jwks_cluster": "idp",
            "cache_duration_seconds": 3600
        }]},
        "policies": [{"name": "signed-in", "action": "ALLOW",
                      "rules": [{"from": [{"source": {"request_principals": ["*"]}}]}]}]
    })
    .to_string();
    let p = weft("authz-jwks", up, &config, &[("idp", idp)]).await;
    for _ in 0..5 {
        let r = get_with(
            &p.url("main", "/orders"),
            &[("authorization", &bearer(VALID))],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = get_with(&p.url("main", "/orders"), &[]).await;
    assert_rejected(&r, 401, "no_credentials");
    // The first request (or the first tick) fetched; the cache served the rest. A tick that
    // raced the first request may have fetched once more, no more.
    let n = fetches.load(Ordering::Relaxed);
    assert!((1..=2).contains(&n), "{n} fetches");
    let metrics = p.metrics().await;
    let ok = metric_value(
        &metrics,
        "weft_wasmcustom_authz_jwks_fetch_total{plugin=\"authz-jwks\",cluster=\"idp\",result=\"success\"}",
    );
    assert_eq!(ok, n as f64, "{metrics}");
}
