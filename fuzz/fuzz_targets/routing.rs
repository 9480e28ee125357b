//! Route matching and rewrites (`weft-routing`) on arbitrary requests: a table with every
//! kind of matcher (exact, prefix, regex paths, header and query matchers, methods, virtual
//! host wildcards) and rewrite (prefix, regex, host, redirects) routes the request, applies
//! the rewrite and builds redirect locations without panicking; a rewritten path stays a
//! path (starts with `/`) when the original did.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weft_routing::{Action, RequestView, RouteTable};

const CONFIG: &str = r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: exact
        domains: ["api.example.com", "*.example.org"]
        routes:
          - match: { path: { exact: /exact }, methods: [GET, POST] }
            route: { cluster: a }
          - match: { path: { prefix: /v1/ } }
            route: { cluster: a, prefix_rewrite: /v2/ }
          - match: { path: { regex: "^/users/([0-9]+)/(.*)$" } }
            route: { cluster: a, regex_rewrite: { pattern: "^/users/([0-9]+)/(.*)$", substitution: "/u/$1/$2" } }
          - match: { path: { prefix: /h }, headers: [ { name: x-a, exact: b }, { name: x-r, regex: "^[a-z]+$" }, { name: x-p, present: true } ] }
            route: { cluster: a }
          - match: { path: { prefix: /q }, query: [ { name: k, exact: v }, { name: r, regex: "^[0-9]*$" } ] }
            route: { cluster: a, host_rewrite: rewritten.example }
          - match: { path: { prefix: /redirect } }
            redirect: { host: other.example, path: /moved, scheme: https, port: 8443 }
          - match: { path: { prefix: /r2 } }
            redirect: { prefix_rewrite: /new }
          - route: { cluster: a }
      - name: any
        domains: ["*"]
        routes:
          - match: { path: { prefix: / } }
            direct_response: { status: 404, body: none }
clusters:
  - { name: a, endpoints: [ { address: "127.0.0.1:1" } ] }
"#;

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let config = weft_config::parse(CONFIG, "routing.yaml").unwrap_or_else(|e| panic!("{e}"));
        RouteTable::build("listeners[0]", &config.listeners[0], &config.clusters)
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    // host \n path[?query] \n method \n (name: value \n)*
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let authority = lines.next().unwrap_or_default();
    let target = lines.next().unwrap_or_default();
    let Ok(method) = http::Method::from_bytes(lines.next().unwrap_or("GET").as_bytes()) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value.trim()),
            )
        {
            headers.append(n, v);
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let (host, _port) = weft_routing::split_host_port(authority);
    let req = RequestView {
        host,
        path,
        query,
        method: &method,
        headers: &headers,
    };
    let Some(route) = table().route(&req) else {
        return;
    };
    match &route.action {
        Action::Forward(f) => {
            if let Some(new) = f.rewrite.apply(path)
                && path.starts_with('/')
            {
                assert!(new.starts_with('/'), "{path:?} rewritten to {new:?}");
            }
        }
        Action::Redirect(r) => {
            let location = r.location("http", authority, path, query);
            assert!(!location.is_empty());
        }
        Action::Direct { .. } => {}
    }
    let mut out = http::HeaderMap::new();
    route.request_headers.apply(&mut out);
});
