//! HTTP/1.1 upstream connections driven inline: by the task of the request that uses them.
//!
//! hyper's pooled client (`hyper_util::client::legacy`) runs every upstream connection in a
//! task of its own: each request goes to it through a channel, its response comes back through
//! another, and one more task is spawned per request to return the connection to the pool. That
//! is two cross-task wake-ups and a task spawn per request (docs/performance.md, profile).
//! Here an idle connection is taken from the pool by the request's own task, which polls it
//! (hyper's `client::conn::http1` [`Connection`]) together with the response future until the
//! response head arrives, then from the response body ([`InlineBody`]) until the body ends; the
//! connection then goes back to the pool, still idle and unpolled. nginx and haproxy drive their
//! upstream connections the same way, from the downstream connection's event loop iteration.
//!
//! An idle connection is polled once when it is taken (that reads an upstream close or stray
//! bytes, as hyper's idle check does), and a sweeper task drops connections idle for longer
//! than the cluster's `idle_timeout` or closed by the upstream. A request that a connection
//! refused before sending anything (it was closing) goes to another one.
//!
//! HTTP/2 clusters, HTTP upgrades and `CONNECT` keep hyper's pooled client.

use hashbrown::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use weft_body::{BoxError, ProxyBody};

use crate::endpoint::Endpoint;
use crate::tls::{HttpIo, UpstreamIdentity, UpstreamIo};

/// Boxed: hyper's connection state (buffers, parser) is large, and it moves between the pool,
/// the request and the response body; a box makes each move a pointer copy (unboxed, the
/// moves cost ~3k instructions of memcpy per request).
type Conn = Box<Connection<TokioIo<HttpIo>, ProxyBody>>;

/// How many idle connections in a row may refuse a request (closing) before a new one is opened.
const STALE_TRIES: usize = 4;

/// The identities a TLS connection established: set on every response it carries, as hyper's
/// pooled client does with the connection's `Connected` extras (Istio's source-side principals).
type Identity = Option<UpstreamIdentity>;

/// An idle connection.
struct Idle {
    send: SendRequest<ProxyBody>,
    conn: Conn,
    identity: Identity,
    since: Instant,
}

/// One upstream HTTP/1.1 connection in use by a request.
pub struct Lease {
    send: SendRequest<ProxyBody>,
    conn: Conn,
    identity: Identity,
    addr: SocketAddr,
    pool: Arc<InlinePool>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A cluster's idle HTTP/1.1 connections, per endpoint address (most recently used last;
/// hashbrown's default hasher: the std `SipHash` cost ~1.5k instructions per request in hyper's pool).
pub struct InlinePool {
    idle: Mutex<IdleSet>,
    idle_timeout: Duration,
    max_buf_size: usize,
    /// A handle on the pool itself, for the sweeper it starts.
    this: Weak<InlinePool>,
}

/// The idle connections, and whether a sweeper watches them: one runs only while the pool holds
/// idle connections (a sidecar may have thousands of clusters, mostly unused: no timer each).
#[derive(Default)]
struct IdleSet {
    by_addr: HashMap<SocketAddr, Vec<Idle>>,
    sweeping: bool,
}

impl std::fmt::Debug for InlinePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlinePool")
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

/// A try failed before the response head.
#[derive(Debug)]
pub enum InlineError {
    /// The connection could not be opened (TCP connect, its timeout, the TLS handshake).
    Connect(std::io::Error),
    /// The connection failed or closed after the request was handed to it.
    Http(hyper::Error),
}

impl std::fmt::Display for InlineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InlineError::Connect(e) => write!(f, "upstream connect error: {e}"),
            InlineError::Http(e) => write!(f, "upstream request failed: {e}"),
        }
    }
}

impl std::error::Error for InlineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InlineError::Connect(e) => Some(e),
            InlineError::Http(e) => Some(e),
        }
    }
}

impl InlinePool {
    /// A pool closing connections idle for `idle_timeout`, with hyper's read buffer bounded
    /// by `max_buf_size`. Its sweeper is a task of the runtime that first returns a connection
    /// to it, running while it holds idle connections.
    pub fn start(idle_timeout: Duration, max_buf_size: usize) -> Arc<InlinePool> {
        Arc::new_cyclic(|this| InlinePool {
            idle: Mutex::new(IdleSet::default()),
            idle_timeout,
            max_buf_size,
            this: this.clone(),
        })
    }

