//! HTTP/2 with prior knowledge both sides, WebSocket pass-through, and TCP proxying.

use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use weft_e2e::upstream::{echo, websocket_echo};
use weft_e2e::{TestProxy, h2_client, send};

#[tokio::test]
async fn h2c_downstream_and_upstream() {
    let up = echo("h2-up").await;
    let p = TestProxy::start(&format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes:
          - {{ match: {{ path: {{ prefix: /h1 }} }}, route: {{ cluster: h1 }} }}
          - {{ route: {{ cluster: h2 }} }}
clusters:
  - {{ name: h1, endpoints: [{{ address: "{up}" }}] }}
  - {{ name: h2, protocol: http2, endpoints: [{{ address: "{up}" }}] }}
"#
    ))
    .await;
    let client = h2_client();
    // Several concurrent streams on one h2 connection.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let client = client.clone();
        let url = p.url("main", &format!("/h2/{i}"));
        tasks.push(tokio::spawn(async move {
            let req = http::Request::post(url)
                .body(Full::from(vec![b'x'; 1000 * (i + 1)]))
                .unwrap();
            send(&client, req).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.headers.get("content-type").unwrap(), "application/json");
        let j = r.json();
        assert_eq!(j["version"], "HTTP/2.0", "upstream spoke h2");
        assert_eq!(j["body_bytes"], 1000 * (i as u64 + 1));
        assert_eq!(j["path"], format!("/h2/{i}"));
    }
    // h2 downstream, HTTP/1.1 upstream.
    let r = send(
        &client,
        http::Request::get(p.url("main", "/h1"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.json()["version"], "HTTP/1.1");
    assert!(
        r.json()["headers"]["host"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "authority becomes Host"
    );
    let lines = p.access_log_lines(9).await;
    assert!(lines.iter().all(|l| l["protocol"] == "HTTP/2"), "{lines:?}");
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let ws = websocket_echo().await;
    let p = TestProxy::start(&format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    virtual_hosts:
      - name: any
        domains: ["*"]
        routes: [{{ route: {{ cluster: ws }} }}]
clusters:
  - {{ name: ws, endpoints: [{{ address: "{ws}" }}] }}
"#
    ))
    .await;
    let stream = tokio::net::TcpStream::connect(p.addr("main"))
        .await
        .unwrap();
    let (mut socket, resp) =
        tokio_tungstenite::client_async(format!("ws://{}/chat", p.addr("main")), stream)
            .await
            .expect("websocket handshake through weft");
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        let msg = format!("message {i} {}", "x".repeat(i * 100));
        socket.send(Message::text(msg.clone())).await.unwrap();
        let back = tokio::time::timeout(std::time::Duration::from_secs(5), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
    }
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn tcp_listener_proxies_bytes_both_ways_with_balancing() {
    // Two TCP echo upstreams that prefix their name.
    let mut ups = Vec::new();
    for name in ["t1", "t2"] {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        ups.push(l.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let mut out = name.as_bytes().to_vec();
                        out.push(b':');
                        out.extend_from_slice(&buf[..n]);
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
    let p = TestProxy::start(&format!(
        r#"
listeners:
  - name: db
    address: 127.0.0.1:0
    protocol: tcp
    tcp: {{ cluster: db }}
clusters:
  - name: db
    endpoints: [{{ address: "{}" }}, {{ address: "{}" }}]
"#,
        ups[0], ups[1]
    ))
    .await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(p.addr("db")).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(text.ends_with(":ping"), "{text}");
        seen.push(text[..2].to_owned());
    }
    seen.sort();
    assert_eq!(
        seen,
        ["t1", "t1", "t2", "t2"],
        "round robin across TCP endpoints"
    );
    let lines = p.access_log_lines(4).await;
    assert!(
        lines.iter().filter(|l| l["protocol"] == "TCP").count() >= 3,
        "{lines:?}"
    );
}
