//! Shared queues (bounded).

use super::*;

/// `proxy_register_shared_queue`.
pub(super) fn proxy_register_shared_queue(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, np: i32, nl: i32, id_out: i32| {
            let name = tri!(read_str(&caller, np, nl));
            let plugin = caller.data().plugin.clone();
            let id = plugin
                .shared
                .register_queue(&plugin.vm_id, &name, plugin.queue_owner());
            return_u32s(&mut caller, &[(id_out, id)])
        },
    )?;
    Ok(())
}

/// `proxy_resolve_shared_queue`.
pub(super) fn proxy_resolve_shared_queue(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, vp: i32, vl: i32, np: i32, nl: i32, id_out: i32| {
            let vm = tri!(read_str(&caller, vp, vl));
            let name = tri!(read_str(&caller, np, nl));
            let vm = if vm.is_empty() {
                caller.data().plugin.vm_id.clone()
            } else {
                vm
            };
            let id = tri!(
                caller
                    .data()
                    .plugin
                    .shared
                    .resolve_queue(&vm, &name)
                    .ok_or(Status::NotFound)
            );
            return_u32s(&mut caller, &[(id_out, id)])
        },
    )?;
    Ok(())
}

/// `proxy_enqueue_shared_queue`.
pub(super) fn proxy_enqueue_shared_queue(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
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
            status(
                caller
                    .data()
                    .plugin
                    .shared
                    .enqueue(id as u32, value, limits),
            )
        },
    )?;
    Ok(())
}

/// `proxy_dequeue_shared_queue`.
pub(super) fn proxy_dequeue_shared_queue(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, id: i32, ptr_out: i32, len_out: i32| {
            let value = tri!(caller.data().plugin.shared.dequeue(id as u32));
            return_bytes(&mut caller, &value, ptr_out, len_out)
        },
    )?;
    Ok(())
}