    /// Idle connections (all endpoints).
    pub fn idle_count(&self) -> usize {
        self.lock().by_addr.values().map(Vec::len).sum()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, IdleSet> {
        self.idle.lock()
    }

    /// The most recently used idle connection to `addr` that is still usable, polled once
    /// with `cx` (which reads an upstream close).
    fn take(
        &self,
        addr: SocketAddr,
        cx: &mut Context<'_>,
    ) -> Option<(SendRequest<ProxyBody>, Conn, Identity)> {
        loop {
            let idle = self.lock().by_addr.get_mut(&addr).and_then(Vec::pop)?;
            if idle.since.elapsed() >= self.idle_timeout {
                continue;
            }
            let Idle {
                mut send,
                mut conn,
                identity,
                ..
            } = idle;
            if usable(&mut send, &mut conn, cx) {
                return Some((send, conn, identity));
            }
        }
    }

    fn put(&self, addr: SocketAddr, send: SendRequest<ProxyBody>, conn: Conn, identity: Identity) {
        let mut idle = self.lock();
        idle.by_addr.entry(addr).or_default().push(Idle {
            send,
            conn,
            identity,
            since: Instant::now(),
        });
        if !idle.sweeping
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            idle.sweeping = true;
            let every = self
                .idle_timeout
                .clamp(Duration::from_millis(50), Duration::from_secs(1));
            runtime.spawn(sweep(self.this.clone(), every));
        }
    }
}

/// Polls an idle connection once: false when it closed (or received bytes nobody asked for)
/// or cannot take a request.
fn usable(send: &mut SendRequest<ProxyBody>, conn: &mut Conn, cx: &mut Context<'_>) -> bool {
    if Pin::new(&mut **conn).poll(cx).is_ready() {
        return false;
    }
    matches!(send.poll_ready(cx), Poll::Ready(Ok(())))
}

/// Every `every`: drops connections idle for the pool's `idle_timeout` or closed meanwhile;
/// ends when the pool has no idle connection left (the next one returned starts another).
async fn sweep(pool: Weak<InlinePool>, every: Duration) {
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let mut cx = Context::from_waker(Waker::noop());
        let mut idle = pool.lock();
        for conns in idle.by_addr.values_mut() {
            conns.retain_mut(|i| {
                i.since.elapsed() < pool.idle_timeout && usable(&mut i.send, &mut i.conn, &mut cx)
            });
        }
        idle.by_addr.retain(|_, v| !v.is_empty());
        if idle.by_addr.is_empty() {
            idle.sweeping = false;
            return;
        }
    }
}

