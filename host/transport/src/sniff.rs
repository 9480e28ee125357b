//! Protocol detection on a fresh connection, by peeking (nothing is consumed): the HTTP/2
//! connection preface (prior knowledge, h2c), the TLS handshake record, and for capture
//! listeners [`detect`]: TLS with its SNI and ALPN, HTTP/1, h2c, or opaque TCP.

#[cfg(test)]
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

/// What protocol detection saw on a connection's first bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detected {
    /// A TLS ClientHello.
    pub tls: bool,
    /// Its SNI.
    pub server_name: Option<String>,
    /// TLS: the ALPN values offered; plaintext: `http/1.0`, `http/1.1` or `h2c` when seen.
    pub application_protocols: Vec<String>,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads ahead (without consuming) until the bytes either start the HTTP/2 preface or cannot.
pub(crate) async fn is_h2_prior_knowledge(stream: &TcpStream, deadline: Duration) -> bool {
    let mut buf = [0u8; 24];
    let probe = async {
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            if buf[..n] != H2_PREFACE[..n] {
                return false;
            }
            if n == H2_PREFACE.len() {
                return true;
            }
            // A partial preface: wait for more bytes.
            if stream.readable().await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(deadline, probe).await.unwrap_or(false)
}

/// Waits (up to `deadline`) for the first byte: a TLS handshake record starts with 0x16, which
/// no HTTP/1 method or HTTP/2 preface does (permissive mode's detection).
pub(crate) async fn starts_with_tls(stream: &TcpStream, deadline: Duration) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(deadline, stream.peek(&mut first)).await,
        Ok(Ok(1))
    ) && first[0] == 0x16
}

/// The most bytes protocol detection looks at: a TLS record carrying the ClientHello (16 KiB
/// and its 5-byte header), or an HTTP/1 request line.
const DETECT_MAX: usize = 16 * 1024 + 5;

