//! The host functions of proxy-wasm ABI v0.2.1 (module `env`) and the WASI subset plugins
//! need (module `wasi_snapshot_preview1`). Arguments are checked here; a bad pointer or
//! argument is a status code for the guest, and only a broken host invariant or an exhausted
//! budget traps.

use std::time::{Duration, UNIX_EPOCH};

use wasmtime::{Caller, Linker, Module, Val};

use crate::abi::{GuestMemory, HeaderList, ReturnError, valid_header_name, valid_header_value};
use crate::codec::path_segments;
use crate::context::{HostState, HttpCallRequest, LocalResponse, Phase, truncate_line};
use crate::headers::Headers;
use crate::shared;
use crate::types::{BufferType, LogLevel, MapType, MetricType, Status, StreamType};

type Result<T> = wasmtime::Result<T>;

const ENV: &str = "env";
const WASI: &str = "wasi_snapshot_preview1";

/// WASI errno values.
const WASI_ESUCCESS: i32 = 0;
const WASI_EBADF: i32 = 8;
const WASI_EINVAL: i32 = 28;
const WASI_ENOSYS: i32 = 52;
const WASI_EFAULT: i32 = 21;
const WASI_EIO: i32 = 29;

/// Most iovecs one `fd_write` may pass (POSIX's usual `IOV_MAX`); more is `EINVAL`.
const MAX_IOVS: i32 = 1024;

/// Splits what a plugin writes to stdout/stderr into log lines, holding at most one line of
/// `max_line` bytes and looking at no more than `max_total` bytes in all.
struct LineSplitter {
    max_line: usize,
    budget: usize,
    line: Vec<u8>,
    line_dropped: usize,
    lines: Vec<String>,
    dropped: usize,
}

impl LineSplitter {
    fn new(max_line: usize, max_total: usize) -> LineSplitter {
        LineSplitter {
            max_line,
            budget: max_total,
            line: Vec::new(),
            line_dropped: 0,
            lines: Vec::new(),
            dropped: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let take = bytes.len().min(self.budget);
        self.budget -= take;
        self.dropped += bytes.len() - take;
        for (i, part) in bytes[..take].split(|b| *b == b'\n').enumerate() {
            if i > 0 {
                self.end_line();
            }
            let room = self.max_line.saturating_sub(self.line.len());
            let keep = part.len().min(room);
            self.line.extend_from_slice(&part[..keep]);
            self.line_dropped += part.len() - keep;
        }
    }

    fn end_line(&mut self) {
        if !self.line.is_empty() || self.line_dropped > 0 {
            let text = String::from_utf8_lossy(&self.line);
            self.lines
                .push(truncate_line(&text, self.max_line, self.line_dropped));
        }
        self.line.clear();
        self.line_dropped = 0;
    }

    fn finish(mut self) -> Vec<String> {
        self.line_dropped += self.dropped;
        self.end_line();
        self.lines
    }
}

fn memory(caller: &Caller<'_, HostState>) -> std::result::Result<GuestMemory, Status> {
    caller.data().memory.ok_or(Status::InternalFailure)
}

fn status(s: Status) -> Result<i32> {
    Ok(s.raw())
}

/// Copies `bytes` into guest memory allocated by the guest, storing pointer and length.
fn return_bytes(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    ptr_out: i32,
    len_out: i32,
) -> Result<i32> {
    let (Some(mem), Some(alloc)) = (caller.data().memory, caller.data().alloc.clone()) else {
        return status(Status::InternalFailure);
    };
    match mem.return_bytes(
        wasmtime::AsContextMut::as_context_mut(caller),
        &alloc,
        bytes,
        ptr_out,
        len_out,
    ) {
        Ok(()) => status(Status::Ok),
        Err(ReturnError::Memory) => status(Status::InvalidMemoryAccess),
        Err(ReturnError::Trap(e)) => Err(e),
    }
}

fn read(
    caller: &Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> std::result::Result<Vec<u8>, Status> {
    Ok(memory(caller)?.read(caller, ptr, len)?)
}

fn read_str(
    caller: &Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> std::result::Result<String, Status> {
    let bytes = read(caller, ptr, len)?;
    String::from_utf8(bytes).map_err(|_| Status::BadArgument)
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(s) => return status(Status::from(s)),
        }
    };
}

/// Defines every `env` host function and the WASI subset in `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    logging(linker)?;
    timers_and_contexts(linker)?;
    buffers(linker)?;
    header_maps(linker)?;
    stream_control(linker)?;
    properties(linker)?;
    shared_data(linker)?;
    callouts(linker)?;
    metrics(linker)?;
    wasi(linker)?;
    Ok(())
}

fn logging(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_log",
        |caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| {
            // Only the first `max_log_line_bytes` are copied out of the guest.
            let max = caller.data().plugin.limits.max_log_line_bytes;
            let mem = tri!(memory(&caller));
            let (msg, dropped) = tri!(
                mem.read_prefix(&caller, ptr, len, max)
                    .map_err(Status::from)
            );
            let msg = truncate_line(&String::from_utf8_lossy(&msg), max, dropped);
            caller.data().plugin.log(level_of(level), &msg);
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_log_level",
        |mut caller: Caller<'_, HostState>, out: i32| {
            let level = caller.data().plugin.log_level as u32;
            let mem = tri!(memory(&caller));
            tri!(mem.write_u32(&mut caller, out, level).map_err(Status::from));
            status(Status::Ok)
        },
    )?;
    Ok(())
}

