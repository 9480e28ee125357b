//! The IO wrapper that sits between the socket and hyper.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::body::{BodyTracker, ChunkedTracker};
use crate::head::{BodyFraming, HeadInfo, HeadScanner, check_head};
use crate::response::{RequestMeta, ResponseTracker};
use crate::{Limits, Rejection};

/// Like `ready!`, but for use in functions returning `Option<Poll<_>>`.
macro_rules! ready_or_return {
    ($e:expr) => {
        match $e {
            Poll::Ready(v) => v,
            Poll::Pending => return Some(Poll::Pending),
        }
    };
}

/// Size of one read from the socket into the guard's own buffer.
const READ_CHUNK: usize = 8 * 1024;

/// An emptied buffer larger than this is given back to the allocator.
const SHRINK_ABOVE: usize = 2 * READ_CHUNK;

/// How long the guard keeps draining unread client bytes after writing its
/// own error response and shutting down the write side (lingering close),
/// so the client reads the response instead of getting a TCP reset.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// Maximum number of client bytes discarded during the lingering close.
pub const LINGER_MAX_BYTES: usize = 1024 * 1024;

#[derive(Debug, Default)]
struct Shared {
    upgraded: AtomicBool,
    rejection: AtomicU8,
    response_sent: AtomicBool,
    shutdown_called: AtomicBool,
    buffer_high_water: AtomicUsize,
    waker: Mutex<Option<Waker>>,
}

