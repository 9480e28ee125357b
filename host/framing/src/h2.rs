//! HTTP/2 frame guard: the connection errors RFC 9113 asks for that the `h2` crate reports
//! with a blanket `PROTOCOL_ERROR` (or not at all), detected on the raw client frames under
//! hyper and answered with a `GOAWAY` carrying the right code.
//!
//! [`H2GuardedIo`] reads the frame headers of everything the client sends (it never buffers a
//! frame: it counts payload bytes past, and keeps at most one 6-byte SETTINGS entry) and
//! checks, before the frame reaches hyper:
//!
//! | client frame | error |
//! | --- | --- |
//! | `PING` whose length is not 8; `SETTINGS` whose length is not a multiple of 6, or an ACK with a payload; `WINDOW_UPDATE` or `RST_STREAM` whose length is not 4; `PRIORITY` whose length is not 5 | `FRAME_SIZE_ERROR` (§6.7, §6.5, §6.9, §6.4, §6.3) |
//! | `SETTINGS_INITIAL_WINDOW_SIZE` above 2^31−1 | `FLOW_CONTROL_ERROR` (§6.5.2) |
//! | `PUSH_PROMISE` (a client cannot push) | `PROTOCOL_ERROR` (§8.4) |
//! | `HEADERS` or `DATA` on a stream the client itself closed (`END_STREAM` or `RST_STREAM`) | `STREAM_CLOSED` (§5.1) |
//!
//! The offending frame and everything after it are withheld from hyper. The guard then writes
//! `GOAWAY` (last stream id: the highest the client opened before the offending frame) at the
//! next frame boundary of hyper's output, after which reads end (EOF) and hyper's writes are
//! discarded, so hyper closes the connection. Every other frame passes through untouched; the
//! rest of RFC 9113 is the `h2` crate's job.
//!
//! The same scan follows the client's header blocks ([`HeaderBlocks`]) for the request header
//! timeout, which hyper's h2 server does not have.
//!
//! The streams the client closed are remembered for the [`CLOSED_STREAMS_KEPT`] most recent
//! ones, and streams it has open for at most [`OPEN_STREAMS_TRACKED`]; beyond those, frames
//! are left to `h2`'s own checks (which refuse them with `PROTOCOL_ERROR`), so memory per
//! connection stays bounded.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How many of the streams the client closed most recently are remembered.
pub const CLOSED_STREAMS_KEPT: usize = 1024;

/// How many streams the client has open are tracked at most.
pub const OPEN_STREAMS_TRACKED: usize = 4096;

const FRAME_HEADER_LEN: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const MAX_WINDOW: u32 = 0x7fff_ffff;

/// A connection error the guard answered with `GOAWAY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Violation {
    /// A frame of a fixed length had another length (`FRAME_SIZE_ERROR`).
    FrameSize,
    /// `SETTINGS_INITIAL_WINDOW_SIZE` above 2^31−1 (`FLOW_CONTROL_ERROR`).
    InitialWindowTooLarge,
    /// The client sent `PUSH_PROMISE` (`PROTOCOL_ERROR`).
    ClientPushPromise,
    /// `HEADERS` or `DATA` on a stream the client closed (`STREAM_CLOSED`).
    StreamClosed,
}

impl H2Violation {
    /// The HTTP/2 error code sent in the `GOAWAY`.
    pub fn error_code(self) -> u32 {
        match self {
            H2Violation::FrameSize => 0x6,
            H2Violation::InitialWindowTooLarge => 0x3,
            H2Violation::ClientPushPromise => 0x1,
            H2Violation::StreamClosed => 0x5,
        }
    }