/// A log level; a value past critical is logged as critical (the line is not lost).
fn level_of(raw: i32) -> LogLevel {
    LogLevel::try_from(raw).unwrap_or(LogLevel::Critical)
}

fn timers_and_contexts(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_get_current_time_nanoseconds",
        |mut caller: Caller<'_, HostState>, out: i32| {
            let now = caller.data().plugin.clock.now();
            let nanos = now
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            let mem = tri!(memory(&caller));
            tri!(mem.write_u64(&mut caller, out, nanos).map_err(Status::from));
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_tick_period_milliseconds",
        |mut caller: Caller<'_, HostState>, ms: i32| {
            let state = caller.data_mut();
            if state.context_id != state.root_context {
                return status(Status::BadArgument);
            }
            let root = state.root_context;
            if ms == 0 {
                state.tick_periods.remove(&root);
            } else {
                state
                    .tick_periods
                    .insert(root, Duration::from_millis(ms as u32 as u64));
            }
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_effective_context",
        |mut caller: Caller<'_, HostState>, id: i32| {
            let state = caller.data_mut();
            let id = id as u32;
            // The root context, the loaded stream and the instance's parked streams (paused
            // with nothing pending, waiting for e.g. `on_tick` to resume them) are reachable.
            if id == state.root_context || state.addressable(id) {
                state.context_id = id;
                status(Status::Ok)
            } else {
                status(Status::BadArgument)
            }
        },
    )?;
    linker.func_wrap(ENV, "proxy_done", |mut caller: Caller<'_, HostState>| {
        let stream = tri!(caller.data_mut().stream_mut());
        stream.effects.done = true;
        status(Status::Ok)
    })?;
    Ok(())
}

/// The bytes of buffer `ty` visible now, or a status when it is not available.
fn buffer_ref(state: &mut HostState, ty: BufferType) -> std::result::Result<&mut Vec<u8>, Status> {
    let phase = state.phase;
    match ty {
        BufferType::PluginConfiguration | BufferType::VmConfiguration | BufferType::CallData => {
            Err(Status::NotFound)
        }
        BufferType::HttpCallResponseBody => state
            .callout
            .as_mut()
            .map(|c| &mut c.body)
            .ok_or(Status::NotFound),
        BufferType::HttpRequestBody => {
            let s = state.stream_mut()?;
            Ok(&mut s.request_body)
        }
        BufferType::HttpResponseBody => {
            let s = state.stream_mut()?;
            Ok(&mut s.response_body)
        }
        BufferType::DownstreamData => {
            if !matches!(phase, Phase::DownstreamData | Phase::NewConnection) {
                return Err(Status::NotFound);
            }
            Ok(&mut state.stream_mut()?.downstream_data)
        }
        BufferType::UpstreamData => {
            if phase != Phase::UpstreamData {
                return Err(Status::NotFound);
            }
            Ok(&mut state.stream_mut()?.upstream_data)
        }
        BufferType::GrpcReceiveBuffer => Err(Status::Unimplemented),
    }
}

/// Configuration buffers are readable only in the callback they belong to.
fn config_buffer(
    state: &HostState,
    ty: BufferType,
) -> Option<std::result::Result<Vec<u8>, Status>> {
    match ty {
        BufferType::PluginConfiguration => Some(if state.phase == Phase::Configure {
            Ok(state.plugin.configuration.clone())
        } else {
            Err(Status::NotFound)
        }),
        BufferType::VmConfiguration => Some(if state.phase == Phase::VmStart {
            Ok(state.plugin.vm_configuration.clone())
        } else {
            Err(Status::NotFound)
        }),
        BufferType::CallData => Some(Err(Status::NotFound)),
        _ => None,
    }
}

