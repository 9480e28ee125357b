//! End to end: the shipped `header_rewrite` plugin through a running Weft (and once through Envoy 1.40).
//!
//! An echo upstream reports the request it got (path and headers) in its JSON body, so each test
//! checks both sides: what went upstream, and what the client got back.

use bytes::Bytes;
use http_body_util::Full;
use weft_e2e::envoy::{EnvoyPlugin, TestEnvoy, require_envoy};
use weft_e2e::plugins::shipped_plugin;
use weft_e2e::upstream::{echo, serve};
use weft_e2e::{TestProxy, get_with, metric_value};

/// A text as a YAML scalar (JSON strings are YAML): the configuration reaches the plugin as is.
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// The configuration the tests share: one rule for `/api/*`, one that never matches, the
/// strict security headers.
fn configuration() -> String {
    serde_json::json!({
        "rules": [
            {
                "name": "api",
                "when": {"paths": ["/api/*"], "methods": ["GET"]},
                "request": {
                    "set": {
                        "x-client": "%{source.address}",
                        "x-original-path": "%{request.path}",
                        "x-agent": "%{request.header.user-agent|unknown}"
                    },
                    "remove": ["x-secret"],
                    "rename": [{"from": "x-old", "to": "x-new"}]
                },
                "response": {
                    "set": {"x-api-version": "2"},
                    "add": {"x-agent-seen": "%{request.header.x-agent}"}
                },
                "path": {"replace_prefix": {"from": "/api/", "to": "/v2/"}}
            },
            {
                "name": "never",
                "when": {"headers": [{"name": "x-never", "present": true}]},
                "request": {"set": {"x-never-set": "1"}}
            }
        ],
        "security_headers": true
    })
    .to_string()
}

/// Weft with the plugin on listener `main` in front of `up`.
async fn weft(up: std::net::SocketAddr, config: &str) -> TestProxy {
    TestProxy::start(&format!(
        r#"
plugins:
  - name: hr
    file: {file}
    configuration: {config}
    failure_policy: fail_closed
listeners:
  - name: main
    address: 127.0.0.1:0
    plugins: [{{ name: hr }}]
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: up }} }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#,
        file = quoted(&shipped_plugin("header-rewrite")),
        config = quoted(config),
    ))
    .await
}

#[tokio::test]
async fn rewrites_request_and_response_headers_and_the_path_through_weft() {
    let up = echo("up").await;
    let p = weft(up, &configuration()).await;

    let r = get_with(
        &p.url("main", "/api/items?page=2&sort=asc"),
        &[
            ("user-agent", "e2e/1.0"),
            ("x-secret", "do-not-forward"),
            ("x-old", "renamed-value"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    // What the upstream saw.
    assert_eq!(seen["path"], "/v2/items?page=2&sort=asc", "{seen}");
    let headers = &seen["headers"];
    assert!(
        headers["x-client"]
            .as_str()
            .is_some_and(|v| v.starts_with("127.0.0.1:")),
        "{seen}"
    );
    assert_eq!(headers["x-original-path"], "/api/items?page=2&sort=asc");
    assert_eq!(headers["x-agent"], "e2e/1.0");
    assert_eq!(headers["x-new"], "renamed-value");
    assert!(headers.get("x-old").is_none(), "{seen}");
    assert!(headers.get("x-secret").is_none(), "{seen}");
    assert!(headers.get("x-never-set").is_none(), "{seen}");
    // What the client got.
    assert_eq!(r.header("x-api-version"), Some("2"));
    assert_eq!(r.header("x-agent-seen"), Some("e2e/1.0"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=63072000; includeSubDomains")
    );
    assert_eq!(r.header("cross-origin-opener-policy"), Some("same-origin"));
    assert!(r.header("content-security-policy").is_some());
    assert!(r.header("permissions-policy").is_some());
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));

    // A request the rule does not match: untouched, but the security headers still apply.
    let r = get_with(
        &p.url("main", "/other?x=1"),
        &[("x-secret", "kept"), ("x-old", "kept")],
    )
    .await;
    let seen = r.json();
    assert_eq!(seen["path"], "/other?x=1");
    assert_eq!(seen["headers"]["x-secret"], "kept");
    assert_eq!(seen["headers"]["x-old"], "kept");
    assert!(seen["headers"].get("x-client").is_none(), "{seen}");
    assert_eq!(r.header("x-api-version"), None);
    assert_eq!(r.header("x-frame-options"), Some("DENY"));

    let metrics = p.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"weft_wasmcustom_header_rewrite_rules_applied_total{plugin="hr",rule="api"}"#
        ),
        1.0,
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"rule="never""#),
        "a rule that never matched has no series: {metrics}"
    );
}