    /// A short reason for logs and the rejection counter.
    pub fn reason(self) -> &'static str {
        match self {
            H2Violation::FrameSize => "h2_frame_size_error",
            H2Violation::InitialWindowTooLarge => "h2_flow_control_error",
            H2Violation::ClientPushPromise => "h2_client_push_promise",
            H2Violation::StreamClosed => "h2_stream_closed",
        }
    }

    fn code(self) -> u8 {
        match self {
            H2Violation::FrameSize => 1,
            H2Violation::InitialWindowTooLarge => 2,
            H2Violation::ClientPushPromise => 3,
            H2Violation::StreamClosed => 4,
        }
    }

    fn from_code(code: u8) -> Option<H2Violation> {
        match code {
            1 => Some(H2Violation::FrameSize),
            2 => Some(H2Violation::InitialWindowTooLarge),
            3 => Some(H2Violation::ClientPushPromise),
            4 => Some(H2Violation::StreamClosed),
            _ => None,
        }
    }
}

/// `HeaderBlocks::open_since_ms` when no header block is open.
const CLOSED_BLOCK: u64 = u64::MAX;

/// Where the client's header blocks are, for HTTP/2's request header timeout (hyper's h2
/// server has none): whether a header block (`HEADERS` without `END_HEADERS`, then
/// `CONTINUATION`s) is open and since when, and whether any request has arrived yet. The
/// connection's driver closes a connection whose header block stays open, or that sends no
/// request at all, for too long.
#[derive(Debug)]
pub struct HeaderBlocks {
    epoch: Instant,
    /// Milliseconds since `epoch` when the open header block started (`CLOSED_BLOCK`: none open).
    open_since_ms: AtomicU64,
    /// A complete header block (a request) has arrived.
    any: AtomicBool,
}

impl HeaderBlocks {
    fn new() -> HeaderBlocks {
        HeaderBlocks {
            epoch: Instant::now(),
            open_since_ms: AtomicU64::new(CLOSED_BLOCK),
            any: AtomicBool::new(false),
        }
    }

    /// How long the client has been keeping the server waiting for a request head: an open
    /// header block's age, or, before any request, the connection's age.
    pub fn waiting_for(&self) -> Option<Duration> {
        let now = self.epoch.elapsed();
        match self.open_since_ms.load(Ordering::Acquire) {
            CLOSED_BLOCK if self.any.load(Ordering::Acquire) => None,
            CLOSED_BLOCK => Some(now),
            ms => Some(now.saturating_sub(Duration::from_millis(ms))),
        }
    }

    /// Whether no request has arrived yet.
    pub fn no_request_yet(&self) -> bool {
        !self.any.load(Ordering::Acquire)
    }

    /// Whether a header block is open (a request head is arriving).
    pub fn block_open(&self) -> bool {
        self.open_since_ms.load(Ordering::Acquire) != CLOSED_BLOCK
    }
}

impl HeaderBlocks {
    /// A client frame header of `kind` with `flags` was read.
    fn on_frame(&self, kind: u8, flags: u8) {
        match kind {
            HEADERS | CONTINUATION if flags & FLAG_END_HEADERS != 0 => {
                self.open_since_ms.store(CLOSED_BLOCK, Ordering::Release);
                self.any.store(true, Ordering::Release);
            }
            HEADERS => {
                let now = self.epoch.elapsed().as_millis() as u64;
                let _ = self.open_since_ms.compare_exchange(
                    CLOSED_BLOCK,
                    now,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            _ => {}
        }
    }
}

/// Cloneable handle to what an [`H2GuardedIo`] found.
#[derive(Debug, Clone)]
pub struct H2GuardHandle {
    violation: Arc<AtomicU8>,
    blocks: Arc<HeaderBlocks>,
}

impl H2GuardHandle {
    /// The client's header blocks, for the request header timeout.
    pub fn header_blocks(&self) -> &Arc<HeaderBlocks> {
        &self.blocks
    }

    /// The connection error the guard answered, if any.
    pub fn violation(&self) -> Option<H2Violation> {
        H2Violation::from_code(self.violation.load(Ordering::Acquire))
    }
}

/// Where the inbound parser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum In {
    /// Inside the 24-byte preface (bytes of it seen so far).
    Preface(usize),
    /// Accumulating a frame header.
    Header,
    /// Inside a payload: bytes left, and whether it is a SETTINGS payload to inspect.
    Payload { left: u32, settings: bool },
}

/// The inbound frame parser: a pure state machine over the client's bytes.
#[derive(Debug)]
pub struct FrameScanner {
    state: In,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    entry: [u8; 6],
    entry_len: usize,
    /// Highest stream id the client opened.
    max_stream: u32,
    /// A header block is in progress (`HEADERS` without `END_HEADERS`): only `CONTINUATION`
    /// may follow, which `h2` enforces.
    in_header_block: bool,
    open: HashSet<u32>,
    closed: HashSet<u32>,
    closed_order: VecDeque<u32>,
    /// Told of every frame header, when the scanner runs under a connection.
    blocks: Option<Arc<HeaderBlocks>>,
}

impl Default for FrameScanner {
    fn default() -> Self {
        FrameScanner {
            state: In::Preface(0),
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            entry: [0; 6],
            entry_len: 0,
            max_stream: 0,
            in_header_block: false,
            open: HashSet::new(),
            closed: HashSet::new(),
            closed_order: VecDeque::new(),
            blocks: None,
        }
    }
}

/// A violation found by [`FrameScanner::scan`]: which, and where its frame starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The connection error.
    pub violation: H2Violation,
    /// Offset in the scanned input of the first byte not to deliver (the offending frame's
    /// first byte in this input, or 0 when it started in an earlier input).
    pub deliver: usize,
    /// The highest stream id the client opened before the offending frame.
    pub last_stream: u32,
}