fn buffers(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_get_buffer_bytes",
        |mut caller: Caller<'_, HostState>,
         ty: i32,
         start: i32,
         max: i32,
         ptr_out: i32,
         len_out: i32| {
            let ty = tri!(BufferType::try_from(ty));
            let start = start as u32 as usize;
            let max = max as u32 as usize;
            // Only the requested range is copied out of the host buffer (once more into
            // guest memory), never the whole buffer.
            let slice = |bytes: &[u8]| -> std::result::Result<Vec<u8>, Status> {
                if start > bytes.len() {
                    return Err(Status::BadArgument);
                }
                let end = start.saturating_add(max).min(bytes.len());
                Ok(bytes[start..end].to_vec())
            };
            let bytes = match config_buffer(caller.data(), ty) {
                Some(r) => tri!(slice(&tri!(r))),
                None => tri!(slice(tri!(buffer_ref(caller.data_mut(), ty)))),
            };
            return_bytes(&mut caller, &bytes, ptr_out, len_out)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_buffer_status",
        |mut caller: Caller<'_, HostState>, ty: i32, len_out: i32, flags_out: i32| {
            let ty = tri!(BufferType::try_from(ty));
            let len = match config_buffer(caller.data(), ty) {
                Some(r) => tri!(r).len(),
                None => tri!(buffer_ref(caller.data_mut(), ty)).len(),
            };
            let mem = tri!(memory(&caller));
            tri!(
                mem.write_u32(&mut caller, len_out, len as u32)
                    .map_err(Status::from)
            );
            tri!(
                mem.write_u32(&mut caller, flags_out, 0)
                    .map_err(Status::from)
            );
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_buffer_bytes",
        |mut caller: Caller<'_, HostState>, ty: i32, start: i32, size: i32, ptr: i32, len: i32| {
            let ty = tri!(BufferType::try_from(ty));
            if matches!(
                ty,
                BufferType::PluginConfiguration
                    | BufferType::VmConfiguration
                    | BufferType::CallData
            ) {
                return status(Status::BadArgument);
            }
            let data = tri!(read(&caller, ptr, len));
            let buf = tri!(buffer_ref(caller.data_mut(), ty));
            let start = start as u32 as usize;
            let size = size as u32 as usize;
            // The spec's semantics: replace [start, start + size) with the data; start at or
            // past the end appends; (0, 0) prepends.
            if start >= buf.len() {
                buf.extend_from_slice(&data);
            } else {
                let end = start.saturating_add(size).min(buf.len());
                buf.splice(start..end, data);
            }
            status(Status::Ok)
        },
    )?;
    Ok(())
}

/// A header map a host function addresses: a live map of the stream, or a callout's
/// response (read-only).
enum MapRef<'a> {
    Live(&'a mut Headers),
    Callout(&'a HeaderList),
}

impl<'a> MapRef<'a> {
    fn get(&self, name: &str) -> Option<&[u8]> {
        match self {
            MapRef::Live(h) => h.get(name),
            MapRef::Callout(l) => l.get(name),
        }
    }

    fn serialize(&self) -> Vec<u8> {
        match self {
            MapRef::Live(h) => h.serialize(),
            MapRef::Callout(l) => l.serialize(),
        }
    }

    /// The live map, for a write (callout maps are refused before this).
    fn live(self) -> std::result::Result<&'a mut Headers, Status> {
        match self {
            MapRef::Live(h) => Ok(h),
            MapRef::Callout(_) => Err(Status::BadArgument),
        }
    }
}

/// The header map `ty`, read-only or writable.
fn map_ref(
    state: &mut HostState,
    ty: MapType,
    write: bool,
) -> std::result::Result<MapRef<'_>, Status> {
    match ty {
        MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers => {
            if write {
                return Err(Status::BadArgument);
            }
            let c = state.callout.as_ref().ok_or(Status::NotFound)?;
            Ok(MapRef::Callout(if ty == MapType::HttpCallResponseHeaders {
                &c.headers
            } else {
                &c.trailers
            }))
        }
        MapType::GrpcReceiveInitialMetadata | MapType::GrpcReceiveTrailingMetadata => {
            Err(Status::Unimplemented)
        }
        MapType::HttpRequestHeaders
        | MapType::HttpRequestTrailers
        | MapType::HttpResponseHeaders
        | MapType::HttpResponseTrailers => {
            let phase = state.phase;
            let stream = state.stream_mut()?;
            // Envoy's rules: the request maps are read-only once the response has begun (and in
            // `on_log`); the response maps do not exist before the response. A write outside
            // them is `BadArgument`, as in Envoy. A read of a response map before the response
            // is `NotFound` (Envoy: `BadArgument`, which makes Rust SDK plugins panic).
            let responding = !stream.response_headers.is_empty();
            let request_map = matches!(
                ty,
                MapType::HttpRequestHeaders | MapType::HttpRequestTrailers
            );
            if request_map {
                if write && (responding || matches!(phase, Phase::Log | Phase::Done)) {
                    return Err(Status::BadArgument);
                }
            } else if !responding {
                return Err(if write {
                    Status::BadArgument
                } else {
                    Status::NotFound
                });
            }
            if write {
                stream.headers_modified = true;
            }
            Ok(MapRef::Live(match ty {
                MapType::HttpRequestHeaders => &mut stream.request_headers,
                MapType::HttpRequestTrailers => &mut stream.request_trailers,
                MapType::HttpResponseHeaders => &mut stream.response_headers,
                _ => &mut stream.response_trailers,
            }))
        }
    }
}

