//! HTTP/1.1 upstream connections in a per-worker pool of hyper's `client::conn::http1` senders.
//!
//! hyper-util's pooled client (`hyper_util::client::legacy`) costs more per request than the
//! connection it pools: a pool map keyed by scheme and authority (SipHash), its mutex, a `want`
//! hand-shake, an absolute URI built and parsed per request, and one more task spawned per
//! request to put the connection back once it is ready again. `bench/floor.sh` measures a bare
//! hyper proxy both ways: 35.5k instructions and 20.3 µs of CPU per request with the legacy
//! client, 25.6k and 17.1 µs with one plain `client::conn::http1` connection per downstream
//! connection (haproxy: 28.4k, 16.2 µs; docs/performance.md).
//!
//! Here each upstream connection runs in its own task (as with hyper's pool: a first try that
//! polled it from the request's task took 1.2× the CPU, every upstream readiness event polling
//! the whole downstream service future), and its sender is pooled per endpoint address: the
//! request's task takes an idle sender (ready, not closed), sends the request (origin-form URI,
//! `Host` set), and the response body ([`H1Body`]) puts the sender back at its end, when the
//! connection is idle again. A sweeper task drops senders idle for longer than the cluster's
//! `idle_timeout` (their connection task then closes the connection). A request that a
//! connection refused before sending anything (it was closing) goes to another one.
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
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use weft_body::{BoxError, ProxyBody};

use crate::endpoint::Endpoint;
use crate::tls::{HttpIo, UpstreamIdentity, UpstreamIo};

/// How many idle connections in a row may refuse a request (closing) before a new one is opened.
const STALE_TRIES: usize = 4;

/// The identities a TLS connection established: set on every response it carries, as hyper's
/// pooled client does with the connection's `Connected` extras (Istio's source-side principals).
type Identity = Option<UpstreamIdentity>;

/// An idle connection's sender.
struct Idle {
    send: SendRequest<ProxyBody>,
    identity: Identity,
    since: Instant,
}

/// One upstream HTTP/1.1 connection in use by a request.
pub struct Lease {
    send: SendRequest<ProxyBody>,
    identity: Identity,
    addr: SocketAddr,
    pool: Arc<H1Pool>,
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
pub struct H1Pool {
    idle: Mutex<IdleSet>,
    idle_timeout: Duration,
    max_buf_size: usize,
    /// A handle on the pool itself, for the sweeper it starts.
    this: Weak<H1Pool>,
}

/// The idle connections, and whether a sweeper watches them: one runs only while the pool holds
/// idle connections (a sidecar may have thousands of clusters, mostly unused: no timer each).
#[derive(Default)]
struct IdleSet {
    by_addr: HashMap<SocketAddr, Vec<Idle>>,
    sweeping: bool,
}

impl std::fmt::Debug for H1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool")
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

/// A try failed before the response head.
#[derive(Debug)]
pub enum H1Error {
    /// The connection could not be opened (TCP connect, its timeout, the TLS handshake).
    Connect(std::io::Error),
    /// The connection failed or closed after the request was handed to it.
    Http(hyper::Error),
}

impl std::fmt::Display for H1Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            H1Error::Connect(e) => write!(f, "upstream connect error: {e}"),
            H1Error::Http(e) => write!(f, "upstream request failed: {e}"),
        }
    }
}

impl std::error::Error for H1Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            H1Error::Connect(e) => Some(e),
            H1Error::Http(e) => Some(e),
        }
    }
}

