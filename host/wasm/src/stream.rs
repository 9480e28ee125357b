//! A plugin's context for one HTTP stream or TCP connection: the callbacks in Envoy's order,
//! each run with the stream's data loaded into the instance.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::Failure;
use crate::context::{
    Effects, HttpCallRequest, HttpCallResponse, Parked, Phase, Properties, StreamData,
};
use crate::plugin::{InstanceState, Plugin, Slot, deliver_call_response};
use crate::types::{Action, PeerType};

/// One plugin's context for one stream.
pub struct Stream {
    plugin: Arc<Plugin>,
    slot: Arc<Slot>,
    id: u32,
    /// Boxed: moved into the instance's store for each callback and back (a pointer move).
    data: Option<Box<StreamData>>,
    calls: Vec<HttpCallRequest>,
    finished: bool,
    failed: bool,
    /// The stream's data is parked in its instance (see [`Stream::park`]).
    parked: bool,
    /// The instance's gate, acquired asynchronously for the next callback (see [`Stream::gate`]).
    permit: Option<crate::gate::Pass>,
    /// `proxy_on_context_create` ran: it runs with the stream's first callback, under the same
    /// lock (one instance entry fewer per stream).
    created: bool,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("plugin", &self.plugin.name)
            .field("context", &self.id)
            .finish_non_exhaustive()
    }
}

impl Stream {
    /// [`Stream::new`] after waiting, without blocking the worker thread, for an instance to
    /// exist (a `reload` replacement is built on the blocking pool, single flight) and for the
    /// chosen instance to be free.
    pub async fn start(
        plugin: &Arc<Plugin>,
        properties: Arc<dyn Properties>,
    ) -> Result<Stream, Failure> {
        plugin.ready().await;
        let slot = plugin.checkout()?;
        // The usual case: the instance is free, no need to wait.
        let permit = match slot.gate.try_enter() {
            Some(p) => p,
            None => {
                plugin.stats.instance_waits.fetch_add(1, Ordering::Relaxed);
                slot.gate.enter().await
            }
        };
        Ok(Stream::with_slot(plugin, slot, properties, Some(permit)))
    }

    /// A stream context on a pooled instance. `proxy_on_context_create(id, root)` runs just
    /// before the stream's first callback, in the same instance entry (so a trap there fails
    /// that callback, and the plugin's failure policy applies as for any callback).
    pub fn new(plugin: &Arc<Plugin>, properties: Arc<dyn Properties>) -> Result<Stream, Failure> {
        let slot = plugin.checkout()?;
        Ok(Stream::with_slot(plugin, slot, properties, None))
    }

    fn with_slot(
        plugin: &Arc<Plugin>,
        slot: Arc<Slot>,
        properties: Arc<dyn Properties>,
        permit: Option<crate::gate::Pass>,
    ) -> Stream {
        let id = slot.next_context_id();
        let stream = Stream {
            plugin: plugin.clone(),
            slot,
            id,
            data: Some(Box::new(StreamData::new(properties))),
            calls: Vec::new(),
            finished: false,
            failed: false,
            parked: false,
            permit,
            created: false,
        };
        plugin.stats.streams.fetch_add(1, Ordering::Relaxed);
        stream.slot.streams.fetch_add(1, Ordering::Relaxed);
        stream
    }

    /// The id of the pooled instance the stream runs on.
    #[cfg(test)]
    pub(crate) fn instance_id(&self) -> u64 {
        self.slot.id
    }

    /// The plugin.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// The stream's data (headers, bodies) as the plugin sees and changes it.
    #[inline]
    pub fn data(&mut self) -> &mut StreamData {
        // The data is only out of `self` during a callback, which holds `&mut self`, or while
        // parked: take it back.
        self.unpark();
        self.data.get_or_insert_with(|| {
            Box::new(StreamData::new(Arc::new(crate::context::NoProperties)))
        })
    }

