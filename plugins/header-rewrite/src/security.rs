//! The ready-made security response headers (`security_headers`). Pure.

use crate::rules::Headers;

/// Which set of headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Headers that do not change what a page may load: HSTS, `nosniff`, same-origin framing,
    /// a referrer policy.
    Basic,
    /// Everything in `basic`, tightened (framing denied, no referrer), plus a default
    /// Content-Security-Policy, a Permissions-Policy and a Cross-Origin-Opener-Policy.
    Strict,
}

/// The `basic` preset, in the order the headers are added.
pub const BASIC: &[(&str, &str)] = &[
    ("strict-transport-security", "max-age=31536000"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "SAMEORIGIN"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
];

/// The `strict` preset (what `security_headers: true` means), in the order the headers are
/// added.
pub const STRICT: &[(&str, &str)] = &[
    (
        "strict-transport-security",
        "max-age=63072000; includeSubDomains",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'",
    ),
    (
        "permissions-policy",
        "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    ),
    ("cross-origin-opener-policy", "same-origin"),
];

impl Preset {
    /// The preset's headers.
    pub fn headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Preset::Basic => BASIC,
            Preset::Strict => STRICT,
        }
    }
}

/// The compiled `security_headers` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityHeaders {
    /// `(lower-case name, value)` in order: the preset with its overrides.
    pub headers: Vec<(String, String)>,
    /// Replace a value the upstream already set (default `false`: the upstream's wins).
    pub override_upstream: bool,
}

impl SecurityHeaders {
    /// A preset with `overrides` applied in order (`Some`: replace or add, `None`: drop).
    pub fn new(
        preset: Preset,
        overrides: &[(String, Option<String>)],
        override_upstream: bool,
    ) -> SecurityHeaders {
        let mut headers: Vec<(String, String)> = preset
            .headers()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        for (name, value) in overrides {
            match value {
                Some(v) => match headers.iter_mut().find(|(k, _)| k == name) {
                    Some(slot) => slot.1.clone_from(v),
                    None => headers.push((name.clone(), v.clone())),
                },
                None => headers.retain(|(k, _)| k != name),
            }
        }
        SecurityHeaders {
            headers,
            override_upstream,
        }
    }

    /// Adds the headers to a response's `headers`; returns how many it set.
    pub fn apply(&self, headers: &mut Headers) -> usize {
        let mut n = 0;
        for (name, value) in &self.headers {
            let present = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
            if !present {
                headers.push((name.clone(), value.clone().into_bytes()));
                n += 1;
            } else if self.override_upstream {
                crate::rules::set(headers, name, value.clone().into_bytes());
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn strict_adds_every_header_once() {
        let s = SecurityHeaders::new(Preset::Strict, &[], false);
        let mut headers = h(&[(":status", "200")]);
        assert_eq!(s.apply(&mut headers), STRICT.len());
        assert_eq!(headers.len(), 1 + STRICT.len());
        assert_eq!(
            crate::rules::get_str(&headers, "x-frame-options").as_deref(),
            Some("DENY")
        );
        // A second pass changes nothing: the headers are there now.
        assert_eq!(s.apply(&mut headers), 0);
        assert_eq!(headers.len(), 1 + STRICT.len());
    }

    #[test]
    fn upstream_values_win_unless_overridden() {
        let upstream = h(&[(":status", "200"), ("X-Frame-Options", "SAMEORIGIN")]);
        let mut headers = upstream.clone();
        SecurityHeaders::new(Preset::Strict, &[], false).apply(&mut headers);
        assert_eq!(
            crate::rules::get_str(&headers, "x-frame-options").as_deref(),
            Some("SAMEORIGIN")
        );
        let mut headers = upstream;
        SecurityHeaders::new(Preset::Strict, &[], true).apply(&mut headers);
        assert_eq!(
            crate::rules::get_str(&headers, "x-frame-options").as_deref(),
            Some("DENY")
        );
        assert_eq!(
            headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("x-frame-options"))
                .count(),
            1
        );
    }

    #[test]
    fn overrides_replace_add_and_drop() {
        let s = SecurityHeaders::new(
            Preset::Basic,
            &[
                ("x-frame-options".into(), Some("DENY".into())),
                ("strict-transport-security".into(), None),
                ("x-extra".into(), Some("1".into())),
            ],
            false,
        );
        let names: Vec<&str> = s.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-content-type-options",
                "x-frame-options",
                "referrer-policy",
                "x-extra"
            ]
        );
        assert_eq!(s.headers[1].1, "DENY");
    }

    #[test]
    fn basic_is_a_subset_of_strict_by_name() {
        for (name, _) in BASIC {
            assert!(STRICT.iter().any(|(k, _)| k == name), "{name}");
        }
        for (name, value) in STRICT.iter().chain(BASIC) {
            assert!(crate::rules::valid_value(value), "{name}");
            assert_eq!(name.to_ascii_lowercase(), *name);
        }
    }
}
