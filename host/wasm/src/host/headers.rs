//! Header maps: the stream's live maps and a callout response's.

use super::*;

/// A header map a host function addresses: a live map of the stream, or a callout's
/// response (read-only).
enum MapRef<'a> {
    Live(&'a mut Headers),
    Callout(&'a HeaderList),
}
impl<'a> MapRef<'a> {
    fn get(&self, name: &str) -> Option<&[u8]> {
        match self {
            MapRef::Live(h) => h.get(name),
            MapRef::Callout(l) => l.get(name),
        }
    }

    fn serialize(&self) -> Vec<u8> {
        match self {
            MapRef::Live(h) => h.serialize(),
            MapRef::Callout(l) => l.serialize(),
        }
    }

    /// The live map, for a write (callout maps are refused before this).
    fn live(self) -> std::result::Result<&'a mut Headers, Status> {
        match self {
            MapRef::Live(h) => Ok(h),
            MapRef::Callout(_) => Err(Status::BadArgument),
        }
    }
}

/// The header map `ty`, read-only or writable.
fn map_ref(
    state: &mut HostState,
    ty: MapType,
    write: bool,
) -> std::result::Result<MapRef<'_>, Status> {
    match ty {
        MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers => {
            if write {
                return Err(Status::BadArgument);
            }
            let c = state.callout.as_ref().ok_or(Status::NotFound)?;
            Ok(MapRef::Callout(if ty == MapType::HttpCallResponseHeaders {
                &c.headers
            } else {
                &c.trailers
            }))
        }
        MapType::GrpcReceiveInitialMetadata | MapType::GrpcReceiveTrailingMetadata => {
            Err(Status::Unimplemented)
        }
        MapType::HttpRequestHeaders
        | MapType::HttpRequestTrailers
        | MapType::HttpResponseHeaders
        | MapType::HttpResponseTrailers => {
            let phase = state.phase;
            let stream = state.stream_mut()?;
            // Envoy's rules: the request maps are read-only once the response has begun (and in
            // `on_log`); the response maps do not exist before the response. A write outside
            // them is `BadArgument`, as in Envoy. A read of a response map before the response
            // is `NotFound` (Envoy: `BadArgument`, which makes Rust SDK plugins panic).
            let responding = stream.responding();
            let request_map = matches!(
                ty,
                MapType::HttpRequestHeaders | MapType::HttpRequestTrailers
            );
            if request_map {
                if write && (responding || matches!(phase, Phase::Log | Phase::Done)) {
                    return Err(Status::BadArgument);
                }
            } else if !responding {
                return Err(if write {
                    Status::BadArgument
                } else {
                    Status::NotFound
                });
            }
            stream
                .header_map_mut(ty, write)
                .map(MapRef::Live)
                .ok_or(Status::BadArgument)
        }
    }
}

/// Envoy keeps `Host` as `:authority`: on the request headers, `host` names `:authority`.
fn is_host_alias(ty: MapType, name: &[u8]) -> bool {
    ty == MapType::HttpRequestHeaders && name.eq_ignore_ascii_case(b"host")
}

/// The name a plugin gave, with the `host` alias (see [`is_host_alias`]) resolved.
fn header_key(ty: MapType, key: String) -> String {
    if is_host_alias(ty, key.as_bytes()) {
        ":authority".to_owned()
    } else {
        key
    }
}

#[derive(Clone, Copy)]
enum Op {
    Add,
    Replace,
}

/// `proxy_get_header_map_pairs`.
pub(super) fn proxy_get_header_map_pairs(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, ty: i32, ptr_out: i32, len_out: i32| {
            let ty = tri!(MapType::try_from(ty));
            let bytes = tri!(map_ref(caller.data_mut(), ty, false)).serialize();
            return_bytes(&mut caller, &bytes, ptr_out, len_out)
        },
    )?;
    Ok(())
}

