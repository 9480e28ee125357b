//! The host functions of proxy-wasm ABI v0.2.1 (module `env`) and the WASI subset plugins
//! need (module `wasi_snapshot_preview1`). Arguments are checked here; a bad pointer or
//! argument is a status code for the guest, and only a broken host invariant or an exhausted
//! budget traps.

use std::time::{Duration, UNIX_EPOCH};

use wasmtime::{Caller, Linker, Module, Val};

use crate::abi::{GuestMemory, HeaderList, ReturnError, valid_header_name, valid_header_value};
use crate::codec::path_segments;
use crate::context::{HostState, HttpCallRequest, LocalResponse, Phase, StreamHost, truncate_line};
use crate::headers::Headers;
use crate::shared;
use crate::types::{BufferType, LogLevel, MapType, MetricType, Status, StreamType};

type Result<T> = wasmtime::Result<T>;

const ENV: &str = "env";

const WASI: &str = "wasi_snapshot_preview1";

fn memory(caller: &Caller<'_, HostState>) -> std::result::Result<GuestMemory, Status> {
    caller.data().memory.ok_or(Status::InternalFailure)
}

fn status(s: Status) -> Result<i32> {
    Ok(s.raw())
}

/// Writes each `(pointer, value)` into guest memory; `Ok` when all were written, else the
/// status the guest gets (`InvalidMemoryAccess` for a bad pointer).
fn write_u32s(
    caller: &mut Caller<'_, HostState>,
    values: &[(i32, u32)],
) -> std::result::Result<(), Status> {
    let mem = memory(caller)?;
    for &(ptr, value) in values {
        mem.write_u32(&mut *caller, ptr, value)
            .map_err(Status::from)?;
    }
    Ok(())
}