fn header_maps(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_pairs",
        |mut caller: Caller<'_, HostState>, ty: i32, ptr_out: i32, len_out: i32| {
            let ty = tri!(MapType::try_from(ty));
            let bytes = tri!(map_ref(caller.data_mut(), ty, false)).serialize();
            return_bytes(&mut caller, &bytes, ptr_out, len_out)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_header_map_pairs",
        |mut caller: Caller<'_, HostState>, ty: i32, ptr: i32, len: i32| {
            let ty = tri!(MapType::try_from(ty));
            let bytes = tri!(read(&caller, ptr, len));
            let list = tri!(HeaderList::deserialize(&bytes).ok_or(Status::BadArgument));
            if list
                .0
                .iter()
                .any(|(k, v)| !valid_header_name(k) || !valid_header_value(v))
            {
                return status(Status::BadArgument);
            }
            let map = tri!(tri!(map_ref(caller.data_mut(), ty, true)).live());
            tri!(map.set_list(&list).map_err(|_| Status::BadArgument));
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_size",
        |mut caller: Caller<'_, HostState>, ty: i32, out: i32| {
            let ty = tri!(MapType::try_from(ty));
            let size = tri!(map_ref(caller.data_mut(), ty, false))
                .serialize()
                .len();
            let mem = tri!(memory(&caller));
            tri!(
                mem.write_u32(&mut caller, out, size as u32)
                    .map_err(Status::from)
            );
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_value",
        |mut caller: Caller<'_, HostState>,
         ty: i32,
         kp: i32,
         kl: i32,
         ptr_out: i32,
         len_out: i32| {
            let ty = tri!(MapType::try_from(ty));
            let key = header_key(ty, tri!(read_str(&caller, kp, kl)));
            let value = tri!(map_ref(caller.data_mut(), ty, false))
                .get(&key)
                .map(<[u8]>::to_vec);
            match value {
                Some(v) => return_bytes(&mut caller, &v, ptr_out, len_out),
                None => status(Status::NotFound),
            }
        },
    )?;
    for (name, op) in [
        ("proxy_add_header_map_value", Op::Add),
        ("proxy_replace_header_map_value", Op::Replace),
    ] {
        linker.func_wrap(
            ENV,
            name,
            move |mut caller: Caller<'_, HostState>,
                  ty: i32,
                  kp: i32,
                  kl: i32,
                  vp: i32,
                  vl: i32| {
                let ty = tri!(MapType::try_from(ty));
                let key = header_key(ty, tri!(read_str(&caller, kp, kl)));
                let value = tri!(read(&caller, vp, vl));
                // No CR, LF or NUL from a plugin ever reaches the wire.
                if !valid_header_name(&key) || !valid_header_value(&value) {
                    return status(Status::BadArgument);
                }
                let map = tri!(tri!(map_ref(caller.data_mut(), ty, true)).live());
                let written = match op {
                    Op::Add => map.add(&key, &value),
                    Op::Replace => map.replace(&key, &value),
                };
                tri!(written.map_err(|_| Status::BadArgument));
                status(Status::Ok)
            },
        )?;
    }
    linker.func_wrap(
        ENV,
        "proxy_remove_header_map_value",
        |mut caller: Caller<'_, HostState>, ty: i32, kp: i32, kl: i32| {
            let ty = tri!(MapType::try_from(ty));
            let key = header_key(ty, tri!(read_str(&caller, kp, kl)));
            tri!(tri!(map_ref(caller.data_mut(), ty, true)).live()).remove(&key);
            status(Status::Ok)
        },
    )?;
    Ok(())
}

/// Envoy keeps `Host` as `:authority`: on the request headers, `host` names `:authority`.
fn header_key(ty: MapType, key: String) -> String {
    if ty == MapType::HttpRequestHeaders && key.eq_ignore_ascii_case("host") {
        ":authority".to_owned()
    } else {
        key
    }
}

#[derive(Clone, Copy)]
enum Op {
    Add,
    Replace,
}

fn stream_control(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_continue_stream",
        |mut caller: Caller<'_, HostState>, ty: i32| {
            let ty = tri!(StreamType::try_from(ty));
            let stream = tri!(caller.data_mut().stream_mut());
            match ty {
                StreamType::HttpRequest | StreamType::Downstream => {
                    stream.effects.resume_request = true
                }
                StreamType::HttpResponse | StreamType::Upstream => {
                    stream.effects.resume_response = true
                }
            }
            caller.data().wake_parked();
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_close_stream",
        |mut caller: Caller<'_, HostState>, ty: i32| {
            tri!(StreamType::try_from(ty));
            let stream = tri!(caller.data_mut().stream_mut());
            stream.effects.close = true;
            caller.data().wake_parked();
            status(Status::Ok)
        },
    )?;
    // ABI 0.1.0 names still imported by some 0.2.0 builds.
    linker.func_wrap(
        ENV,
        "proxy_continue_request",
        |mut caller: Caller<'_, HostState>| {
            tri!(caller.data_mut().stream_mut()).effects.resume_request = true;
            caller.data().wake_parked();
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_continue_response",
        |mut caller: Caller<'_, HostState>| {
            tri!(caller.data_mut().stream_mut()).effects.resume_response = true;
            caller.data().wake_parked();
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_clear_route_cache",
        |_: Caller<'_, HostState>| status(Status::Ok),
    )?;
    linker.func_wrap(
        ENV,
        "proxy_send_local_response",
        |mut caller: Caller<'_, HostState>,
         code: i32,
         dp: i32,
         dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         grpc: i32| {
            let details = String::from_utf8_lossy(&tri!(read(&caller, dp, dl))).into_owned();
            let body = tri!(read(&caller, bp, bl));
            let headers = tri!(
                HeaderList::deserialize(&tri!(read(&caller, hp, hl))).ok_or(Status::BadArgument)
            );
            if headers
                .0
                .iter()
                .any(|(k, v)| !valid_header_name(k) || k.starts_with(':') || !valid_header_value(v))
            {
                return status(Status::BadArgument);
            }
            if !(100..=999).contains(&code) {
                return status(Status::BadArgument);
            }
            let stream = tri!(caller.data_mut().stream_mut());
            stream.effects.local_response = Some(LocalResponse {
                status: code as u16,
                details,
                body,
                headers,
                grpc_status: (grpc >= 0).then_some(grpc),
            });
            caller.data().wake_parked();
            status(Status::Ok)
        },
    )?;
    Ok(())
}

