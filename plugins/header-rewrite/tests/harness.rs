//! The header-rewrite plugin's real `.wasm` in Weft's host (`weft-plugin-test`): every
//! operation, templating, conditions, path rewrites, security headers, refused
//! configurations and the counters.

use serde_json::json;
use weft_plugin_test::{CannedResponse, TestPlugin};

fn load(config: serde_json::Value) -> TestPlugin {
    TestPlugin::builder(weft_plugin_test::this_plugin!())
        .configuration_json(config)
        .load()
        .unwrap_or_else(|e| panic!("the plugin loads: {e}"))
}

/// Every value of `name` in a header list.
fn all(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .collect()
}

#[test]
fn request_set_add_remove_rename() {
    let plugin = load(json!({"rules": [{
        "request": {
            "set": {"x-set": "new"},
            "add": {"x-multi": "two"},
            "remove": ["x-secret"],
            "rename": [{"from": "x-old-name", "to": "x-new-name"}],
            "set_if_absent": {"x-tenant": "default", "x-present": "not-used"}
        }
    }]}));
    let mut ex = plugin
        .request()
        .header("x-set", "old")
        .header("x-multi", "one")
        .header("x-secret", "s")
        .header("x-old-name", "v")
        .header("x-present", "kept");
    assert!(ex.send_request().is_continue());
    let headers = ex.request_headers();
    assert_eq!(all(&headers, "x-set"), ["new"]);
    assert_eq!(all(&headers, "x-multi"), ["one", "two"]);
    assert!(all(&headers, "x-secret").is_empty());
    assert!(all(&headers, "x-old-name").is_empty());
    assert_eq!(all(&headers, "x-new-name"), ["v"]);
    assert_eq!(all(&headers, "x-tenant"), ["default"]);
    assert_eq!(all(&headers, "x-present"), ["kept"]);
    assert_eq!(ex.request_header(":path").as_deref(), Some("/"));
    ex.finish();
    assert_eq!(
        plugin.counter("header_rewrite_rules_applied_total;rule=0"),
        Some(1)
    );
}

#[test]
fn response_set_add_remove_rename() {
    let plugin = load(json!({"rules": [{
        "response": {
            "set": {"x-set": "new"},
            "add": {"x-multi": "two"},
            "remove": ["server"],
            "rename": [{"from": "x-upstream-id", "to": "x-trace"}]
        }
    }]}));
    let mut ex = plugin.request();
    assert!(ex.send_request().is_continue());
    let out = ex.send_response(
        CannedResponse::new(200)
            .header("x-set", "old")
            .header("x-multi", "one")
            .header("server", "secret-server/1.0")
            .header("x-upstream-id", "abc")
            .body("hello"),
    );
    assert!(out.is_continue());
    let headers = ex.response_headers();
    assert_eq!(all(&headers, "x-set"), ["new"]);
    assert_eq!(all(&headers, "x-multi"), ["one", "two"]);
    assert!(all(&headers, "server").is_empty());
    assert_eq!(all(&headers, "x-trace"), ["abc"]);
    assert_eq!(ex.response_header(":status").as_deref(), Some("200"));
    assert_eq!(ex.response_body(), b"hello");
}

