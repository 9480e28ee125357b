//! Protocol detection on a fresh connection: the HTTP/2 connection preface (prior knowledge,
//! h2c), the TLS handshake record, and for capture listeners [`detect`]: TLS with its SNI and
//! ALPN, HTTP/1, h2c, or opaque TCP.
//!
//! Detection waits on socket readiness only. The h2 sniff *reads* (up to the 24 bytes of the
//! preface) rather than peeking: a peek of a partial preface returns at once every time, so
//! waiting for the rest by peeking means polling. The bytes read are replayed to the protocol
//! layer by [`Prefixed`]. Until the first byte arrives a connection holds nothing but its
//! socket, this 24-byte buffer and its task: the HTTP/1 or HTTP/2 state is built only once the
//! first bytes say which protocol it is.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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

/// What the first bytes of a plaintext connection are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// The complete HTTP/2 connection preface (prior knowledge).
    H2,
    /// Something else: HTTP/1 (the guard judges it).
    Http1,
    /// Closed, or nothing (or only part of a preface) arrived in time: close the connection.
    Nothing,
}

/// Reads the first bytes of `stream`: waits up to `first_byte` for the first one (an idle
/// connection), then up to `rest` for the remainder of an HTTP/2 preface once the bytes so far
/// match it. Returns the verdict and the bytes read, to be replayed with [`Prefixed`].
pub(crate) async fn sniff_h2(
    stream: &mut TcpStream,
    first_byte: Duration,
    rest: Duration,
) -> (Sniffed, Prefix) {
    let mut prefix = Prefix::default();
    let first = tokio::time::timeout(first_byte, stream.read(&mut prefix.buf)).await;
    match first {
        Ok(Ok(n)) if n > 0 => prefix.len = n as u8,
        _ => return (Sniffed::Nothing, prefix),
    }
    let more = async {
        loop {
            let n = usize::from(prefix.len);
            if prefix.buf[..n] != H2_PREFACE[..n] {
                return Sniffed::Http1;
            }
            if n == H2_PREFACE.len() {
                return Sniffed::H2;
            }
            // A partial preface: wait (on readiness) for the rest.
            match stream.read(&mut prefix.buf[n..]).await {
                Ok(0) | Err(_) => return Sniffed::Nothing,
                Ok(m) => prefix.len += m as u8,
            }
        }
    };
    let verdict = tokio::time::timeout(rest, more)
        .await
        .unwrap_or(Sniffed::Nothing);
    (verdict, prefix)
}

/// Waits (up to `deadline`) for the first byte: a TLS handshake record starts with 0x16, which
/// no HTTP/1 method or HTTP/2 preface does (permissive mode's detection). A one-byte peek
/// returns only when a byte is there, so this waits on readiness too.
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
///
/// A split first flight is re-peeked every millisecond until the deadline (a peek leaves the
/// socket readable, so readiness alone cannot say that more bytes arrived).
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
            // Undecided (a split ClientHello or request line): a peek leaves the socket
            // readable, so wait a little for more bytes. Bounded by `deadline` (Istio's
            // protocol detection timeout, 100 ms by default).
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
    if H2_PREFACE.starts_with(bytes) || bytes.starts_with(&H2_PREFACE[..]) {
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

/// Bytes read while sniffing, replayed before the socket's.
#[derive(Debug, Default)]
pub(crate) struct Prefix {
    buf: [u8; 24],
    len: u8,
}

/// An IO that reads `prefix` first, then the inner IO (writes go straight to it).
#[derive(Debug)]
pub struct Prefixed<IO> {
    prefix: Prefix,
    pos: u8,
    io: IO,
}

impl<IO> Prefixed<IO> {
    pub(crate) fn new(prefix: Prefix, io: IO) -> Prefixed<IO> {
        Prefixed { prefix, pos: 0, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len {
            let left = &this.prefix.buf[usize::from(this.pos)..usize::from(this.prefix.len)];
            let n = left.len().min(buf.remaining());
            buf.put_slice(&left[..n]);
            this.pos += n as u8;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    const LONG: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_full_preface_is_h2_and_replayed() {
        let (mut c, mut s) = pair().await;
        c.write_all(H2_PREFACE).await.unwrap();
        c.write_all(b"\0\0\0\x04").await.unwrap();
        let (v, p) = sniff_h2(&mut s, LONG, LONG).await;
        assert_eq!(v, Sniffed::H2);
        let mut io = Prefixed::new(p, s);
        let mut got = [0u8; 28];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..24], H2_PREFACE);
        assert_eq!(&got[24..], b"\0\0\0\x04");
    }

    #[tokio::test]
    async fn http1_is_known_from_the_first_differing_byte_without_waiting_for_more() {
        let (mut c, mut s) = pair().await;
        c.write_all(b"G").await.unwrap();
        // The verdict comes from one byte: the sniff must not wait for more.
        let (v, p) = sniff_h2(&mut s, LONG, LONG).await;
        assert_eq!(v, Sniffed::Http1);
        c.write_all(b"ET / HTTP/1.1\r\n").await.unwrap();
        let mut io = Prefixed::new(p, s);
        let mut got = [0u8; 16];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_preface_sent_in_pieces_is_assembled() {
        let (mut c, mut s) = pair().await;
        let sniff = tokio::spawn(async move { sniff_h2(&mut s, LONG, LONG).await.0 });
        for piece in H2_PREFACE.chunks(5) {
            c.write_all(piece).await.unwrap();
            c.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        assert_eq!(sniff.await.unwrap(), Sniffed::H2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_sent_preface_waits_without_polling_then_gives_up() {
        let (mut c, mut s) = pair().await;
        c.write_all(&H2_PREFACE[..16]).await.unwrap();
        let polls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = polls.clone();
        // Count how often the sniff future is polled while it waits: a readiness wait is
        // polled once per wake-up, a sleep-poll loop once per millisecond.
        let sniff = CountPolls {
            inner: Box::pin(async move { sniff_h2(&mut s, LONG, Duration::from_secs(10)).await.0 }),
            polls: counted,
        };
        let verdict = sniff.await;
        assert_eq!(
            verdict,
            Sniffed::Nothing,
            "half a preface is closed at the deadline"
        );
        let n = polls.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            n < 10,
            "the sniff was polled {n} times in 10 s of (paused) waiting"
        );
    }

    struct CountPolls<F> {
        inner: Pin<Box<F>>,
        polls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl<F: std::future::Future> std::future::Future for CountPolls<F> {
        type Output = F::Output;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            self.polls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.as_mut().poll(cx)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_the_first_byte_deadline() {
        let (_c, mut s) = pair().await;
        let (v, _) = sniff_h2(&mut s, Duration::from_secs(60), LONG).await;
        assert_eq!(v, Sniffed::Nothing);
    }
}

#[cfg(test)]
mod detect_tests {
    use std::sync::Arc;

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
        assert_eq!(protocols(&H2_PREFACE[..]), Some(vec!["h2c".into()]));
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
