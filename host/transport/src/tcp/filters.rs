//! proxy-wasm network filters on TCP listeners: `on_new_connection`, then each chunk of bytes
//! through `on_downstream_data` / `on_upstream_data` (a plugin may rewrite it, or hold it with
//! `Pause`), the close callbacks, and `on_log` / `on_done` / `on_delete` at the end.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use weft_wasm::bytes::Bytes;
use weft_wasm::{Action, BodyBuffer, Failure, FailurePolicy, PeerType, Properties, Stream};

use weft_extensions::{PluginHandle, PluginVersion};

/// Connection attributes for `proxy_get_property`.
pub struct ConnectionProperties {
    values: Vec<(String, Vec<u8>)>,
}

impl ConnectionProperties {
    /// Attributes of a downstream connection.
    pub fn new(peer: SocketAddr, local: SocketAddr, connection_id: u64) -> ConnectionProperties {
        let n = |v: u64| v.to_le_bytes().to_vec();
        ConnectionProperties {
            values: vec![
                ("source.address".into(), peer.to_string().into_bytes()),
                ("source.port".into(), n(u64::from(peer.port()))),
                ("destination.address".into(), local.to_string().into_bytes()),
                ("destination.port".into(), n(u64::from(local.port()))),
                ("connection.id".into(), n(connection_id)),
                ("connection.mtls".into(), vec![0]),
            ],
        }
    }
}

impl Properties for ConnectionProperties {
    fn get(&self, path: &[&str]) -> Option<Vec<u8>> {
        let key = path.join(".");
        self.values
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    }
}

#[derive(Clone)]
struct Stage {
    label: String,
    stream: Arc<Mutex<Stream>>,
    policy: FailurePolicy,
}

fn lock(stream: &Mutex<Stream>) -> MutexGuard<'_, Stream> {
    stream.lock()
}

/// The plugins of one TCP connection.
pub struct NetFilters {
    stages: Vec<Stage>,
}

/// A plugin closed the connection, or failed closed.
#[derive(Debug)]
pub struct Close(pub String);

impl NetFilters {
    /// Creates a context in every plugin and runs `on_new_connection`. `Err`: refuse the
    /// connection (a fail-closed plugin could not serve, or a plugin closed it).
    pub fn start(
        chain: &[Arc<PluginHandle>],
        properties: Arc<dyn Properties>,
    ) -> Result<NetFilters, Close> {
        let mut stages = Vec::new();
        for handle in chain {
            let policy = handle.policy();
            let started = match &*handle.current() {
                PluginVersion::Loaded(p) => Stream::new(p, properties.clone()),
                PluginVersion::Failed { error } => Err(Failure::Unavailable(error.clone())),
            };
            let mut stream = match started {
                Ok(s) => s,
                Err(f) if policy == FailurePolicy::FailOpen => {
                    tracing::debug!(plugin = %handle.label(), "skipping a broken network filter: {f}");
                    continue;
                }
                Err(f) => return Err(Close(format!("plugin {}: {f}", handle.label()))),
            };
            // `Pause` on a new connection is treated as `Continue`: the connection proceeds
            // and the plugin sees its data.
            match stream.on_new_connection() {
                Ok(_) => {}
                Err(f) if policy == FailurePolicy::FailOpen => {
                    tracing::debug!(plugin = %handle.label(), "network filter failed open: {f}");
                    continue;
                }
                Err(f) => return Err(Close(format!("plugin {}: {f}", handle.label()))),
            }
            if stream.take_effects().close {
                return Err(Close(format!(
                    "plugin {} closed the connection",
                    handle.label()
                )));
            }
            stages.push(Stage {
                label: handle.label(),
                stream: Arc::new(Mutex::new(stream)),
                policy,
            });
        }
        Ok(NetFilters { stages })
    }

    /// A filter for one direction (downstream → upstream, or back).
    pub fn pipe(&self, downstream: bool) -> NetPipe {
        let mut stages: Vec<PipeStage> = self
            .stages
            .iter()
            .map(|s| PipeStage {
                stage: s.clone(),
                held: BodyBuffer::new(),
                disabled: false,
            })
            .collect();
        if !downstream {
            stages.reverse();
        }
        NetPipe { stages, downstream }
    }

    /// The close callbacks, then `on_log`, `on_done`, `on_delete`.
    pub fn finish(&self, closed_by: PeerType) {
        for s in &self.stages {
            let mut stream = lock(&s.stream);
            let _ = stream.on_connection_close(true, closed_by);
            let _ = stream.on_connection_close(false, closed_by);
            stream.finish();
        }
    }
}

struct PipeStage {
    stage: Stage,
    held: BodyBuffer,
    disabled: bool,
}

/// One direction's chain of data callbacks.
pub struct NetPipe {
    stages: Vec<PipeStage>,
    downstream: bool,
}

impl NetPipe {
    /// Passes `data` through every plugin; returns what to forward (the same `Bytes` when no
    /// plugin changed it).
    pub fn push(&mut self, data: Bytes, end_of_stream: bool) -> Result<BodyBuffer, Close> {
        let mut chunk = BodyBuffer::from(data);
        for st in &mut self.stages {
            if st.disabled {
                continue;
            }
            st.held.append(chunk.take());
            let held = st.held.take();
            let (result, out, effects) = {
                let mut s = lock(&st.stage.stream);
                let r = if self.downstream {
                    s.data().downstream_data = held;
                    let r = s.on_downstream_data(end_of_stream);
                    (r, s.data().downstream_data.take())
                } else {
                    s.data().upstream_data = held;
                    let r = s.on_upstream_data(end_of_stream);
                    (r, s.data().upstream_data.take())
                };
                (r.0, r.1, s.take_effects())
            };
            if effects.close {
                return Err(Close(format!(
                    "plugin {} closed the connection",
                    st.stage.label
                )));
            }
            match result {
                Ok(Action::Pause)
                    if !end_of_stream && !effects.resume_request && !effects.resume_response =>
                {
                    st.held = out;
                    return Ok(BodyBuffer::new());
                }
                Ok(_) => chunk = out,
                Err(f) => {
                    st.disabled = true;
                    if st.stage.policy == FailurePolicy::FailOpen {
                        chunk = out;
                    } else {
                        return Err(Close(format!("plugin {}: {f}", st.stage.label)));
                    }
                }
            }
        }
        Ok(chunk)
    }
}