impl FrameScanner {
    /// Scans the next bytes of the client's stream. Returns the first violation, if any; the
    /// scanner must not be fed again after one. Never panics.
    pub fn scan(&mut self, input: &[u8]) -> Option<Found> {
        let mut i = 0;
        // Offset of the current frame's first byte in `input` (0 if it began earlier).
        let mut frame_start = 0;
        while i < input.len() {
            match self.state {
                In::Preface(seen) => {
                    let take = (PREFACE.len() - seen).min(input.len() - i);
                    i += take;
                    self.state = if seen + take == PREFACE.len() {
                        frame_start = i;
                        In::Header
                    } else {
                        In::Preface(seen + take)
                    };
                }
                In::Header => {
                    if self.header_len == 0 {
                        frame_start = i;
                    }
                    let take = (FRAME_HEADER_LEN - self.header_len).min(input.len() - i);
                    self.header[self.header_len..self.header_len + take]
                        .copy_from_slice(&input[i..i + take]);
                    self.header_len += take;
                    i += take;
                    if self.header_len == FRAME_HEADER_LEN {
                        self.header_len = 0;
                        if let Some(violation) = self.on_header() {
                            return Some(self.found(violation, frame_start));
                        }
                    }
                }
                In::Payload { left, settings } => {
                    let avail = u32::try_from(input.len() - i).unwrap_or(u32::MAX);
                    let take = left.min(avail);
                    let end = i + take as usize;
                    if settings {
                        for &b in &input[i..end] {
                            self.entry[self.entry_len] = b;
                            self.entry_len += 1;
                            if self.entry_len == self.entry.len() {
                                self.entry_len = 0;
                                let id = u16::from_be_bytes([self.entry[0], self.entry[1]]);
                                let value = u32::from_be_bytes([
                                    self.entry[2],
                                    self.entry[3],
                                    self.entry[4],
                                    self.entry[5],
                                ]);
                                if id == SETTINGS_INITIAL_WINDOW_SIZE && value > MAX_WINDOW {
                                    return Some(
                                        self.found(H2Violation::InitialWindowTooLarge, frame_start),
                                    );
                                }
                            }
                        }
                    }
                    i = end;
                    self.state = if take == left {
                        In::Header
                    } else {
                        In::Payload {
                            left: left - take,
                            settings,
                        }
                    };
                }
            }
        }
        None
    }

    fn found(&self, violation: H2Violation, deliver: usize) -> Found {
        Found {
            violation,
            deliver,
            last_stream: self.max_stream,
        }
    }