fn properties(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_get_property",
        |mut caller: Caller<'_, HostState>, pp: i32, pl: i32, ptr_out: i32, len_out: i32| {
            let segments = path_segments(&tri!(read(&caller, pp, pl)));
            let joined = segments.join(".");
            let state = caller.data();
            let plugin = &state.plugin;
            let value = match joined.as_str() {
                "plugin_name" => Some(plugin.name.as_bytes().to_vec()),
                "plugin_root_id" => Some(plugin.root_id.as_bytes().to_vec()),
                "plugin_vm_id" => Some(plugin.vm_id.as_bytes().to_vec()),
                _ => {
                    let stream = state.stream_ref();
                    let own = stream
                        .and_then(|s| s.filter_state.get(&joined))
                        .or_else(|| state.root_state.get(&joined))
                        .cloned();
                    // Envoy's header attributes come straight from the stream's maps.
                    let from_headers = stream.and_then(|s| {
                        let le = |n: u64| Some(n.to_le_bytes().to_vec());
                        // Envoy's `*.total_size`: header bytes (names and values) plus body.
                        let total = |list: &Headers, body: &[&str]| {
                            let headers = list.byte_size();
                            let body = s
                                .properties
                                .get(body)
                                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                                .map_or(0, u64::from_le_bytes);
                            le(headers as u64 + body)
                        };
                        let responding = !s.response_headers.is_empty();
                        match segments.as_slice() {
                            [a, b] if a == "request" && b == "headers" => {
                                return Some(s.request_headers.serialize());
                            }
                            [a, b] if a == "response" && b == "headers" && responding => {
                                return Some(s.response_headers.serialize());
                            }
                            [a, b] if a == "request" && b == "total_size" => {
                                return total(&s.request_headers, &["request", "size"]);
                            }
                            [a, b] if a == "response" && b == "total_size" => {
                                return total(&s.response_headers, &["response", "size"]);
                            }
                            _ => {}
                        }
                        let (list, name) = match segments.as_slice() {
                            [a, b, name] if a == "request" && b == "headers" => {
                                let name = if name.eq_ignore_ascii_case("host") {
                                    ":authority"
                                } else {
                                    name.as_str()
                                };
                                (&s.request_headers, name)
                            }
                            [a, b, name] if a == "response" && b == "headers" => {
                                (&s.response_headers, name.as_str())
                            }
                            _ => return None,
                        };
                        list.get(name).map(<[u8]>::to_vec)
                    });
                    // Built-in attributes first: `proxy_set_property` on one does not shadow
                    // it (Envoy keeps written values apart, in filter state).
                    from_headers
                        .or_else(|| {
                            let refs: Vec<&str> = segments.iter().map(String::as_str).collect();
                            stream
                                .and_then(|s| s.properties.get(&refs))
                                .or_else(|| plugin.properties.get(&refs))
                        })
                        .or(own)
                }
            };
            match value {
                Some(v) => return_bytes(&mut caller, &v, ptr_out, len_out),
                None => status(Status::NotFound),
            }
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_property",
        |mut caller: Caller<'_, HostState>, pp: i32, pl: i32, vp: i32, vl: i32| {
            let segments = path_segments(&tri!(read(&caller, pp, pl)));
            if segments.is_empty() {
                return status(Status::BadArgument);
            }
            let value = tri!(read(&caller, vp, vl));
            let key = segments.join(".");
            let state = caller.data_mut();
            match state.stream_mut() {
                Ok(s) => {
                    s.filter_state.insert(key, value);
                }
                Err(_) => {
                    state.root_state.insert(key, value);
                }
            }
            status(Status::Ok)
        },
    )?;
    Ok(())
}

