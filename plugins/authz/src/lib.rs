//! `authz`: Istio AuthorizationPolicy-like access control for Weft (and Envoy).
//!
//! - **Policies** with `ALLOW` / `DENY` / `AUDIT` / `CUSTOM` actions over who sends the request
//!   (`from`: mTLS peer principals, namespaces, IP blocks, JWT or API-key request principals),
//!   what it asks for (`to`: hosts, methods, paths, ports) and `when` conditions (headers,
//!   claims, addresses). DENY is evaluated before ALLOW.
//! - **JWT** authentication (HS256, RS256, ES256) with inline or fetched-and-cached JWKS.
//! - **API keys**, compared in constant time.
//! - **External authorization**: the request waits while a configured cluster decides.
//!
//! Missing or invalid credentials are answered 401, denials 403, both with a JSON body and a
//! reason header. The configuration schema is in `docs/plugins/authz.md`.
//!
//! The logic lives in pure modules ([`config`], [`policy`], [`jwt`], [`authn`], [`cidr`]) that
//! are unit-tested natively; [`filter`] is the proxy-wasm glue.
#![forbid(unsafe_code)]

pub mod authn;
pub mod cidr;
pub mod config;
pub mod filter;
pub mod jwt;
pub mod policy;

use weft_sdk::proxy_wasm;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(weft_sdk::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn weft_sdk::RootContext> {
        Box::new(filter::AuthzRoot::default())
    });
}}