    /// A complete frame header: checks it and sets up the payload state.
    fn on_header(&mut self) -> Option<H2Violation> {
        let h = self.header;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        let kind = h[3];
        let flags = h[4];
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        if let Some(b) = &self.blocks {
            b.on_frame(kind, flags);
        }
        let fixed = match kind {
            PING => Some(8),
            WINDOW_UPDATE | RST_STREAM => Some(4),
            PRIORITY => Some(5),
            _ => None,
        };
        if fixed.is_some_and(|n| n != len)
            || (kind == SETTINGS && (!len.is_multiple_of(6) || (flags & FLAG_ACK != 0 && len != 0)))
        {
            return Some(H2Violation::FrameSize);
        }
        let in_block = self.in_header_block;
        self.in_header_block = match kind {
            HEADERS => flags & FLAG_END_HEADERS == 0,
            CONTINUATION => in_block && flags & FLAG_END_HEADERS == 0,
            _ => false,
        };
        match kind {
            PUSH_PROMISE => return Some(H2Violation::ClientPushPromise),
            // Inside a header block anything but CONTINUATION is h2's PROTOCOL_ERROR.
            _ if in_block => {}
            HEADERS | DATA if stream != 0 => {
                if self.closed.contains(&stream) {
                    return Some(H2Violation::StreamClosed);
                }
                let end = flags & FLAG_END_STREAM != 0;
                if kind == HEADERS && stream > self.max_stream {
                    self.max_stream = stream;
                    if end {
                        self.close(stream);
                    } else if self.open.len() < OPEN_STREAMS_TRACKED {
                        self.open.insert(stream);
                    }
                } else if end && self.open.remove(&stream) {
                    self.close(stream);
                }
            }
            RST_STREAM if stream != 0 && self.open.remove(&stream) => self.close(stream),
            _ => {}
        }
        self.entry_len = 0;
        self.state = if len == 0 {
            In::Header
        } else {
            In::Payload {
                left: len,
                settings: kind == SETTINGS,
            }
        };
        None
    }

    fn close(&mut self, stream: u32) {
        if self.closed_order.len() == CLOSED_STREAMS_KEPT
            && let Some(oldest) = self.closed_order.pop_front()
        {
            self.closed.remove(&oldest);
        }
        self.closed.insert(stream);
        self.closed_order.push_back(stream);
    }
}

/// Tracks frame boundaries in hyper's output, so a `GOAWAY` is never spliced into a frame.
#[derive(Debug, Default)]
struct OutFrames {
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    payload_left: u32,
}

impl OutFrames {
    fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0
    }

    /// How many of the next `n` bytes can be written without crossing a frame boundary.
    fn to_boundary(&self, n: usize) -> usize {
        if self.payload_left > 0 {
            n.min(self.payload_left as usize)
        } else {
            // In (or at the start of) a header: stop at the header's end, then look again.
            n.min(FRAME_HEADER_LEN - self.header_len)
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let take = (self.payload_left as usize).min(bytes.len());
                self.payload_left -= take as u32;
                bytes = &bytes[take..];
                continue;
            }
            let take = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            bytes = &bytes[take..];
            if self.header_len == FRAME_HEADER_LEN {
                self.header_len = 0;
                self.payload_left =
                    u32::from_be_bytes([0, self.header[0], self.header[1], self.header[2]]);
            }
        }
    }
}

#[derive(Debug)]
enum Phase {
    /// Frames pass.
    Open,
    /// A violation was found: the `GOAWAY` waits for a frame boundary of hyper's output.
    Pending { frame: [u8; 17], written: usize },
    /// `GOAWAY` written: reads end, writes are discarded.
    Closed,
}

/// An IO wrapper that checks the client's HTTP/2 frames under hyper; see the
/// [module documentation](self).
pub struct H2GuardedIo<IO> {
    io: IO,
    scanner: FrameScanner,
    out: OutFrames,
    phase: Phase,
    handle: H2GuardHandle,
}