impl H1Pool {
    /// A pool closing connections idle for `idle_timeout`, with hyper's read buffer bounded
    /// by `max_buf_size`. Its sweeper is a task of the runtime that first returns a connection
    /// to it, running while it holds idle connections.
    pub fn start(idle_timeout: Duration, max_buf_size: usize) -> Arc<H1Pool> {
        Arc::new_cyclic(|this| H1Pool {
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

    /// The most recently used idle connection to `addr` that is still usable.
    fn take(&self, addr: SocketAddr) -> Option<(SendRequest<ProxyBody>, Identity)> {
        loop {
            let mut idle = self.lock().by_addr.get_mut(&addr).and_then(Vec::pop)?;
            if idle.since.elapsed() < self.idle_timeout && usable(&mut idle.send) {
                return Some((idle.send, idle.identity));
            }
            // Dropped: its connection task closes the connection.
        }
    }

    fn put(&self, addr: SocketAddr, send: SendRequest<ProxyBody>, identity: Identity) {
        let mut idle = self.lock();
        idle.by_addr.entry(addr).or_default().push(Idle {
            send,
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

/// Whether a connection can take a request now: not closed, and idle (its task has finished
/// the previous exchange). Polled with a no-op waker: nothing waits on it.
fn usable(send: &mut SendRequest<ProxyBody>) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    matches!(send.poll_ready(&mut cx), Poll::Ready(Ok(())))
}

/// Every `every`: drops connections idle for the pool's `idle_timeout` or closed meanwhile;
/// ends when the pool has no idle connection left (the next one returned starts another).
async fn sweep(pool: Weak<H1Pool>, every: Duration) {
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let mut idle = pool.lock();
        for conns in idle.by_addr.values_mut() {
            conns.retain_mut(|i| i.since.elapsed() < pool.idle_timeout && usable(&mut i.send));
        }
        idle.by_addr.retain(|_, v| !v.is_empty());
        if idle.by_addr.is_empty() {
            idle.sweeping = false;
            return;
        }
    }
}

/// Sends `req` (origin-form URI, `Host` set) to `endpoint` on an idle pooled connection or a new
/// one from `connect`. The response's body keeps the connection ([`H1Body`]) and returns it to
/// the pool at its end.
pub async fn send<C, F>(
    pool: &Arc<H1Pool>,
    endpoint: &Endpoint,
    mut req: http::Request<ProxyBody>,
    connect: C,
) -> Result<(http::Response<Incoming>, Option<Lease>), H1Error>
where
    C: FnOnce() -> F,
    F: Future<Output = std::io::Result<UpstreamIo>>,
{
    let addr = endpoint.addr;
    let mut connect = Some(connect);
    let mut stale = 0;
    loop {
        let pooled = if stale < STALE_TRIES {
            pool.take(addr)
        } else {
            None
        };
        let (mut send, identity) = match pooled {
            Some(c) => c,
            None => {
                let Some(connect) = connect.take() else {
                    // Unreachable: a fresh connection accepts its first request.
                    return Err(H1Error::Connect(std::io::Error::other(
                        "a new upstream connection refused its first request",
                    )));
                };
                // Boxed: connecting (TCP, TLS handshake, hyper's handshake) is a large future,
                // and inline it would make every request's future that size (each move of the
                // request's future copied it: +55k instructions of memcpy per request).
                Box::pin(open(connect, pool.max_buf_size)).await?
            }
        };
        match send.try_send_request(req).await {
            Ok(mut resp) => {
                if let Some(id) = &identity {
                    resp.extensions_mut().insert(id.clone());
                }
                let lease = Lease {
                    send,
                    identity,
                    addr,
                    pool: pool.clone(),
                };
                return Ok((resp, Some(lease)));
            }
            Err(mut e) => match e.take_message() {
                // Never sent: the connection was closing. Try another.
                Some(back) => {
                    stale += 1;
                    req = back;
                }
                None => return Err(H1Error::Http(e.into_error())),
            },
        }
    }
}

/// Opens a connection with `connect`, performs hyper's HTTP/1.1 handshake on it, and runs the
/// connection in a task of its own (it ends when the connection closes or its sender is dropped).
async fn open<C, F>(
    connect: C,
    max_buf_size: usize,
) -> Result<(SendRequest<ProxyBody>, Identity), H1Error>
where
    C: FnOnce() -> F,
    F: Future<Output = std::io::Result<UpstreamIo>>,
{
    let io = connect().await.map_err(H1Error::Connect)?;
    let identity = match &io {
        UpstreamIo::Tls(_, id) => Some(id.clone()),
        UpstreamIo::Plain(_) => None,
    };
    let io = TokioIo::new(HttpIo::new(io, true));
    let (send, conn) = Builder::new()
        .max_buf_size(max_buf_size)
        .handshake(io)
        .await
        .map_err(H1Error::Http)?;
    tokio::spawn(async move {
        // Its error already reached the request it was serving, if any.
        let _ = conn.await;
    });
    Ok((send, identity))
}

/// A response body read from a pooled connection: returns the connection to the pool once the
/// body has ended and the connection is idle again.
pub struct H1Body {
    body: Incoming,
    lease: Option<Lease>,
}

impl H1Body {
    /// `body`, read through `lease`'s connection.
    pub fn new(body: Incoming, lease: Lease) -> H1Body {
        H1Body {
            body,
            lease: Some(lease),
        }
    }

    /// The body ended: back to the pool once the connection is idle (at once when its task has
    /// already finished the exchange, else from a small task that waits for it, as hyper's
    /// pooled client does).
    fn release(&mut self) {
        let Some(mut l) = self.lease.take() else {
            return;
        };
        if usable(&mut l.send) {
            l.pool.put(l.addr, l.send, l.identity);
        } else if !l.send.is_closed()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if l.send.ready().await.is_ok() {
                    l.pool.put(l.addr, l.send, l.identity);
                }
            });
        }
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        // A body with nothing to read (HEAD, 204, 304, `content-length: 0`) may never be
        // polled: its connection is still reusable. A body dropped before its end takes its
        // connection with it (hyper closes a connection whose response was not read).
        if self.lease.is_some() && self.body.is_end_stream() {
            self.release();
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
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

impl H1Body {
    /// As a [`ProxyBody`].
    pub fn into_proxy_body(self) -> ProxyBody {
        ProxyBody::boxed(self)
    }
}