/// Reads ahead (without consuming) until the first bytes show TLS (with its SNI and ALPN), an
/// HTTP/1 request line, the HTTP/2 preface, or something else; gives up after `deadline`
/// (a server-first protocol sends nothing) and reports opaque TCP.
pub(crate) async fn detect(stream: &TcpStream, deadline: Duration) -> Detected {
    let mut buf = vec![0u8; DETECT_MAX];
    let probe = async {
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return Detected::default(),
                Ok(n) => n,
            };
            if let Some(found) = classify(&buf[..n], n == buf.len()) {
                return found;
            }
            // Undecided: wait for more bytes.
            if stream.readable().await.is_err() {
                return Detected::default();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(deadline, probe)
        .await
        .unwrap_or_default()
}

/// What `bytes` (the start of a connection) are, or `None` while they could still be more
/// than one thing; `full`: no more bytes will be looked at.
pub(crate) fn classify(bytes: &[u8], full: bool) -> Option<Detected> {
    let first = *bytes.first()?;
    if first == 0x16 {
        return client_hello(bytes, full);
    }
    if H2_PREFACE.starts_with(bytes) || bytes.starts_with(H2_PREFACE) {
        return (bytes.len() >= H2_PREFACE.len()).then(|| Detected {
            application_protocols: vec!["h2c".into()],
            ..Detected::default()
        });
    }
    http1_request_line(bytes, full)
}

/// TLS: the ClientHello's SNI and ALPN, read by rustls from the peeked bytes.
fn client_hello(bytes: &[u8], full: bool) -> Option<Detected> {
    let mut acceptor = tokio_rustls::rustls::server::Acceptor::default();
    let mut rd = bytes;
    while !rd.is_empty() {
        if acceptor.read_tls(&mut rd).is_err() {
            break;
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            Some(Detected {
                tls: true,
                server_name: hello.server_name().map(str::to_owned),
                application_protocols: hello
                    .alpn()
                    .map(|list| {
                        list.map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        }
        // A partial ClientHello: wait for the rest (unless there is no more room).
        Ok(None) if !full => None,
        // Starts like TLS but is not a ClientHello rustls can read: still TLS to the chains.
        _ => Some(Detected {
            tls: true,
            ..Detected::default()
        }),
    }
}

/// HTTP/1: `METHOD SP target SP HTTP/1.x CRLF`, as Envoy's http_inspector. Undecided while the
/// line is incomplete but still well-formed; opaque as soon as it cannot be a request line.
fn http1_request_line(bytes: &[u8], full: bool) -> Option<Detected> {
    let opaque = Some(Detected::default());
    let line_end = bytes.windows(2).position(|w| w == b"\r\n");
    let line = match line_end {
        Some(end) => &bytes[..end],
        None => bytes,
    };
    let mut parts = line.splitn(3, |b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    if method.is_empty() || !method.iter().all(|b| b.is_ascii_uppercase() || *b == b'-') {
        return opaque;
    }
    let target = parts.next();
    if target.is_some_and(|t| t.iter().any(|b| b.is_ascii_control())) {
        return opaque;
    }
    let version = parts.next();
    if let Some(v) = version {
        let prefix = &b"HTTP/1."[..v.len().min(7)];
        if !v.starts_with(prefix) {
            return opaque;
        }
    }
    match (line_end, version) {
        (Some(_), Some(b"HTTP/1.1")) => Some(Detected {
            application_protocols: vec!["http/1.1".into()],
            ..Detected::default()
        }),
        (Some(_), Some(b"HTTP/1.0")) => Some(Detected {
            application_protocols: vec!["http/1.0".into()],
            ..Detected::default()
        }),
        (Some(_), _) => opaque,
        (None, _) if full || bytes.len() > 8192 => opaque,
        (None, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protocols(bytes: &[u8]) -> Option<Vec<String>> {
        classify(bytes, false).map(|d| d.application_protocols)
    }

    #[test]
    fn http1_is_recognised_once_the_request_line_ends() {
        assert_eq!(
            protocols(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Some(vec!["http/1.1".into()])
        );
        assert_eq!(
            protocols(b"POST /x HTTP/1.0\r\n"),
            Some(vec!["http/1.0".into()])
        );
        assert_eq!(protocols(b"GET /long-path-still-com"), None, "undecided");
        assert_eq!(protocols(b"GET / HTTP/1.1"), None, "undecided until CRLF");
        assert_eq!(protocols(b"GET / HTTP/2.0\r\n"), Some(vec![]));
        assert_eq!(protocols(b"\x00\x01binary"), Some(vec![]), "opaque at once");
        assert_eq!(protocols(b"get / HTTP/1.1\r\n"), Some(vec![]));
        assert_eq!(protocols(b"SSH-2.0-OpenSSH"), Some(vec![]));
    }

    #[test]
    fn the_h2_preface_is_h2c() {
        assert_eq!(protocols(H2_PREFACE), Some(vec!["h2c".into()]));
        assert_eq!(protocols(&H2_PREFACE[..10]), None);
    }

    fn client_hello_bytes() -> Vec<u8> {
        let mut config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
        .with_no_client_auth();
        config.alpn_protocols = vec![b"istio-peer-exchange".to_vec(), b"h2".to_vec()];
        let name = "reviews.default.svc"
            .try_into()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut conn = tokio_rustls::rustls::ClientConnection::new(Arc::new(config), name)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap_or_else(|e| panic!("{e}"));
        hello
    }

    async fn pair() -> (tokio::net::TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let client = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (server, _) = l.accept().await.unwrap_or_else(|e| panic!("{e}"));
        (client, server)
    }

    #[tokio::test]
    async fn detection_on_a_socket_waits_for_a_split_client_hello_and_consumes_nothing() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let hello = client_hello_bytes();
        let (mut client, mut server) = pair().await;
        client
            .write_all(&hello[..10])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (seen, ()) = tokio::join!(detect(&server, Duration::from_secs(10)), async {
            client
                .write_all(&hello[10..])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        });
        assert!(seen.tls);
        assert_eq!(seen.server_name.as_deref(), Some("reviews.default.svc"));
        assert_eq!(
            seen.application_protocols,
            vec!["istio-peer-exchange", "h2"]
        );
        // Peeked, not read: the handshake still has every byte.
        let mut all = vec![0u8; hello.len()];
        server
            .read_exact(&mut all)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all, hello);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_opaque_tcp_after_the_detection_timeout() {
        let (_client, server) = pair().await;
        // Server-first protocol: the client sends nothing; the paused clock jumps to the end.
        let seen = detect(&server, Duration::from_millis(100)).await;
        assert_eq!(seen, Detected::default());
    }

    #[test]
    fn a_client_hello_gives_sni_and_alpn() {
        // A real ClientHello from rustls' client.
        let mut config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let name = "api.example.com"
            .try_into()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut conn = tokio_rustls::rustls::ClientConnection::new(Arc::new(config), name)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap_or_else(|e| panic!("{e}"));
        let seen = classify(&hello, false).unwrap_or_default();
        assert!(seen.tls);
        assert_eq!(seen.server_name.as_deref(), Some("api.example.com"));
        assert_eq!(seen.application_protocols, vec!["h2", "http/1.1"]);
        // Half of it: wait for the rest.
        assert_eq!(classify(&hello[..hello.len() / 2], false), None);
    }
}