fn shared_data(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_get_shared_data",
        |mut caller: Caller<'_, HostState>,
         kp: i32,
         kl: i32,
         ptr_out: i32,
         len_out: i32,
         cas_out: i32| {
            let key = tri!(read_str(&caller, kp, kl));
            let vm = caller.data().plugin.vm_id.clone();
            let Some((value, cas)) = shared::get(&vm, &key) else {
                return status(Status::NotFound);
            };
            let mem = tri!(memory(&caller));
            tri!(
                mem.write_u32(&mut caller, cas_out, cas)
                    .map_err(Status::from)
            );
            return_bytes(&mut caller, &value, ptr_out, len_out)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_shared_data",
        |caller: Caller<'_, HostState>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| {
            let max_bytes = caller.data().plugin.limits.max_shared_data_bytes;
            // Sizes are checked before anything is copied out of the guest.
            if (kl as u32 as usize).saturating_add(vl as u32 as usize) > max_bytes
                || vl as u32 as usize > shared::MAX_SHARED_VALUE
            {
                return status(Status::BadArgument);
            }
            let key = tri!(read_str(&caller, kp, kl));
            let value = tri!(read(&caller, vp, vl));
            let plugin = &caller.data().plugin;
            let limits = shared::DataLimits {
                max_keys: plugin.limits.max_shared_data_keys,
                max_bytes: plugin.limits.max_shared_data_bytes,
            };
            status(shared::set(&plugin.vm_id, &key, value, cas as u32, limits))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_register_shared_queue",
        |mut caller: Caller<'_, HostState>, np: i32, nl: i32, id_out: i32| {
            let name = tri!(read_str(&caller, np, nl));
            let plugin = caller.data().plugin.clone();
            let id = shared::register_queue(&plugin.vm_id, &name, plugin.queue_owner());
            let mem = tri!(memory(&caller));
            tri!(mem.write_u32(&mut caller, id_out, id).map_err(Status::from));
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_resolve_shared_queue",
        |mut caller: Caller<'_, HostState>, vp: i32, vl: i32, np: i32, nl: i32, id_out: i32| {
            let vm = tri!(read_str(&caller, vp, vl));
            let name = tri!(read_str(&caller, np, nl));
            let vm = if vm.is_empty() {
                caller.data().plugin.vm_id.clone()
            } else {
                vm
            };
            let id = tri!(shared::resolve_queue(&vm, &name).ok_or(Status::NotFound));
            let mem = tri!(memory(&caller));
            tri!(mem.write_u32(&mut caller, id_out, id).map_err(Status::from));
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_enqueue_shared_queue",
        |caller: Caller<'_, HostState>, id: i32, vp: i32, vl: i32| {
            let limits = &caller.data().plugin.limits;
            let limits = shared::QueueLimits {
                max_item: limits.max_queue_item_bytes,
                max_bytes: limits.max_queue_bytes,
            };
            // Checked before the item is copied out of the guest.
            if vl as u32 as usize > limits.max_item {
                return status(Status::BadArgument);
            }
            let value = tri!(read(&caller, vp, vl));
            status(shared::enqueue(id as u32, value, limits))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_dequeue_shared_queue",
        |mut caller: Caller<'_, HostState>, id: i32, ptr_out: i32, len_out: i32| {
            let value = tri!(shared::dequeue(id as u32));
            return_bytes(&mut caller, &value, ptr_out, len_out)
        },
    )?;
    Ok(())
}

fn callouts(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_http_call",
        |mut caller: Caller<'_, HostState>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout_ms: i32,
         token_out: i32| {
            let cluster = tri!(read_str(&caller, up, ul));
            let headers = tri!(
                HeaderList::deserialize(&tri!(read(&caller, hp, hl))).ok_or(Status::BadArgument)
            );
            let body = tri!(read(&caller, bp, bl));
            let trailers = tri!(
                HeaderList::deserialize(&tri!(read(&caller, tp, tl))).ok_or(Status::BadArgument)
            );
            // Envoy requires these three and a known cluster.
            if [":method", ":path", ":authority"]
                .iter()
                .any(|h| headers.get(h).is_none())
                || headers
                    .0
                    .iter()
                    .any(|(k, v)| !valid_header_name(k) || !valid_header_value(v))
                || !caller.data().plugin.embedder.has_cluster(&cluster)
            {
                return status(Status::BadArgument);
            }
            let state = caller.data_mut();
            state.next_token = state.next_token.wrapping_add(1).max(1);
            let token = state.next_token;
            let context_id = state.context_id;
            state.calls.push(HttpCallRequest {
                token,
                context_id,
                cluster,
                headers,
                body,
                trailers,
                timeout: Duration::from_millis(timeout_ms.max(0) as u64),
            });
            let mem = tri!(memory(&caller));
            tri!(
                mem.write_u32(&mut caller, token_out, token)
                    .map_err(Status::from)
            );
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_status",
        |mut caller: Caller<'_, HostState>, code_out: i32, ptr_out: i32, len_out: i32| {
            let (code, msg) = caller.data().last_status.clone();
            let mem = tri!(memory(&caller));
            tri!(
                mem.write_u32(&mut caller, code_out, code)
                    .map_err(Status::from)
            );
            return_bytes(&mut caller, &msg, ptr_out, len_out)
        },
    )?;
    // gRPC callouts are not implemented yet (docs/abi.md); they answer Unimplemented.
    for (name, params) in [
        ("proxy_grpc_call", 12),
        ("proxy_grpc_stream", 9),
        ("proxy_grpc_send", 4),
        ("proxy_grpc_cancel", 1),
        ("proxy_grpc_close", 1),
    ] {
        define_stub(linker, name, params, Status::Unimplemented)?;
    }
    linker.func_wrap(
        ENV,
        "proxy_call_foreign_function",
        |mut caller: Caller<'_, HostState>,
         np: i32,
         nl: i32,
         ap: i32,
         al: i32,
         ptr_out: i32,
         len_out: i32| {
            let name = tri!(read_str(&caller, np, nl));
            let args = tri!(read(&caller, ap, al));
            match foreign_function(&name, &args) {
                Ok(Some(result)) => return_bytes(&mut caller, &result, ptr_out, len_out),
                Ok(None) => status(Status::Ok),
                Err(s) => status(s),
            }
        },
    )?;
    Ok(())
}

/// Most bytes `uncompress` produces (a plugin cannot make the host inflate a bomb).
const MAX_UNCOMPRESSED: u64 = 16 * 1024 * 1024;

