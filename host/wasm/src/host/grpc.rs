//! gRPC callouts. Unary calls (`proxy_grpc_call`, with `proxy_grpc_cancel` / `proxy_grpc_close`
//! on their tokens) are implemented ([`crate::grpc`]); streams (`proxy_grpc_stream`,
//! `proxy_grpc_send`) are not (see [`grpc_stub`] and docs/abi.md).

use super::*;
use crate::grpc::{MAX_PENDING, Target, frame, request_headers};

/// `proxy_grpc_call`: checks the target and arguments, queues the call as a callout with
/// `grpc` set, and returns its token.
pub(super) fn proxy_grpc_call(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>,
         sp: i32,
         sl: i32,
         np: i32,
         nl: i32,
         mp: i32,
         ml: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         timeout_ms: i32,
         token_out: i32| {
            let service = tri!(read(&caller, sp, sl));
            let service_name = tri!(read_str(&caller, np, nl));
            let method = tri!(read_str(&caller, mp, ml));
            let metadata = tri!(
                HeaderList::deserialize(&tri!(read(&caller, hp, hl))).ok_or(Status::BadArgument)
            );
            let message = tri!(read(&caller, bp, bl));
            let embedder = caller.data().plugin.embedder.clone();
            // Envoy: bytes that are not a `GrpcService` name a cluster, which must exist
            // (`ParseFailure` otherwise, kept from ABI 0.1).
            let (cluster, authority) = match Target::parse(&service) {
                Target::Cluster(c) if embedder.has_cluster(&c) => (c.clone(), c),
                Target::Cluster(_) => return status(Status::ParseFailure),
                Target::Service { cluster, authority } if embedder.has_cluster(&cluster) => {
                    let authority = authority.unwrap_or_else(|| cluster.clone());
                    (cluster, authority)
                }
                Target::Service { .. } | Target::Unsupported => {
                    return status(Status::BadArgument);
                }
            };
            if service_name.is_empty()
                || method.is_empty()
                || metadata.0.iter().any(|(k, v)| {
                    k.starts_with(':') || !valid_header_name(k) || !valid_header_value(v)
                })
            {
                return status(Status::BadArgument);
            }
            let timeout_ms = timeout_ms.max(0) as u64;
            let headers = request_headers(&service_name, &method, &authority, timeout_ms, metadata);
            let state = caller.data_mut();
            let token = tri!(state.push_call(HttpCallRequest::new(
                cluster,
                headers,
                frame(&message),
                HeaderList::default(),
                Duration::from_millis(timeout_ms),
                true,
            )));
            if state.grpc_pending.len() >= MAX_PENDING {
                state.grpc_pending.pop_front();
            }
            state.grpc_pending.push_back(token);
            return_u32s(&mut caller, &[(token_out, token)])
        },
    )?;
    Ok(())
}

/// `proxy_grpc_cancel` and `proxy_grpc_close`: on a call still in flight, forget it (no
/// callback will come for it), as Envoy cancels the request; `NotFound` for any other token.
pub(super) fn proxy_grpc_cancel(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, token: i32| {
            let token = token as u32;
            let state = caller.data_mut();
            match state.grpc_pending.iter().position(|&t| t == token) {
                Some(i) => {
                    state.grpc_pending.remove(i);
                    // Not sent yet (made by this same callback): it never will be.
                    state.calls.retain(|c| !(c.grpc && c.token == token));
                    status(Status::Ok)
                }
                None => status(Status::NotFound),
            }
        },
    )?;
    Ok(())
}

/// gRPC streams are not implemented: logged once per process, at the first attempt.
static STREAMS_WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `proxy_grpc_stream` / `proxy_grpc_send`: gRPC streams are not implemented. Opening one
/// answers `InternalFailure`, which the Rust SDK returns as an error (on `Unimplemented` its
/// `open_grpc_stream` panics, and the plugin would trap); sending on one answers `NotFound`
/// (no stream has that token). The first attempt in the process logs a warning naming it.
pub(super) fn grpc_stub(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    let (params, answer) = match name {
        "proxy_grpc_stream" => (9, Status::InternalFailure),
        _ => (4, Status::NotFound),
    };
    let ty = wasmtime::FuncType::new(
        linker.engine(),
        std::iter::repeat_n(wasmtime::ValType::I32, params),
        [wasmtime::ValType::I32],
    );
    linker.func_new(module, name, ty, move |caller, _, results| {
        if !STREAMS_WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                plugin = %caller.data().plugin.name,
                "{name}: gRPC streams are not implemented (unary calls are); answered {answer:?}"
            );
        }
        if let Some(r) = results.first_mut() {
            *r = Val::I32(answer.raw());
        }
        Ok(())
    })?;
    Ok(())
}
