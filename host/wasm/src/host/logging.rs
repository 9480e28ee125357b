//! Logging: `proxy_log`, `proxy_get_log_level`.

use super::*;

/// A log level; a value past critical is logged as critical (the line is not lost).
fn level_of(raw: i32) -> LogLevel {
    LogLevel::try_from(raw).unwrap_or(LogLevel::Critical)
}

/// `proxy_log`.
pub(super) fn proxy_log(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
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
    Ok(())
}

/// `proxy_get_log_level`.
pub(super) fn proxy_get_log_level(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, out: i32| {
            let level = caller.data().plugin.log_level as u32;
            return_u32s(&mut caller, &[(out, level)])
        },
    )?;
    Ok(())
}
