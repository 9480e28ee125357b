//! Mesh mTLS end to end: Weft sidecars talking mTLS with SPIFFE identities on 127.0.0.1,
//! refusals (trust domain, expiry, identity, plaintext in strict mode), permissive mode,
//! authorization, rotation under load, renewal from `weft ca serve`, and the TLS posture.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use weft_e2e::mesh::{Pki, replace, tls_files_yaml, tls_get};
use weft_e2e::upstream::echo;
use weft_e2e::{TestProxy, eventually, get, metric_value, raw};
use weft_test_artifacts as fx;
use weft_tls::creds::CredentialFiles;

const HOUR: Duration = Duration::from_secs(3600);

fn inbound(app: std::net::SocketAddr, tls: &str, extra: &str) -> String {
    format!(
        r#"
listeners:
  - name: inbound
    address: 127.0.0.1:0
    tls: {{ {tls} }}
{extra}    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: app }} }}]
clusters:
  - {{ name: app, endpoints: [{{ address: "{app}" }}] }}
"#
    )
}

fn outbound(server: std::net::SocketAddr, tls: &str) -> String {
    format!(
        r#"
listeners:
  - name: outbound
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: mesh }} }}]
clusters:
  - name: mesh
    protocol: http2
    endpoints: [{{ address: "{server}" }}]
    tls: {{ {tls} }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_two_sidecars_h2_with_identity_flowing_on() {
    let pki = Pki::new("cluster.local");
    let server_id = pki.id("prod", "server");
    let client_id = pki.id("prod", "client");
    let s = pki.issue("server", &server_id, HOUR);
    let c = pki.issue("client", &client_id, HOUR);
    let app = echo("app").await;
    let plugin = format!(
        "plugins:\n  - name: props\n    file: {}\n    configuration: {{echo_properties: [connection.mtls, source.principal, connection.uri_san_peer_certificate, connection.subject_peer_certificate, request.scheme]}}\n  - name: probe\n    file: {}\n    configuration: '{{\"scheme\":true}}'\n",
        fx::HOSTCALLS,
        fx::ABI_PROBE
    );
    let b = TestProxy::start(&format!(
        "{plugin}{}",
        inbound(
            app,
            &format!("mode: strict, {}", tls_files_yaml(&s)),
            "    forward_client_cert_details: sanitize_set\n    plugins: [{ name: props }, { name: probe }]\n"
        )
    ))
    .await;
    let a = TestProxy::start(&outbound(
        b.addr("inbound"),
        &format!(
            "{}, match_identities: [\"{server_id}\"]",
            tls_files_yaml(&c)
        ),
    ))
    .await;

    let r = weft_e2e::get_with(
        &a.url("outbound", "/hello"),
        &[("x-forwarded-client-cert", "By=spoofed;URI=spiffe://evil/x")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    let xfcc = j["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(xfcc.starts_with(&format!("By={server_id};Hash=")), "{xfcc}");
    assert!(xfcc.ends_with(&format!(";URI={client_id}")), "{xfcc}");
    assert!(
        !xfcc.contains("spoofed"),
        "sanitize_set replaces a client-sent header"
    );
    // `x-forwarded-proto` stays what the first hop saw (plaintext to the outbound sidecar).
    assert_eq!(j["headers"]["x-forwarded-proto"], "http");
    assert_eq!(j["headers"]["x-prop-connection-mtls"], "hex:01");
    assert_eq!(j["headers"]["x-prop-source-principal"], client_id.as_str());
    assert_eq!(
        j["headers"]["x-prop-connection-uri_san_peer_certificate"],
        client_id.as_str()
    );
    assert_eq!(
        j["headers"]["x-prop-connection-subject_peer_certificate"],
        "O=cluster.local"
    );
    assert_eq!(j["headers"]["x-prop-request-scheme"], "https");
    // The request headers plugins see say so too (`:scheme` was always `http`, issue 12).
    assert_eq!(r.header("x-probe-scheme"), Some("Ok:https"));

    // The hop between the sidecars is HTTP/2 over mTLS, and the server side knows the peer.
    let lines = b.access_log_lines(1).await;
    let line = lines.last().expect("an access log line");
    assert_eq!(line["protocol"], "HTTP/2");
    assert_eq!(line["connection_security_policy"], "mutual_tls");
    assert_eq!(line["downstream_peer_uri_san"], client_id.as_str());
    let m = b.metrics().await;
    assert!(
        metric_value(
            &m,
            "weft_downstream_cx_security_total{listener=\"inbound\",connection_security_policy=\"mutual_tls\"}"
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_strict_rejects_wrong_trust_domain_expired_wrong_id_and_plaintext() {
    let pki = Pki::new("cluster.local");
    let other = Pki::new("other.org");
    let s = pki.issue("server", &pki.id("prod", "server"), HOUR);
    // The server trusts both roots, so the foreign client's chain verifies and only the trust
    // domain check can refuse it.
    std::fs::write(
        &s.bundle,
        format!("{}{}", pki.ca.bundle_pem(), other.ca.bundle_pem()),
    )
    .expect("bundle");
    let app = echo("app").await;
    let b = TestProxy::start(&inbound(
        app,
        &format!(
            "mode: strict, trust_domain: cluster.local, {}",
            tls_files_yaml(&s)
        ),
        "",
    ))
    .await;
    let addr = b.addr("inbound");
    let good = pki.issue("good", &pki.id("prod", "client"), HOUR);
    let ok = tls_get(addr, Some(&good), &s.bundle, "cluster.local", false, "/").await;
    assert_eq!(ok.expect("a good client is served").reply.status, 200);

    // Wrong trust domain.
    let foreign = other.issue("foreign", &other.id("prod", "client"), HOUR);
    let e = tls_get(addr, Some(&foreign), &s.bundle, "cluster.local", false, "/").await;
    assert!(e.is_err(), "foreign trust domain accepted");

    // Expired certificate (issued already expired: its validity ended an hour ago).
    let expired = pki.issue_expired(&pki.id("prod", "client"));
    // Weft's own loader refuses expired material, so present it with plain rustls.
    let e = expired_client_handshake(
        addr,
        expired.chain_pem.as_bytes(),
        expired.key_pem.as_bytes(),
        &s.bundle,
    )
    .await;
    assert!(e.is_err(), "expired client certificate accepted");

    // No client certificate at all.
    let e = tls_get(addr, None, &s.bundle, "cluster.local", false, "/").await;
    assert!(
        e.is_err(),
        "client without certificate accepted in strict mode"
    );

    // Plaintext client in strict mode: no HTTP answer.
    let answer = raw(addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(
        !answer.starts_with("HTTP/"),
        "plaintext served in strict mode: {answer}"
    );

    // Wrong SPIFFE ID on the client side: the cluster requires another server identity, so the
    // outbound sidecar refuses the upstream (503, UF).
    let a = TestProxy::start(&outbound(
        addr,
        &format!(
            "{}, match_identities: [\"{}\"]",
            tls_files_yaml(&good),
            pki.id("prod", "somebody-else")
        ),
    ))
    .await;
    let r = get(&a.url("outbound", "/")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let m = b.metrics().await;
    assert!(
        metric_value(
            &m,
            "weft_downstream_tls_handshake_error_total{listener=\"inbound\"}"
        ) >= 3.0,
        "{m}"
    );
}

/// A handshake presenting `cert`/`key` as is (no local validity check).
async fn expired_client_handshake(
    addr: std::net::SocketAddr,
    cert: &[u8],
    key: &[u8],
    bundle: &std::path::Path,
) -> Result<u16, String> {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key).map_err(|e| e.to_string())?;
    let pem = std::fs::read(bundle).map_err(|e| e.to_string())?;
    let roots = weft_tls::creds::parse_bundle(bundle, &pem).map_err(|e| e.to_string())?;
    let verifier = weft_tls::verify::SpiffeServerVerifier::with_roots(
        weft_tls::verify::Roots::Fixed(Arc::new(roots)),
        weft_tls::verify::PeerRules {
            trust_domain: None,
            allowed: vec![],
        },
    );
    let config = rustls::ClientConfig::builder_with_provider(weft_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            tcp,
        )
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3: the server judges the client certificate after the client's Finished, so the
    // refusal arrives on the first read.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1024];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 && buf.starts_with(b"HTTP/1.1 200") => Ok(200),
        Ok(Ok(_)) => Err("closed".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_authorization_allows_and_denies_by_principal_and_namespace() {
    let pki = Pki::new("cluster.local");
    let s = pki.issue("server", &pki.id("prod", "server"), HOUR);
    let app = echo("app").await;
    let b = TestProxy::start(&inbound(
        app,
        &format!(
            "mode: strict, {}, authorization: {{ allow: [{{ namespaces: [prod] }}], deny: [{{ principals: [\"cluster.local/ns/prod/sa/banned\"] }}] }}",
            tls_files_yaml(&s)
        ),
        "",
    ))
    .await;
    let addr = b.addr("inbound");
    let web = pki.issue("web", &pki.id("prod", "web"), HOUR);
    let dev = pki.issue("dev", &pki.id("dev", "web"), HOUR);
    let banned = pki.issue("banned", &pki.id("prod", "banned"), HOUR);
    let status = |f: CredentialFiles| {
        let bundle = s.bundle.clone();
        async move {
            tls_get(addr, Some(&f), &bundle, "cluster.local", true, "/")
                .await
                .expect("handshake")
                .reply
                .status
        }
    };
    assert_eq!(status(web).await, 200);
    assert_eq!(status(dev).await, 403);
    assert_eq!(status(banned).await, 403);
    let m = b.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "weft_downstream_rq_rbac_denied_total{listener=\"inbound\"}"
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_permissive_serves_plaintext_and_mtls_on_one_port() {
    let pki = Pki::new("cluster.local");
    let s = pki.issue("server", &pki.id("prod", "server"), HOUR);
    let c = pki.issue("client", &pki.id("prod", "client"), HOUR);
    let app = echo("app").await;
    let b = TestProxy::start(&inbound(
        app,
        &format!("mode: permissive, {}", tls_files_yaml(&s)),
        "",
    ))
    .await;
    let addr = b.addr("inbound");
    let plain = get(&b.url("inbound", "/plain")).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.json()["headers"]["x-forwarded-proto"], "http");
    let h2c = weft_e2e::send(
        &weft_e2e::h2_client(),
        http::Request::get(b.url("inbound", "/h2c"))
            .body(Default::default())
            .expect("req"),
    )
    .await;
    assert_eq!(h2c.status, 200, "h2 prior knowledge still detected");
    let tls = tls_get(addr, Some(&c), &s.bundle, "cluster.local", true, "/mtls")
        .await
        .expect("mTLS in permissive mode");
    assert_eq!(tls.reply.status, 200);
    assert_eq!(tls.alpn.as_deref(), Some(&b"h2"[..]));
    let lines = b.access_log_lines(3).await;
    let policies: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["connection_security_policy"].as_str())
        .collect();
    assert!(
        policies.contains(&"none") && policies.contains(&"mutual_tls"),
        "{policies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_rotation_under_load_fails_no_request_and_refuses_bad_material() {
    let pki = Pki::new("cluster.local");
    let server_id = pki.id("prod", "server");
    let s = pki.issue("server", &server_id, HOUR);
    let c = pki.issue("client", &pki.id("prod", "client"), HOUR);
    let app = echo("app").await;
    let b = TestProxy::start(&inbound(
        app,
        &format!("mode: strict, {}", tls_files_yaml(&s)),
        "",
    ))
    .await;
    let addr = b.addr("inbound");
    let first = tls_get(addr, Some(&c), &s.bundle, "cluster.local", false, "/")
        .await
        .expect("served")
        .server_cert_hash;

    // Continuous load: every request on a new connection (a new handshake), plus one
    // long-lived h2 connection through an outbound sidecar.
    let a = TestProxy::start(&outbound(addr, &tls_files_yaml(&c))).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for i in 0..3 {
        let (stop, ok, failed, errors, c, bundle, via) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            errors.clone(),
            c.clone(),
            s.bundle.clone(),
            a.url("outbound", "/"),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let outcome = if i == 0 {
                    let r = get(&via).await;
                    if r.status == 200 {
                        Ok(())
                    } else {
                        Err(format!("via sidecar: {} {}", r.status, r.text()))
                    }
                } else {
                    match tls_get(addr, Some(&c), &bundle, "cluster.local", false, "/").await {
                        Ok(r) if r.reply.status == 200 => Ok(()),
                        Ok(r) => Err(format!("direct: {}", r.reply.status)),
                        Err(e) => Err(format!("direct: {e}")),
                    }
                };
                match outcome {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.lock().push(e);
                    }
                }
                // A failing test drops the runtime, whose sockets then fail at once: without a
                // yield this loop would spin and the runtime could never stop.
                tokio::task::yield_now().await;
            }
        }));
    }
    // Every step below waits for the load to make progress, so that it runs through each one.
    let progressed = |n: usize| {
        let ok = ok.clone();
        async move {
            let from = ok.load(Ordering::Relaxed);
            assert!(
                eventually(Duration::from_secs(10), || async {
                    ok.load(Ordering::Relaxed) >= from + n
                })
                .await,
                "the load served {n} more requests"
            );
        }
    };
    // The `/certs` entry of the listener, for its rotation counters.
    let certs_url = format!("http://{}/certs", b.admin());
    let certs = || {
        let url = certs_url.clone();
        async move { get(&url).await.json()["certificates"][0].clone() }
    };
    let count = |v: &serde_json::Value, field: &str| v[field].as_u64().unwrap_or_default();
    progressed(10).await;

    // Rotate: new key and certificate, each file replaced atomically.
    let next = pki
        .ca
        .issue(&weft_ca::IssueRequest::new(&server_id, HOUR))
        .expect("issue");
    replace(&s.key, next.key_pem.as_bytes());
    replace(&s.cert, next.chain_pem.as_bytes());
    let rotated = eventually(Duration::from_secs(5), || {
        let (c, bundle) = (c.clone(), s.bundle.clone());
        let first = first.clone();
        async move {
            matches!(tls_get(addr, Some(&c), &bundle, "cluster.local", false, "/").await, Ok(r) if r.server_cert_hash != first)
        }
    })
    .await;
    assert!(rotated, "new handshakes use the new certificate");
    let second = tls_get(addr, Some(&c), &s.bundle, "cluster.local", false, "/")
        .await
        .expect("served")
        .server_cert_hash;

    // Bad material: a key that does not match, then an expired certificate. Both refused;
    // the last good credentials keep serving.
    let stranger = pki
        .ca
        .issue(&weft_ca::IssueRequest::new(&server_id, HOUR))
        .expect("issue");
    progressed(5).await;
    let before = certs().await;
    replace(&s.key, stranger.key_pem.as_bytes());
    assert!(
        eventually(Duration::from_secs(10), || async {
            let now = certs().await;
            count(&now, "refused_rotations") > count(&before, "refused_rotations")
                && now["last_refusal"]
                    .as_str()
                    .is_some_and(|e| e.contains("key.pem"))
        })
        .await,
        "the mismatched key was looked at and refused: {}",
        certs().await
    );
    progressed(5).await;
    // The good key back: the same material as `second` again, taken as a rotation.
    let before = certs().await;
    replace(&s.key, next.key_pem.as_bytes());
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(&certs().await, "rotations") > count(&before, "rotations")
        })
        .await,
        "the good key was taken back: {}",
        certs().await
    );
    progressed(5).await;
    let expired = pki.issue_expired(&server_id);
    replace(&s.key, expired.key_pem.as_bytes());
    replace(&s.cert, expired.chain_pem.as_bytes());
    // Refused for its dates once both files were read (a look between the two replacements
    // would see a key that does not match).
    assert!(
        eventually(Duration::from_secs(10), || async {
            certs().await["last_refusal"]
                .as_str()
                .is_some_and(|e| e.contains("cert.pem") && e.contains("not valid now"))
        })
        .await,
        "the expired certificate was refused: {}",
        certs().await
    );
    progressed(5).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    let still = tls_get(addr, Some(&c), &s.bundle, "cluster.local", false, "/")
        .await
        .expect("still served");
    assert_eq!(still.reply.status, 200);
    assert_eq!(
        still.server_cert_hash, second,
        "bad material refused, last good kept"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during rotation: {:?}",
        errors.lock().clone()
    );
    assert!(ok.load(Ordering::Relaxed) > 10, "load ran");
    // The admin `/certs` shows the rotation state and why the last material was refused.
    let certs = get(&certs_url).await.json();
    let entry = &certs["certificates"][0];
    assert_eq!(entry["owner"], "listener inbound");
    assert_eq!(entry["identity"], server_id.as_str());
    assert!(entry["rotations"].as_u64() >= Some(1), "{certs}");
    assert!(entry["refused_rotations"].as_u64() >= Some(2), "{certs}");
    let why = entry["last_refusal"].as_str().unwrap_or_default();
    assert!(
        why.contains("cert.pem") && why.contains("not valid now"),
        "{certs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_bundle_rotation_takes_effect_for_new_handshakes() {
    let old = Pki::new("cluster.local");
    let new = Pki::new("cluster.local");
    let s = old.issue("server", &old.id("prod", "server"), HOUR);
    let app = echo("app").await;
    let b = TestProxy::start(&inbound(
        app,
        &format!("mode: strict, {}", tls_files_yaml(&s)),
        "",
    ))
    .await;
    let addr = b.addr("inbound");
    let client_new = new.issue("client", &new.id("prod", "client"), HOUR);
    // The client trusts both roots from the start; only the server's bundle changes.
    let both = format!("{}{}", old.ca.bundle_pem(), new.ca.bundle_pem());
    std::fs::write(&client_new.bundle, &both).expect("client bundle");
    assert!(
        tls_get(
            addr,
            Some(&client_new),
            &s.bundle,
            "cluster.local",
            false,
            "/"
        )
        .await
        .is_err(),
        "a client of the new CA is not trusted yet"
    );
    // Trust both roots (the usual CA migration step).
    replace(&s.bundle, both.as_bytes());
    let trusted = eventually(Duration::from_secs(5), || {
        let (c, bundle) = (client_new.clone(), s.bundle.clone());
        async move {
            tls_get(addr, Some(&c), &bundle, "cluster.local", false, "/")
                .await
                .is_ok()
        }
    })
    .await;
    assert!(trusted, "the new bundle takes effect for new handshakes");
}

/// A certificate agent's surroundings: `weft ca serve` on an ephemeral port, run from the same
/// CA directory layout the CLI writes and accepting one bootstrap token for `ns/prod`; the
/// trust bundle and token files the agent reads; where it writes its credentials.
struct AgentSetup {
    ca_addr: std::net::SocketAddr,
    ca_bundle: std::path::PathBuf,
    token: std::path::PathBuf,
    out: std::path::PathBuf,
    files: CredentialFiles,
}

async fn agent_setup(pki: &Pki) -> AgentSetup {
    const TOKEN: &str = "bootstrap-token-0123456789";
    let ca_bundle = pki.dir.join("ca-bundle.pem");
    std::fs::write(&ca_bundle, pki.ca.bundle_pem()).expect("w");
    let token = pki.dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("w");
    let ca_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ca_addr = ca_listener.local_addr().expect("addr");
    let ca_dir = pki.dir.join("ca");
    pki.ca.save(&ca_dir).expect("save");
    tokio::spawn(weft_ca::server::serve(
        weft_ca::Ca::load(&ca_dir).expect("load"),
        ca_listener,
        weft_ca::server::ServeOptions {
            tokens: vec![weft_ca::server::Token {
                token: TOKEN.into(),
                pattern: "spiffe://cluster.local/ns/prod/*".into(),
            }],
            default_ttl: HOUR,
            max_ttl: HOUR,
        },
    ));
    let out = pki.dir.join("workload");
    let files = CredentialFiles {
        cert: out.join("cert.pem"),
        key: out.join("key.pem"),
        bundle: out.join("bundle.pem"),
    };
    AgentSetup {
        ca_addr,
        ca_bundle,
        token,
        out,
        files,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_agent_gets_and_renews_its_certificate_from_ca_serve() {
    let pki = Pki::new("cluster.local");
    let AgentSetup {
        ca_addr,
        ca_bundle,
        token,
        out,
        files,
    } = agent_setup(&pki).await;
    let app = echo("app").await;
    let server_id = pki.id("prod", "server");
    let b = TestProxy::start(&format!(
        r#"
identity:
  ca_address: "{ca_addr}"
  ca_trust_bundle_file: {}
  bootstrap_token_file: {}
  spiffe_id: {server_id}
  output_dir: {}
  ttl: 12s
  renew_fraction: 0.3
{}"#,
        ca_bundle.display(),
        token.display(),
        out.display(),
        inbound(
            app,
            &format!("mode: strict, {}", tls_files_yaml(&files)),
            ""
        )
    ))
    .await;
    let addr = b.addr("inbound");
    let c = pki.issue("client", &pki.id("prod", "client"), HOUR);
    let first = tls_get(addr, Some(&c), &ca_bundle, "cluster.local", false, "/")
        .await
        .expect("served with the agent's certificate");
    assert_eq!(first.reply.status, 200);
    // Renewal at ~30% of 12 s, well before expiry; the listener rotates to it.
    let renewed = eventually(Duration::from_secs(10), || {
        let (c, bundle, first) = (c.clone(), ca_bundle.clone(), first.server_cert_hash.clone());
        async move {
            matches!(tls_get(addr, Some(&c), &bundle, "cluster.local", false, "/").await, Ok(r) if r.server_cert_hash != first && r.reply.status == 200)
        }
    })
    .await;
    assert!(
        renewed,
        "the agent renewed before expiry and the listener picked it up"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.key)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the private key stays private");
    }
}

/// One mesh configuration for every workload (what `weft inject` deploys): the SPIFFE ID given
/// at start (`weft run` takes it from `WEFT_SPIFFE_ID`) is the one the agent asks the CA for,
/// not the configuration's placeholder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_agent_asks_for_the_spiffe_id_given_at_start_over_the_configured_one() {
    let pki = Pki::new("cluster.local");
    let AgentSetup {
        ca_addr,
        ca_bundle,
        token,
        out,
        files,
    } = agent_setup(&pki).await;
    let app = echo("app").await;
    let path = pki.dir.join("weft.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
identity:
  ca_address: "{ca_addr}"
  ca_trust_bundle_file: {}
  bootstrap_token_file: {}
  spiffe_id: spiffe://cluster.local/ns/prod/sa/placeholder
  output_dir: {}
{}"#,
            ca_bundle.display(),
            token.display(),
            out.display(),
            inbound(
                app,
                &format!("mode: strict, {}", tls_files_yaml(&files)),
                ""
            )
        ),
    )
    .expect("write");
    let wanted = pki.id("prod", "reviews");
    let proxy = weft_proxy::Proxy::start(
        weft_proxy::ConfigSource::File(path),
        weft_proxy::StartOptions {
            admin_address: Some("127.0.0.1:0".parse().expect("addr")),
            spiffe_id: Some(wanted.clone()),
            ..Default::default()
        },
    )
    .await
    .expect("proxy starts");
    let material = weft_tls::creds::load_material(&files).expect("the agent wrote a certificate");
    assert_eq!(
        material.identity.as_ref().map(ToString::to_string),
        Some(wanted)
    );
    let addr = proxy.listener_addr("inbound").expect("inbound");
    let c = pki.issue("client", &pki.id("prod", "client"), HOUR);
    let served = tls_get(addr, Some(&c), &ca_bundle, "cluster.local", false, "/")
        .await
        .expect("served with that certificate");
    assert_eq!(served.reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_posture_openssl_only_tls12_plus_and_forward_secret_suites() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("openssl not installed: posture check skipped (scripts/test.sh installs it)");
        return;
    }
    let pki = Pki::new("cluster.local");
    let s = pki.issue("server", &pki.id("prod", "server"), HOUR);
    let c = pki.issue("client", &pki.id("prod", "client"), HOUR);
    let app = echo("app").await;
    let b = TestProxy::start(&inbound(
        app,
        &format!("mode: strict, {}", tls_files_yaml(&s)),
        "",
    ))
    .await;
    let addr = b.addr("inbound").to_string();
    let s_client = |args: &[&str]| {
        let mut cmd = std::process::Command::new("openssl");
        cmd.args(["s_client", "-connect", &addr, "-cert"])
            .arg(&c.cert)
            .arg("-key")
            .arg(&c.key)
            .args(args)
            .stdin(std::process::Stdio::null());
        let out = cmd.output().expect("openssl runs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let handshook = |out: &str| out.contains("Cipher is ") && !out.contains("Cipher is (NONE)");
    for old in ["-tls1", "-tls1_1"] {
        let out = s_client(&[old]);
        assert!(!handshook(&out), "{old} accepted:\n{out}");
    }
    // Static-RSA and other non-forward-secret TLS 1.2 suites are refused.
    for suite in [
        "AES128-GCM-SHA256",
        "AES256-SHA256",
        "DHE-RSA-AES128-GCM-SHA256",
    ] {
        let out = s_client(&["-tls1_2", "-cipher", suite]);
        assert!(!handshook(&out), "{suite} accepted:\n{out}");
    }
    let out = s_client(&["-tls1_2"]);
    assert!(
        handshook(&out) && out.contains("ECDHE"),
        "TLS 1.2 with ECDHE:\n{out}"
    );
    let out = s_client(&["-tls1_3"]);
    assert!(
        handshook(&out) && out.contains("TLSv1.3"),
        "TLS 1.3:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_kubernetes_secret_symlink_swap_rotates() {
    let pki = Pki::new("cluster.local");
    let id = pki.id("prod", "server");
    let c = pki.issue("client", &pki.id("prod", "client"), HOUR);
    // A mounted Secret: `..data -> ..v1/`, and each file a symlink through `..data`.
    let mount = pki.dir.join("secret");
    let v1 = pki.issue("secret/..v1", &id, HOUR);
    drop(v1);
    std::os::unix::fs::symlink("..v1", mount.join("..data")).expect("..data");
    for f in ["cert.pem", "key.pem", "bundle.pem"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), mount.join(f)).expect("link");
    }
    let files = CredentialFiles {
        cert: mount.join("cert.pem"),
        key: mount.join("key.pem"),
        bundle: mount.join("bundle.pem"),
    };
    let app = echo("app").await;
    let b = TestProxy::start(&inbound(
        app,
        &format!("mode: strict, {}", tls_files_yaml(&files)),
        "",
    ))
    .await;
    let addr = b.addr("inbound");
    let first = tls_get(addr, Some(&c), &files.bundle, "cluster.local", false, "/")
        .await
        .expect("served")
        .server_cert_hash;
    // The kubelet's update: write `..v2/`, point a temporary link at it, rename it over `..data`.
    pki.issue("secret/..v2", &id, HOUR);
    std::os::unix::fs::symlink("..v2", mount.join("..data_tmp")).expect("tmp link");
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).expect("swap");
    let rotated = eventually(Duration::from_secs(5), || {
        let (c, bundle, first) = (c.clone(), files.bundle.clone(), first.clone());
        async move {
            matches!(tls_get(addr, Some(&c), &bundle, "cluster.local", false, "/").await, Ok(r) if r.server_cert_hash != first)
        }
    })
    .await;
    assert!(
        rotated,
        "the symlink swap was seen and the new certificate served"
    );
}

#[tokio::test]
async fn mtls_bad_material_at_start_is_refused_naming_the_file() {
    let pki = Pki::new("cluster.local");
    let s = pki.issue("server", &pki.id("prod", "server"), HOUR);
    let other = pki.issue("other", &pki.id("prod", "other"), HOUR);
    std::fs::copy(&other.key, &s.key).expect("copy");
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("weft.yaml");
    std::fs::write(
        &path,
        format!(
            "access_log: {{ path: \"off\" }}\n{}",
            inbound(
                "127.0.0.1:9".parse().expect("addr"),
                &format!("mode: strict, {}", tls_files_yaml(&s)),
                ""
            )
        ),
    )
    .expect("write");
    let started = weft_proxy::Proxy::start(
        weft_proxy::ConfigSource::File(path),
        weft_proxy::StartOptions {
            watch: false,
            admin_address: Some("127.0.0.1:0".parse().expect("addr")),
            ..Default::default()
        },
    )
    .await;
    let err = match started {
        Ok(_) => panic!("a key that does not match its certificate was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("listeners[0].tls")
            && err.contains("private key does not match")
            && err.contains("key.pem"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_http1_upstream_with_sni_and_tls13_minimum() {
    let pki = Pki::new("cluster.local");
    let s = pki.issue("server", &pki.id("prod", "server"), HOUR);
    let c = pki.issue("client", &pki.id("prod", "client"), HOUR);
    let app = echo("app").await;
    let plugin = format!(
        "plugins:\n  - name: props\n    file: {}\n    configuration: {{echo_properties: [connection.requested_server_name, connection.tls_version, connection.uri_san_local_certificate]}}\n",
        fx::HOSTCALLS
    );
    let b = TestProxy::start(&format!(
        "{plugin}{}",
        inbound(
            app,
            &format!("mode: strict, min_version: TLSv1_3, {}", tls_files_yaml(&s)),
            "    plugins: [{ name: props }]\n"
        )
    ))
    .await;
    let a = TestProxy::start(&format!(
        r#"
listeners:
  - name: outbound
    address: 127.0.0.1:0
    virtual_hosts: [{{ name: any, domains: ["*"], routes: [{{ route: {{ cluster: mesh }} }}] }}]
clusters:
  - name: mesh
    endpoints: [{{ address: "{}" }}]
    tls: {{ sni: server.prod.svc, {} }}
"#,
        b.addr("inbound"),
        tls_files_yaml(&c)
    ))
    .await;
    let r = get(&a.url("outbound", "/")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(
        j["headers"]["x-prop-connection-requested_server_name"],
        "server.prod.svc"
    );
    assert_eq!(j["headers"]["x-prop-connection-tls_version"], "TLSv1.3");
    assert_eq!(
        j["headers"]["x-prop-connection-uri_san_local_certificate"],
        pki.id("prod", "server").as_str()
    );
    let lines = b.access_log_lines(1).await;
    assert_eq!(
        lines.last().map(|l| l["protocol"].clone()),
        Some("HTTP/1.1".into())
    );
}

/// Active health checks to a TLS cluster go through the cluster's own mTLS client side (HTTP/2
/// over ALPN here): a healthy sidecar passes, one answering an unexpected status fails, and a
/// plaintext-only endpoint fails the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_health_checks_use_the_cluster_tls() {
    let pki = Pki::new("cluster.local");
    let server_id = pki.id("prod", "server");
    let s = pki.issue("server", &server_id, HOUR);
    let c = pki.issue("client", &pki.id("prod", "client"), HOUR);
    let app = echo("app").await;
    let b = TestProxy::start(&inbound(
        app,
        &format!("mode: strict, {}", tls_files_yaml(&s)),
        "",
    ))
    .await;
    let plaintext = echo("plaintext").await;
    let cluster = |expected: &str, endpoints: &str| {
        format!(
            r#"
listeners:
  - name: outbound
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: mesh }} }}]
clusters:
  - name: mesh
    protocol: http2
    endpoints: [{endpoints}]
    tls: {{ {tls}, match_identities: ["{server_id}"] }}
    panic_threshold: 0
    health_checks:
      - http: {{ path: /healthz, expected_statuses: [{expected}] }}
        interval: 100ms
        timeout: 1s
        healthy_threshold: 1
        unhealthy_threshold: 1
"#,
            tls = tls_files_yaml(&c),
        )
    };
    let both = format!(
        "{{ address: \"{}\" }}, {{ address: \"{plaintext}\" }}",
        b.addr("inbound")
    );
    let a = TestProxy::start(&cluster("200", &both)).await;
    let clusters_url = format!("http://{}/clusters", a.admin());
    let tls_ok = format!("mesh::{}::health_flags::healthy", b.addr("inbound"));
    let plain_failed = format!("mesh::{plaintext}::health_flags::/failed_active_hc");
    let settled = eventually(Duration::from_secs(10), || async {
        let text = get(&clusters_url).await.text();
        text.contains(&tls_ok) && text.contains(&plain_failed)
    })
    .await;
    assert!(settled, "{}", get(&clusters_url).await.text());
    // With the plaintext endpoint out, every request goes to the healthy mTLS one.
    for _ in 0..20 {
        let r = get(&a.url("outbound", "/x")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // Over the same TLS connection, a status outside `expected_statuses` fails the check.
    let a2 = TestProxy::start(&cluster(
        "204",
        &format!("{{ address: \"{}\" }}", b.addr("inbound")),
    ))
    .await;
    let url2 = format!("http://{}/clusters", a2.admin());
    let tls_failed = format!(
        "mesh::{}::health_flags::/failed_active_hc",
        b.addr("inbound")
    );
    let failed = eventually(Duration::from_secs(10), || async {
        get(&url2).await.text().contains(&tls_failed)
    })
    .await;
    assert!(failed, "{}", get(&url2).await.text());
}
