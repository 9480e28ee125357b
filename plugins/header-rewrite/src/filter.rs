//! The proxy-wasm glue: reads the stream's headers, runs the pure rules on them, writes them
//! back only when something changed, and counts.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use weft_sdk::metrics::{Metrics, labeled};
use weft_sdk::prelude::*;
use weft_sdk::proxy_wasm;
use weft_sdk::proxy_wasm::hostcalls;
use weft_sdk::proxy_wasm::types::{Bytes, MapType};

use crate::config::Config;
use crate::rules::{self, Headers, Report, Resolver};

/// Counter: requests on which a rule matched, labelled `rule=<name or index>`.
pub const RULES_APPLIED: &str = "header_rewrite_rules_applied_total";
/// Counter: header values (or paths, authorities) skipped because they rendered invalid.
pub const INVALID_VALUES: &str = "header_rewrite_invalid_values_total";

/// The root context: holds the compiled configuration.
pub struct Root {
    config: Option<Rc<Shared>>,
}

/// What every stream of one configuration shares.
struct Shared {
    config: Config,
    /// The counter name of each rule, built once.
    rule_metrics: Vec<String>,
    metrics: RefCell<Metrics>,
    /// Invalid values seen so far, to keep their warnings from flooding the log.
    invalid_seen: Cell<u64>,
}

/// The first this-many invalid values are logged, then one in [`LOG_EVERY`].
const LOG_FIRST: u64 = 10;
/// See [`LOG_FIRST`].
const LOG_EVERY: u64 = 1000;

impl Root {
    /// A root context waiting for its configuration.
    pub fn new() -> Root {
        Root { config: None }
    }
}

impl Default for Root {
    fn default() -> Self {
        Root::new()
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                let rule_metrics = config
                    .rules
                    .iter()
                    .map(|r| labeled(RULES_APPLIED, &[("rule", &r.label)]))
                    .collect();
                self.config = Some(Rc::new(Shared {
                    config,
                    rule_metrics,
                    metrics: RefCell::new(Metrics::new()),
                    invalid_seen: Cell::new(0),
                }));
                true
            }
            Err(e) => {
                weft_sdk::config::log_error(&e);
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.config.clone()?;
        Some(Box::new(Rewrite {
            shared,
            matched: Vec::new(),
            request_headers: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One stream.
struct Rewrite {
    shared: Rc<Shared>,
    /// Which rules matched the request, for the response phase.
    matched: Vec<bool>,
    /// The request headers as they went upstream, kept only when a response template reads one.
    request_headers: Option<Headers>,
}

impl Context for Rewrite {}

/// A header map as owned pairs; `None` when the host cannot give it.
fn read(map: MapType) -> Option<Headers> {
    let pairs: Vec<(String, Bytes)> = hostcalls::get_map_bytes(map).ok()?;
    Some(pairs)
}

/// Writes `headers` back as the whole map.
fn write(map: MapType, headers: &Headers) -> bool {
    let pairs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    hostcalls::set_map_bytes(map, pairs).is_ok()
}

fn property(name: &str) -> Option<String> {
    weft_sdk::properties::get_string(name)
}

impl Rewrite {
    fn count(&self, report: &Report) {
        let mut metrics = self.shared.metrics.borrow_mut();
        for &i in &report.applied {
            if let Some(name) = self.shared.rule_metrics.get(i) {
                metrics.increment(name, 1);
            }
        }
        if !report.invalid.is_empty() {
            metrics.increment(INVALID_VALUES, report.invalid.len() as i64);
            for (i, name) in &report.invalid {
                let seen = self.shared.invalid_seen.get();
                self.shared.invalid_seen.set(seen.saturating_add(1));
                if seen >= LOG_FIRST && !seen.is_multiple_of(LOG_EVERY) {
                    continue;
                }
                let rule = self
                    .shared
                    .config
                    .rules
                    .get(*i)
                    .map_or("?", |r| r.label.as_str());
                let _ = hostcalls::log(
                    LogLevel::Warn,
                    &format!(
                        "header-rewrite: rule {rule}: the value of {name} rendered invalid \
                         (control characters or over {} bytes); skipped ({} so far)",
                        rules::MAX_VALUE_BYTES,
                        seen + 1
                    ),
                );
            }
        }
    }
}

impl HttpContext for Rewrite {
    fn on_http_request_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
        let config = &self.shared.config;
        if config.rules.is_empty() {
            return Action::Continue;
        }
        let Some(mut headers) = read(MapType::HttpRequestHeaders) else {
            return Action::Continue;
        };
        let original = headers.clone();
        let mut report = Report::default();
        let mut prop = property;
        let mut resolver = Resolver {
            property: &mut prop,
            request_headers: None,
        };
        self.matched =
            rules::apply_request(&config.rules, &mut headers, &mut resolver, &mut report);
        if headers != original && !write(MapType::HttpRequestHeaders, &headers) {
            let _ = hostcalls::log(
                LogLevel::Warn,
                "header-rewrite: the host refused the rewritten request headers",
            );
        }
        if config.response_reads_request_headers {
            self.request_headers = Some(headers);
        }
        self.count(&report);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
        let config = &self.shared.config;
        if !config.has_response_work() {
            return Action::Continue;
        }
        let Some(mut headers) = read(MapType::HttpResponseHeaders) else {
            return Action::Continue;
        };
        let original = headers.clone();
        let mut report = Report::default();
        let mut prop = property;
        let mut resolver = Resolver {
            property: &mut prop,
            request_headers: self.request_headers.as_ref(),
        };
        rules::apply_response(
            &config.rules,
            &self.matched,
            &mut headers,
            &mut resolver,
            &mut report,
        );
        if let Some(security) = &config.security {
            security.apply(&mut headers);
        }
        if headers != original && !write(MapType::HttpResponseHeaders, &headers) {
            let _ = hostcalls::log(
                LogLevel::Warn,
                "header-rewrite: the host refused the rewritten response headers",
            );
        }
        self.count(&report);
        Action::Continue
    }
}

/// Registers the root context (called from `proxy_wasm::main!`).
pub fn start() {
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::new()) });
}
