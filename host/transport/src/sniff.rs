//! Protocol detection on a fresh connection: the HTTP/2 connection preface (prior knowledge,
//! h2c) and the TLS handshake record.
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
