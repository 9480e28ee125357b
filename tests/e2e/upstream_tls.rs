//! A TCP listener whose cluster has `tls` carries its bytes over (m)TLS to the upstream, with
//! the cluster's client certificate: never plaintext to a TLS cluster.

use std::time::Duration;

use weft_e2e::mesh::{Pki, leaf_sha256, tls_echo, tls_files_yaml};
use weft_e2e::{TestProxy, metric_value, tcp_exchange};

const HOUR: Duration = Duration::from_secs(3600);

fn tcp_to_tls_cluster(upstream: std::net::SocketAddr, tls: &str) -> String {
    format!(
        r#"
listeners:
  - name: db
    address: 127.0.0.1:0
    protocol: tcp
    tcp: {{ cluster: db }}
clusters:
  - name: db
    endpoints: [{{ address: "{upstream}" }}]
    tls: {{ {tls} }}
"#
    )
}

/// Waits for the upstream's report of its next handshake (5 s at most).
async fn next_handshake(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Result<weft_e2e::mesh::Handshake, String>>,
) -> Result<weft_e2e::mesh::Handshake, String> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the upstream saw a connection within 5 s")
        .expect("the upstream is running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_to_a_tls_cluster_speaks_mtls_with_the_cluster_identity() {
    let pki = Pki::new("cluster.local");
    let server_id = pki.id("prod", "db");
    let client_id = pki.id("prod", "app");
    let s = pki.issue("db", &server_id, HOUR);
    let c = pki.issue("app", &client_id, HOUR);
    // The upstream requires a client certificate of exactly the cluster's identity.
    let (upstream, mut handshakes) = tls_echo(&s, std::slice::from_ref(&client_id)).await;
    let p = TestProxy::start(&tcp_to_tls_cluster(
        upstream,
        &format!(
            "{}, match_identities: [\"{server_id}\"]",
            tls_files_yaml(&c)
        ),
    ))
    .await;

    let payload = b"bytes through a TCP listener to a TLS cluster\n";
    let echoed = tcp_exchange(p.addr("db"), payload, payload.len()).await;
    let seen = next_handshake(&mut handshakes).await;
    let seen = seen.unwrap_or_else(|e| panic!("the proxy did not speak TLS to the upstream: {e}"));
    assert_eq!(
        String::from_utf8_lossy(&echoed),
        String::from_utf8_lossy(payload),
        "bytes round-trip through the TLS upstream"
    );
    assert_eq!(
        seen.peer_id, client_id,
        "the cluster's identity was presented"
    );
    assert_eq!(
        seen.peer_cert_hash,
        leaf_sha256(&c),
        "the cluster's client certificate was presented"
    );
    assert!(seen.version.starts_with("TLSv1_"), "{seen:?}");

    // A second connection is a second handshake with the same identity.
    let echoed = tcp_exchange(p.addr("db"), b"again", 5).await;
    assert_eq!(echoed, b"again");
    let seen = next_handshake(&mut handshakes).await.expect("TLS again");
    assert_eq!(seen.peer_id, client_id);

    let m = p.metrics().await;
    assert_eq!(
        metric_value(&m, r#"weft_upstream_cx_total{cluster="db"}"#),
        2.0,
        "{m}"
    );
    let lines = p.access_log_lines(2).await;
    assert!(
        lines
            .iter()
            .filter(|l| l["protocol"] == "TCP" && l["upstream_host"] == upstream.to_string())
            .count()
            >= 2,
        "{lines:?}"
    );
}

/// The positive case passes because of the cluster's certificate: a cluster presenting another
/// identity is refused by the same upstream, and a cluster expecting another server identity
/// refuses the upstream itself (a connect failure, `UF`). Neither echoes a byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_to_a_tls_cluster_is_refused_on_an_identity_mismatch() {
    let pki = Pki::new("cluster.local");
    let server_id = pki.id("prod", "db");
    let s = pki.issue("db", &server_id, HOUR);
    let stranger = pki.issue("stranger", &pki.id("prod", "stranger"), HOUR);
    let app = pki.issue("app", &pki.id("prod", "app"), HOUR);
    let (upstream, mut handshakes) = tls_echo(&s, &[pki.id("prod", "app")]).await;

    let wrong_client =
        TestProxy::start(&tcp_to_tls_cluster(upstream, &tls_files_yaml(&stranger))).await;
    let echoed = tcp_exchange(wrong_client.addr("db"), b"hello", 5).await;
    assert!(echoed.is_empty(), "{:?}", String::from_utf8_lossy(&echoed));
    let seen = next_handshake(&mut handshakes).await;
    assert!(
        seen.is_err(),
        "the upstream accepted an identity it does not allow: {seen:?}"
    );

    let wrong_server = TestProxy::start(&tcp_to_tls_cluster(
        upstream,
        &format!(
            "{}, match_identities: [\"{}\"]",
            tls_files_yaml(&app),
            pki.id("prod", "somebody-else")
        ),
    ))
    .await;
    let echoed = tcp_exchange(wrong_server.addr("db"), b"hello", 5).await;
    assert!(echoed.is_empty(), "{:?}", String::from_utf8_lossy(&echoed));
    let lines = wrong_server.access_log_lines(1).await;
    assert_eq!(
        lines.last().map(|l| l["response_flags"].clone()),
        Some("UF".into()),
        "{lines:?}"
    );
}
