//! Properties: attributes from the embedding, filter state.

use super::*;
use crate::context::StreamData;

/// `proxy_get_property`.
pub(super) fn proxy_get_property(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, pp: i32, pl: i32, ptr_out: i32, len_out: i32| {
            let segments = path_segments(&tri!(read(&caller, pp, pl)));
            let joined = segments.join(".");
            let state = caller.data();
            let plugin = &state.plugin;
            let value = match joined.as_str() {
                "plugin_name" => Some(plugin.name.as_bytes().to_vec()),
                "plugin_root_id" => Some(plugin.root_id.as_bytes().to_vec()),
                "plugin_vm_id" => Some(plugin.vm_id.as_bytes().to_vec()),
                _ => {
                    let stream = state.stream_ref();
                    let own = stream
                        .and_then(|s| s.filter_state.get(&joined))
                        .or_else(|| state.root_state.get(&joined))
                        .cloned();
                    // Envoy's header attributes come straight from the stream's maps.
                    let from_headers = stream.and_then(|s| {
                        let le = |n: u64| Some(n.to_le_bytes().to_vec());
                        // Envoy's `*.total_size`: header bytes (names and values) plus body.
                        let total = |list: &Headers, body: &[&str]| {
                            let headers = list.byte_size();
                            let body = s
                                .properties
                                .get(body)
                                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                                .map_or(0, u64::from_le_bytes);
                            le(headers as u64 + body)
                        };
                        let responding = !s.response_headers.is_empty();
                        match segments.as_slice() {
                            [a, b] if a == "request" && b == "headers" => {
                                return Some(s.request_headers.serialize());
                            }
                            [a, b] if a == "response" && b == "headers" && responding => {
                                return Some(s.response_headers.serialize());
                            }
                            [a, b] if a == "request" && b == "total_size" => {
                                return total(&s.request_headers, &["request", "size"]);
                            }
                            [a, b] if a == "response" && b == "total_size" => {
                                return total(&s.response_headers, &["response", "size"]);
                            }
                            _ => {}
                        }
                        let (list, name) = match segments.as_slice() {
                            [a, b, name] if a == "request" && b == "headers" => {
                                let name = if name.eq_ignore_ascii_case("host") {
                                    ":authority"
                                } else {
                                    name.as_str()
                                };
                                (&s.request_headers, name)
                            }
                            [a, b, name] if a == "response" && b == "headers" => {
                                (&s.response_headers, name.as_str())
                            }
                            _ => return None,
                        };
                        list.get(name).map(<[u8]>::to_vec)
                    });
                    // Built-in attributes first: `proxy_set_property` on one does not shadow
                    // it (Envoy keeps written values apart, in filter state).
                    from_headers
                        .or_else(|| {
                            let refs: Vec<&str> = segments.iter().map(String::as_str).collect();
                            stream
                                .and_then(|s| s.properties.get(&refs))
                                .or_else(|| plugin.properties.get(&refs))
                        })
                        .or_else(|| stream.and_then(|s| header_attribute(s, &segments)))
                        .or(own)
                }
            };
            match value {
                Some(v) => return_bytes(&mut caller, &v, ptr_out, len_out),
                None => status(Status::NotFound),
            }
        },
    )?;
    Ok(())
}

/// Envoy's request attributes that are request headers, read from the stream's live map as
/// Envoy reads them (after the embedding's own attributes, which may override them).
fn header_attribute(s: &StreamData, segments: &[String]) -> Option<Vec<u8>> {
    let name = match segments {
        [a, b] if a == "request" => match b.as_str() {
            "host" => ":authority",
            "id" => "x-request-id",
            "useragent" => "user-agent",
            "referer" => "referer",
            _ => return None,
        },
        _ => return None,
    };
    s.request_headers.get(name).map(<[u8]>::to_vec)
}

/// `proxy_set_property`.
pub(super) fn proxy_set_property(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, pp: i32, pl: i32, vp: i32, vl: i32| {
            let segments = path_segments(&tri!(read(&caller, pp, pl)));
            if segments.is_empty() {
                return status(Status::BadArgument);
            }
            let value = tri!(read(&caller, vp, vl));
            let key = segments.join(".");
            let state = caller.data_mut();
            match state.stream_mut() {
                Ok(s) => {
                    s.filter_state.insert(key, value);
                }
                Err(_) => {
                    state.root_state.insert(key, value);
                }
            }
            status(Status::Ok)
        },
    )?;
    Ok(())
}
