//! The body type of every request and response the proxy handles: a streamed hyper body, a
//! buffered one, or nothing; optionally metered, and carrying a completion hook that runs when
//! the body is finished or dropped (the access log and the in-flight counters hang off it).

#![forbid(unsafe_code)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use std::collections::VecDeque;

use http::HeaderMap;

/// A filter a body's frames pass through (the proxy-wasm body phases implement it). An error
/// ends the body with that error.
pub trait BodyFilter: Send + Sync {
    /// Passes one data chunk (`end_of_stream` on the last), appending what to send on to `out`
    /// as data frames: chunks a filter held are released as they are, not joined.
    fn push(
        &mut self,
        data: Bytes,
        end_of_stream: bool,
        out: &mut VecDeque<Frame<Bytes>>,
    ) -> Result<(), BoxError>;
    /// Passes the trailers (the end of the stream); returns data to send before them, and the
    /// trailers to send.
    fn trailers(&mut self, trailers: HeaderMap) -> Result<(Bytes, HeaderMap), BoxError>;
}

/// Errors of a proxied body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs once when a body is done with (fully sent, or dropped).
pub trait OnComplete: Send + Sync {
    /// Called with the number of body bytes that passed through.
    fn complete(self: Box<Self>, bytes: u64, errored: bool);
    /// Sees the trailers as they pass (before `complete`), e.g. a gRPC status.
    fn trailers(&mut self, _trailers: &HeaderMap) {}
}

/// Told when a body moves (for idle timeouts) and when it ends (for timeouts that start when
/// the request is complete).
pub trait Progress: Send + Sync {
    /// A frame passed.
    fn moved(&self);
    /// The last frame passed.
    fn ended(&self);
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Incoming(Incoming),
    Frames(VecDeque<Frame<Bytes>>),
    /// Frames already read, then the rest of the body they came from.
    Chain(VecDeque<Frame<Bytes>>, Box<ProxyBody>),
    Piped(Box<Piped>),
    /// Any other body (an upstream response read through a connection the request drives).
    Boxed(Pin<Box<dyn http_body::Body<Data = Bytes, Error = BoxError> + Send + Sync>>),
}

/// A body whose frames pass through a plugin pipeline, after some already-filtered frames.
struct Piped {
    prefix: VecDeque<Frame<Bytes>>,
    inner: ProxyBody,
    pipeline: Box<dyn BodyFilter>,
    done: bool,
}

/// A proxied body.
pub struct ProxyBody {
    kind: Kind,
    bytes: u64,
    errored: bool,
    meter: Option<Arc<AtomicU64>>,
    on_complete: Option<Box<dyn OnComplete>>,
    progress: Option<Arc<dyn Progress>>,
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyBody")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl ProxyBody {
    fn of(kind: Kind) -> ProxyBody {
        ProxyBody {
            kind,
            bytes: 0,
            errored: false,
            meter: None,
            on_complete: None,
            progress: None,
        }
    }

    /// No body.
    pub fn empty() -> ProxyBody {
        ProxyBody::of(Kind::Empty)
    }

