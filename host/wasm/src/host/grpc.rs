//! gRPC callouts: not implemented, every call answers `Unimplemented` (docs/abi.md).

use super::*;

/// Defines `module.name` as a function of `params` i32 arguments that always answers `answer`.
fn define_stub(
    linker: &mut Linker<HostState>,
    module: &str,
    name: &str,
    params: usize,
    answer: Status,
) -> Result<()> {
    let ty = wasmtime::FuncType::new(
        linker.engine(),
        std::iter::repeat_n(wasmtime::ValType::I32, params),
        [wasmtime::ValType::I32],
    );
    linker.func_new(module, name, ty, move |_, _, results| {
        if let Some(r) = results.first_mut() {
            *r = Val::I32(answer.raw());
        }
        Ok(())
    })?;
    Ok(())
}

/// `proxy_grpc_*`: a stub of the function's arity answering `Unimplemented`.
pub(super) fn grpc_stub(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    let params = match name {
        "proxy_grpc_call" => 12,
        "proxy_grpc_stream" => 9,
        "proxy_grpc_send" => 4,
        _ => 1,
    };
    define_stub(linker, module, name, params, Status::Unimplemented)
}
