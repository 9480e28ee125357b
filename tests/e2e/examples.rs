//! The examples run as their READMEs say: `examples/all-plugins/weft.yaml` (also the embedded
//! demo of `weft run`) with the three shipped plugins, each answer checked.

use weft_e2e::plugins::{shipped_plugin, workspace_root};
use weft_e2e::upstream::echo;
use weft_e2e::{TestProxy, get_with, metric_value};

/// Makes `builtin:<name>` resolve to the shipped plugins built from this workspace, as the
/// `weft` binary does with the modules it embeds.
fn register_builtins() {
    let mut modules: Vec<(&str, &'static [u8])> = Vec::new();
    for name in ["authz", "header-rewrite", "telemetry"] {
        let bytes = std::fs::read(shipped_plugin(name)).expect("built plugin");
        modules.push((name, Box::leak(bytes.into_boxed_slice())));
    }
    weft_proxy::register_builtin_plugins(&modules);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_all_plugins_demo_answers_as_its_readme_says() {
    register_builtins();
    let upstream = echo("demo-echo").await;
    let yaml = std::fs::read_to_string(workspace_root().join("examples/all-plugins/weft.yaml"))
        .expect("example config");
    let yaml = yaml
        .replace("127.0.0.1:15000", "127.0.0.1:0")
        .replace("127.0.0.1:10000", "127.0.0.1:0")
        .replace("127.0.0.1:18080", &upstream.to_string())
        .replace("path: stdout", "path: \"off\"");
    let proxy = TestProxy::start(&yaml).await;

    // Proxied: header-rewrite adds request headers and security response headers; telemetry
    // propagates a trace.
    let r = get_with(&proxy.url("demo", "/hello"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["headers"]["x-original-path"], "/hello", "{seen}");
    assert!(
        seen["headers"]["x-client-address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{seen}"
    );
    assert!(
        seen["headers"]["traceparent"]
            .as_str()
            .is_some_and(|t| t.starts_with("00-")),
        "{seen}"
    );
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("x-served-by"), Some("weft"));

    // authz on /private: no key → 401, the key → 200, the admin path → 403.
    let r = get_with(&proxy.url("demo", "/private/data"), &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("x-weft-authz-reason"), Some("no_credentials"));
    assert_eq!(r.json()["error"], "unauthenticated");
    let key = [("x-api-key", "weft-demo-key-0123")];
    let r = get_with(&proxy.url("demo", "/private/data"), &key).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["headers"].get("x-api-key").is_none(),
        "the key is not forwarded"
    );
    let r = get_with(&proxy.url("demo", "/private/admin"), &key).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.header("x-weft-authz-reason"),
        Some("denied_by_policy:admins-only")
    );

    // Native routes still work with plugins in the chain.
    let r = get_with(&proxy.url("demo", "/healthz"), &[]).await;
    assert_eq!(r.status, 200);

    let m = proxy.metrics().await;
    for (series, at_least) in [
        (
            "weft_wasmcustom_authz_decisions_total{plugin=\"authz\",decision=\"unauthenticated\"}",
            1.0,
        ),
        (
            "weft_wasmcustom_authz_decisions_total{plugin=\"authz\",decision=\"allow\"}",
            1.0,
        ),
        (
            "weft_wasmcustom_authz_decisions_total{plugin=\"authz\",decision=\"deny\"}",
            1.0,
        ),
        (
            "weft_wasmcustom_requests_total{plugin=\"telemetry\",method=\"GET\",route=\"echo\",status=\"200\"}",
            1.0,
        ),
        (
            "weft_wasmcustom_header_rewrite_rules_applied_total{plugin=\"header-rewrite\",rule=\"client-info\"}",
            4.0,
        ),
    ] {
        assert!(
            metric_value(&m, series) >= at_least,
            "{series} < {at_least} in:\n{m}"
        );
    }
}
