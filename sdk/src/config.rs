//! Typed plugin configuration.
//!
//! ```
//! #[derive(serde::Deserialize, Default, Debug)]
//! #[serde(deny_unknown_fields)]
//! struct Settings { header: String, #[serde(default)] overwrite: bool }
//!
//! let err = weft_sdk::config::parse::<Settings>(br#"{"header": 5}"#).unwrap_err();
//! assert_eq!(err.field(), "header");
//! assert!(err.to_string().starts_with("plugin configuration: header: invalid type"));
//! ```

use std::fmt;

use serde::de::DeserializeOwned;

/// A configuration that could not be used, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: String,
    message: String,
}

impl ConfigError {
    /// A semantic error found after parsing (e.g. an invalid regex), at `field` (a path such
    /// as `rules[2].to.paths[0]`).
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The path of the field at fault (`.` for the whole document).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error inside a parent field: `rules[2]` + `action` → `rules[2].action`.
    pub fn within(self, parent: &str) -> ConfigError {
        let field = if self.field == "." {
            parent.to_owned()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        ConfigError { field, ..self }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "plugin configuration: {}: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Parses a JSON configuration into `T`. An empty configuration parses as `{}`, so fields with
/// defaults may be left out entirely. Errors name the field path.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let mut de = serde_json::Deserializer::from_slice(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        ConfigError {
            field,
            message: strip_position(&inner.to_string()),
        }
    })?;
    de.end().map_err(|e| ConfigError {
        field: ".".into(),
        message: strip_position(&e.to_string()),
    })?;
    Ok(value)
}

/// serde_json appends ` at line L column C`, which means nothing once the configuration has
/// been re-encoded by the proxy; the field path says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Reads the plugin configuration the host passed to `on_configure` and parses it; on failure
/// logs the error (so the operator sees the field) and returns it. Return `false` from
/// `on_configure` on `Err` so the host refuses the plugin.
pub fn from_host<T: DeserializeOwned>() -> Result<T, ConfigError> {
    let bytes = proxy_wasm::hostcalls::get_buffer(
        proxy_wasm::types::BufferType::PluginConfiguration,
        0,
        usize::MAX,
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    parse(&bytes).inspect_err(log_error)
}

/// Logs a configuration error at `error` level.
pub fn log_error(error: &ConfigError) {
    let _ = proxy_wasm::hostcalls::log(proxy_wasm::types::LogLevel::Error, &error.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        action: Action,
        #[serde(default)]
        paths: Vec<String>,
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(rename_all = "UPPERCASE")]
    enum Action {
        #[default]
        Allow,
        Deny,
    }

    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        #[serde(default)]
        rules: Vec<Rule>,
    }

    #[test]
    fn empty_configuration_uses_defaults() {
        assert_eq!(parse::<Settings>(b"").expect("empty"), Settings::default());
        assert_eq!(
            parse::<Settings>(b"  \n").expect("blank"),
            Settings::default()
        );
    }

    #[test]
    fn errors_name_the_nested_field() {
        let e = parse::<Settings>(br#"{"rules":[{"action":"ALLOW"},{"action":"ALOW"}]}"#)
            .expect_err("bad variant");
        assert_eq!(e.field(), "rules[1].action");
        assert!(e.message().contains("unknown variant `ALOW`"), "{e}");
        assert!(!e.message().contains("line"), "{e}");
        let e = parse::<Settings>(br#"{"rulez":[]}"#).expect_err("unknown field");
        assert!(e.message().contains("unknown field `rulez`"), "{e}");
        let e = parse::<Settings>(b"{").expect_err("truncated");
        assert!(e.to_string().starts_with("plugin configuration: "), "{e}");
    }

    #[test]
    fn within_prefixes_the_path() {
        assert_eq!(
            ConfigError::invalid("paths[0]", "bad")
                .within("rules[2]")
                .field(),
            "rules[2].paths[0]"
        );
        assert_eq!(
            ConfigError::invalid(".", "bad").within("rules").field(),
            "rules"
        );
        assert_eq!(
            ConfigError::invalid("[1]", "bad").within("rules").field(),
            "rules[1]"
        );
    }
}
