//! A plugin hot swap is all or nothing across its configuration variants: when the new module
//! fails for one route's configuration, no route gets it.

use http_body_util::Full;
use sha2::Digest;
use weft_e2e::upstream::echo;
use weft_e2e::{TestProxy, client, get, send};
use weft_test_artifacts as fx;

fn hex_sha256(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A compact JSON object as YAML flow syntax (a space after every `:` and `,`).
fn flow_yaml(json: &str) -> String {
    json.replace(':', ": ").replace(',', ", ")
}

/// `(label, sha256, swaps, rejected_versions)` of every handle of plugin `name`.
fn handles(plugins: &serde_json::Value, name: &str) -> Vec<(String, String, u64, u64)> {
    plugins["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter(|p| p["name"] == name)
        .map(|p| {
            (
                p["label"].as_str().unwrap_or_default().to_owned(),
                p["version"]["sha256"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                p["swaps"].as_u64().unwrap_or(u64::MAX),
                p["rejected_versions"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_swap_failing_for_one_route_variant_swaps_no_variant() {
    let up = echo("up").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.wasm");
    // The old version: `header_adder`, which takes any configuration.
    let old = fx::bytes(fx::HEADER_ADDER);
    std::fs::write(&file, &old).unwrap();
    // Three routes, three configuration overrides of the same plugin: three handles. The new
    // version (`hostcalls`) accepts the first two and rejects the third in `on_configure`.
    let configs = [
        r#"{"add_request_header":["x-new","a"]}"#,
        r#"{"add_request_header":["x-new","b"]}"#,
        r#"{"reject":true}"#,
    ];
    let p = TestProxy::start(&format!(
        r#"
plugins:
  - name: p
    file: {file}
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - {{ name: a, match: {{ path: {{ prefix: /a }} }}, route: {{ cluster: up }}, plugins: [{{ name: p, configuration: {a} }}] }}
          - {{ name: b, match: {{ path: {{ prefix: /b }} }}, route: {{ cluster: up }}, plugins: [{{ name: p, configuration: {b} }}] }}
          - {{ name: c, match: {{ path: {{ prefix: /c }} }}, route: {{ cluster: up }}, plugins: [{{ name: p, configuration: {c} }}] }}
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#,
        file = file.display(),
        a = flow_yaml(configs[0]),
        b = flow_yaml(configs[1]),
        c = flow_yaml(configs[2]),
    ))
    .await;
    let admin = format!("http://{}", p.admin());
    let old_sha = hex_sha256(&old);
    let before = handles(&get(&format!("{admin}/plugins")).await.json(), "p");
    assert_eq!(before.len(), 3, "one handle per variant: {before:?}");
    assert!(before.iter().all(|h| h.1 == old_sha), "{before:?}");

    // Served by the old version: header_adder echoes its configuration.
    let serves_old = |path: &'static str, config: &'static str| {
        let url = p.url("main", path);
        async move {
            let r = get(&url).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            assert_eq!(r.header("x-plugin"), Some(config), "{path}: old version");
            assert_eq!(r.json()["headers"]["x-plugin-seen"], config, "{path}");
            assert!(
                r.json()["headers"].get("x-new").is_none(),
                "{path}: the new version ran"
            );
        }
    };
    serves_old("/a", configs[0]).await;
    serves_old("/b", configs[1]).await;
    serves_old("/c", configs[2]).await;

    // The new module is refused for route c's configuration only.
    let new = fx::bytes(fx::HOSTCALLS);
    std::fs::write(&file, &new).unwrap();
    let reload = format!("{admin}/plugins/p/reload");
    let r = send(
        &client(),
        http::Request::post(&reload).body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let j = r.json();
    assert_eq!(j["plugin"], "p");
    assert_eq!(j["serving"], "previous version");
    assert!(
        j["error"]
            .as_str()
            .is_some_and(|e| e.contains(&file.display().to_string())),
        "{j}"
    );

    // Every route, including those whose configuration the new module accepted, still runs
    // the old version, and admin shows the old sha256 for every variant.
    serves_old("/a", configs[0]).await;
    serves_old("/b", configs[1]).await;
    serves_old("/c", configs[2]).await;
    let after = handles(&get(&format!("{admin}/plugins")).await.json(), "p");
    assert_eq!(after.len(), 3, "{after:?}");
    for (label, sha, swaps, rejected) in &after {
        assert_eq!(sha, &old_sha, "{label} kept the old version");
        assert_eq!(*swaps, 0, "{label}");
        assert_eq!(*rejected, 1, "{label}");
    }

    // The same swap with a module every variant accepts goes through for all of them.
    let mut accepted = old.clone();
    // A custom section: same behaviour, another sha256.
    let name = b"weft-test";
    accepted.extend_from_slice(&[0, (1 + name.len() + 1) as u8, name.len() as u8]);
    accepted.extend_from_slice(name);
    accepted.push(7);
    std::fs::write(&file, &accepted).unwrap();
    let r = send(
        &client(),
        http::Request::post(&reload).body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["swapped"], 3);
    let swapped = handles(&get(&format!("{admin}/plugins")).await.json(), "p");
    let new_sha = hex_sha256(&accepted);
    assert!(
        swapped.iter().all(|h| h.1 == new_sha && h.2 == 1),
        "{swapped:?}"
    );
    serves_old("/c", configs[2]).await;
}