    /// Effects requested so far (local reply, resume, close), leaving none behind.
    pub fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.data().effects)
    }

    /// Callouts dispatched so far, leaving none behind.
    pub fn take_calls(&mut self) -> Vec<HttpCallRequest> {
        std::mem::take(&mut self.calls)
    }

    /// True when a callback left something for the caller to act on: an effect (local reply,
    /// resume, close, done) or a callout. False after the usual callback, which only returns.
    pub fn has_pending(&mut self) -> bool {
        if !self.calls.is_empty() {
            return true;
        }
        let e = &self.data().effects;
        e.local_response.is_some() || e.resume_request || e.resume_response || e.close || e.done
    }

    /// True once a callback failed (the instance is gone).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// True once the stream ended ([`finish`](Stream::finish)).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Holds the stream in its instance while its plugin has paused it with nothing pending
    /// (Envoy's `StopIteration`): a root callback (`on_tick`, `on_queue_ready`, a root callout's
    /// response) can then address it with `proxy_set_effective_context`, edit its headers and
    /// resume it (or reply, or close it). The returned `Notify` is signalled when it does; the
    /// caller then [`unpark`](Stream::unpark)s and reads the effects. Effects already requested
    /// are kept, so a stream that already asked to resume is woken at once.
    pub fn park(&mut self) -> Result<Arc<tokio::sync::Notify>, Failure> {
        let wake = Arc::new(tokio::sync::Notify::new());
        if self.parked {
            return Err(Failure::Unavailable("the stream is already parked".into()));
        }
        let Some(data) = self.data.take() else {
            return Err(Failure::Unavailable(
                "the stream has no data to park".into(),
            ));
        };
        let pending = {
            let e = &data.effects;
            e.resume_request || e.resume_response || e.local_response.is_some() || e.close
        };
        let mut state = match self.slot.lock() {
            Ok(s) => s,
            Err(f) => {
                self.data = Some(data);
                return Err(f);
            }
        };
        state.store.data_mut().parked.insert(
            self.id,
            Parked {
                data,
                wake: wake.clone(),
            },
        );
        drop(state);
        self.parked = true;
        self.slot.parked.fetch_add(1, Ordering::Relaxed);
        if pending {
            wake.notify_one();
        }
        Ok(wake)
    }

    /// Takes the stream's data back from its instance after [`park`](Stream::park) (a no-op
    /// when it is not parked).
    #[inline]
    pub fn unpark(&mut self) {
        if self.parked {
            self.unpark_parked();
        }
    }

    /// [`unpark`](Stream::unpark) of a parked stream (kept out of line: every data access
    /// checks, few streams are parked).
    #[cold]
    fn unpark_parked(&mut self) {
        self.parked = false;
        self.slot.parked.fetch_sub(1, Ordering::Relaxed);
        if self.slot.broken.load(Ordering::SeqCst) {
            // The instance failed while the stream waited: it can never be resumed.
            self.failed = true;
        }
        // A broken instance's lock is refused, but its store still holds the data: take it.
        let mut state = self.slot.state.lock();
        if let Some(p) = state.store.data_mut().parked.remove(&self.id) {
            self.data = Some(p.data);
        }
    }

    /// The gate of the stream's instance: an async caller acquires a permit (waiting without
    /// blocking its worker thread while another stream's callback runs on the instance) and
    /// [`grant`](Stream::grant)s it to the stream before its next callback, which then finds
    /// the instance free. Callers that cannot wait (body filters) call without one and wait on
    /// the instance's lock for at most one callback.
    pub fn gate(&self) -> Arc<crate::gate::Gate> {
        self.slot.gate.clone()
    }

    /// Takes the instance's gate for the next callback if it is free now (or already held):
    /// true; false when another stream's callback holds it (then wait on [`gate`](Stream::gate)).
    pub fn try_gate(&mut self) -> bool {
        if self.permit.is_some() {
            return true;
        }
        self.permit = self.slot.gate.try_enter();
        self.permit.is_some()
    }

    /// Hands a permit of [`gate`](Stream::gate) to the next callback (released after it).
    pub fn grant(&mut self, permit: crate::gate::Pass) {
        self.permit = Some(permit);
    }

    /// True when an async caller should run this stream's next callback off the worker with
    /// [`crate::pace::off_worker`] (a slow plugin on a current-thread runtime; see
    /// [`crate::pace`]). Cheap: one relaxed load while the plugin is fast.
    pub fn offload_now(&self) -> bool {
        self.plugin.stats.pace.offload_now()
    }

    /// True while the stream is parked.
    pub fn is_parked(&self) -> bool {
        self.parked
    }

    fn call<R>(
        &mut self,
        phase: Phase,
        f: impl FnOnce(&mut InstanceState, i32) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        let ticks = self.plugin.deadline_ticks();
        let id = self.id;
        self.locked(|state| run_with(state, ticks, phase, id, f))
    }

    /// Runs `body` (one or more guest callbacks, each through [`run_with`]) with the stream's
    /// data loaded into its instance: one lock, one move of the data in and out, one pace.
    fn locked<R>(
        &mut self,
        body: impl FnOnce(&mut InstanceState) -> Result<R, Failure>,
    ) -> Result<R, Failure> {
        self.unpark();
        // The permit granted for this callback (if any) is released when it returns; without
        // one, take it if free so that async waiters queue behind this callback.
        let _permit = self.permit.take().or_else(|| self.slot.gate.try_enter());
        if self.failed || self.slot.broken.load(Ordering::SeqCst) {
            self.failed = true;
            return Err(Failure::Unavailable(format!(
                "plugin {} instance was discarded after a failure",
                self.plugin.name
            )));
        }
        let id = self.id;
        let create = !std::mem::replace(&mut self.created, true);
        let root = self.plugin.root;
        let ticks = self.plugin.deadline_ticks();
        let result = {
            let mut state = self.slot.lock_counted(&self.plugin.stats.instance_waits)?;
            state.enter(&self.plugin.info, root);
            let store = state.store.data_mut();
            store.stream = self.data.take();
            store.stream_context = id;
            let r = self.plugin.stats.pace.run(|| {
                if create {
                    run_with(&mut state, ticks, Phase::Idle, id, |s, ctx| {
                        match &s.funcs.context_create {
                            Some(f) => f.call(&mut s.store, (ctx, root as i32)),
                            None => Ok(()),
                        }
                    })?;
                }
                body(&mut state)
            });
            let store = state.store.data_mut();
            self.data = store.stream.take();
            store.stream_context = 0;
            self.calls.append(&mut store.calls);
            r
        };
        if let Err(failure) = &result {
            self.failed = true;
            self.plugin.instance_failed(&self.slot, failure);
        }
        result
    }

    fn action(
        &mut self,
        phase: Phase,
        f: impl FnOnce(&mut InstanceState, i32) -> wasmtime::Result<i32>,
    ) -> Result<Action, Failure> {
        self.call(phase, f).map(Action::from_raw)
    }

    /// `proxy_on_request_headers`.
    pub fn on_request_headers(&mut self, end_of_stream: bool) -> Result<Action, Failure> {
        let n = self.data().request_headers.len() as i32;
        self.action(Phase::RequestHeaders, |s, ctx| {
            match &s.funcs.request_headers {
                Some(f) => f.call(&mut s.store, (ctx, n, end_of_stream as i32)),
                None => Ok(0),
            }
        })
    }

    /// `proxy_on_request_body`; the data is `data().request_body`.
    pub fn on_request_body(&mut self, end_of_stream: bool) -> Result<Action, Failure> {
        let n = self.data().request_body.len() as i32;
        self.action(Phase::RequestBody, |s, ctx| match &s.funcs.request_body {
            Some(f) => f.call(&mut s.store, (ctx, n, end_of_stream as i32)),
            None => Ok(0),
        })
    }

    /// `proxy_on_request_trailers`.
    pub fn on_request_trailers(&mut self) -> Result<Action, Failure> {
        let n = self.data().request_trailers.len() as i32;
        self.action(Phase::RequestTrailers, |s, ctx| {
            match &s.funcs.request_trailers {
                Some(f) => f.call(&mut s.store, (ctx, n)),
                None => Ok(0),
            }
        })
    }

    /// `proxy_on_response_headers`.
    pub fn on_response_headers(&mut self, end_of_stream: bool) -> Result<Action, Failure> {
        let n = self.data().response_headers.len() as i32;
        self.action(Phase::ResponseHeaders, |s, ctx| {
            match &s.funcs.response_headers {
                Some(f) => f.call(&mut s.store, (ctx, n, end_of_stream as i32)),
                None => Ok(0),
            }
        })
    }

    /// `proxy_on_response_body`; the data is `data().response_body`.
    pub fn on_response_body(&mut self, end_of_stream: bool) -> Result<Action, Failure> {
        let n = self.data().response_body.len() as i32;
        self.action(Phase::ResponseBody, |s, ctx| match &s.funcs.response_body {
            Some(f) => f.call(&mut s.store, (ctx, n, end_of_stream as i32)),
            None => Ok(0),
        })
    }

    /// `proxy_on_response_trailers`.
    pub fn on_response_trailers(&mut self) -> Result<Action, Failure> {
        let n = self.data().response_trailers.len() as i32;
        self.action(Phase::ResponseTrailers, |s, ctx| {
            match &s.funcs.response_trailers {
                Some(f) => f.call(&mut s.store, (ctx, n)),
                None => Ok(0),
            }
        })
    }

    /// Delivers a callout's outcome (`None`: it failed) to `proxy_on_http_call_response`, or
    /// for a gRPC call to `proxy_on_grpc_receive` / `proxy_on_grpc_close`.
    pub fn on_http_call_response(
        &mut self,
        call: &HttpCallRequest,
        response: Option<HttpCallResponse>,
    ) -> Result<(), Failure> {
        let ctx = call.context_id;
        let token = call.token;
        let grpc = call.grpc;
        let ticks = self.plugin.deadline_ticks();
        self.call(Phase::HttpCallResponse, move |state, _| {
            deliver_call_response(state, ticks, ctx, token, grpc, response)
                .map_err(|f| wasmtime::Error::new(FailureError(f)))
        })
    }

    /// `proxy_on_new_connection` (TCP).
    pub fn on_new_connection(&mut self) -> Result<Action, Failure> {
        self.action(Phase::NewConnection, |s, ctx| {
            match &s.funcs.new_connection {
                Some(f) => f.call(&mut s.store, ctx),
                None => Ok(0),
            }
        })
    }

    /// `proxy_on_downstream_data` (TCP); the data is `data().downstream_data`.
    pub fn on_downstream_data(&mut self, end_of_stream: bool) -> Result<Action, Failure> {
        let n = self.data().downstream_data.len() as i32;
        self.action(Phase::DownstreamData, |s, ctx| {
            match &s.funcs.downstream_data {
                Some(f) => f.call(&mut s.store, (ctx, n, end_of_stream as i32)),
                None => Ok(0),
            }
        })
    }

    /// `proxy_on_upstream_data` (TCP); the data is `data().upstream_data`.
    pub fn on_upstream_data(&mut self, end_of_stream: bool) -> Result<Action, Failure> {
        let n = self.data().upstream_data.len() as i32;
        self.action(Phase::UpstreamData, |s, ctx| match &s.funcs.upstream_data {
            Some(f) => f.call(&mut s.store, (ctx, n, end_of_stream as i32)),
            None => Ok(0),
        })
    }

    /// `proxy_on_downstream_connection_close` / `proxy_on_upstream_connection_close` (TCP).
    pub fn on_connection_close(&mut self, downstream: bool, peer: PeerType) -> Result<(), Failure> {
        self.call(Phase::ConnectionClose, |s, ctx| {
            let f = if downstream {
                s.funcs.downstream_close.as_ref()
            } else {
                s.funcs.upstream_close.as_ref()
            };
            match f {
                Some(f) => f.call(&mut s.store, (ctx, peer as i32)),
                None => Ok(()),
            }
        })
    }

    /// Ends the stream: `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`, in Envoy's order.
    /// Failures here are recorded but change nothing for the (finished) stream.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.unpark();
        self.slot.streams.fetch_sub(1, Ordering::Relaxed);
        if self.failed {
            return;
        }
        // The three callbacks in one go: one lock and one load of the stream's data. A failure
        // ends the sequence (the instance is discarded), as separate calls would.
        let ticks = self.plugin.deadline_ticks();
        let id = self.id;
        let _ = self.locked(|state| {
            run_with(state, ticks, Phase::Log, id, |s, ctx| match &s.funcs.log {
                Some(f) => f.call(&mut s.store, ctx),
                None => Ok(()),
            })?;
            run_with(state, ticks, Phase::Done, id, |s, ctx| {
                match &s.funcs.done {
                    Some(f) => f.call(&mut s.store, ctx).map(|_| ()),
                    None => Ok(()),
                }
            })?;
            run_with(state, ticks, Phase::Done, id, |s, ctx| {
                match &s.funcs.delete {
                    Some(f) => f.call(&mut s.store, ctx),
                    None => Ok(()),
                }
            })
        });
        if !self.failed {
            self.plugin.stream_succeeded();
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Carries a classified failure through wasmtime's error type.
#[derive(Debug)]
struct FailureError(Failure);

impl std::fmt::Display for FailureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for FailureError {}

/// Like [`run`] but the closure gets the context id; a nested classified failure is kept.
fn run_with<R>(
    state: &mut InstanceState,
    ticks: u64,
    phase: Phase,
    id: u32,
    f: impl FnOnce(&mut InstanceState, i32) -> wasmtime::Result<R>,
) -> Result<R, Failure> {
    crate::plugin::arm_deadline(&mut state.store, ticks);
    {
        let data = state.store.data_mut();
        data.phase = phase;
        data.context_id = id;
    }
    let result = f(state, id as i32);
    let data = state.store.data_mut();
    data.phase = Phase::Idle;
    let refused = data.limiter.refused;
    result.map_err(|e| match e.downcast::<FailureError>() {
        Ok(FailureError(f)) => f,
        Err(e) => crate::plugin::classify_error(e, refused),
    })
}
