//! Foreign functions (`compress`, `uncompress`, `clear_route_cache`).

use super::*;

/// Most bytes `uncompress` produces (a plugin cannot make the host inflate a bomb).
const MAX_UNCOMPRESSED: u64 = 16 * 1024 * 1024;

/// Envoy's foreign functions that plugins use: `compress` / `uncompress` (zlib format, as
/// zlib's `compress()` / `uncompress()`; undecodable input is `SerializationFailure`) and
/// `clear_route_cache` (Weft does not re-route after plugins: `Ok`, no effect). Any other name
/// is `NotFound`, as in Envoy for an unknown function.
fn foreign_function(name: &str, args: &[u8]) -> std::result::Result<Option<Vec<u8>>, Status> {
    use std::io::{Read, Write};
    match name {
        "compress" => {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            z.write_all(args)
                .and_then(|()| z.finish())
                .map(Some)
                .map_err(|_| Status::SerializationFailure)
        }
        "uncompress" => {
            let mut out = Vec::new();
            let mut z = flate2::read::ZlibDecoder::new(args).take(MAX_UNCOMPRESSED + 1);
            z.read_to_end(&mut out)
                .map_err(|_| Status::SerializationFailure)?;
            if out.len() as u64 > MAX_UNCOMPRESSED {
                return Err(Status::SerializationFailure);
            }
            Ok(Some(out))
        }
        "clear_route_cache" => Ok(None),
        _ => Err(Status::NotFound),
    }
}

/// `proxy_call_foreign_function`.
pub(super) fn proxy_call_foreign_function(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>,
         np: i32,
         nl: i32,
         ap: i32,
         al: i32,
         ptr_out: i32,
         len_out: i32| {
            let name = tri!(read_str(&caller, np, nl));
            let args = tri!(read(&caller, ap, al));
            match foreign_function(&name, &args) {
                Ok(Some(result)) => return_bytes(&mut caller, &result, ptr_out, len_out),
                Ok(None) => status(Status::Ok),
                Err(s) => status(s),
            }
        },
    )?;
    Ok(())
}