#[test]
fn values_are_templated_from_properties_and_headers() {
    let plugin = load(json!({"rules": [{
        "request": {"set": {
            "x-client": "%{source.address}",
            "x-original-path": "%{request.path}",
            "x-agent": "%{request.header.user-agent|unknown}",
            "x-peer": "%{source.principal|anonymous}"
        }},
        "response": {"set": {
            "x-request-agent": "%{request.header.user-agent|unknown}",
            "x-upstream-type": "type=%{response.header.content-type}",
            "x-code": "%{response.code}"
        }}
    }]}));
    let mut ex = plugin
        .request()
        .path("/a/b?c=d")
        .header("user-agent", "curl/8.5")
        .property("source.address", "10.1.2.3:4444")
        .property("source.principal", "spiffe://cluster.local/ns/a/sa/b");
    assert!(ex.send_request().is_continue());
    assert_eq!(
        ex.request_header("x-client").as_deref(),
        Some("10.1.2.3:4444")
    );
    assert_eq!(
        ex.request_header("x-original-path").as_deref(),
        Some("/a/b?c=d")
    );
    assert_eq!(ex.request_header("x-agent").as_deref(), Some("curl/8.5"));
    assert_eq!(
        ex.request_header("x-peer").as_deref(),
        Some("spiffe://cluster.local/ns/a/sa/b")
    );
    ex.send_response(CannedResponse::new(201).header("content-type", "text/plain"));
    assert_eq!(
        ex.response_header("x-request-agent").as_deref(),
        Some("curl/8.5")
    );
    assert_eq!(
        ex.response_header("x-upstream-type").as_deref(),
        Some("type=text/plain")
    );
    assert_eq!(ex.response_header("x-code").as_deref(), Some("201"));

    // Defaults when the header or the property is missing.
    let mut ex = plugin.request();
    ex.send_request();
    assert_eq!(ex.request_header("x-agent").as_deref(), Some("unknown"));
    assert_eq!(ex.request_header("x-peer").as_deref(), Some("anonymous"));
}

/// Method, path, extra headers, and which of the three rules should match.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], [bool; 3]);

#[test]
fn conditions_on_path_method_and_headers() {
    let plugin = load(json!({"rules": [
        {"name": "api-get", "when": {"paths": ["/api/*"], "methods": ["GET", "HEAD"]},
         "request": {"set": {"x-api": "yes"}}},
        {"name": "regex", "when": {"path_regex": "/v[0-9]+/users/[0-9]+"},
         "request": {"set": {"x-user-route": "yes"}}},
        {"name": "beta", "when": {"headers": [
            {"name": "x-beta", "exact": "1"},
            {"name": "x-internal", "present": true, "invert": true}
        ]}, "request": {"set": {"x-cohort": "beta"}}}
    ]}));
    let cases: &[Case<'_>] = &[
        ("GET", "/api/items?x=1", &[], [true, false, false]),
        ("POST", "/api/items", &[], [false, false, false]),
        ("GET", "/apix", &[], [false, false, false]),
        ("GET", "/v2/users/17?full=1", &[], [false, true, false]),
        ("GET", "/v2/users/abc", &[], [false, false, false]),
        ("GET", "/", &[("x-beta", "1")], [false, false, true]),
        ("GET", "/", &[("x-beta", "2")], [false, false, false]),
        (
            "GET",
            "/",
            &[("x-beta", "1"), ("x-internal", "yes")],
            [false, false, false],
        ),
    ];
    for (method, path, headers, want) in cases {
        let mut ex = plugin.request().method(method).path(path);
        for (k, v) in *headers {
            ex = ex.header(k, v);
        }
        assert!(ex.send_request().is_continue());
        let got = [
            ex.request_header("x-api").is_some(),
            ex.request_header("x-user-route").is_some(),
            ex.request_header("x-cohort").is_some(),
        ];
        assert_eq!(&got, want, "{method} {path} {headers:?}");
    }
    assert_eq!(
        plugin.counter("header_rewrite_rules_applied_total;rule=api-get"),
        Some(1)
    );
    assert_eq!(
        plugin.counter("header_rewrite_rules_applied_total;rule=regex"),
        Some(1)
    );
    assert_eq!(
        plugin.counter("header_rewrite_rules_applied_total;rule=beta"),
        Some(1)
    );
}

#[test]
fn response_ops_need_the_request_match_and_the_status() {
    let plugin = load(json!({"rules": [
        {"when": {"paths": ["/static/*"]}, "response": {"set": {"cache-control": "max-age=3600"}}},
        {"when": {"status": ["5xx"]}, "response": {"set": {"retry-after": "5"}}}
    ]}));
    let mut ex = plugin.request().path("/static/app.js");
    ex.send_request();
    ex.send_response(CannedResponse::new(200).header("cache-control", "no-cache"));
    assert_eq!(
        ex.response_header("cache-control").as_deref(),
        Some("max-age=3600")
    );
    assert_eq!(ex.response_header("retry-after"), None);

    let mut ex = plugin.request().path("/api");
    ex.send_request();
    ex.send_response(CannedResponse::new(503).header("cache-control", "no-cache"));
    assert_eq!(
        ex.response_header("cache-control").as_deref(),
        Some("no-cache")
    );
    assert_eq!(ex.response_header("retry-after").as_deref(), Some("5"));
}

