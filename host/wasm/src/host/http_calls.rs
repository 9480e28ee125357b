//! HTTP callouts and the status of the last one.

use super::*;

/// `proxy_http_call`.
pub(super) fn proxy_http_call(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
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
            let token = tri!(caller.data_mut().push_call(HttpCallRequest::new(
                cluster,
                headers,
                body.into(),
                trailers,
                Duration::from_millis(timeout_ms.max(0) as u64),
                false,
            )));
            return_u32s(&mut caller, &[(token_out, token)])
        },
    )?;
    Ok(())
}

/// `proxy_get_status`.
pub(super) fn proxy_get_status(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, code_out: i32, ptr_out: i32, len_out: i32| {
            let (code, msg) = caller.data().last_status.clone();
            tri!(write_u32s(&mut caller, &[(code_out, code)]));
            return_bytes(&mut caller, &msg, ptr_out, len_out)
        },
    )?;
    Ok(())
}
