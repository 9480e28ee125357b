//! Every load-balancing policy through a running proxy, with three echo upstreams.

use std::collections::HashMap;

use weft_e2e::upstream::echo;
use weft_e2e::{TestProxy, client, send};

async fn proxy_with(policy: &str, weights: [u32; 3]) -> TestProxy {
    let a = echo("a").await;
    let b = echo("b").await;
    let c = echo("c").await;
    TestProxy::start(&format!(
        r#"
access_log: {{ path: "off" }}
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - route:
              cluster: backends
              hash_policy: [{{ header: x-user }}, {{ cookie: session }}]
clusters:
  - name: backends
    lb_policy: {policy}
    endpoints:
      - {{ address: "{a}", weight: {} }}
      - {{ address: "{b}", weight: {} }}
      - {{ address: "{c}", weight: {} }}
"#,
        weights[0], weights[1], weights[2]
    ))
    .await
}

async fn tally(p: &TestProxy, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let client = client();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let mut b = http::Request::get(p.url("main", "/"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let r = send(&client, b.body(Default::default()).unwrap()).await;
        assert_eq!(r.status, 200);
        let server = r.json()["server"].as_str().unwrap().to_owned();
        *counts.entry(server).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn weighted_round_robin_is_exact_per_cycle() {
    let p = proxy_with("round_robin", [3, 2, 1]).await;
    let counts = tally(&p, 600, &[]).await;
    assert_eq!(counts["a"], 300, "{counts:?}");
    assert_eq!(counts["b"], 200, "{counts:?}");
    assert_eq!(counts["c"], 100, "{counts:?}");
}

#[tokio::test]
async fn random_spreads_by_weight() {
    let p = proxy_with("random", [1, 1, 2]).await;
    let counts = tally(&p, 2000, &[]).await;
    // Expected 500 / 500 / 1000; bounds are over 5 standard deviations wide.
    assert!((380..=620).contains(&counts["a"]), "{counts:?}");
    assert!((380..=620).contains(&counts["b"]), "{counts:?}");
    assert!((880..=1120).contains(&counts["c"]), "{counts:?}");
}

#[tokio::test]
async fn least_request_uses_every_endpoint_when_idle() {
    let p = proxy_with("least_request", [1, 1, 1]).await;
    let counts = tally(&p, 900, &[]).await;
    for k in ["a", "b", "c"] {
        assert!((220..=380).contains(&counts[k]), "{counts:?}");
    }
}

#[tokio::test]
async fn ring_hash_is_sticky_per_header_and_cookie_and_spreads_keys() {
    let p = proxy_with("ring_hash", [1, 1, 1]).await;
    for user in ["alice", "bob", "carol", "dave"] {
        let counts = tally(&p, 20, &[("x-user", user)]).await;
        assert_eq!(
            counts.len(),
            1,
            "{user} always lands on one endpoint: {counts:?}"
        );
    }
    let counts = tally(&p, 10, &[("cookie", "theme=dark; session=s-42")]).await;
    assert_eq!(counts.len(), 1, "cookie stickiness: {counts:?}");
    // Many distinct keys reach every endpoint.
    let mut seen = HashMap::new();
    for i in 0..300 {
        let user = format!("user-{i}");
        let counts = tally(&p, 1, &[("x-user", &user)]).await;
        for (k, v) in counts {
            *seen.entry(k).or_insert(0) += v;
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    for v in seen.values() {
        assert!(*v >= 50, "{seen:?}");
    }
}