/// Envoy's foreign functions that plugins use: `compress` / `uncompress` (zlib format, as
/// zlib's `compress()` / `uncompress()`; undecodable input is `SerializationFailure`) and
/// `clear_route_cache` (Weft does not re-route after plugins: `Ok`, no effect). Any other name
/// is `NotFound`, as in Envoy for an unknown function.
fn foreign_function(name: &str, args: &[u8]) -> std::result::Result<Option<Vec<u8>>, Status> {
    use std::io::{Read, Write};
    match name {
        "compress" => {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            z.write_all(args)
                .and_then(|()| z.finish())
                .map(Some)
                .map_err(|_| Status::SerializationFailure)
        }
        "uncompress" => {
            let mut out = Vec::new();
            let mut z = flate2::read::ZlibDecoder::new(args).take(MAX_UNCOMPRESSED + 1);
            z.read_to_end(&mut out)
                .map_err(|_| Status::SerializationFailure)?;
            if out.len() as u64 > MAX_UNCOMPRESSED {
                return Err(Status::SerializationFailure);
            }
            Ok(Some(out))
        }
        "clear_route_cache" => Ok(None),
        _ => Err(Status::NotFound),
    }
}

/// Defines `env.name` as a function of `params` i32 arguments that always answers `answer`.
fn define_stub(
    linker: &mut Linker<HostState>,
    name: &str,
    params: usize,
    answer: Status,
) -> Result<()> {
    let ty = wasmtime::FuncType::new(
        linker.engine(),
        std::iter::repeat_n(wasmtime::ValType::I32, params),
        [wasmtime::ValType::I32],
    );
    linker.func_new(ENV, name, ty, move |_, _, results| {
        if let Some(r) = results.first_mut() {
            *r = Val::I32(answer.raw());
        }
        Ok(())
    })?;
    Ok(())
}

fn metrics(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_define_metric",
        |mut caller: Caller<'_, HostState>, ty: i32, np: i32, nl: i32, id_out: i32| {
            let kind = tri!(MetricType::try_from(ty));
            let name = tri!(read_str(&caller, np, nl));
            if name.is_empty() {
                return status(Status::BadArgument);
            }
            let plugin = caller.data().plugin.name.clone();
            let id = shared::define_metric(&plugin, &name, kind);
            let mem = tri!(memory(&caller));
            tri!(mem.write_u32(&mut caller, id_out, id).map_err(Status::from));
            status(Status::Ok)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_increment_metric",
        |mut caller: Caller<'_, HostState>, id: i32, delta: i64| {
            let m = caller.data_mut().metric(id as u32);
            status(shared::increment(m.as_deref(), delta))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_record_metric",
        |mut caller: Caller<'_, HostState>, id: i32, value: i64| {
            let m = caller.data_mut().metric(id as u32);
            status(shared::record(m.as_deref(), value as u64))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_metric",
        |mut caller: Caller<'_, HostState>, id: i32, out: i32| {
            let m = caller.data_mut().metric(id as u32);
            let v = tri!(shared::get_metric(m.as_deref()));
            let mem = tri!(memory(&caller));
            tri!(mem.write_u64(&mut caller, out, v).map_err(Status::from));
            status(Status::Ok)
        },
    )?;
    Ok(())
}