#[tokio::test]
async fn the_upstreams_own_security_headers_win_and_bad_values_are_counted() {
    let up = serve(|_req| async move {
        let mut resp = http::Response::new(Full::new(Bytes::from_static(b"page")));
        resp.headers_mut().insert(
            "x-frame-options",
            http::HeaderValue::from_static("SAMEORIGIN"),
        );
        resp
    })
    .await;
    let config = serde_json::json!({
        "rules": [{
            "name": "user",
            "request": {"set": {"x-user": "%{request.header.x-raw-user}"}},
            "response": {"set": {"x-user-echo": "%{request.header.x-user|none}"}}
        }],
        "security_headers": {"preset": "basic"}
    })
    .to_string();
    let p = weft(up, &config).await;
    let r = get_with(&p.url("main", "/"), &[("x-raw-user", "alice")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    assert_eq!(r.header("content-security-policy"), None, "not in basic");
    assert_eq!(r.header("x-user-echo"), Some("alice"));

    // A raw header value with a tab and obs-text is fine; one the template would make longer
    // than the limit is skipped and counted (HTTP clients refuse to send CR/LF themselves).
    let long = "a".repeat(9000);
    let r = get_with(&p.url("main", "/"), &[("x-raw-user", &long)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-user-echo"), Some("none"));
    let metrics = p.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"weft_wasmcustom_header_rewrite_invalid_values_total{plugin="hr"}"#
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_bad_configuration_is_refused_at_startup() {
    let up = echo("up").await;
    let config = r#"{"rules": [{"request": {"set": {"x-id": "%{request.path"}}}]}"#;
    let p = weft(up, config).await;
    // fail_closed, and no instance could be configured: every request gets 503.
    let r = get_with(&p.url("main", "/"), &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let plugins = weft_e2e::get(&format!("http://{}/plugins", p.admin())).await;
    let version = &plugins.json()["plugins"][0]["version"];
    assert_eq!(version["state"], "failed", "{version}");
    assert!(
        version["error"]
            .as_str()
            .is_some_and(|e| e.contains("rejected its configuration")),
        "{version}"
    );
}

#[tokio::test]
async fn envoy_runs_the_same_wasm_and_adds_the_request_header() {
    let Some(binary) = require_envoy() else {
        return;
    };
    let up = echo("up").await;
    let plugin = EnvoyPlugin::new("hr", &shipped_plugin("header-rewrite"), &configuration());
    let envoy = TestEnvoy::start(&binary, &[plugin], up, &[]).await;
    let r = get_with(
        &envoy.url("/api/items?page=2"),
        &[("user-agent", "e2e/1.0"), ("x-secret", "do-not-forward")],
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), envoy.log());
    let seen = r.json();
    assert_eq!(seen["headers"]["x-agent"], "e2e/1.0", "{seen}");
    assert!(
        seen["headers"]["x-client"]
            .as_str()
            .is_some_and(|v| v.starts_with("127.0.0.1:")),
        "{seen}"
    );
    assert!(seen["headers"].get("x-secret").is_none(), "{seen}");
    assert_eq!(seen["path"], "/v2/items?page=2", "{seen}");
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
}
