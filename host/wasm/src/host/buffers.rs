//! Buffers: bodies, TCP data, callout bodies, configurations.

use super::*;
use crate::body::BodyBuffer;
use bytes::Bytes;

/// The bytes of buffer `ty` visible now, or a status when it is not available.
fn buffer_ref(
    state: &mut HostState,
    ty: BufferType,
) -> std::result::Result<&mut BodyBuffer, Status> {
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
        BufferType::HttpRequestBody | BufferType::HttpResponseBody => {
            state.stream_mut()?.body_mut(ty).ok_or(Status::NotFound)
        }
        BufferType::DownstreamData => {
            if !matches!(phase, Phase::DownstreamData | Phase::NewConnection) {
                return Err(Status::NotFound);
            }
            state.stream_mut()?.body_mut(ty).ok_or(Status::NotFound)
        }
        BufferType::UpstreamData => {
            if phase != Phase::UpstreamData {
                return Err(Status::NotFound);
            }
            state.stream_mut()?.body_mut(ty).ok_or(Status::NotFound)
        }
        BufferType::GrpcReceiveBuffer => state.grpc_message.as_mut().ok_or(Status::NotFound),
    }
}

/// Configuration buffers are readable only in the callback they belong to.
fn config_buffer(state: &HostState, ty: BufferType) -> Option<std::result::Result<&[u8], Status>> {
    match ty {
        BufferType::PluginConfiguration => Some(if state.phase == Phase::Configure {
            Ok(state.plugin.configuration.as_slice())
        } else {
            Err(Status::NotFound)
        }),
        BufferType::VmConfiguration => Some(if state.phase == Phase::VmStart {
            Ok(state.plugin.vm_configuration.as_slice())
        } else {
            Err(Status::NotFound)
        }),
        BufferType::CallData => Some(Err(Status::NotFound)),
        _ => None,
    }
}

/// `proxy_get_buffer_bytes`.
pub(super) fn proxy_get_buffer_bytes(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>,
         ty: i32,
         start: i32,
         max: i32,
         ptr_out: i32,
         len_out: i32| {
            let ty = tri!(BufferType::try_from(ty));
            let start = start as u32 as usize;
            let max = max as u32 as usize;
            // Only the requested range is copied, straight into guest memory: a range inside
            // one chunk of a body is a view of it (a range spanning chunks flattens the body
            // once); a configuration's range is copied out first (the guest allocator runs
            // before the copy).
            let bytes: Bytes = match config_buffer(caller.data(), ty) {
                Some(r) => {
                    let cfg = tri!(r);
                    if start > cfg.len() {
                        return status(Status::BadArgument);
                    }
                    let end = start.saturating_add(max).min(cfg.len());
                    Bytes::copy_from_slice(&cfg[start..end])
                }
                None => tri!(
                    tri!(buffer_ref(caller.data_mut(), ty))
                        .range(start, max)
                        .ok_or(Status::BadArgument)
                ),
            };
            return_bytes(&mut caller, &bytes, ptr_out, len_out)
        },
    )?;
    Ok(())
}

/// `proxy_get_buffer_status`.
pub(super) fn proxy_get_buffer_status(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, ty: i32, len_out: i32, flags_out: i32| {
            let ty = tri!(BufferType::try_from(ty));
            let len = match config_buffer(caller.data(), ty) {
                Some(r) => tri!(r).len(),
                None => tri!(buffer_ref(caller.data_mut(), ty)).len(),
            };
            return_u32s(&mut caller, &[(len_out, len as u32), (flags_out, 0)])
        },
    )?;
    Ok(())
}

/// `proxy_set_buffer_bytes`.
pub(super) fn proxy_set_buffer_bytes(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
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
            buf.set(start, size, Bytes::from(data));
            status(Status::Ok)
        },
    )?;
    Ok(())
}
