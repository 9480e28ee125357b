//! The routing matrix through a running proxy: hosts, paths, headers, query, methods,
//! rewrites, redirects and direct responses.

use weft_e2e::upstream::echo;
use weft_e2e::{TestProxy, get, get_with};

async fn proxy() -> TestProxy {
    let a = echo("a").await;
    let b = echo("b").await;
    TestProxy::start(&format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: api
        domains: ["api.test"]
        routes:
          - name: api-users
            match: {{ path: {{ prefix: /users }} }}
            route: {{ cluster: b, prefix_rewrite: /v2/users, host_rewrite: users.internal }}
      - name: wild
        domains: ["*.wild.test"]
        routes:
          - route: {{ cluster: b }}
      - name: any
        domains: ["*"]
        routes:
          - name: windows-canary
            match:
              path: {{ prefix: /app }}
              headers: [{{ name: user-agent, regex: ".*Windows.*" }}]
            route: {{ cluster: b }}
          - name: app
            match: {{ path: {{ prefix: /app }} }}
            route: {{ cluster: a }}
            request_headers:
              set: [{{ name: x-env, value: prod }}]
              add: [{{ name: x-tag, value: added }}]
              remove: [x-secret]
            response_headers:
              set: [{{ name: x-route, value: app }}]
          - name: search
            match:
              path: {{ exact: /search }}
              query: [{{ name: q, present: true }}]
              methods: [GET]
            route: {{ cluster: b, regex_rewrite: {{ pattern: "^/search$", substitution: "/find" }} }}
          - name: moved
            match: {{ path: {{ prefix: /old }} }}
            redirect: {{ prefix_rewrite: /new, response_code: 308 }}
          - name: https
            match: {{ path: {{ prefix: /secure }} }}
            redirect: {{ scheme: https, strip_query: true }}
          - name: teapot
            match: {{ path: {{ exact: /tea }} }}
            direct_response: {{ status: 418, body: "short and stout" }}
            response_headers:
              add: [{{ name: x-kettle, value: "on" }}]
clusters:
  - {{ name: a, endpoints: [{{ address: "{a}" }}] }}
  - {{ name: b, endpoints: [{{ address: "{b}" }}] }}
"#
    ))
    .await
}

#[tokio::test]
async fn hosts_paths_headers_query_and_methods_pick_the_right_route() {
    let p = proxy().await;
    let base = p.url("main", "");

    let r = get_with(&format!("{base}/users/7?x=1"), &[("host", "api.test")]).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["server"], "b");
    assert_eq!(
        j["path"], "/v2/users/7?x=1",
        "prefix rewrite keeps the query"
    );
    assert_eq!(j["headers"]["host"], "users.internal", "host rewrite");

    let r = get_with(&format!("{base}/other"), &[("host", "api.test")]).await;
    assert_eq!(
        r.status, 404,
        "an exact virtual host without a matching route is NR"
    );

    let r = get_with(&format!("{base}/x"), &[("host", "deep.wild.test")]).await;
    assert_eq!(r.json()["server"], "b");

    let r = get_with(
        &format!("{base}/app/page"),
        &[("user-agent", "Mozilla/5.0 (Windows NT 10.0; Win64)")],
    )
    .await;
    assert_eq!(
        r.json()["server"],
        "b",
        "Windows user agents go to the canary"
    );
    let r = get_with(
        &format!("{base}/app/page"),
        &[
            ("user-agent", "curl/8"),
            ("x-secret", "s"),
            ("x-tag", "orig"),
        ],
    )
    .await;
    let j = r.json();
    assert_eq!(j["server"], "a");
    assert_eq!(j["headers"]["x-env"], "prod");
    assert!(
        j["headers"].get("x-secret").is_none(),
        "removed header must not reach upstream"
    );
    assert_eq!(r.header("x-route"), Some("app"), "response header set");

    let r = get(&format!("{base}/search?q=weft")).await;
    assert_eq!(r.json()["path"], "/find?q=weft");
    let r = get(&format!("{base}/search")).await;
    assert_eq!(r.status, 404, "query parameter required");
}

#[tokio::test]
async fn redirects_and_direct_responses() {
    let p = proxy().await;
    let addr = p.addr("main");
    let r = get(&p.url("main", "/old/a?b=1")).await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("http://{addr}/new/a?b=1").as_str())
    );

    let r = get(&p.url("main", "/secure/x?y=1")).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://127.0.0.1/secure/x"));

    let r = get(&p.url("main", "/tea")).await;
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "short and stout");
    assert_eq!(r.header("x-kettle"), Some("on"));
}

#[tokio::test]
async fn forwarding_headers_are_added() {
    let p = proxy().await;
    let r = get_with(
        &p.url("main", "/app"),
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
        ],
    )
    .await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(
        h["x-request-id"].as_str().map(str::len),
        Some(36),
        "x-request-id generated"
    );
    assert!(
        h.get("x-hop").is_none(),
        "Connection-nominated headers are hop-by-hop"
    );

    let r = get_with(&p.url("main", "/app"), &[("x-request-id", "given-id")]).await;
    assert_eq!(
        r.json()["headers"]["x-request-id"],
        "given-id",
        "an existing request id is kept"
    );
}