/// Sends `req` (origin-form URI, `Host` set) to `endpoint` on an idle pooled connection or a new
/// one from `connect`, driving the connection from this task until the response head arrives.
/// The response's body keeps the connection ([`InlineBody`]) and returns it to the pool at its
/// end (`None`: the connection already closed).
pub async fn send<C, F>(
    pool: &Arc<InlinePool>,
    endpoint: &Endpoint,
    mut req: http::Request<ProxyBody>,
    connect: C,
) -> Result<(http::Response<Incoming>, Option<Lease>), InlineError>
where
    C: FnOnce() -> F,
    F: Future<Output = std::io::Result<UpstreamIo>>,
{
    let addr = endpoint.addr;
    let mut connect = Some(connect);
    let mut stale = 0;
    loop {
        let pooled = if stale < STALE_TRIES {
            std::future::poll_fn(|cx| Poll::Ready(pool.take(addr, cx))).await
        } else {
            None
        };
        let (mut send, mut conn, identity) = match pooled {
            Some(c) => c,
            None => {
                let Some(connect) = connect.take() else {
                    // Unreachable: a fresh connection accepts its first request.
                    return Err(InlineError::Connect(std::io::Error::other(
                        "a new upstream connection refused its first request",
                    )));
                };
                // Boxed: connecting (TCP, TLS handshake, hyper's handshake) is a large future,
                // and inline it would make every request's future that size (each move of the
                // request's future copied it: +55k instructions of memcpy per request).
                Box::pin(open(connect, pool.max_buf_size)).await?
            }
        };
        let mut response = std::pin::pin!(send.try_send_request(req));
        let mut conn_done = false;
        let got = std::future::poll_fn(|cx| {
            if !conn_done && Pin::new(&mut *conn).poll(cx).is_ready() {
                // Closed or failed: the response future now ends with the reason.
                conn_done = true;
            }
            response.as_mut().poll(cx)
        })
        .await;
        match got {
            Ok(mut resp) => {
                if let Some(id) = &identity {
                    resp.extensions_mut().insert(id.clone());
                }
                // When the connection already ended, the body has all it will get.
                let lease = (!conn_done).then(|| Lease {
                    send,
                    conn,
                    identity,
                    addr,
                    pool: pool.clone(),
                });
                return Ok((resp, lease));
            }
            Err(mut e) => match e.take_message() {
                // Never sent: the connection was closing. Try another.
                Some(back) => {
                    stale += 1;
                    req = back;
                }
                None => {
                    let e = e.into_error();
                    if e.is_user() {
                        // The request body failed (the downstream's framing guard refused a
                        // broken chunk, the client went away): let the downstream connection
                        // run once before this try's reply is made, as it did when the upstream
                        // connection had its own task, so that the guard's own 400 goes out
                        // first (tests/e2e/smuggling.rs).
                        tokio::task::yield_now().await;
                    }
                    return Err(InlineError::Http(e));
                }
            },
        }
    }
}

/// Opens a connection with `connect` and performs hyper's HTTP/1.1 handshake on it.
async fn open<C, F>(
    connect: C,
    max_buf_size: usize,
) -> Result<(SendRequest<ProxyBody>, Conn, Identity), InlineError>
where
    C: FnOnce() -> F,
    F: Future<Output = std::io::Result<UpstreamIo>>,
{
    let io = connect().await.map_err(InlineError::Connect)?;
    let identity = match &io {
        UpstreamIo::Tls(_, id) => Some(id.clone()),
        UpstreamIo::Plain(_) => None,
    };
    let io = TokioIo::new(HttpIo::new(io, true));
    let (send, conn) = Builder::new()
        .max_buf_size(max_buf_size)
        .handshake(io)
        .await
        .map_err(InlineError::Http)?;
    Ok((send, Box::new(conn), identity))
}

/// A response body read from an inline connection: polls the connection before the body (so
/// that the connection reads and decodes in this task), and returns the connection to the pool
/// once the body has ended and the connection is idle again.
pub struct InlineBody {
    body: Incoming,
    lease: Option<Lease>,
}

impl InlineBody {
    /// `body`, read through `lease`'s connection.
    pub fn new(body: Incoming, lease: Lease) -> InlineBody {
        InlineBody {
            body,
            lease: Some(lease),
        }
    }

    /// Drives the connection; forgets it when it closed.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(l) = self.lease.as_mut()
            && Pin::new(&mut *l.conn).poll(cx).is_ready()
        {
            self.lease = None;
        }
    }

    /// The body ended: back to the pool if the connection is idle and can take a request.
    fn release(&mut self, cx: &mut Context<'_>) {
        if let Some(mut l) = self.lease.take()
            && usable(&mut l.send, &mut l.conn, cx)
        {
            l.pool.put(l.addr, l.send, l.conn, l.identity);
        }
    }
}

impl Drop for InlineBody {
    fn drop(&mut self) {
        // A body with nothing to read (HEAD, 204, 304, `content-length: 0`) may never be
        // polled: its connection is still reusable.
        if self.lease.is_some() && self.body.is_end_stream() {
            self.release(&mut Context::from_waker(Waker::noop()));
        }
    }
}

impl Body for InlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        this.drive(cx);
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(cx),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(cx),
            Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        polled.map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl InlineBody {
    /// As a [`ProxyBody`].
    pub fn into_proxy_body(self) -> ProxyBody {
        ProxyBody::boxed(self)
    }
}
