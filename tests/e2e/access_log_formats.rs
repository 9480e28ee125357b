//! Access-log formats: Envoy's command operators (`text_format`, `json_format`, the `istio`
//! preset) per listener, and a differential test against Envoy 1.40 writing the same format
//! string for the same requests.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use weft_e2e::envoy::{TestEnvoy, http_bootstrap_with, require_envoy, static_cluster};
use weft_e2e::upstream::{closed_port, echo};
use weft_e2e::{Reply, TestProxy, client, eventually, get_with, send};

/// The lines of `path`, waiting until there are `n` (20 s at most: Envoy flushes its access
/// log every 10 s).
async fn lines(path: &Path, n: usize) -> Vec<String> {
    let ok = eventually(Duration::from_secs(20), || async {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .count()
            >= n
    })
    .await;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(ok, "{n} lines in {}:\n{text}", path.display());
    text.lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn listeners_write_the_istio_preset_their_own_text_or_json_format_or_nothing() {
    let up = echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let p = TestProxy::start(&format!(
        r#"
access_log:
  path: {log}
  format: istio
listeners:
  - name: istio
    address: 127.0.0.1:0
    virtual_hosts: [{{ name: v, domains: ["*"], routes: [{{ name: r, route: {{ cluster: app }} }}] }}]
  - name: text
    address: 127.0.0.1:0
    access_log:
      text_format: "%REQ(:METHOD)% %REQ(X-MISSING?X-TAG):4% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESP(CONTENT-TYPE)% %ROUTE_NAME% %START_TIME(%Y)%"
    virtual_hosts: [{{ name: v, domains: ["*"], routes: [{{ name: r, match: {{ path: {{ prefix: /in }} }}, route: {{ cluster: app }} }}] }}]
  - name: json
    address: 127.0.0.1:0
    access_log:
      json_format: {{ code: "%RESPONSE_CODE%", rid: "%REQ(X-REQUEST-ID)%", up: "%UPSTREAM_CLUSTER%", none: "%REQ(X-NONE)%", fixed: 1 }}
    virtual_hosts: [{{ name: v, domains: ["*"], routes: [{{ route: {{ cluster: app }} }}] }}]
  - name: quiet
    address: 127.0.0.1:0
    access_log: {{ disabled: true }}
    virtual_hosts: [{{ name: v, domains: ["*"], routes: [{{ route: {{ cluster: app }} }}] }}]
clusters:
  - {{ name: app, endpoints: [{{ address: "{up}" }}] }}
"#,
        log = log.display()
    ))
    .await;
    let get = |listener: &str, path: &str, h: &[(&str, &str)]| {
        let url = p.url(listener, path);
        let h: Vec<(String, String)> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            get_with(&url, &h).await
        }
    };
    assert_eq!(get("quiet", "/", &[]).await.status, StatusCode::OK);
    let r = get(
        "istio",
        "/a?b=1",
        &[
            ("x-request-id", "rid-1"),
            ("user-agent", "ua/1"),
            ("host", "svc.ns"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        get("text", "/in", &[("x-tag", "tagvalue")]).await.status,
        StatusCode::OK
    );
    assert_eq!(get("text", "/out", &[]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        get("json", "/", &[("x-request-id", "rid-2")]).await.status,
        StatusCode::OK
    );

    let all = lines(&log, 4).await;
    assert_eq!(all.len(), 4, "nothing from the disabled listener: {all:#?}");
    // Istio's default line.
    let istio = &all[0];
    let up_s = up.to_string();
    let istio_addr = p.addr("istio").to_string();
    let expected_tail = format!("\"rid-1\" \"svc.ns\" \"{up_s}\" app - {istio_addr} ");
    assert!(istio.starts_with('['), "{istio}");
    assert!(
        istio.contains("] \"GET /a?b=1 HTTP/1.1\" 200 - via_upstream - \"-\" 0 "),
        "{istio}"
    );
    assert!(
        istio.contains("\"127.0.0.1\" \"ua/1\" "),
        "x-forwarded-for as sent upstream: {istio}"
    );
    assert!(
        istio.contains(&expected_tail),
        "{istio}\nwanted {expected_tail}"
    );
    assert!(
        istio.ends_with(" - r"),
        "SNI none, route name last: {istio}"
    );
    // The listener's own text format, with an alternative header, truncation and a date.
    let year = &all[1][all[1].len() - 4..];
    assert_eq!(all[1], format!("GET tagv 200 - application/json r {year}"));
    assert!(year.starts_with("20"), "{}", all[1]);
    assert_eq!(all[2], format!("GET - 404 NR - - {year}"));
    // json_format: typed values, null for a missing header.
    let v: serde_json::Value = serde_json::from_str(&all[3]).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"code": 200, "rid": "rid-2", "up": "app", "none": null, "fixed": 1})
    );
    let m = p.metrics().await;
    assert!(m.contains("weft_access_log_dropped_total 0"), "{m}");
}

#[tokio::test]
async fn a_bad_operator_is_refused_naming_the_field_and_the_operator() {
    let text = "listeners:\n  - name: l\n    address: 127.0.0.1:0\n    access_log:\n      text_format: \"%REQ(:METHOD)% %RESPONSE_KODE%\"\n";
    let e = weft_config::parse(text, "w.yaml").unwrap_err().to_string();
    assert!(
        e.contains("listeners[0].access_log.text_format: `%RESPONSE_KODE%`: unknown or unsupported operator"),
        "{e}"
    );
    let text = "tracing: { collector: \"https://c:4317\", random_sampling: 101 }\n";
    let e = weft_config::parse(text, "w.yaml").unwrap_err().to_string();
    assert!(e.contains("tracing.collector"), "{e}");
    assert!(
        e.contains("tracing.random_sampling: 101 is not a percentage"),
        "{e}"
    );
}

