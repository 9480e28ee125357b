//! Shared data (per `vm_id`, bounded).

use super::*;

/// `proxy_get_shared_data`.
pub(super) fn proxy_get_shared_data(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>,
         kp: i32,
         kl: i32,
         ptr_out: i32,
         len_out: i32,
         cas_out: i32| {
            let key = tri!(read_str(&caller, kp, kl));
            let vm = caller.data().plugin.vm_id.clone();
            let Some((value, cas)) = caller.data().plugin.shared.get(&vm, &key) else {
                return status(Status::NotFound);
            };
            tri!(write_u32s(&mut caller, &[(cas_out, cas)]));
            return_bytes(&mut caller, &value, ptr_out, len_out)
        },
    )?;
    Ok(())
}

/// `proxy_set_shared_data`.
pub(super) fn proxy_set_shared_data(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
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
            status(
                plugin
                    .shared
                    .set(&plugin.vm_id, &key, value, cas as u32, limits),
            )
        },
    )?;
    Ok(())
}
