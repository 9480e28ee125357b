//! The configuration loader (`weft_config::parse`: YAML → validated `Config`), then the route
//! tables it compiles to: never panics; a refusal names the file and has at least one
//! problem, each with a field path or a line and column; a configuration it accepts compiles
//! (or is refused with a typed error) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_config::ConfigError;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match weft_config::parse(text, "fuzz.yaml") {
        Ok(config) => {
            for (i, listener) in config.listeners.iter().enumerate() {
                let _ = weft_routing::RouteTable::build(
                    &format!("listeners[{i}]"),
                    listener,
                    &config.clusters,
                );
            }
        }
        Err(ConfigError::Invalid { file, problems }) => {
            assert_eq!(file, "fuzz.yaml");
            assert!(!problems.is_empty(), "refused without a problem");
            for p in &problems {
                assert!(
                    p.location.is_some() || !p.path.is_empty(),
                    "a problem with neither a location nor a field: {p:?}"
                );
                assert!(!p.message.is_empty(), "{p:?}");
            }
            let shown = ConfigError::Invalid { file, problems }.to_string();
            assert!(shown.starts_with("fuzz.yaml: "), "{shown}");
        }
        Err(e) => panic!("parse of a text is not a read error: {e}"),
    }
});
