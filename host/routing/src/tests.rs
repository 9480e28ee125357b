use http::{HeaderMap, HeaderValue, Method};
use weft_config::parse;

use super::*;

const CONFIG: &str = r#"
listeners:
  - name: l
    address: 127.0.0.1:1
    virtual_hosts:
      - name: exact
        domains: ["api.example.com"]
        routes:
          - name: exact-users
            match: { path: { exact: /users } }
            route: { cluster: a }
      - name: suffix
        domains: ["*.example.com"]
        routes:
          - name: deep-suffix
            route: { cluster: b }
      - name: longer-suffix
        domains: ["*.eu.example.com"]
        routes:
          - name: eu
            route: { cluster: b }
      - name: any
        domains: ["*"]
        routes:
          - name: canary
            match:
              path: { prefix: /app }
              headers: [{ name: user-agent, regex: ".*Windows.*" }]
            route: { cluster: b }
          - name: no-debug
            match:
              path: { prefix: /app }
              headers: [{ name: x-debug, present: true, invert: true }]
            route: { cluster: a, prefix_rewrite: /v2 }
          - name: query
            match:
              path: { regex: "/q/[0-9]+" }
              query: [{ name: mode, exact: "fast lane" }, { name: id, regex: "[a-z]+" }]
              methods: [POST]
            route: { cluster: a, regex_rewrite: { pattern: "^/q/([0-9]+)$", substitution: "/query/$1" } }
          - name: nocase
            match: { path: { prefix: /CaSe, ignore_case: true } }
            direct_response: { status: 418, body: teapot }
          - name: split
            match: { path: { prefix: /split } }
            route: { weighted_clusters: [{ name: a, weight: 90 }, { name: b, weight: 10 }, { name: c, weight: 0 }] }
          - name: moved
            match: { path: { prefix: /old } }
            redirect: { prefix_rewrite: /new, scheme: https }
          - name: fallback
            direct_response: { status: 200 }
clusters:
  - { name: a, endpoints: [{ address: "127.0.0.1:1" }] }
  - { name: b, endpoints: [{ address: "127.0.0.1:2" }] }
  - { name: c, endpoints: [{ address: "127.0.0.1:3" }] }
"#;

fn table() -> RouteTable {
    let config = parse(CONFIG, "t.yaml").expect("valid config");
    RouteTable::build("listeners[0]", &config.listeners[0], &config.clusters).expect("builds")
}

fn route<'t>(
    t: &'t RouteTable,
    host: &str,
    method: Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Option<&'t str> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let req = RequestView {
        host,
        path,
        query,
        method: &method,
        headers: &map,
    };
    t.route(&req).map(|r| &*r.name)
}

#[test]
fn virtual_hosts_prefer_exact_then_longest_suffix_then_wildcard() {
    let t = table();
    assert_eq!(
        t.virtual_host("api.example.com").unwrap().name.as_ref(),
        "exact"
    );
    assert_eq!(
        t.virtual_host("API.Example.COM").unwrap().name.as_ref(),
        "exact"
    );
    assert_eq!(
        t.virtual_host("x.example.com").unwrap().name.as_ref(),
        "suffix"
    );
    assert_eq!(
        t.virtual_host("x.eu.example.com").unwrap().name.as_ref(),
        "longer-suffix"
    );
    assert_eq!(t.virtual_host("example.com").unwrap().name.as_ref(), "any");
    assert_eq!(t.virtual_host("other").unwrap().name.as_ref(), "any");
    // The exact virtual host has no route for `/other`: no fall-through to other hosts.
    assert_eq!(
        route(&t, "api.example.com", Method::GET, "/other", &[]),
        None
    );
    assert_eq!(
        route(&t, "api.example.com", Method::GET, "/users", &[]),
        Some("exact-users")
    );
}

#[test]
fn header_regex_and_invert() {
    let t = table();
    let win = [("user-agent", "Mozilla/5.0 (Windows NT 10.0)")];
    assert_eq!(route(&t, "h", Method::GET, "/app/x", &win), Some("canary"));
    let mac = [("user-agent", "Mozilla/5.0 (Macintosh)")];
    assert_eq!(
        route(&t, "h", Method::GET, "/app/x", &mac),
        Some("no-debug")
    );
    let debug = [("x-debug", "1")];
    assert_eq!(
        route(&t, "h", Method::GET, "/app/x", &debug),
        Some("fallback")
    );
}