impl Shared {
    fn register(&self, waker: &Waker) {
        let mut slot = self.waker.lock();
        match slot.as_ref() {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    fn wake(&self) {
        let waker = self.waker.lock().take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn record(&self, rejection: Rejection) {
        // Keep the first rejection only.
        let _ = self.rejection.compare_exchange(
            0,
            rejection.to_code(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

/// Cheap, cloneable handle to a [`GuardedIo`]'s shared state; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct GuardHandle {
    shared: Arc<Shared>,
}

/// Diagnostic counters of one guarded connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuardStats {
    /// Largest capacity the guard's internal buffer ever reached, in bytes.
    /// Bounded by roughly `max_header_bytes` plus one read chunk, and stays
    /// at one read chunk (8 KiB) when heads are small, whatever the body
    /// sizes.
    pub buffer_high_water: usize,
    /// The guard wrote its own error response to the client.
    pub rejection_response_sent: bool,
    /// `poll_shutdown` was called on the guard (hyper closes connections
    /// this way).
    pub shutdown_called: bool,
}

impl GuardHandle {
    /// Tells the guard the connection switched protocols: call it when the
    /// service returns a `101 Switching Protocols` response. From the next
    /// read on, all bytes (including any already buffered) pass through
    /// untouched, in both directions, for the rest of the connection. The
    /// guard also switches by itself when it sees hyper write a `101`.
    pub fn mark_upgraded(&self) {
        self.shared.upgraded.store(true, Ordering::Release);
        self.shared.wake();
    }

    /// What the guard rejected on this connection, if anything (the first
    /// rejection; a connection is closed after it).
    pub fn rejection(&self) -> Option<Rejection> {
        Rejection::from_code(self.shared.rejection.load(Ordering::Acquire))
    }

    /// Diagnostic counters (buffer high-water mark, whether the guard wrote
    /// its own response, whether hyper shut the IO down).
    pub fn stats(&self) -> GuardStats {
        GuardStats {
            buffer_high_water: self.shared.buffer_high_water.load(Ordering::Relaxed),
            rejection_response_sent: self.shared.response_sent.load(Ordering::Acquire),
            shutdown_called: self.shared.shutdown_called.load(Ordering::Acquire),
        }
    }
}

#[derive(Debug)]
enum ReadState {
    /// Accumulating a request head in the buffer.
    Head,
    /// Handing a validated head (at the front of the buffer) to the reader.
    DeliverHead {
        remaining: usize,
        framing: BodyFraming,
    },
    /// Streaming a request body.
    Body(BodyTracker),
    /// After a request that may switch protocols: wait for its response.
    AwaitDecision,
    /// Upgraded: everything passes through.
    Passthrough,
    /// The client closed the connection.
    Eof,
    /// A request was rejected.
    Rejected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EmitPhase {
    Undecided,
    Writing,
    Flushing,
    Sent,
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShutdownPhase {
    Start,
    Linger,
    Done,
}

#[derive(Debug)]
struct PendingReject {
    rejection: Rejection,
    /// Number of responses hyper must have completed before ours.
    expected: u64,
    /// The rejected bytes belong to the body of the request the reader is
    /// currently consuming (not to a new head).
    body_level: bool,
    eof_delivered: bool,
    phase: EmitPhase,
    written: usize,
    shutdown: ShutdownPhase,
    drained: usize,
}

/// An IO wrapper that validates every HTTP/1 request head before the reader
/// (hyper) sees it; see the [crate documentation](crate) for the behaviour.
///
/// Implements Tokio's [`AsyncRead`] and [`AsyncWrite`]; wrap it in
/// `hyper_util::rt::TokioIo` to serve it with hyper.
pub struct GuardedIo<IO> {
    io: IO,
    limits: Limits,
    shared: Arc<Shared>,
    /// Initialised storage; live bytes are `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    read: ReadState,
    scanner: HeadScanner,
    timer: Option<Pin<Box<Sleep>>>,
    timer_armed: bool,
    /// Requests handed to the reader.
    delivered: u64,
    /// The request being streamed may switch protocols.
    current_upgrade: bool,
    responses: ResponseTracker,
    /// Responses completed as of the last successful flush.
    flushed_completed: u64,
    /// Stop observing written bytes (connection switched protocols).
    write_raw: bool,
    reject: Option<PendingReject>,
}

impl<IO> GuardedIo<IO> {
    /// Wraps `io`; returns the wrapper and a handle to its shared state.
    pub fn new(io: IO, limits: Limits) -> (GuardedIo<IO>, GuardHandle) {
        let shared = Arc::new(Shared::default());
        let handle = GuardHandle {
            shared: Arc::clone(&shared),
        };
        let guarded = GuardedIo {
            io,
            limits,
            shared,
            buf: Vec::new(),
            start: 0,
            end: 0,
            read: ReadState::Head,
            scanner: HeadScanner::default(),
            timer: None,
            timer_armed: false,
            delivered: 0,
            current_upgrade: false,
            responses: ResponseTracker::default(),
            flushed_completed: 0,
            write_raw: false,
            reject: None,
        };
        (guarded, handle)
    }

    /// The wrapped IO.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    fn arm_timer(&mut self, after: Duration) {
        let now = Instant::now();
        let deadline = now
            .checked_add(after)
            .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
            .unwrap_or(now);
        match &mut self.timer {
            Some(t) => t.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.timer_armed = true;
    }

    fn timer_expired(&mut self, cx: Option<&mut Context<'_>>) -> bool {
        if !self.timer_armed {
            return false;
        }
        let Some(t) = &mut self.timer else {
            return false;
        };
        match cx {
            Some(cx) => t.as_mut().poll(cx).is_ready(),
            None => t.deadline() <= Instant::now(),
        }
    }

    fn note_capacity(&self) {
        self.shared
            .buffer_high_water
            .fetch_max(self.buf.capacity(), Ordering::Relaxed);
    }

    fn enter_passthrough(&mut self) {
        self.read = ReadState::Passthrough;
        self.write_raw = true;
        self.timer_armed = false;
    }

    fn reject(&mut self, rejection: Rejection, body_level: bool) {
        self.shared.record(rejection);
        tracing::debug!(
            reason = rejection.reason(),
            status = rejection.status(),
            "request rejected by framing guard"
        );
        let expected = if body_level {
            self.delivered.saturating_sub(1)
        } else {
            self.delivered
        };
        self.reject = Some(PendingReject {
            rejection,
            expected,
            body_level,
            eof_delivered: false,
            phase: EmitPhase::Undecided,
            written: 0,
            shutdown: ShutdownPhase::Start,
            drained: 0,
        });
        self.read = ReadState::Rejected;
        self.start = 0;
        self.end = 0;
        self.timer_armed = false;
    }

    fn accept_head(&mut self, info: HeadInfo, len: usize) {
        self.scanner.reset();
        self.timer_armed = false;
        let skip = if info.leading_empty_line { 2 } else { 0 };
        self.start += skip;
        self.delivered += 1;
        self.current_upgrade = info.upgrade;
        self.responses.push_request(RequestMeta {
            head_method: info.is_head_method,
            connect: info.is_connect,
        });
        self.read = ReadState::DeliverHead {
            remaining: len - skip,
            framing: info.framing,
        };
    }

    fn start_body(&mut self, framing: BodyFraming) {
        self.read = match framing {
            BodyFraming::None | BodyFraming::ContentLength(0) => return self.after_body(),
            BodyFraming::ContentLength(n) => ReadState::Body(BodyTracker::Length(n)),
            BodyFraming::Chunked => ReadState::Body(BodyTracker::Chunked(ChunkedTracker::new(
                self.limits.max_headers,
                self.limits.max_header_bytes,
            ))),
        };
    }

    fn after_body(&mut self) {
        self.read = if self.current_upgrade {
            ReadState::AwaitDecision
        } else {
            ReadState::Head
        };
    }

    /// Our response may be written now without corrupting the response
    /// stream or contradicting an earlier response.
    fn should_write_reject(&self) -> bool {
        let Some(rej) = &self.reject else {
            return false;
        };
        !self.responses.desynced()
            && self.responses.at_boundary()
            && self.responses.completed() == rej.expected
            && !self.responses.last_closes()
    }

    fn observe_written(&mut self, data: &[u8]) {
        if self.write_raw || data.is_empty() {
            return;
        }
        if self.shared.upgraded.load(Ordering::Acquire) {
            self.write_raw = true;
            return;
        }
        if self.responses.feed(data) {
            if self.responses.switched() {
                self.write_raw = true;
            }
            self.shared.wake();
        }
    }

    fn on_flushed(&mut self) {
        let completed = self.responses.completed();
        if completed != self.flushed_completed {
            self.flushed_completed = completed;
            if matches!(self.read, ReadState::Rejected) {
                self.shared.wake();
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> GuardedIo<IO> {
    /// Reads from the socket into `buf[end..]`, compacting and (up to
    /// `limit` bytes) growing the buffer as needed.
    fn poll_fill(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<io::Result<usize>> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > SHRINK_ABOVE {
                self.buf = vec![0; READ_CHUNK];
            }
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let grown = self
                .buf
                .len()
                .saturating_mul(2)
                .clamp(READ_CHUNK, limit.max(READ_CHUNK));
            if grown <= self.buf.len() {
                return Poll::Ready(Err(io::Error::other("framing guard buffer is full")));
            }
            self.buf.resize(grown, 0);
            self.note_capacity();
        }
        let mut rb = ReadBuf::new(&mut self.buf[self.end..]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        self.end += n;
        Poll::Ready(Ok(n))
    }

    /// `None`: state changed, run the loop again.
    fn read_head(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<()>>> {
        let pending = &self.buf[self.start..self.end];
        match self.scanner.scan(pending, &self.limits) {
            Err(r) => {
                self.reject(r, false);
                return None;
            }
            Ok(Some(len)) => {
                match check_head(&pending[..len], &self.limits) {
                    Ok(info) => self.accept_head(info, len),
                    Err(r) => self.reject(r, false),
                }
                return None;
            }
            Ok(None) => {}
        }
        let timeout = self.limits.header_read_timeout;
        if self.start < self.end && !self.timer_armed && !timeout.is_zero() {
            self.arm_timer(timeout);
        }
        let limit = self.limits.max_header_bytes.saturating_add(READ_CHUNK);
        match self.poll_fill(cx, limit) {
            Poll::Ready(Ok(0)) => {
                // Client closed (possibly mid-head): nothing to hand over.
                self.read = ReadState::Eof;
                Some(Poll::Ready(Ok(())))
            }
            Poll::Ready(Ok(_)) => {
                if self.timer_expired(None) {
                    self.reject(Rejection::HeadTimeout, false);
                }
                None
            }
            Poll::Ready(Err(e)) => Some(Poll::Ready(Err(e))),
            Poll::Pending => {
                if self.timer_expired(Some(cx)) {
                    self.reject(Rejection::HeadTimeout, false);
                    None
                } else {
                    Some(Poll::Pending)
                }
            }
        }
    }

    fn read_deliver_head(&mut self, out: &mut ReadBuf<'_>) -> Option<Poll<io::Result<()>>> {
        let ReadState::DeliverHead { remaining, framing } = &mut self.read else {
            return None;
        };
        let n = (*remaining).min(out.remaining());
        out.put_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        *remaining -= n;
        if *remaining == 0 {
            let framing = *framing;
            self.start_body(framing);
        }
        Some(Poll::Ready(Ok(())))
    }

    fn read_body(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Option<Poll<io::Result<()>>> {
        let ReadState::Body(tracker) = &mut self.read else {
            return None;
        };
        if self.start < self.end {
            let take = (self.end - self.start).min(out.remaining());
            let avail = &self.buf[self.start..self.start + take];
            return match tracker.feed(avail) {
                Ok((n, done)) => {
                    out.put_slice(&avail[..n]);
                    self.start += n;
                    if done {
                        self.after_body();
                    }
                    (n > 0).then_some(Poll::Ready(Ok(())))
                }
                Err(r) => {
                    self.reject(r, true);
                    None
                }
            };
        }
        let run = tracker.raw_run();
        if run > 0 && u64::try_from(out.remaining()).is_ok_and(|r| r <= run) {
            // Everything the reader can take now is opaque body data: read it
            // straight into the reader's buffer.
            let before = out.filled().len();
            if let Err(e) = ready_or_return!(Pin::new(&mut self.io).poll_read(cx, out)) {
                return Some(Poll::Ready(Err(e)));
            }
            let fresh = &out.filled()[before..];
            if fresh.is_empty() {
                self.read = ReadState::Eof;
                return Some(Poll::Ready(Ok(())));
            }
            match tracker.feed(fresh) {
                Ok((_, true)) => self.after_body(),
                Ok((_, false)) => {}
                // Unreachable: the bytes were within a data run.
                Err(r) => self.reject(r, true),
            }
            return Some(Poll::Ready(Ok(())));
        }
        match self.poll_fill(cx, READ_CHUNK) {
            Poll::Ready(Ok(0)) => {
                self.read = ReadState::Eof;
                Some(Poll::Ready(Ok(())))
            }
            Poll::Ready(Ok(_)) => None,
            Poll::Ready(Err(e)) => Some(Poll::Ready(Err(e))),
            Poll::Pending => Some(Poll::Pending),
        }
    }

    fn read_await_decision(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<()>>> {
        if self.responses.switched() {
            self.enter_passthrough();
            return None;
        }
        if self.responses.completed() >= self.delivered || self.responses.desynced() {
            self.read = ReadState::Head;
            return None;
        }
        self.shared.register(cx.waker());
        Some(Poll::Pending)
    }

    fn read_rejected(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let desynced = self.responses.desynced();
        let boundary = self.responses.at_boundary();
        let flushed = self.flushed_completed;
        let Some(rej) = &mut self.reject else {
            return Poll::Ready(Ok(()));
        };
        // Report EOF only once every earlier response is out: hyper treats
        // EOF while a response is pending as an aborted connection and drops
        // it. For a broken body, the response to that very request may
        // already be under way (or may need the EOF to finish), so only the
        // earlier ones are waited for.
        if desynced || (flushed >= rej.expected && (rej.body_level || boundary)) {
            rej.eof_delivered = true;
            Poll::Ready(Ok(()))
        } else {
            self.shared.register(cx.waker());
            Poll::Pending
        }
    }

    fn read_passthrough(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.start < self.end {
            let n = (self.end - self.start).min(out.remaining());
            out.put_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, out)
    }

    /// Writes the guard's own response if it is safe to do so.
    fn poll_emit_reject(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let should_write = self.should_write_reject();
            let Some(rej) = &mut self.reject else {
                return Poll::Ready(Ok(()));
            };
            match rej.phase {
                EmitPhase::Undecided => {
                    rej.phase = if should_write {
                        EmitPhase::Writing
                    } else {
                        EmitPhase::Skipped
                    };
                }
                EmitPhase::Writing => {
                    let bytes = rej.rejection.response_bytes();
                    while let Some(rest) = bytes.get(rej.written..).filter(|r| !r.is_empty()) {
                        let n = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        rej.written += n;
                    }
                    rej.phase = EmitPhase::Flushing;
                }
                EmitPhase::Flushing => {
                    ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                    rej.phase = EmitPhase::Sent;
                    self.shared.response_sent.store(true, Ordering::Release);
                }
                EmitPhase::Sent | EmitPhase::Skipped => return Poll::Ready(Ok(())),
            }
        }
    }

    /// Discards unread client bytes after our response and FIN, until the
    /// client closes, [`LINGER_MAX_BYTES`] or [`LINGER_TIMEOUT`].
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.buf.len() < READ_CHUNK {
            self.buf.resize(READ_CHUNK, 0);
            self.note_capacity();
        }
        loop {
            let drained = self.reject.as_ref().map_or(usize::MAX, |r| r.drained);
            if drained >= LINGER_MAX_BYTES {
                return Poll::Ready(());
            }
            let mut rb = ReadBuf::new(&mut self.buf[..READ_CHUNK]);
            match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        return Poll::Ready(());
                    }
                    if let Some(r) = &mut self.reject {
                        r.drained += n;
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => {
                    return if self.timer_expired(Some(cx)) {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardedIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !matches!(
                this.read,
                ReadState::Passthrough | ReadState::Rejected | ReadState::Eof
            ) && this.shared.upgraded.load(Ordering::Acquire)
            {
                this.enter_passthrough();
            }
            let step = match this.read {
                ReadState::Passthrough => return this.read_passthrough(cx, out),
                ReadState::Eof => return Poll::Ready(Ok(())),
                ReadState::Rejected => return this.read_rejected(cx),
                ReadState::AwaitDecision => this.read_await_decision(cx),
                ReadState::DeliverHead { .. } => this.read_deliver_head(out),
                ReadState::Body(_) => this.read_body(cx, out),
                ReadState::Head => this.read_head(cx),
            };
            if let Some(poll) = step {
                return poll;
            }
        }
    }
}

fn closed_by_guard() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "connection closed by the request framing guard",
    )
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this
            .reject
            .as_ref()
            .is_some_and(|r| !matches!(r.phase, EmitPhase::Undecided | EmitPhase::Skipped))
        {
            return Poll::Ready(Err(closed_by_guard()));
        }
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, data))?;
        this.observe_written(data.get(..n).unwrap_or(data));
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this
            .reject
            .as_ref()
            .is_some_and(|r| !matches!(r.phase, EmitPhase::Undecided | EmitPhase::Skipped))
        {
            return Poll::Ready(Err(closed_by_guard()));
        }
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for b in bufs {
            if left == 0 {
                break;
            }
            let k = left.min(b.len());
            this.observe_written(&b[..k]);
            left -= k;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.reject.as_ref().is_some_and(|r| r.eof_delivered) {
            // The reader was told EOF, so it has nothing more to write: the
            // connection is closing; emit our response now.
            ready!(this.poll_emit_reject(cx))?;
        }
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        this.on_flushed();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.shared.shutdown_called.store(true, Ordering::Release);
        if this.reject.is_none() {
            return Pin::new(&mut this.io).poll_shutdown(cx);
        }
        ready!(this.poll_emit_reject(cx))?;
        loop {
            let Some(rej) = &mut this.reject else {
                return Poll::Ready(Ok(()));
            };
            match rej.shutdown {
                ShutdownPhase::Start => {
                    let sent = rej.phase == EmitPhase::Sent;
                    ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
                    if sent {
                        if let Some(r) = &mut this.reject {
                            r.shutdown = ShutdownPhase::Linger;
                        }
                        this.arm_timer(LINGER_TIMEOUT);
                    } else if let Some(r) = &mut this.reject {
                        r.shutdown = ShutdownPhase::Done;
                    }
                }
                ShutdownPhase::Linger => {
                    ready!(this.poll_linger(cx));
                    this.timer_armed = false;
                    if let Some(r) = &mut this.reject {
                        r.shutdown = ShutdownPhase::Done;
                    }
                }
                ShutdownPhase::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    fn guarded() -> (GuardedIo<DuplexStream>, GuardHandle, DuplexStream) {
        let (client, server) = duplex(1 << 20);
        let (io, handle) = GuardedIo::new(server, Limits::default());
        (io, handle, client)
    }

    /// Polls one read with a no-op waker.
    fn try_read(io: &mut GuardedIo<DuplexStream>, cap: usize) -> Poll<io::Result<Vec<u8>>> {
        let mut storage = vec![0u8; cap];
        let mut rb = ReadBuf::new(&mut storage);
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(io)
            .poll_read(&mut cx, &mut rb)
            .map_ok(|()| rb.filled().to_vec())
    }

    async fn read_all_tiny(io: &mut GuardedIo<DuplexStream>, cap: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; cap];
        loop {
            let n = io.read(&mut buf).await.unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn tiny_reader_buffers_see_exact_stream() {
        let input: &[u8] = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
            POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
            1a;x=y\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nT: 1\r\n\r\n\
            \r\nGET /c HTTP/1.1\r\nHost: a\r\n\r\n";
        for cap in [1, 2, 3, 7, 64, 4096] {
            let (mut io, handle, mut client) = guarded();
            client.write_all(input).await.unwrap();
            drop(client);
            let got = read_all_tiny(&mut io, cap).await;
            // Identical except for the skipped leading empty line.
            let mut expected = input.to_vec();
            let skip = expected
                .windows(6)
                .position(|w| w == b"\r\n\r\n\r\n")
                .unwrap()
                + 4;
            expected.drain(skip..skip + 2);
            assert_eq!(got, expected, "cap {cap}");
            assert_eq!(handle.rejection(), None);
        }
    }

    #[tokio::test]
    async fn head_is_withheld_until_complete() {
        let (mut io, _handle, mut client) = guarded();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        assert!(try_read(&mut io, 1024).is_pending());
        client.write_all(b"\r\n").await.unwrap();
        let Poll::Ready(Ok(head)) = try_read(&mut io, 1024) else {
            panic!("head not delivered");
        };
        assert_eq!(head, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[tokio::test]
    async fn rejection_waits_for_earlier_responses() {
        let (mut io, handle, mut client) = guarded();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let Poll::Ready(Ok(head)) = try_read(&mut io, 1024) else {
            panic!("first head not delivered");
        };
        assert_eq!(head, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        // Second head is rejected, but the first is not answered yet.
        assert!(try_read(&mut io, 1024).is_pending());
        assert_eq!(handle.rejection(), Some(Rejection::MissingHost));
        io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        // Written but not flushed yet: still pending.
        assert!(try_read(&mut io, 1024).is_pending());
        io.flush().await.unwrap();
        let Poll::Ready(Ok(eof)) = try_read(&mut io, 1024) else {
            panic!("EOF not delivered");
        };
        assert!(eof.is_empty());
        io.flush().await.unwrap();
        drop(client.shutdown().await);
        io.shutdown().await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        let mut expected = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
        expected.extend_from_slice(Rejection::MissingHost.response_bytes());
        assert_eq!(out, expected);
        assert!(handle.stats().rejection_response_sent);
    }

    #[tokio::test]
    async fn mark_upgraded_releases_buffered_bytes() {
        let (mut io, handle, mut client) = guarded();
        client
            .write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\n\r\n\0\0raw")
            .await
            .unwrap();
        let Poll::Ready(Ok(head)) = try_read(&mut io, 1024) else {
            panic!("head not delivered");
        };
        assert!(head.ends_with(b"\r\n\r\n"));
        // Withheld until the upgrade is decided.
        assert!(try_read(&mut io, 1024).is_pending());
        handle.mark_upgraded();
        let Poll::Ready(Ok(raw)) = try_read(&mut io, 1024) else {
            panic!("raw bytes not released");
        };
        assert_eq!(raw, b"\0\0raw");
        client.write_all(b"\r\n\r\nmore").await.unwrap();
        let Poll::Ready(Ok(raw)) = try_read(&mut io, 1024) else {
            panic!("raw bytes not passed");
        };
        assert_eq!(raw, b"\r\n\r\nmore");
        assert_eq!(handle.rejection(), None);
    }

    #[tokio::test]
    async fn bad_chunk_reports_eof_immediately() {
        let (mut io, handle, mut client) = guarded();
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let Poll::Ready(Ok(_)) = try_read(&mut io, 1024) else {
            panic!("head not delivered");
        };
        client.write_all(b"FFFFFFFFFFFFFFFFF\r\n").await.unwrap();
        let Poll::Ready(Ok(eof)) = try_read(&mut io, 1024) else {
            panic!("EOF not delivered");
        };
        assert!(eof.is_empty());
        assert_eq!(handle.rejection(), Some(Rejection::InvalidChunkedBody));
    }
}