fn wasi(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        WASI,
        "fd_write",
        |mut caller: Caller<'_, HostState>,
         fd: i32,
         iovs: i32,
         iovs_len: i32,
         written_out: i32|
         -> Result<i32> {
            if fd != 1 && fd != 2 {
                return Ok(WASI_EBADF);
            }
            let Ok(mem) = memory(&caller) else {
                return Ok(WASI_EFAULT);
            };
            if !(0..=MAX_IOVS).contains(&iovs_len) {
                return Ok(WASI_EINVAL);
            }
            let limits = &caller.data().plugin.limits;
            let mut lines = LineSplitter::new(limits.max_log_line_bytes, limits.max_fd_write_bytes);
            let mut written: u32 = 0;
            for i in 0..iovs_len {
                let Ok(iov) = mem.read(&caller, iovs.wrapping_add(i * 8), 8) else {
                    return Ok(WASI_EFAULT);
                };
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                // Read in place: at most one line (bounded) is held by the host.
                if mem
                    .with_slice(&caller, ptr, len, |bytes| lines.push(bytes))
                    .is_err()
                {
                    return Ok(WASI_EFAULT);
                }
                written = written.wrapping_add(len as u32);
            }
            let level = if fd == 1 {
                LogLevel::Info
            } else {
                LogLevel::Error
            };
            for line in lines.finish() {
                caller.data().plugin.log(level, &line);
            }
            if mem.write_u32(&mut caller, written_out, written).is_err() {
                return Ok(WASI_EFAULT);
            }
            Ok(WASI_ESUCCESS)
        },
    )?;
    linker.func_wrap(
        WASI,
        "clock_time_get",
        |mut caller: Caller<'_, HostState>, clock: i32, _precision: i64, out: i32| -> Result<i32> {
            let nanos = match clock {
                0 => caller
                    .data()
                    .plugin
                    .clock
                    .now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos() as u64,
                1..=3 => caller.data().started.elapsed().as_nanos() as u64,
                _ => return Ok(WASI_EINVAL),
            };
            let Ok(mem) = memory(&caller) else {
                return Ok(WASI_EFAULT);
            };
            Ok(if mem.write_u64(&mut caller, out, nanos).is_ok() {
                WASI_ESUCCESS
            } else {
                WASI_EFAULT
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "random_get",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i32> {
            // The length is checked before anything else; the bytes are written straight into
            // guest memory (nothing is allocated on the host), from the OS CSPRNG.
            if len as u32 as usize > caller.data().plugin.limits.max_random_bytes {
                return Ok(WASI_EINVAL);
            }
            let Ok(mem) = memory(&caller) else {
                return Ok(WASI_EFAULT);
            };
            match mem.with_slice_mut(&mut caller, ptr, len, getrandom::fill) {
                Ok(Ok(())) => Ok(WASI_ESUCCESS),
                Ok(Err(_)) => Ok(WASI_EIO),
                Err(_) => Ok(WASI_EFAULT),
            }
        },
    )?;
    linker.func_wrap(
        WASI,
        "environ_sizes_get",
        |mut caller: Caller<'_, HostState>, count_out: i32, size_out: i32| -> Result<i32> {
            let env = caller.data().plugin.env_block();
            let size: usize = env.iter().map(|e| e.len() + 1).sum();
            let Ok(mem) = memory(&caller) else {
                return Ok(WASI_EFAULT);
            };
            if mem
                .write_u32(&mut caller, count_out, env.len() as u32)
                .is_err()
                || mem.write_u32(&mut caller, size_out, size as u32).is_err()
            {
                return Ok(WASI_EFAULT);
            }
            Ok(WASI_ESUCCESS)
        },
    )?;
    linker.func_wrap(
        WASI,
        "environ_get",
        |mut caller: Caller<'_, HostState>, ptrs: i32, buf: i32| -> Result<i32> {
            let env = caller.data().plugin.env_block();
            let Ok(mem) = memory(&caller) else {
                return Ok(WASI_EFAULT);
            };
            let mut offset = buf;
            for (i, entry) in env.iter().enumerate() {
                let mut bytes = entry.as_bytes().to_vec();
                bytes.push(0);
                if mem
                    .write_u32(&mut caller, ptrs.wrapping_add(i as i32 * 4), offset as u32)
                    .is_err()
                    || mem.write(&mut caller, offset, &bytes).is_err()
                {
                    return Ok(WASI_EFAULT);
                }
                offset = offset.wrapping_add(bytes.len() as i32);
            }
            Ok(WASI_ESUCCESS)
        },
    )?;
    linker.func_wrap(
        WASI,
        "args_sizes_get",
        |mut caller: Caller<'_, HostState>, count_out: i32, size_out: i32| -> Result<i32> {
            let Ok(mem) = memory(&caller) else {
                return Ok(WASI_EFAULT);
            };
            if mem.write_u32(&mut caller, count_out, 0).is_err()
                || mem.write_u32(&mut caller, size_out, 0).is_err()
            {
                return Ok(WASI_EFAULT);
            }
            Ok(WASI_ESUCCESS)
        },
    )?;
    linker.func_wrap(
        WASI,
        "args_get",
        |_: Caller<'_, HostState>, _: i32, _: i32| -> Result<i32> { Ok(WASI_ESUCCESS) },
    )?;
    linker.func_wrap(
        WASI,
        "proc_exit",
        |_: Caller<'_, HostState>, code: i32| -> Result<()> {
            Err(wasmtime::Error::msg(format!(
                "plugin called proc_exit({code})"
            )))
        },
    )?;
    linker.func_wrap(
        WASI,
        "sched_yield",
        |_: Caller<'_, HostState>| -> Result<i32> { Ok(WASI_ESUCCESS) },
    )?;
    linker.func_wrap(
        WASI,
        "fd_prestat_get",
        |_: Caller<'_, HostState>, _: i32, _: i32| -> Result<i32> {
            // No preopened directories.
            Ok(WASI_EBADF)
        },
    )?;
    Ok(())
}

/// The WASI functions [`wasi`] implements.
const DEFINED_WASI: &[&str] = &[
    "fd_write",
    "clock_time_get",
    "random_get",
    "environ_sizes_get",
    "environ_get",
    "args_sizes_get",
    "args_get",
    "proc_exit",
    "sched_yield",
    "fd_prestat_get",
];

/// Defines every other WASI function `module` imports as returning ENOSYS (as Envoy's host
/// does), so plugins built with a full standard library still load.
pub(crate) fn stub_other_wasi_imports(
    linker: &mut Linker<HostState>,
    module: &Module,
) -> Result<()> {
    for import in module.imports() {
        if import.module() != WASI {
            continue;
        }
        if DEFINED_WASI.contains(&import.name()) {
            continue;
        }
        let Some(ty) = import.ty().func().cloned() else {
            continue;
        };
        let returns_errno = ty.results().len() == 1;
        linker.func_new(WASI, import.name(), ty, move |_, _, results| {
            if returns_errno && let Some(r) = results.first_mut() {
                *r = Val::I32(WASI_ENOSYS);
            }
            Ok(())
        })?;
    }
    Ok(())
}
