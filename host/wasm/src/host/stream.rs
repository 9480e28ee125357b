//! Stream control and contexts: resume, close, local replies, the effective context, `proxy_done`.

use super::*;

/// `proxy_set_effective_context`.
pub(super) fn proxy_set_effective_context(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
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
    Ok(())
}

/// `proxy_done`.
pub(super) fn proxy_done(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(module, name, |mut caller: Caller<'_, HostState>| {
        let stream = tri!(caller.data_mut().stream_mut());
        stream.effects.done = true;
        status(Status::Ok)
    })?;
    Ok(())
}

/// `proxy_continue_stream`.
pub(super) fn proxy_continue_stream(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, ty: i32| {
            let ty = tri!(StreamType::try_from(ty));
            let stream = tri!(caller.data_mut().stream_mut());
            match ty {
                StreamType::HttpRequest | StreamType::Downstream => stream.resume(true),
                StreamType::HttpResponse | StreamType::Upstream => stream.resume(false),
            }
            caller.data().wake_parked();
            status(Status::Ok)
        },
    )?;
    Ok(())
}

/// `proxy_close_stream`.
pub(super) fn proxy_close_stream(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, ty: i32| {
            tri!(StreamType::try_from(ty));
            let stream = tri!(caller.data_mut().stream_mut());
            stream.effects.close = true;
            caller.data().wake_parked();
            status(Status::Ok)
        },
    )?;
    Ok(())
}

/// `proxy_continue_request`.
pub(super) fn proxy_continue_request(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(module, name, |mut caller: Caller<'_, HostState>| {
        tri!(caller.data_mut().stream_mut()).resume(true);
        caller.data().wake_parked();
        status(Status::Ok)
    })?;
    Ok(())
}

/// `proxy_continue_response`.
pub(super) fn proxy_continue_response(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(module, name, |mut caller: Caller<'_, HostState>| {
        tri!(caller.data_mut().stream_mut()).resume(false);
        caller.data().wake_parked();
        status(Status::Ok)
    })?;
    Ok(())
}

/// `proxy_clear_route_cache`.
pub(super) fn proxy_clear_route_cache(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(module, name, |_: Caller<'_, HostState>| status(Status::Ok))?;
    Ok(())
}

/// `proxy_send_local_response`.
pub(super) fn proxy_send_local_response(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
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
            stream.send_local_response(LocalResponse {
                status: code as u16,
                details,
                body: body.into(),
                headers,
                grpc_status: (grpc >= 0).then_some(grpc),
            });
            caller.data().wake_parked();
            status(Status::Ok)
        },
    )?;
    Ok(())
}