/// The format both proxies write: every field is compared except the ones marked `~`
/// (durations and the client's port legitimately differ).
const FORMAT: &str = "%REQ(:METHOD)%|%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%|%PROTOCOL%|%RESPONSE_CODE%|%RESPONSE_FLAGS%|%BYTES_RECEIVED%|%REQ(X-REQUEST-ID)%|%REQ(:AUTHORITY)%|%REQ(USER-AGENT):6%|%REQ(X-MISSING?X-ALT)%|%UPSTREAM_HOST%|%UPSTREAM_CLUSTER%|%ROUTE_NAME%|%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%|%START_TIME(%Y)%|%RESP(X-SEEN)%|%REQUESTED_SERVER_NAME%|~%DURATION%|~%DOWNSTREAM_REMOTE_ADDRESS%|~%BYTES_SENT%|~%RESPONSE_CODE_DETAILS%\n";

fn envoy_bootstrap(up: SocketAddr, dead: SocketAddr, log: &Path) -> String {
    // JSON strings are YAML scalars.
    let format = serde_json::Value::String(FORMAT.to_owned());
    http_bootstrap_with(
        &format!(
            r#"                access_log:
                  - name: envoy.access_loggers.file
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
                      path: {log}
                      log_format: {{ text_format_source: {{ inline_string: {format} }} }}
"#,
            log = log.display(),
        ),
        r#"                      routes:
                        - { name: ok, match: { prefix: /ok }, route: { cluster: up } }
                        - { name: dead, match: { prefix: /dead }, route: { cluster: dead } }
"#,
        "",
        &format!(
            "{}{}",
            static_cluster("up", up, ""),
            static_cluster("dead", dead, "")
        ),
    )
}

/// Method, path, headers, body.
type Sent = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [u8],
);

#[tokio::test]
async fn the_same_format_string_writes_the_same_fields_as_envoy() {
    let Some(binary) = require_envoy() else {
        return;
    };
    let up = weft_e2e::upstream::serve(|_req| async {
        let mut r = http::Response::new(Full::new(Bytes::from_static(b"hello")));
        r.headers_mut().insert("x-seen", "yes".parse().unwrap());
        r
    })
    .await;
    let dead = closed_port().await;
    let dir = tempfile::tempdir().unwrap();
    let envoy_log = dir.path().join("envoy-access.log");
    let weft_log = dir.path().join("weft-access.log");
    let envoy = TestEnvoy::start_bootstrap(&binary, &envoy_bootstrap(up, dead, &envoy_log)).await;
    let weft = TestProxy::start(&format!(
        r#"
access_log:
  path: {log}
  text_format: {format}
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - {{ name: ok, match: {{ path: {{ prefix: /ok }} }}, route: {{ cluster: up }} }}
          - {{ name: dead, match: {{ path: {{ prefix: /dead }} }}, route: {{ cluster: dead }} }}
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
  - {{ name: dead, endpoints: [{{ address: "{dead}" }}] }}
"#,
        log = weft_log.display(),
        format = serde_json::Value::String(FORMAT.to_owned()),
    ))
    .await;

    // The same requests, in the same order, to both.
    let requests: [Sent; 4] = [
        (
            "GET",
            "/ok/a?x=1",
            &[
                ("x-request-id", "rid-1"),
                ("user-agent", "curl/8.5.0"),
                ("x-alt", "alt"),
            ],
            b"",
        ),
        ("POST", "/ok/post", &[("x-request-id", "rid-2")], b"12345"),
        ("GET", "/nowhere", &[("x-request-id", "rid-3")], b""),
        ("GET", "/dead", &[("x-request-id", "rid-4")], b""),
    ];
    let c = client();
    for base in [envoy.url(""), weft.url("main", "")] {
        for (method, path, headers, body) in &requests {
            let mut b = http::Request::builder()
                .method(*method)
                .uri(format!("{base}{path}"))
                .header("host", "svc.test");
            for (k, v) in *headers {
                b = b.header(*k, *v);
            }
            let r: Reply = send(&c, b.body(Full::new(Bytes::from_static(body))).unwrap()).await;
            assert!(r.status.as_u16() > 0);
        }
    }
    let e = lines(&envoy_log, requests.len()).await;
    let w = lines(&weft_log, requests.len()).await;
    for (i, (el, wl)) in e.iter().zip(&w).enumerate() {
        // The last field (details) may itself hold a `|` (Envoy's connect-failure details).
        let n = FORMAT.split('|').count();
        let ef: Vec<&str> = el.splitn(n, '|').collect();
        let wf: Vec<&str> = wl.splitn(n, '|').collect();
        assert_eq!(ef.len(), wf.len(), "request {i}: envoy {el}\nweft  {wl}");
        for (j, (a, b)) in ef.iter().zip(&wf).enumerate() {
            let name = FORMAT.split('|').nth(j).unwrap_or("?");
            if name.starts_with('~') {
                continue;
            }
            assert_eq!(a, b, "request {i}, field {name}: envoy {el}\nweft  {wl}");
        }
        // Bytes sent and details agree for what came from the upstream.
        if ef[3] == "200" {
            assert_eq!(ef[19], wf[19], "bytes sent: envoy {el}\nweft  {wl}");
            assert_eq!(ef[20], wf[20], "details: envoy {el}\nweft  {wl}");
        }
    }
    let _ = get_with(&weft.url("main", "/ok"), &[]).await;
}