#[test]
fn query_regex_path_and_method() {
    let t = table();
    assert_eq!(
        route(&t, "h", Method::POST, "/q/12?mode=fast+lane&id=abc", &[]),
        Some("query")
    );
    assert_eq!(
        route(&t, "h", Method::POST, "/q/12?mode=fast%20lane&id=abc", &[]),
        Some("query")
    );
    assert_eq!(
        route(&t, "h", Method::GET, "/q/12?mode=fast+lane&id=abc", &[]),
        Some("fallback")
    );
    assert_eq!(
        route(&t, "h", Method::POST, "/q/12?mode=slow&id=abc", &[]),
        Some("fallback")
    );
    assert_eq!(
        route(&t, "h", Method::POST, "/q/12?mode=fast+lane&id=ABC", &[]),
        Some("fallback")
    );
    // The regex must match the whole path.
    assert_eq!(
        route(&t, "h", Method::POST, "/q/12/x?mode=fast+lane&id=abc", &[]),
        Some("fallback")
    );
}

#[test]
fn case_insensitive_prefix() {
    let t = table();
    assert_eq!(route(&t, "h", Method::GET, "/case/x", &[]), Some("nocase"));
    assert_eq!(route(&t, "h", Method::GET, "/CASE", &[]), Some("nocase"));
}

#[test]
fn rewrites() {
    let t = table();
    let find = |name: &str| t.routes().find(|r| &*r.name == name).unwrap();
    let Action::Forward(f) = &find("no-debug").action else {
        panic!()
    };
    assert_eq!(f.rewrite.apply("/app/x").as_deref(), Some("/v2/x"));
    assert_eq!(f.rewrite.apply("/app").as_deref(), Some("/v2"));
    let Action::Forward(f) = &find("query").action else {
        panic!()
    };
    assert_eq!(f.rewrite.apply("/q/12").as_deref(), Some("/query/12"));
    let Action::Redirect(r) = &find("moved").action else {
        panic!()
    };
    assert_eq!(
        r.location("http", "h:8080", "/old/page", Some("a=1")),
        "https://h/new/page?a=1"
    );
    assert_eq!(r.status, http::StatusCode::MOVED_PERMANENTLY);
}

#[test]
fn weighted_split_is_proportional_and_skips_zero_weight() {
    let t = table();
    let Action::Forward(f) = &t.routes().find(|r| &*r.name == "split").unwrap().action else {
        panic!()
    };
    let mut counts = [0u32; 3];
    for dice in 0..10_000u64 {
        counts[f.pick_cluster(dice.wrapping_mul(2654435761)).unwrap()] += 1;
    }
    assert_eq!(counts[0] + counts[1], 10_000);
    assert_eq!(counts[2], 0);
    assert!((8800..=9200).contains(&counts[0]), "{counts:?}");
}

#[test]
fn host_port_split() {
    assert_eq!(split_host_port("a.b:80"), ("a.b", Some("80")));
    assert_eq!(split_host_port("a.b"), ("a.b", None));
    assert_eq!(split_host_port("[::1]:80"), ("[::1]", Some("80")));
    assert_eq!(split_host_port("[::1]"), ("[::1]", None));
}

#[test]
fn header_mutations_remove_set_add() {
    let config = parse(
        r#"
listeners:
  - name: l
    address: 127.0.0.1:1
    virtual_hosts:
      - name: v
        domains: ["*"]
        routes:
          - direct_response: { status: 200 }
            request_headers:
              remove: [x-secret]
              set: [{ name: x-env, value: prod }]
              add: [{ name: x-tag, value: two }]
"#,
        "m.yaml",
    )
    .unwrap();
    let t = RouteTable::build("listeners[0]", &config.listeners[0], &config.clusters).unwrap();
    let r = t.routes().next().unwrap();
    let mut h = HeaderMap::new();
    h.insert("x-secret", HeaderValue::from_static("s"));
    h.insert("x-env", HeaderValue::from_static("dev"));
    h.insert("x-tag", HeaderValue::from_static("one"));
    r.request_headers.apply(&mut h);
    assert!(h.get("x-secret").is_none());
    assert_eq!(h.get_all("x-env").iter().count(), 1);
    assert_eq!(h["x-env"], "prod");
    let tags: Vec<_> = h
        .get_all("x-tag")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(tags, ["one", "two"]);
}