#[test]
fn path_rewrite_keeps_the_query() {
    let plugin = load(json!({"rules": [
        {"when": {"paths": ["/old/*"]},
         "path": {"replace_prefix": {"from": "/old/", "to": "/new/"}},
         "request": {"set": {"x-original-path": "%{request.path}"}}},
        {"when": {"paths": ["/users/*"]},
         "path": {"regex": {"pattern": "^/users/([0-9]+)$", "substitution": "/v2/accounts/$1"}}},
        {"when": {"paths": ["/flat/*"]},
         "path": {"set": "/flat-%{request.header.x-version|v1}", "keep_query": false}},
        {"authority": "%{request.header.x-backend|default.internal}",
         "when": {"headers": [{"name": "x-backend", "present": true}]}}
    ]}));
    let mut ex = plugin.request().path("/old/a/b?x=1&y=two");
    assert!(ex.send_request().is_continue());
    assert_eq!(
        ex.request_header(":path").as_deref(),
        Some("/new/a/b?x=1&y=two")
    );
    assert_eq!(
        ex.request_header("x-original-path").as_deref(),
        Some("/old/a/b?x=1&y=two")
    );

    let mut ex = plugin.request().path("/users/42?expand=all");
    ex.send_request();
    assert_eq!(
        ex.request_header(":path").as_deref(),
        Some("/v2/accounts/42?expand=all")
    );

    let mut ex = plugin
        .request()
        .path("/flat/x?drop=me")
        .header("x-version", "v3");
    ex.send_request();
    assert_eq!(ex.request_header(":path").as_deref(), Some("/flat-v3"));

    let mut ex = plugin
        .request()
        .path("/other?q")
        .header("x-backend", "reviews.svc:9080");
    ex.send_request();
    assert_eq!(ex.request_header(":path").as_deref(), Some("/other?q"));
    assert_eq!(
        ex.request_header(":authority").as_deref(),
        Some("reviews.svc:9080")
    );
}

#[test]
fn security_headers_on_responses() {
    let plugin = load(json!({"security_headers": true}));
    let mut ex = plugin.request();
    ex.send_request();
    ex.send_response(CannedResponse::new(200).body("ok"));
    let headers = ex.response_headers();
    for (name, value) in [
        (
            "strict-transport-security",
            "max-age=63072000; includeSubDomains",
        ),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        (
            "content-security-policy",
            "default-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'",
        ),
        (
            "permissions-policy",
            "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
        ),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        assert_eq!(all(&headers, name), [value], "{name}");
    }
}

#[test]
fn security_headers_do_not_override_the_upstream_unless_told() {
    let plugin = load(json!({"security_headers": {
        "preset": "basic",
        "overrides": {"referrer-policy": null, "x-extra-policy": "on"}
    }}));
    let mut ex = plugin.request();
    ex.send_request();
    ex.send_response(
        CannedResponse::new(200)
            .header("x-frame-options", "SAMEORIGIN")
            .header("strict-transport-security", "max-age=60"),
    );
    let headers = ex.response_headers();
    assert_eq!(all(&headers, "x-frame-options"), ["SAMEORIGIN"]);
    assert_eq!(all(&headers, "strict-transport-security"), ["max-age=60"]);
    assert_eq!(all(&headers, "x-content-type-options"), ["nosniff"]);
    assert_eq!(all(&headers, "x-extra-policy"), ["on"]);
    assert!(all(&headers, "referrer-policy").is_empty());
    assert!(all(&headers, "content-security-policy").is_empty());

    let plugin = load(json!({"security_headers": {"preset": "strict", "override_upstream": true}}));
    let mut ex = plugin.request();
    ex.send_request();
    ex.send_response(CannedResponse::new(200).header("x-frame-options", "SAMEORIGIN"));
    assert_eq!(
        all(&ex.response_headers(), "x-frame-options"),
        ["DENY"],
        "override_upstream replaces the upstream's value"
    );
}