/// `proxy_set_header_map_pairs`.
pub(super) fn proxy_set_header_map_pairs(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, ty: i32, ptr: i32, len: i32| {
            let ty = tri!(MapType::try_from(ty));
            let bytes = tri!(read(&caller, ptr, len));
            let list = tri!(HeaderList::deserialize(&bytes).ok_or(Status::BadArgument));
            if list
                .0
                .iter()
                .any(|(k, v)| !valid_header_name(k) || !valid_header_value(v))
            {
                return status(Status::BadArgument);
            }
            let map = tri!(tri!(map_ref(caller.data_mut(), ty, true)).live());
            tri!(map.set_list(&list).map_err(|_| Status::BadArgument));
            status(Status::Ok)
        },
    )?;
    Ok(())
}

/// `proxy_get_header_map_size`.
pub(super) fn proxy_get_header_map_size(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, ty: i32, out: i32| {
            let ty = tri!(MapType::try_from(ty));
            let size = tri!(map_ref(caller.data_mut(), ty, false))
                .serialize()
                .len();
            return_u32s(&mut caller, &[(out, size as u32)])
        },
    )?;
    Ok(())
}

/// `proxy_get_header_map_value`.
pub(super) fn proxy_get_header_map_value(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>,
         ty: i32,
         kp: i32,
         kl: i32,
         ptr_out: i32,
         len_out: i32| {
            let ty = tri!(MapType::try_from(ty));
            let key = header_key(ty, tri!(read_str(&caller, kp, kl)));
            let value = tri!(map_ref(caller.data_mut(), ty, false))
                .get(&key)
                .map(<[u8]>::to_vec);
            match value {
                Some(v) => return_bytes(&mut caller, &v, ptr_out, len_out),
                None => status(Status::NotFound),
            }
        },
    )?;
    Ok(())
}

/// `proxy_add_header_map_value` and `proxy_replace_header_map_value` (one body, two rows).
pub(super) fn add_or_replace(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    let op = if name == "proxy_add_header_map_value" {
        Op::Add
    } else {
        Op::Replace
    };

    linker.func_wrap(
        module,
        name,
        move |mut caller: Caller<'_, HostState>, ty: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
            let ty = tri!(MapType::try_from(ty));
            let mem = tri!(memory(&caller));
            // Read in place: the name and value are checked and converted straight from guest
            // memory (no intermediate copies). A name this instance wrote lately was checked
            // and parsed then: it comes from the instance's name cache.
            let parsed = mem.with_data(&caller, |data| {
                let range =
                    |p, l| crate::codec::guest_range(p, l, data.len()).map_err(Status::from);
                let raw = &data[range(kp, kl)?];
                let value = &data[range(vp, vl)?];
                // No CR, LF or NUL from a plugin ever reaches the wire.
                if !valid_header_value(value) {
                    return Err(Status::BadArgument);
                }
                let value =
                    http::HeaderValue::from_bytes(value).map_err(|_| Status::BadArgument)?;
                let host = is_host_alias(ty, raw);
                if !host && let Some(name) = caller.data().header_names.get(raw) {
                    return Ok((crate::headers::Key::Regular(name), value, false));
                }
                let key = std::str::from_utf8(raw).map_err(|_| Status::BadArgument)?;
                let key = if host { ":authority" } else { key };
                if !valid_header_name(key) {
                    return Err(Status::BadArgument);
                }
                let key = crate::headers::Key::parse(key).map_err(|_| Status::BadArgument)?;
                Ok((key, value, true))
            });
            let (key, value, parsed_now) = tri!(parsed);
            if parsed_now && let crate::headers::Key::Regular(name) = &key {
                caller.data_mut().header_names.put(name);
            }
            let map = tri!(tri!(map_ref(caller.data_mut(), ty, true)).live());
            match op {
                Op::Add => map.add_parsed(key, value),
                Op::Replace => map.replace_parsed(key, value),
            }
            status(Status::Ok)
        },
    )?;
    Ok(())
}

/// `proxy_remove_header_map_value`.
pub(super) fn proxy_remove_header_map_value(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, ty: i32, kp: i32, kl: i32| {
            let ty = tri!(MapType::try_from(ty));
            let key = header_key(ty, tri!(read_str(&caller, kp, kl)));
            tri!(tri!(map_ref(caller.data_mut(), ty, true)).live()).remove(&key);
            status(Status::Ok)
        },
    )?;
    Ok(())
}