impl<IO> H2GuardedIo<IO> {
    /// Wraps `io` (a connection whose first bytes are the client preface).
    pub fn new(io: IO) -> (H2GuardedIo<IO>, H2GuardHandle) {
        let handle = H2GuardHandle {
            violation: Arc::default(),
            blocks: Arc::new(HeaderBlocks::new()),
        };
        (
            H2GuardedIo {
                io,
                scanner: FrameScanner {
                    blocks: Some(handle.blocks.clone()),
                    ..FrameScanner::default()
                },
                out: OutFrames::default(),
                phase: Phase::Open,
                handle: handle.clone(),
            },
            handle,
        )
    }

    /// The wrapped IO.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

fn goaway(last_stream: u32, code: u32) -> [u8; 17] {
    let mut f = [0u8; 17];
    f[2] = 8;
    f[3] = GOAWAY;
    f[9..13].copy_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    f[13..17].copy_from_slice(&code.to_be_bytes());
    f
}

impl<IO: AsyncWrite + Unpin> H2GuardedIo<IO> {
    /// Writes the pending `GOAWAY` if hyper's output is at a frame boundary. Ready(Ok) once
    /// the connection is closed (or there was nothing to write).
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.phase {
                Phase::Open | Phase::Closed => return Poll::Ready(Ok(())),
                Phase::Pending { frame, written } => {
                    if !self.out.at_boundary() {
                        return Poll::Ready(Ok(()));
                    }
                    if *written == frame.len() {
                        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                        self.phase = Phase::Closed;
                        return Poll::Ready(Ok(()));
                    }
                    let n = ready!(Pin::new(&mut self.io).poll_write(cx, &frame[*written..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    *written += n;
                }
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for H2GuardedIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.phase {
            Phase::Closed => return Poll::Ready(Ok(())),
            Phase::Pending { .. } => {
                ready!(this.poll_goaway(cx))?;
                if matches!(this.phase, Phase::Closed) {
                    return Poll::Ready(Ok(()));
                }
                // hyper's output is mid-frame: its next writes reach the boundary and send
                // the GOAWAY; until then it has nothing more to read.
                return Poll::Pending;
            }
            Phase::Open => {}
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if let Some(found) = this.scanner.scan(read) {
            buf.set_filled(before + found.deliver);
            this.handle
                .violation
                .store(found.violation.code(), Ordering::Release);
            tracing::debug!(
                reason = found.violation.reason(),
                "HTTP/2 connection error: answering GOAWAY"
            );
            this.phase = Phase::Pending {
                frame: goaway(found.last_stream, found.violation.error_code()),
                written: 0,
            };
            if found.deliver == 0 {
                // Nothing for hyper in this read: send the GOAWAY now (or when hyper's output
                // reaches a frame boundary), then end the stream.
                ready!(this.poll_goaway(cx))?;
                if !matches!(this.phase, Phase::Closed) {
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for H2GuardedIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.phase {
            Phase::Closed => return Poll::Ready(Ok(buf.len())),
            Phase::Pending { .. } if this.out.at_boundary() => {
                ready!(this.poll_goaway(cx))?;
                return Poll::Ready(Ok(buf.len()));
            }
            Phase::Pending { .. } => {
                // Finish the frame in flight, no further.
                let limit = this.out.to_boundary(buf.len());
                let n = ready!(Pin::new(&mut this.io).poll_write(cx, &buf[..limit]))?;
                this.out.feed(&buf[..n]);
                if this.out.at_boundary() {
                    // Wake the reader so it sends the GOAWAY and ends the connection.
                    cx.waker().wake_by_ref();
                }
                return Poll::Ready(Ok(n));
            }
            Phase::Open => {}
        }
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.out.feed(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !matches!(this.phase, Phase::Open) {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return Pin::new(this).poll_write(cx, first);
        }
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for b in bufs {
            if left == 0 {
                break;
            }
            let take = left.min(b.len());
            this.out.feed(&b[..take]);
            left -= take;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_goaway(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_goaway(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test(start_paused = true)]
    async fn header_blocks_are_followed_across_split_reads() {
        let blocks = Arc::new(HeaderBlocks::new());
        let mut scanner = FrameScanner {
            blocks: Some(blocks.clone()),
            ..FrameScanner::default()
        };
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[0; 6]));
        assert_eq!(scanner.scan(&bytes), None);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            blocks.waiting_for(),
            Some(Duration::from_secs(3)),
            "no request yet"
        );
        // HEADERS without END_HEADERS, fed one byte at a time.
        for b in frame(HEADERS, 0, 1, &[0; 10]) {
            assert_eq!(scanner.scan(&[b]), None);
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            blocks.waiting_for(),
            Some(Duration::from_secs(2)),
            "block open"
        );
        assert!(blocks.block_open());
        assert_eq!(scanner.scan(&frame(CONTINUATION, 0, 1, &[0; 3])), None);
        assert_eq!(
            scanner.scan(&frame(CONTINUATION, FLAG_END_HEADERS, 1, &[0; 3])),
            None
        );
        assert_eq!(blocks.waiting_for(), None, "request complete");
        assert!(!blocks.no_request_yet());
        assert_eq!(scanner.scan(&frame(DATA, 0, 1, &[0; 100])), None);
        assert_eq!(
            scanner.scan(&frame(
                HEADERS,
                FLAG_END_HEADERS | FLAG_END_STREAM,
                3,
                &[0; 5]
            )),
            None
        );
        assert_eq!(blocks.waiting_for(), None);
    }

    fn scan_all(frames: &[Vec<u8>]) -> Option<Found> {
        let mut input = PREFACE.to_vec();
        for f in frames {
            input.extend_from_slice(f);
        }
        FrameScanner::default().scan(&input)
    }

    /// The same input fed one byte at a time finds the same violation.
    fn scan_bytewise(frames: &[Vec<u8>]) -> Option<H2Violation> {
        let mut input = PREFACE.to_vec();
        for f in frames {
            input.extend_from_slice(f);
        }
        let mut s = FrameScanner::default();
        input
            .iter()
            .find_map(|b| s.scan(std::slice::from_ref(b)))
            .map(|f| f.violation)
    }

    #[test]
    fn valid_frames_pass() {
        let frames = vec![
            frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]),
            frame(SETTINGS, FLAG_ACK, 0, &[]),
            frame(HEADERS, 0x4, 1, b"abc"),
            frame(DATA, 0, 1, b"body"),
            frame(DATA, FLAG_END_STREAM, 1, b""),
            frame(WINDOW_UPDATE, 0, 1, &[0, 0, 1, 0]),
            frame(PING, 0, 0, &[0; 8]),
            frame(PRIORITY, 0, 3, &[0; 5]),
            frame(HEADERS, 0x5, 3, b"x"),
        ];
        assert_eq!(scan_all(&frames), None);
        assert_eq!(scan_bytewise(&frames), None);
    }

    #[test]
    fn each_violation_is_found_with_its_code_and_delivery_offset() {
        let settings = frame(SETTINGS, 0, 0, &[]);
        let cases: Vec<(Vec<u8>, H2Violation)> = vec![
            (frame(PING, 0, 0, &[0; 6]), H2Violation::FrameSize),
            (frame(SETTINGS, 0, 0, &[0; 3]), H2Violation::FrameSize),
            (
                frame(SETTINGS, FLAG_ACK, 0, &[0; 6]),
                H2Violation::FrameSize,
            ),
            (frame(WINDOW_UPDATE, 0, 0, &[0; 3]), H2Violation::FrameSize),
            (frame(RST_STREAM, 0, 1, &[0; 3]), H2Violation::FrameSize),
            (frame(PRIORITY, 0, 1, &[0; 4]), H2Violation::FrameSize),
            (
                frame(SETTINGS, 0, 0, &[0, 4, 0x80, 0, 0, 0]),
                H2Violation::InitialWindowTooLarge,
            ),
            (
                frame(PUSH_PROMISE, 0x4, 1, &[0; 8]),
                H2Violation::ClientPushPromise,
            ),
        ];
        for (bad, want) in cases {
            let found = scan_all(&[settings.clone(), bad.clone()]).expect("found");
            assert_eq!(found.violation, want, "{bad:?}");
            assert_eq!(found.deliver, PREFACE.len() + settings.len(), "{bad:?}");
            assert_eq!(scan_bytewise(&[settings.clone(), bad]), Some(want));
        }
    }

    #[test]
    fn frames_on_streams_the_client_closed_are_stream_closed() {
        // HEADERS with END_STREAM, then HEADERS again (half-closed remote).
        let ended = frame(HEADERS, 0x5, 1, b"h");
        assert_eq!(
            scan_all(&[ended.clone(), frame(HEADERS, 0x4, 1, b"h")]).map(|f| f.violation),
            Some(H2Violation::StreamClosed)
        );
        // DATA after END_STREAM.
        assert_eq!(
            scan_all(&[ended.clone(), frame(DATA, 0, 1, b"d")]).map(|f| f.violation),
            Some(H2Violation::StreamClosed)
        );
        // RST_STREAM by the client, then HEADERS.
        let open = frame(HEADERS, 0x4, 3, b"h");
        let rst = frame(RST_STREAM, 0, 3, &[0, 0, 0, 8]);
        let found = scan_all(&[open.clone(), rst.clone(), frame(HEADERS, 0x5, 3, b"h")]);
        assert_eq!(
            found.map(|f| (f.violation, f.last_stream)),
            Some((H2Violation::StreamClosed, 3))
        );
        // Trailers on an open stream are fine, and WINDOW_UPDATE on a half-closed one too.
        assert_eq!(
            scan_all(&[
                open,
                frame(DATA, 0, 3, b"d"),
                frame(HEADERS, 0x5, 3, b"t"),
                frame(WINDOW_UPDATE, 0, 3, &[0, 0, 0, 1])
            ]),
            None
        );
    }

    #[test]
    fn a_frame_interrupting_a_header_block_is_left_to_h2() {
        // HEADERS with END_STREAM but no END_HEADERS, then DATA: h2's PROTOCOL_ERROR, not ours.
        let started = frame(HEADERS, FLAG_END_STREAM, 1, b"h");
        assert_eq!(
            scan_all(&[started.clone(), frame(DATA, FLAG_END_STREAM, 1, b"d")]),
            None
        );
        assert_eq!(
            scan_all(&[
                started,
                frame(CONTINUATION, 0, 1, b"c"),
                frame(DATA, FLAG_END_STREAM, 1, b"d")
            ]),
            None
        );
    }

    #[test]
    fn closed_stream_memory_is_bounded() {
        let mut s = FrameScanner::default();
        assert_eq!(s.scan(PREFACE), None);
        for i in 0..(CLOSED_STREAMS_KEPT as u32 + 10) {
            assert_eq!(s.scan(&frame(HEADERS, 0x5, 2 * i + 1, b"h")), None);
        }
        assert_eq!(s.closed.len(), CLOSED_STREAMS_KEPT);
        // The oldest are forgotten (left to h2), the newest still refused.
        assert_eq!(s.scan(&frame(DATA, 0, 1, b"d")), None);
    }

    #[tokio::test]
    async fn the_guard_answers_goaway_with_the_code_and_ends_the_stream() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(1024);
        let (mut guarded, handle) = H2GuardedIo::new(server);
        let (mut cr, mut cw) = tokio::io::split(client);
        let mut input = PREFACE.to_vec();
        input.extend(frame(SETTINGS, 0, 0, &[]));
        input.extend(frame(PING, 0, 0, &[0; 7]));
        cw.write_all(&input).await.expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            let n = guarded.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(
            got.len(),
            PREFACE.len() + FRAME_HEADER_LEN,
            "the bad PING is withheld"
        );
        assert_eq!(handle.violation(), Some(H2Violation::FrameSize));
        let mut goaway_frame = [0u8; 17];
        cr.read_exact(&mut goaway_frame).await.expect("goaway");
        assert_eq!(goaway_frame[3], GOAWAY);
        assert_eq!(&goaway_frame[13..], &6u32.to_be_bytes());
        // Writes after the GOAWAY are discarded.
        assert_eq!(guarded.write(b"ignored").await.expect("write"), 7);
    }
}
