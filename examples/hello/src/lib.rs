//! `hello`: the smallest useful Weft filter. Copy this crate to start your own.
//!
//! - every request gets a `x-hello: <greeting>` header on its way upstream;
//! - `GET /hello` is answered by the filter itself with a JSON body;
//! - the number of greetings is a counter metric, `hello_greetings`.
//!
//! Configuration (JSON, or YAML in Weft's config): `{"greeting": "hi", "reply_path": "/hello"}`.
#![forbid(unsafe_code)]

use serde::Deserialize;
use weft_sdk::metrics::Metrics;
use weft_sdk::prelude::*;

/// The filter's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The value of `x-hello`.
    #[serde(default = "default_greeting")]
    pub greeting: String,
    /// A path the filter answers itself.
    #[serde(default = "default_reply_path")]
    pub reply_path: String,
}

fn default_greeting() -> String {
    "hello from weft".into()
}

fn default_reply_path() -> String {
    "/hello".into()
}

impl Settings {
    /// Parses and checks a configuration.
    pub fn parse(bytes: &[u8]) -> Result<Settings, ConfigError> {
        let s: Settings = weft_sdk::config::parse(bytes)?;
        if !s.reply_path.starts_with('/') {
            return Err(ConfigError::invalid("reply_path", "must start with `/`"));
        }
        if s.greeting.bytes().any(|b| b.is_ascii_control()) {
            return Err(ConfigError::invalid(
                "greeting",
                "control characters are not allowed in a header value",
            ));
        }
        Ok(s)
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(HelloRoot { settings: None }) });
}}

use weft_sdk::proxy_wasm;

struct HelloRoot {
    settings: Option<std::rc::Rc<Settings>>,
}

impl Context for HelloRoot {}

impl RootContext for HelloRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Settings::parse(&bytes) {
            Ok(s) => {
                self.settings = Some(std::rc::Rc::new(s));
                true
            }
            Err(e) => {
                weft_sdk::config::log_error(&e);
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        let settings = self.settings.clone()?;
        Some(Box::new(Hello {
            settings,
            metrics: Metrics::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Hello {
    settings: std::rc::Rc<Settings>,
    metrics: Metrics,
}

impl Context for Hello {}

impl HttpContext for Hello {
    fn on_http_request_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        self.metrics.increment("hello_greetings", 1);
        if weft_sdk::http::path_only(&path) == self.settings.reply_path {
            weft_sdk::reply::json(
                200,
                &serde_json::json!({ "greeting": self.settings.greeting }),
                &[],
            );
            return Action::Pause;
        }
        self.set_http_request_header("x-hello", Some(&self.settings.greeting));
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::Settings;

    #[test]
    fn configuration_defaults_and_errors() {
        let s = Settings::parse(b"").expect("defaults");
        assert_eq!(s.reply_path, "/hello");
        let e = Settings::parse(br#"{"reply_path": "hello"}"#).expect_err("relative path");
        assert_eq!(e.field(), "reply_path");
        let e = Settings::parse(br#"{"greting": "x"}"#).expect_err("typo");
        assert!(e.message().contains("unknown field `greting`"), "{e}");
    }
}
