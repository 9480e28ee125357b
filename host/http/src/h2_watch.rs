//! Header read timeouts for HTTP/2 (hyper's h2 server has none): an IO wrapper that follows
//! the client's frame headers — nothing more, no buffering — to know whether a header block
//! (HEADERS without END_HEADERS, then CONTINUATION frames) is open and since when, and whether
//! any request has arrived yet. The connection's driver closes a connection whose header block
//! stays open, or that sends no request at all, for longer than `request_header_timeout`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

const PREFACE_LEN: usize = 24;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const CLOSED: u64 = u64::MAX;

/// What the driver reads of a connection's header blocks.
#[derive(Debug)]
pub struct HeaderBlocks {
    epoch: Instant,
    /// Milliseconds since `epoch` when the open header block started (`CLOSED`: none open).
    open_since_ms: AtomicU64,
    /// A complete header block (a request) has arrived.
    any: AtomicBool,
}

impl HeaderBlocks {
    fn new() -> HeaderBlocks {
        HeaderBlocks {
            epoch: Instant::now(),
            open_since_ms: AtomicU64::new(CLOSED),
            any: AtomicBool::new(false),
        }
    }

    /// How long the client has been keeping the server waiting for a request head: an open
    /// header block's age, or, before any request, the connection's age.
    pub fn waiting_for(&self) -> Option<Duration> {
        let now = self.epoch.elapsed();
        match self.open_since_ms.load(Ordering::Acquire) {
            CLOSED if self.any.load(Ordering::Acquire) => None,
            CLOSED => Some(now),
            ms => Some(now.saturating_sub(Duration::from_millis(ms))),
        }
    }

    /// Whether no request has arrived yet.
    pub fn no_request_yet(&self) -> bool {
        !self.any.load(Ordering::Acquire)
    }

    /// Whether a header block is open (a request head is arriving).
    pub fn block_open(&self) -> bool {
        self.open_since_ms.load(Ordering::Acquire) != CLOSED
    }
}

/// An IO following the frames the client sends.
#[derive(Debug)]
pub struct H2Watch<IO> {
    io: IO,
    blocks: Arc<HeaderBlocks>,
    /// Preface bytes still to skip.
    preface: usize,
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to skip.
    payload: usize,
}

impl<IO> H2Watch<IO> {
    /// Wraps a connection that starts with the client's preface.
    pub fn new(io: IO) -> (H2Watch<IO>, Arc<HeaderBlocks>) {
        let blocks = Arc::new(HeaderBlocks::new());
        let watch = H2Watch {
            io,
            blocks: blocks.clone(),
            preface: PREFACE_LEN,
            header: [0; 9],
            header_len: 0,
            payload: 0,
        };
        (watch, blocks)
    }

    fn observe(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(data.len());
                self.preface -= n;
                data = &data[n..];
            } else if self.payload > 0 {
                let n = self.payload.min(data.len());
                self.payload -= n;
                data = &data[n..];
            } else {
                let n = (9 - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
                self.header_len += n;
                data = &data[n..];
                if self.header_len == 9 {
                    self.header_len = 0;
                    let h = self.header;
                    self.payload =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    self.frame(h[3], h[4]);
                }
            }
        }
    }

    fn frame(&self, kind: u8, flags: u8) {
        let b = &self.blocks;
        match kind {
            HEADERS | CONTINUATION if flags & END_HEADERS != 0 => {
                b.open_since_ms.store(CLOSED, Ordering::Release);
                b.any.store(true, Ordering::Release);
            }
            HEADERS => {
                let now = b.epoch.elapsed().as_millis() as u64;
                let _ = b.open_since_ms.compare_exchange(
                    CLOSED,
                    now,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            _ => {}
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for H2Watch<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            let fresh = &buf.filled()[before..];
            this.observe(fresh);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for H2Watch<IO> {
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
    use super::*;

    fn frame(kind: u8, flags: u8, len: usize) -> Vec<u8> {
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend(std::iter::repeat_n(0u8, len));
        f
    }

    #[tokio::test(start_paused = true)]
    async fn header_blocks_are_followed_across_split_reads() {
        let (mut w, blocks) = H2Watch::new(());
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, 6)); // SETTINGS
        w.observe(&bytes);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            blocks.waiting_for(),
            Some(Duration::from_secs(3)),
            "no request yet"
        );
        // HEADERS without END_HEADERS, fed one byte at a time.
        for b in frame(HEADERS, 0, 10) {
            w.observe(&[b]);
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            blocks.waiting_for(),
            Some(Duration::from_secs(2)),
            "block open"
        );
        w.observe(&frame(CONTINUATION, 0, 3));
        w.observe(&frame(CONTINUATION, END_HEADERS, 3));
        assert_eq!(blocks.waiting_for(), None, "request complete");
        assert!(!blocks.no_request_yet());
        w.observe(&frame(0x0, 0, 100)); // DATA
        w.observe(&frame(HEADERS, END_HEADERS | 0x1, 5));
        assert_eq!(blocks.waiting_for(), None);
    }
}
