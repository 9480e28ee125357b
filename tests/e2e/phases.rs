//! The HTTP phase chains: a redirect keeps the connection's scheme (`https` on TLS), and the
//! admin server lists every route's phases in the order they run.

use std::time::Duration;

use weft_e2e::mesh::{Pki, tls_files_yaml, tls_get};
use weft_e2e::upstream::echo;
use weft_e2e::{TestProxy, get, get_with};
use weft_test_artifacts as fx;

const HOUR: Duration = Duration::from_secs(3600);

const REDIRECT_ROUTES: &str = r#"    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - { match: { path: { prefix: /old } }, redirect: { prefix_rewrite: /new } }
          - { match: { path: { prefix: /moved } }, redirect: { path: /elsewhere, response_code: 307 } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_keeps_the_connection_scheme() {
    let pki = Pki::new("cluster.local");
    let s = pki.issue("server", &pki.id("prod", "server"), HOUR);
    let c = pki.issue("client", &pki.id("prod", "client"), HOUR);
    let tls = tls_files_yaml(&s);
    let p = TestProxy::start(&format!(
        r#"
listeners:
  - name: secure
    address: 127.0.0.1:0
    tls: {{ mode: strict, {tls} }}
{REDIRECT_ROUTES}  - name: mixed
    address: 127.0.0.1:0
    tls: {{ mode: permissive, {tls} }}
{REDIRECT_ROUTES}  - name: plain
    address: 127.0.0.1:0
{REDIRECT_ROUTES}"#
    ))
    .await;

    // TLS connections (HTTP/1.1 and HTTP/2): `https`, and the authority is the request's.
    for listener in ["secure", "mixed"] {
        for h2 in [false, true] {
            let r = tls_get(
                p.addr(listener),
                Some(&c),
                &s.bundle,
                "cluster.local",
                h2,
                "/old/a?b=1",
            )
            .await
            .unwrap_or_else(|e| panic!("{listener} h2={h2}: {e}"))
            .reply;
            assert_eq!(r.status, 301, "{listener} h2={h2}");
            assert_eq!(
                r.header("location"),
                Some("https://mesh.local/new/a?b=1"),
                "{listener} h2={h2}"
            );
            let r = tls_get(
                p.addr(listener),
                Some(&c),
                &s.bundle,
                "cluster.local",
                h2,
                "/moved",
            )
            .await
            .unwrap_or_else(|e| panic!("{listener} h2={h2}: {e}"))
            .reply;
            assert_eq!(r.status, 307);
            assert_eq!(
                r.header("location"),
                Some("https://mesh.local/elsewhere"),
                "{listener} h2={h2}"
            );
        }
    }

    // Plaintext connections (a plaintext listener, and plaintext on the permissive one): `http`.
    for listener in ["plain", "mixed"] {
        let addr = p.addr(listener);
        let r = get(&p.url(listener, "/old/a?b=1")).await;
        assert_eq!(r.status, 301, "{listener}");
        assert_eq!(
            r.header("location"),
            Some(format!("http://{addr}/new/a?b=1").as_str()),
            "{listener}"
        );
        let r = get_with(&p.url(listener, "/moved"), &[("host", "mesh.local")]).await;
        assert_eq!(r.status, 307);
        assert_eq!(
            r.header("location"),
            Some("http://mesh.local/elsewhere"),
            "{listener}"
        );
    }
}

fn as_strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap_or_else(|| panic!("{s}")).to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_each_route_phases_in_order() {
    let pki = Pki::new("cluster.local");
    let s = pki.issue("server", &pki.id("prod", "server"), HOUR);
    let up = echo("up").await;
    let p = TestProxy::start(&format!(
        r#"
plugins:
  - name: adder
    file: {adder}
    configuration: chained
  - name: tagger
    file: {hostcalls}
    phase: authn
    configuration: {{ add_request_header: [x-order, tagger] }}
listeners:
  - name: main
    address: 127.0.0.1:0
    # Permissive with deny rules only: plaintext requests pass the peer authorization phase.
    tls: {{ mode: permissive, {tls}, authorization: {{ deny: [{{ namespaces: [evil] }}] }} }}
    local_rate_limit: {{ max_tokens: 1000, fill_interval: 1s }}
    plugins: [{{ name: adder }}]
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - name: full
            match: {{ path: {{ prefix: /full }} }}
            local_rate_limit: {{ max_tokens: 1000, fill_interval: 1s }}
            request_headers: {{ set: [{{ name: x-req, value: "1" }}] }}
            plugins: [{{ name: tagger }}]
            response_headers: {{ set: [{{ name: x-resp, value: "1" }}] }}
            fault:
              abort: {{ http_status: 418 }}
              headers: [{{ name: x-fault, present: true }}]
            route: {{ cluster: up }}
          - name: direct
            match: {{ path: {{ prefix: /direct }} }}
            plugins: [{{ name: adder, disabled: true }}]
            direct_response: {{ status: 200, body: direct }}
          - name: away
            redirect: {{ path: /direct }}
  - name: raw
    address: 127.0.0.1:0
    protocol: tcp
    tcp: {{ cluster: up }}
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#,
        adder = fx::HEADER_ADDER,
        hostcalls = fx::HOSTCALLS,
        tls = tls_files_yaml(&s),
    ))
    .await;
    let before = ["weft.listener_rate_limit", "weft.peer_authz", "router"];
    let expected: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "full",
            [
                &before[..],
                &[
                    "weft.route_rate_limit",
                    "weft.request_headers",
                    "wasm:tagger,adder",
                    "weft.response_headers",
                    "weft.fault",
                    "weft.forward",
                ],
            ]
            .concat(),
            vec!["tagger", "adder"],
        ),
        (
            "direct",
            [&before[..], &["weft.direct_response"]].concat(),
            vec![],
        ),
        (
            "away",
            [&before[..], &["wasm:adder", "weft.redirect"]].concat(),
            vec!["adder"],
        ),
    ];
    let admin = format!("http://{}", p.admin());
    let chains = get(&format!("{admin}/chains")).await.json();
    let from_plugins = get(&format!("{admin}/plugins")).await.json()["chains"].clone();
    assert_eq!(chains, from_plugins, "/chains and /plugins agree");
    let list = chains.as_array().expect("an array of chains");
    for (route, phases, plugins) in &expected {
        let entry = list
            .iter()
            .find(|c| c["listener"] == "main" && c["route"] == *route)
            .unwrap_or_else(|| panic!("no chain for route {route}: {chains}"));
        assert_eq!(as_strings(&entry["phases"]), *phases, "route {route}");
        assert_eq!(as_strings(&entry["plugins"]), *plugins, "route {route}");
    }
    let tcp = list
        .iter()
        .find(|c| c["listener"] == "raw")
        .unwrap_or_else(|| panic!("no chain for the TCP listener: {chains}"));
    assert_eq!(as_strings(&tcp["phases"]), ["weft.tcp_proxy"]);
    assert_eq!(list.len(), 4, "one entry per route and per TCP listener");

    // The chain runs as listed: every request-side phase touched the forwarded request ...
    let r = get(&p.url("main", "/full")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &r.json()["headers"];
    assert_eq!(h["x-req"], "1");
    assert_eq!(h["x-order"], "tagger");
    assert_eq!(h["x-plugin-seen"], "chained");
    assert_eq!(r.header("x-resp"), Some("1"));
    assert_eq!(r.header("x-plugin"), Some("chained"));
    // ... and the fault phase, before the terminal one, answers instead of it. Its abort is a
    // local reply: no response hook runs on it (the phase contract, host/http/src/phase.rs).
    let r = get_with(&p.url("main", "/full"), &[("x-fault", "1")]).await;
    assert_eq!(r.status, 418, "{}", r.text());
    assert_eq!(r.text(), "fault filter abort");
    assert_eq!(r.header("x-resp"), None, "{:?}", r.headers);
}