/// [`write_u32s`], then `Ok`: the tail of every host function whose results are numbers.
fn return_u32s(caller: &mut Caller<'_, HostState>, values: &[(i32, u32)]) -> Result<i32> {
    status(match write_u32s(caller, values) {
        Ok(()) => Status::Ok,
        Err(s) => s,
    })
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

mod buffers;
mod foreign;
mod grpc;
mod headers;
mod http_calls;
mod logging;
mod metrics;
mod properties;
mod queues;
mod shared_data;
mod stream;
mod timers;
mod wasi;

pub(crate) use wasi::stub_other_wasi_imports;

/// ABI versions, as a set: the versions a host function belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Abi(u8);

impl Abi {
    /// proxy-wasm ABI 0.1.0.
    pub(crate) const V0_1_0: Abi = Abi(1);
    /// proxy-wasm ABI 0.2.0.
    pub(crate) const V0_2_0: Abi = Abi(2);
    /// proxy-wasm ABI 0.2.1.
    pub(crate) const V0_2_1: Abi = Abi(4);
    /// 0.2.0 and 0.2.1.
    pub(crate) const V0_2: Abi = Abi(2 | 4);
    /// Every version.
    pub(crate) const ALL: Abi = Abi(1 | 2 | 4);

    /// The version a module declares (`"0.2.1"`, …), `None` for one this host does not know.
    pub(crate) fn parse(version: &str) -> Option<Abi> {
        match version {
            "0.1.0" => Some(Abi::V0_1_0),
            "0.2.0" => Some(Abi::V0_2_0),
            "0.2.1" => Some(Abi::V0_2_1),
            _ => None,
        }
    }

    /// True when every version of `other` is in `self`.
    pub(crate) fn contains(self, other: Abi) -> bool {
        self.0 & other.0 == other.0
    }
}

/// One row of the host function table.
pub(crate) struct HostFn {
    /// The import module (`env` or `wasi_snapshot_preview1`).
    pub(crate) module: &'static str,
    /// The import name.
    pub(crate) name: &'static str,
    /// The ABI versions that define it.
    pub(crate) abi: Abi,
    /// Defines it in a linker under `module` / `name`.
    pub(crate) define: fn(&mut Linker<HostState>, &'static str, &'static str) -> Result<()>,
}

/// Every host function: module, name, the ABI versions that define it, and its definition.
/// `proxy_get_log_level`, `proxy_continue_stream` and `proxy_close_stream` are 0.2.0 and later;
/// the WASI rows serve every version.
pub(crate) const HOST_FUNCTIONS: &[HostFn] = &[
    HostFn {
        module: ENV,
        name: "proxy_log",
        abi: Abi::ALL,
        define: logging::proxy_log,
    },
    HostFn {
        module: ENV,
        name: "proxy_get_log_level",
        abi: Abi::V0_2,
        define: logging::proxy_get_log_level,
    },
    HostFn {
        module: ENV,
        name: "proxy_get_current_time_nanoseconds",
        abi: Abi::ALL,
        define: timers::proxy_get_current_time_nanoseconds,
    },
    HostFn {
        module: ENV,
        name: "proxy_set_tick_period_milliseconds",
        abi: Abi::ALL,
        define: timers::proxy_set_tick_period_milliseconds,
    },
    HostFn {
        module: ENV,
        name: "proxy_set_effective_context",
        abi: Abi::ALL,
        define: stream::proxy_set_effective_context,
    },
    HostFn {
        module: ENV,
        name: "proxy_done",
        abi: Abi::ALL,
        define: stream::proxy_done,
    },
    HostFn {
        module: ENV,
        name: "proxy_continue_stream",
        abi: Abi::V0_2,
        define: stream::proxy_continue_stream,
    },
    HostFn {
        module: ENV,
        name: "proxy_close_stream",
        abi: Abi::V0_2,
        define: stream::proxy_close_stream,
    },
    HostFn {
        module: ENV,
        name: "proxy_continue_request",
        abi: Abi::ALL,
        define: stream::proxy_continue_request,
    },
    HostFn {
        module: ENV,
        name: "proxy_continue_response",
        abi: Abi::ALL,
        define: stream::proxy_continue_response,
    },
    HostFn {
        module: ENV,
        name: "proxy_clear_route_cache",
        abi: Abi::ALL,
        define: stream::proxy_clear_route_cache,
    },
    HostFn {
        module: ENV,
        name: "proxy_send_local_response",
        abi: Abi::ALL,
        define: stream::proxy_send_local_response,
    },
    HostFn {
        module: ENV,
        name: "proxy_get_buffer_bytes",
        abi: Abi::ALL,
        define: buffers::proxy_get_buffer_bytes,
    },
    HostFn {
        module: ENV,
        name: "proxy_get_buffer_status",
        abi: Abi::ALL,
        define: buffers::proxy_get_buffer_status,
    },
    HostFn {
        module: ENV,
        name: "proxy_set_buffer_bytes",
        abi: Abi::ALL,
        define: buffers::proxy_set_buffer_bytes,
    },
    HostFn {
        module: ENV,
        name: "proxy_get_header_map_pairs",
        abi: Abi::ALL,
        define: headers::proxy_get_header_map_pairs,
    },
    HostFn {
        module: ENV,
        name: "proxy_set_header_map_pairs",
        abi: Abi::ALL,
        define: headers::proxy_set_header_map_pairs,
    },
    HostFn {
        module: ENV,
        name: "proxy_get_header_map_size",
        abi: Abi::ALL,
        define: headers::proxy_get_header_map_size,
    },
    HostFn {
        module: ENV,
        name: "proxy_get_header_map_value",
        abi: Abi::ALL,
        define: headers::proxy_get_header_map_value,
    },
    HostFn {
        module: ENV,
        name: "proxy_add_header_map_value",
        abi: Abi::ALL,
        define: headers::add_or_replace,
    },
    HostFn {
        module: ENV,
        name: "proxy_replace_header_map_value",
        abi: Abi::ALL,
        define: headers::add_or_replace,
    },
    HostFn {
        module: ENV,
        name: "proxy_remove_header_map_value",
        abi: Abi::ALL,
        define: headers::proxy_remove_header_map_value,
    },
    HostFn {
        module: ENV,
        name: "proxy_get_property",
        abi: Abi::ALL,
        define: properties::proxy_get_property,
    },
    HostFn {
        module: ENV,
        name: "proxy_set_property",
        abi: Abi::ALL,
        define: properties::proxy_set_property,
    },
    HostFn {
        module: ENV,
        name: "proxy_get_shared_data",
        abi: Abi::ALL,
        define: shared_data::proxy_get_shared_data,
    },
    HostFn {
        module: ENV,
        name: "proxy_set_shared_data",
        abi: Abi::ALL,
        define: shared_data::proxy_set_shared_data,
    },
    HostFn {
        module: ENV,
        name: "proxy_register_shared_queue",
        abi: Abi::ALL,
        define: queues::proxy_register_shared_queue,
    },
    HostFn {
        module: ENV,
        name: "proxy_resolve_shared_queue",
        abi: Abi::ALL,
        define: queues::proxy_resolve_shared_queue,
    },
    HostFn {
        module: ENV,
        name: "proxy_enqueue_shared_queue",
        abi: Abi::ALL,
        define: queues::proxy_enqueue_shared_queue,
    },
    HostFn {
        module: ENV,
        name: "proxy_dequeue_shared_queue",
        abi: Abi::ALL,
        define: queues::proxy_dequeue_shared_queue,
    },
    HostFn {
        module: ENV,
        name: "proxy_http_call",
        abi: Abi::ALL,
        define: http_calls::proxy_http_call,
    },
    HostFn {
        module: ENV,
        name: "proxy_get_status",
        abi: Abi::ALL,
        define: http_calls::proxy_get_status,
    },
    HostFn {
        module: ENV,
        name: "proxy_grpc_call",
        abi: Abi::ALL,
        define: grpc::proxy_grpc_call,
    },
    HostFn {
        module: ENV,
        name: "proxy_grpc_stream",
        abi: Abi::ALL,
        define: grpc::grpc_stub,
    },
    HostFn {
        module: ENV,
        name: "proxy_grpc_send",
        abi: Abi::ALL,
        define: grpc::grpc_stub,
    },
    HostFn {
        module: ENV,
        name: "proxy_grpc_cancel",
        abi: Abi::ALL,
        define: grpc::proxy_grpc_cancel,
    },
    HostFn {
        module: ENV,
        name: "proxy_grpc_close",
        abi: Abi::ALL,
        define: grpc::proxy_grpc_cancel,
    },
    HostFn {
        module: ENV,
        name: "proxy_call_foreign_function",
        abi: Abi::ALL,
        define: foreign::proxy_call_foreign_function,
    },
    HostFn {
        module: ENV,
        name: "proxy_define_metric",
        abi: Abi::ALL,
        define: metrics::proxy_define_metric,
    },
    HostFn {
        module: ENV,
        name: "proxy_increment_metric",
        abi: Abi::ALL,
        define: metrics::proxy_increment_metric,
    },
    HostFn {
        module: ENV,
        name: "proxy_record_metric",
        abi: Abi::ALL,
        define: metrics::proxy_record_metric,
    },
    HostFn {
        module: ENV,
        name: "proxy_get_metric",
        abi: Abi::ALL,
        define: metrics::proxy_get_metric,
    },
    HostFn {
        module: WASI,
        name: "fd_write",
        abi: Abi::ALL,
        define: wasi::fd_write,
    },
    HostFn {
        module: WASI,
        name: "clock_time_get",
        abi: Abi::ALL,
        define: wasi::clock_time_get,
    },
    HostFn {
        module: WASI,
        name: "random_get",
        abi: Abi::ALL,
        define: wasi::random_get,
    },
    HostFn {
        module: WASI,
        name: "environ_sizes_get",
        abi: Abi::ALL,
        define: wasi::environ_sizes_get,
    },
    HostFn {
        module: WASI,
        name: "environ_get",
        abi: Abi::ALL,
        define: wasi::environ_get,
    },
    HostFn {
        module: WASI,
        name: "args_sizes_get",
        abi: Abi::ALL,
        define: wasi::args_sizes_get,
    },
    HostFn {
        module: WASI,
        name: "args_get",
        abi: Abi::ALL,
        define: wasi::args_get,
    },
    HostFn {
        module: WASI,
        name: "proc_exit",
        abi: Abi::ALL,
        define: wasi::proc_exit,
    },
    HostFn {
        module: WASI,
        name: "sched_yield",
        abi: Abi::ALL,
        define: wasi::sched_yield,
    },
    HostFn {
        module: WASI,
        name: "fd_prestat_get",
        abi: Abi::ALL,
        define: wasi::fd_prestat_get,
    },
];

/// Defines, from [`HOST_FUNCTIONS`], every host function of ABI `version` in `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>, version: Abi) -> Result<()> {
    for f in HOST_FUNCTIONS.iter().filter(|f| f.abi.contains(version)) {
        (f.define)(linker, f.module, f.name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_each_function_once_and_every_row_links() {
        let mut names: Vec<(&str, &str)> =
            HOST_FUNCTIONS.iter().map(|f| (f.module, f.name)).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a host function is in the table twice");
        let engine = wasmtime::Engine::default();
        for v in [Abi::V0_2_0, Abi::V0_2_1] {
            let mut linker = Linker::new(&engine);
            add_to_linker(&mut linker, v).expect("every row defines");
            for f in HOST_FUNCTIONS {
                // Defining it again fails: the row's definition really used its name.
                assert!(
                    linker.func_wrap(f.module, f.name, || {}).is_err(),
                    "{} was not defined",
                    f.name
                );
            }
        }
        assert!(!Abi::V0_2.contains(Abi::V0_1_0));
        assert!(Abi::ALL.contains(Abi::V0_2_1));
        assert_eq!(Abi::parse("0.2.1"), Some(Abi::V0_2_1));
        assert_eq!(Abi::parse("9.9.9"), None);
    }
}