    /// A buffered body.
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        let bytes = bytes.into();
        if bytes.is_empty() {
            ProxyBody::empty()
        } else {
            ProxyBody::of(Kind::Full(Some(bytes)))
        }
    }

    /// A streamed body from hyper.
    pub fn incoming(body: Incoming) -> ProxyBody {
        ProxyBody::of(Kind::Incoming(body))
    }

    /// Another body (e.g. one that also drives the connection it is read from).
    pub fn boxed(
        body: impl http_body::Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static,
    ) -> ProxyBody {
        ProxyBody::of(Kind::Boxed(Box::pin(body)))
    }

    /// Already-produced frames.
    pub fn frames(frames: VecDeque<Frame<Bytes>>) -> ProxyBody {
        ProxyBody::of(Kind::Frames(frames))
    }

    /// `prefix`, then the rest of `inner` (a body partly read ahead, e.g. for a retry buffer).
    pub fn chain(prefix: VecDeque<Frame<Bytes>>, inner: ProxyBody) -> ProxyBody {
        ProxyBody::of(Kind::Chain(prefix, Box::new(inner)))
    }

    /// `prefix`, then `inner`'s frames passed through `pipeline`.
    pub fn piped(
        prefix: VecDeque<Frame<Bytes>>,
        inner: ProxyBody,
        pipeline: Box<dyn BodyFilter>,
    ) -> ProxyBody {
        ProxyBody::of(Kind::Piped(Box::new(Piped {
            prefix,
            inner,
            pipeline,
            done: false,
        })))
    }

    /// Adds every data byte that passes to `meter` (shared with whoever reports it).
    pub fn metered(mut self, meter: Arc<AtomicU64>) -> ProxyBody {
        self.meter = Some(meter);
        self
    }

    /// Reports every frame and the end of the body to `progress`.
    pub fn watched(mut self, progress: Arc<dyn Progress>) -> ProxyBody {
        self.progress = Some(progress);
        self
    }

    /// Runs `hook` once the body is finished or dropped.
    pub fn on_complete(mut self, hook: Box<dyn OnComplete>) -> ProxyBody {
        self.on_complete = Some(hook);
        self
    }

    fn count(&mut self, n: usize) {
        self.bytes += n as u64;
        if let Some(m) = &self.meter {
            m.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    fn finish(&mut self) {
        if let Some(hook) = self.on_complete.take() {
            hook.complete(self.bytes, self.errored);
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // A body dropped before its end was cut short.
        if self.on_complete.is_some() && !http_body::Body::is_end_stream(self) {
            self.errored = true;
        }
        self.finish();
    }
}

impl http_body::Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Incoming(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => {
                    this.errored = true;
                    Poll::Ready(Some(Err(e.into())))
                }
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Kind::Frames(frames) => Poll::Ready(frames.pop_front().map(Ok)),
            Kind::Boxed(body) => {
                let r = body.as_mut().poll_frame(cx);
                if matches!(r, Poll::Ready(Some(Err(_)))) {
                    this.errored = true;
                }
                r
            }
            Kind::Chain(prefix, inner) => match prefix.pop_front() {
                Some(f) => Poll::Ready(Some(Ok(f))),
                None => {
                    let r = Pin::new(&mut **inner).poll_frame(cx);
                    if let Poll::Ready(Some(Err(_))) = &r {
                        this.errored = true;
                    }
                    r
                }
            },
            Kind::Piped(p) => {
                let r = p.poll(cx);
                if let Poll::Ready(Some(Err(_))) = &r {
                    this.errored = true;
                }
                r
            }
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len();
                    this.count(n);
                } else if let (Some(t), Some(hook)) = (frame.trailers_ref(), &mut this.on_complete)
                {
                    hook.trailers(t);
                }
                if let Some(p) = &this.progress {
                    p.moved();
                    // A body that knows it is done may never be polled for its end.
                    if frame.is_trailers() || http_body::Body::is_end_stream(&*this) {
                        p.ended();
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(p) = &this.progress {
                    p.ended();
                }
                this.finish()
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.is_none(),
            Kind::Incoming(body) => body.is_end_stream(),
            Kind::Boxed(body) => body.is_end_stream(),
            Kind::Frames(f) => f.is_empty(),
            Kind::Chain(prefix, inner) => prefix.is_empty() && inner.is_end_stream(),
            Kind::Piped(p) => p.done && p.prefix.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Incoming(body) => body.size_hint(),
            Kind::Boxed(body) => body.size_hint(),
            Kind::Frames(f) => SizeHint::with_exact(
                f.iter()
                    .filter_map(|f| f.data_ref())
                    .map(|d| d.len() as u64)
                    .sum(),
            ),
            // Plugins may change the length.
            Kind::Piped(_) => SizeHint::default(),
            Kind::Chain(prefix, inner) => {
                let read: u64 = prefix
                    .iter()
                    .filter_map(|f| f.data_ref())
                    .map(|d| d.len() as u64)
                    .sum();
                let rest = inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(read + rest.lower());
                if let Some(upper) = rest.upper() {
                    hint.set_upper(read + upper);
                }
                hint
            }
        }
    }
}

impl Piped {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(f) = self.prefix.pop_front() {
                return Poll::Ready(Some(Ok(f)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match http_body::Body::poll_frame(Pin::new(&mut self.inner), cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    self.done = true;
                    if let Err(e) = self.pipeline.push(Bytes::new(), true, &mut self.prefix) {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let eos = http_body::Body::is_end_stream(&self.inner);
                        // The frames out go through `prefix` (empty here), in order.
                        if let Err(e) = self.pipeline.push(data, eos, &mut self.prefix) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            match self.pipeline.trailers(trailers) {
                                Ok((out, trailers)) => {
                                    if !out.is_empty() {
                                        self.prefix.push_back(Frame::data(out));
                                    }
                                    self.prefix.push_back(Frame::trailers(trailers));
                                }
                                Err(e) => return Poll::Ready(Some(Err(e))),
                            }
                        }
                        self.done = true;
                    }
                },
            }
        }
    }
}
