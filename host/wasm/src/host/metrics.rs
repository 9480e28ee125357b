//! Metrics: counters, gauges, histograms, by handle.

use super::*;

/// `proxy_define_metric`.
pub(super) fn proxy_define_metric(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, ty: i32, np: i32, nl: i32, id_out: i32| {
            let kind = tri!(MetricType::try_from(ty));
            let name = tri!(read_str(&caller, np, nl));
            if name.is_empty() {
                return status(Status::BadArgument);
            }
            let plugin = caller.data().plugin.name.clone();
            let id = caller
                .data()
                .plugin
                .shared
                .define_metric(&plugin, &name, kind);
            return_u32s(&mut caller, &[(id_out, id)])
        },
    )?;
    Ok(())
}

/// `proxy_increment_metric`.
pub(super) fn proxy_increment_metric(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, id: i32, delta: i64| {
            let m = caller.data_mut().metric(id as u32);
            status(shared::increment(m.as_deref(), delta))
        },
    )?;
    Ok(())
}

/// `proxy_record_metric`.
pub(super) fn proxy_record_metric(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, id: i32, value: i64| {
            let m = caller.data_mut().metric(id as u32);
            status(shared::record(m.as_deref(), value as u64))
        },
    )?;
    Ok(())
}

/// `proxy_get_metric`.
pub(super) fn proxy_get_metric(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
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
