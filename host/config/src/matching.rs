//! Request conditions shared by routes and fault injection: path, header and query parameter
//! matches. Re-exported by [`crate::schema`].

use serde::{Deserialize, Serialize};

/// A path condition: exactly one of `exact`, `prefix`, `regex`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    /// The path equals this.
    #[serde(default)]
    pub exact: Option<String>,
    /// The path starts with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The whole path matches this regular expression.
    #[serde(default)]
    pub regex: Option<String>,
    /// Compare case-insensitively (exact and prefix).
    #[serde(default)]
    pub ignore_case: bool,
}

/// A header condition: at most one of `exact`, `regex`, `present`, `absent`
/// (none means `present: true`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// Some value equals this.
    #[serde(default)]
    pub exact: Option<String>,
    /// Some value matches this regular expression in full.
    #[serde(default)]
    pub regex: Option<String>,
    /// The header is (true) or is not (false) present.
    #[serde(default)]
    pub present: Option<bool>,
    /// The header is absent.
    #[serde(default)]
    pub absent: Option<bool>,
    /// Invert the result.
    #[serde(default)]
    pub invert: bool,
}

/// A query parameter condition: at most one of `exact`, `regex`, `present`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueryMatch {
    /// Parameter name (case-sensitive).
    pub name: String,
    /// The (percent-decoded) value equals this.
    #[serde(default)]
    pub exact: Option<String>,
    /// The value matches this regular expression in full.
    #[serde(default)]
    pub regex: Option<String>,
    /// The parameter is (true) or is not (false) present.
    #[serde(default)]
    pub present: Option<bool>,
}
