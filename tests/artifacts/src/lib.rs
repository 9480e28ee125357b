//! Paths of the proxy-wasm guest fixtures from `tests/fixtures/wasm`, built
//! for `wasm32-wasip1` (release) by this crate's build script.
//!
//! One `pub const <UPPER_SNAKE>: &str` absolute `.wasm` path per fixture
//! (`HOSTCALLS`, `HEADER_ADDER`, `TRAP`, `BUSY_LOOP`, `MEMORY_BOMB`,
//! `BAD_POINTERS`, `NO_ABI_MARKER`, `WRONG_ABI`, `UNKNOWN_IMPORT`,
//! `CONFIGURE_FAILS`), `ALL: &[(name, path)]`, and
//! `foreach_fixture!(some_macro)`, which expands `some_macro!(name, CONST)`
//! once per fixture. See `tests/fixtures/wasm/README.md` for what each does.
//!
//! ```no_run
//! let module = weft_test_artifacts::bytes(weft_test_artifacts::HOSTCALLS);
//! ```
#![forbid(unsafe_code)]

include!(concat!(env!("OUT_DIR"), "/fixtures.rs"));

/// Reads a fixture (e.g. [`HOSTCALLS`]); panics with the path on failure.
pub fn bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading wasm fixture {path}: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_fixture_is_a_wasm_module() {
        assert!(!super::ALL.is_empty());
        for (name, path) in super::ALL {
            let bytes = super::bytes(path);
            assert!(
                bytes.starts_with(b"\0asm\x01\0\0\0"),
                "{name} ({path}) is not a wasm module"
            );
        }
    }
}
