//! SPIFFE IDs and Istio principal patterns (`weft_tls::spiffe`): parsing never panics; an ID
//! it accepts prints back to the same text, re-parses to the same ID, and its principal
//! matches itself as a pattern (with and without `spiffe://`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_tls::spiffe::{SpiffeId, pattern_matches};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (id_text, pattern) = text.split_once('\n').unwrap_or((text, "*"));
    let _ = pattern_matches(pattern, id_text);
    if let Ok(id) = SpiffeId::parse(id_text) {
        let shown = id.to_string();
        assert_eq!(shown, id_text);
        assert_eq!(SpiffeId::parse(&shown).ok(), Some(id.clone()));
        let principal = id.principal();
        assert!(pattern_matches(&principal, &shown));
        assert!(pattern_matches(&shown, &principal));
        let _ = (id.namespace(), id.service_account(), id.trust_domain());
    }
});
