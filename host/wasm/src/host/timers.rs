//! Time and timers: the clock, the tick period.

use super::*;

/// `proxy_get_current_time_nanoseconds`.
pub(super) fn proxy_get_current_time_nanoseconds(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
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
    Ok(())
}

/// `proxy_set_tick_period_milliseconds`.
pub(super) fn proxy_set_tick_period_milliseconds(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
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
    Ok(())
}
