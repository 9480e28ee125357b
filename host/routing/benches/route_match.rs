//! Route matching with 1,000 routes: the cost of finding the route for a request in a table
//! that large, for a route near the start, in the middle, at the end, and a miss.
#![expect(
    clippy::expect_used,
    reason = "a benchmark whose setup fails has nothing to measure: it stops, naming the step"
)]

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use weft_routing::{RequestView, RouteTable};

fn config(n: usize) -> String {
    let mut routes = String::new();
    for i in 0..n {
        // A mix of exact, prefix, header and regex matches, as real tables have.
        match i % 4 {
            0 => routes.push_str(&format!("          - {{ name: r{i}, match: {{ path: {{ exact: /svc{i}/items }} }}, route: {{ cluster: c }} }}\n")),
            1 => routes.push_str(&format!("          - {{ name: r{i}, match: {{ path: {{ prefix: /api/v{i}/ }} }}, route: {{ cluster: c }} }}\n")),
            2 => routes.push_str(&format!(
                "          - {{ name: r{i}, match: {{ path: {{ prefix: /h{i} }}, headers: [{{ name: x-tenant, exact: t{i} }}] }}, route: {{ cluster: c }} }}\n"
            )),
            _ => routes.push_str(&format!(
                "          - {{ name: r{i}, match: {{ path: {{ regex: \"/re{i}/[0-9]+\" }} }}, route: {{ cluster: c }} }}\n"
            )),
        }
    }
    format!(
        "listeners:\n  - name: l\n    address: 127.0.0.1:1\n    virtual_hosts:\n      - name: v\n        domains: [\"*\"]\n        routes:\n{routes}clusters:\n  - {{ name: c, endpoints: [{{ address: \"127.0.0.1:2\" }}] }}\n"
    )
}

fn bench(c: &mut Criterion) {
    let cfg = weft_config::parse(&config(1000), "bench.yaml").expect("valid");
    let table =
        RouteTable::build("listeners[0]", &cfg.listeners[0], &cfg.clusters).expect("builds");
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("t998"));
    headers.insert("user-agent", HeaderValue::from_static("bench"));
    let cases = [
        ("first", "/svc0/items"),
        ("middle (500)", "/svc500/items"),
        ("last, header match (998)", "/h998/x"),
        ("miss", "/nothing/here"),
    ];
    for (label, path) in cases {
        c.bench_function(&format!("route 1000 routes: {label}"), |b| {
            b.iter(|| {
                let req = RequestView {
                    host: "example.com",
                    path,
                    query: None,
                    method: &Method::GET,
                    headers: &headers,
                };
                std::hint::black_box(table.route(&req).map(|r| r.id))
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