#[test]
fn invalid_configurations_are_refused_naming_the_field() {
    let cases = [
        (
            json!({"rules": [{"request": {"set": {"x-id": "%{request.path"}}}]}),
            "rules[0].request.set.x-id",
        ),
        (
            json!({"rules": [{}, {"request": {"remove": ["content-length"]}}]}),
            "rules[1].request.remove[0]",
        ),
        (
            json!({"rules": [{"when": {"path_regex": "(unclosed"}}]}),
            "rules[0].when.path_regex",
        ),
        (
            json!({"rules": [{"response": {"set": {":status": "200"}}}]}),
            "rules[0].response.set.:status",
        ),
        (
            json!({"security_headers": {"preset": "paranoid"}}),
            "security_headers.preset",
        ),
        (json!({"rulez": []}), "unknown field `rulez`"),
    ];
    for (config, needle) in cases {
        let failure = TestPlugin::builder(weft_plugin_test::this_plugin!())
            .configuration_json(config.clone())
            .load()
            .err()
            .unwrap_or_else(|| panic!("{config} should be refused"));
        assert!(
            failure.logged(&format!("plugin configuration: {needle}")) || failure.logged(needle),
            "{config}: expected {needle:?} in the logs: {failure}"
        );
    }
}

#[test]
fn a_value_rendering_with_crlf_is_skipped_and_counted() {
    let plugin = load(json!({"rules": [{
        "name": "echo-forwarded",
        "request": {"set": {"x-forwarded-user": "%{filter.user}", "x-fine": "ok"}},
        "response": {"set": {"x-echo": "%{request.header.x-forwarded-user|none}"}}
    }]}));
    let mut ex = plugin
        .request()
        .property("filter.user", "alice\r\nx-injected: evil");
    assert!(ex.send_request().is_continue());
    assert_eq!(ex.request_header("x-forwarded-user"), None);
    assert_eq!(ex.request_header("x-injected"), None);
    assert_eq!(ex.request_header("x-fine").as_deref(), Some("ok"));
    ex.send_response(CannedResponse::new(200));
    assert_eq!(ex.response_header("x-echo").as_deref(), Some("none"));
    ex.finish();
    assert_eq!(
        plugin.counter("header_rewrite_invalid_values_total"),
        Some(1)
    );
    assert!(plugin.logged("rule echo-forwarded: the value of x-forwarded-user rendered invalid"));
    assert_eq!(
        plugin.counter("header_rewrite_rules_applied_total;rule=echo-forwarded"),
        Some(1)
    );
}

#[test]
fn nothing_configured_leaves_everything_alone() {
    let plugin = load(json!({}));
    let mut ex = plugin.request().path("/x?y").header("x-a", "1");
    assert!(ex.send_request().is_continue());
    assert_eq!(ex.request_header(":path").as_deref(), Some("/x?y"));
    assert_eq!(ex.request_header("x-a").as_deref(), Some("1"));
    ex.send_response(CannedResponse::new(200).header("server", "s"));
    assert_eq!(ex.response_header("server").as_deref(), Some("s"));
    assert_eq!(ex.response_headers().len(), 2);
    assert!(plugin.metric_names().is_empty());
}

#[test]
fn invalid_value_warnings_are_throttled_but_all_counted() {
    let plugin = load(json!({"rules": [{"request": {"set": {"x-user": "%{filter.user}"}}}]}));
    for _ in 0..25 {
        let mut ex = plugin.request().property("filter.user", "a\nb");
        assert!(ex.send_request().is_continue());
        assert_eq!(ex.request_header("x-user"), None);
    }
    assert_eq!(
        plugin.counter("header_rewrite_invalid_values_total"),
        Some(25)
    );
    let warnings = plugin
        .logs()
        .iter()
        .filter(|(_, line)| line.contains("rendered invalid"))
        .count();
    assert_eq!(warnings, 10, "the first 10 are logged, then one in 1000");
}
