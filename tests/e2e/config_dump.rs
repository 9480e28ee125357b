//! `/config_dump` redacts plugin configurations, VM configurations and environments (they
//! carry API keys and tokens) unless asked for them with `?include_secrets=true`.

use sha2::Digest;
use weft_e2e::upstream::echo;
use weft_e2e::{TestProxy, get};
use weft_test_artifacts as fx;

const SECRETS: [&str; 5] = [
    "top-level-api-key-7f3a9c",
    "vm-configuration-secret-51be",
    "env-token-e2d1a0",
    "listener-override-hmac-9c44",
    "route-override-token-0b7e",
];

fn config(up: std::net::SocketAddr) -> String {
    let [top, vm, env, listener, route] = SECRETS;
    format!(
        r#"
plugins:
  - name: adder
    file: {adder}
    configuration: {{ api_key: {top} }}
    vm_configuration: {vm}
    env: {{ TOKEN: {env} }}
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - name: own
            match: {{ path: {{ prefix: /own }} }}
            route: {{ cluster: up }}
            plugins: [{{ name: adder }}]
          - name: overridden
            route: {{ cluster: up }}
            plugins: [{{ name: adder, configuration: {{ token: {route} }} }}]
  - name: other
    address: 127.0.0.1:0
    plugins: [{{ name: adder, configuration: {{ hmac: {listener} }} }}]
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: up }} }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#,
        adder = fx::HEADER_ADDER,
    )
}

/// The places a secret sits in the dumped configuration, as JSON pointers.
const SECRET_PLACES: [&str; 5] = [
    "/config/plugins/0/configuration",
    "/config/plugins/0/vm_configuration",
    "/config/plugins/0/env",
    "/config/listeners/1/plugins/0/configuration",
    "/config/listeners/0/virtual_hosts/0/routes/1/plugins/0/configuration",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_redacts_plugin_secrets_unless_asked() {
    let up = echo("up").await;
    let p = TestProxy::start(&config(up)).await;
    // The plugins are live with their secrets (the adder echoes its configuration).
    let r = get(&p.url("main", "/")).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("x-plugin").is_some_and(|v| v.contains(SECRETS[4])),
        "{:?}",
        r.headers
    );
    let admin = format!("http://{}", p.admin());

    for url in [
        format!("{admin}/config_dump"),
        format!("{admin}/config_dump?include_secrets=false"),
    ] {
        let r = get(&url).await;
        assert_eq!(r.status, 200);
        let text = r.text();
        for secret in SECRETS {
            assert!(!text.contains(secret), "{url} shows `{secret}`:\n{text}");
        }
        let dump = r.json();
        for place in SECRET_PLACES {
            let v = dump
                .pointer(place)
                .unwrap_or_else(|| panic!("{url}: nothing at {place}:\n{text}"));
            assert_eq!(v["redacted"], true, "{url} {place}: {v}");
            let digest = v["sha256"].as_str().unwrap_or_default();
            assert!(
                digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
                "{url} {place}: {v}"
            );
            assert_eq!(
                v.as_object().map(|o| o.len()),
                Some(2),
                "only `redacted` and `sha256`: {v}"
            );
        }
        // What is not secret is still there.
        assert_eq!(dump["config"]["plugins"][0]["name"], "adder");
        assert_eq!(dump["config"]["plugins"][0]["file"], fx::HEADER_ADDER);
        assert_eq!(
            dump["config"]["listeners"][0]["virtual_hosts"][0]["routes"][1]["plugins"][0]["name"],
            "adder"
        );
    }

    let redacted = get(&format!("{admin}/config_dump")).await.json();
    let r = get(&format!("{admin}/config_dump?include_secrets=true")).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    for secret in SECRETS {
        assert!(
            text.contains(secret),
            "include_secrets hides `{secret}`:\n{text}"
        );
    }
    let full = r.json();
    assert_eq!(
        full["config"]["plugins"][0]["configuration"]["api_key"],
        SECRETS[0]
    );
    assert_eq!(full["config"]["plugins"][0]["env"]["TOKEN"], SECRETS[2]);
    for place in SECRET_PLACES {
        let shown = full
            .pointer(place)
            .unwrap_or_else(|| panic!("nothing at {place}"));
        assert_ne!(shown.get("redacted"), Some(&serde_json::Value::Bool(true)));
        // The digest is the one of the value shown with include_secrets (so two dumps can be
        // compared without revealing it).
        assert_eq!(
            redacted.pointer(place).map(|v| v["sha256"].clone()),
            Some(hex_sha256(shown.to_string().as_bytes()).into()),
            "{place}: {shown}"
        );
    }
    // Apart from the secrets, both dumps are the same.
    let mut revealed = full.clone();
    for place in SECRET_PLACES {
        if let (Some(slot), Some(v)) = (revealed.pointer_mut(place), redacted.pointer(place)) {
            *slot = v.clone();
        }
    }
    revealed["loaded_at"] = redacted["loaded_at"].clone();
    assert_eq!(revealed, redacted);
}

fn hex_sha256(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The redaction is only worth something if the other admin endpoints do not show the same
/// values: `/plugins`, `/chains` and `/metrics` should name plugin variants, not their secrets.
///
/// Fails today: a variant's label is `name[<override configuration as JSON>]`
/// (`PluginHandle::label`, host/extensions/src/registry.rs), shown by `/plugins` (`label`,
/// `chains`), `/chains` (`wasm:…` phases, `plugins`) and every `weft_plugin_*` series of
/// `/metrics`, so listener and route `configuration` overrides appear in clear text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_secrets_do_not_leak_through_other_admin_endpoints() {
    let up = echo("up").await;
    let p = TestProxy::start(&config(up)).await;
    for path in ["/", "/own", "/"] {
        assert_eq!(get(&p.url("main", path)).await.status, 200);
    }
    assert_eq!(get(&p.url("other", "/")).await.status, 200);
    let admin = format!("http://{}", p.admin());
    let mut leaks = Vec::new();
    for endpoint in ["/plugins", "/chains", "/metrics", "/certs", "/clusters"] {
        let text = get(&format!("{admin}{endpoint}")).await.text();
        for secret in SECRETS {
            for line in text.lines().filter(|l| l.contains(secret)) {
                leaks.push(format!("{endpoint}: {}", line.trim()));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets shown:\n{}", leaks.join("\n"));
}
