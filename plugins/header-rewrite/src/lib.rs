//! `header-rewrite`: Weft's shipped plugin that rewrites request and response headers.
//!
//! - request and response headers: `set`, `add`, `set_if_absent`, `remove`, `rename`, with
//!   values templated from properties and headers (`%{request.path}`, `%{source.address}`,
//!   `%{request.header.user-agent|unknown}`);
//! - conditions on path (globs, regex), method and request headers, and on the response
//!   status for response operations;
//! - `:path` rewrites (prefix, template, regex; the query is kept) and `:authority` rewrites;
//! - a ready-made set of security response headers, added when the upstream did not set them.
//!
//! The schema is documented in `docs/plugins/header-rewrite.md`. Pure logic lives in
//! [`config`], [`rules`] and [`security`]; [`filter`] is the thin proxy-wasm glue.
#![forbid(unsafe_code)]

pub mod config;
pub mod filter;
pub mod rules;
pub mod security;

use weft_sdk::proxy_wasm;

proxy_wasm::main! {{
    filter::start();
}}
