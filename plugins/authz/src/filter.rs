//! The proxy-wasm glue: the root context (configuration, JWKS refresh on tick) and the HTTP
//! context (authenticate, evaluate, ask the external service, reply).
//!
//! Request flow: strip headers the plugin itself sets (so clients cannot forge them) →
//! JWT (fetching the JWKS first if no instance has it yet) → API key → policies (DENY, then
//! ALLOW; AUDIT reported) → external authorization (when configured and selected by a CUSTOM
//! policy, or always when there is none) → the request goes on, with the token stripped and
//! claims copied to headers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use serde_json::json;
use weft_sdk::metrics::{Metrics, labeled};
use weft_sdk::prelude::*;
use weft_sdk::proxy_wasm;

use crate::authn::{self, ApiKeyCheck, Location};
use crate::cidr::parse_socket_ip;
use crate::config::{Compiled, ExtAuthz, RemoteJwks};
use crate::jwt::{Jwks, JwtError};
use crate::policy::{RequestAttrs, Verdict, normalize_path};

/// The largest JWKS document accepted from a cluster.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// The largest external-authorization body forwarded to a client.
const MAX_EXT_BODY_BYTES: usize = 64 * 1024;
/// The most headers of an external-authorization answer looked at.
const MAX_HEADERS: usize = 256;
/// How often the root context checks whether a JWKS needs fetching.
const TICK: Duration = Duration::from_secs(1);
/// The longest wait between failed JWKS fetches, in seconds.
const MAX_BACKOFF_SECS: u64 = 60;
/// Header added upstream when a request passes because the authorization service failed.
const FAILURE_MODE_HEADER: &str = "x-weft-authz-failure-mode-allowed";

/// What the root context and the HTTP contexts of one instance share.
pub struct Shared {
    config: Compiled,
    metrics: RefCell<Metrics>,
    /// Parsed remote JWKS by shared-data key: (CAS of the value parsed, keys).
    jwks: RefCell<HashMap<String, (u32, Rc<Jwks>)>>,
    /// Recently verified tokens.
    verified: RefCell<authn::VerifiedCache>,
}

impl Shared {
    fn count(&self, name: &str) {
        self.metrics.borrow_mut().increment(name, 1);
    }
}

/// Host calls that cannot trap: the `proxy_wasm` trait methods unwrap the host's status, and a
/// status the plugin did not expect (a header value the host refuses, a property it cannot
/// serialize) must not kill the instance in the middle of a request.
mod host {
    use proxy_wasm::hostcalls;
    use proxy_wasm::types::{BufferType, Bytes, MapType};
    use std::time::UNIX_EPOCH;
    use weft_sdk::proxy_wasm;

    pub fn now_secs() -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    }

    pub fn shared_get(key: &str) -> (Option<Bytes>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    pub fn property(path: Vec<&str>) -> Option<Bytes> {
        hostcalls::get_property(path).ok().flatten()
    }

    pub fn request_headers() -> Vec<(String, Bytes)> {
        hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default()
    }

    pub fn set_request_header(name: &str, value: Option<&str>) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
    }

    pub fn send(status: u32, headers: Vec<(&str, &str)>, body: &[u8]) {
        let _ = hostcalls::send_http_response(status, headers, Some(body));
    }

    pub fn resume() {
        let _ = hostcalls::resume_http_request();
    }

    // The SDK panics on a status it does not expect, and hosts differ on what reading the
    // headers of a failed callout returns: read them only when there are some.
    pub fn call_headers(count: usize) -> Vec<(String, Bytes)> {
        if count == 0 {
            return Vec::new();
        }
        hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default()
    }

    pub fn call_status(count: usize) -> Option<String> {
        if count == 0 {
            return None;
        }
        hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    pub fn call_body(size: usize) -> Option<Bytes> {
        if size == 0 {
            return None;
        }
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
            .ok()
            .flatten()
    }
}

/// A JWKS as cached in shared data: `<fetched at, seconds>\n<document>`.
fn encode_cached(fetched_at: u64, body: &[u8]) -> Vec<u8> {
    let mut v = fetched_at.to_string().into_bytes();
    v.push(b'\n');
    v.extend_from_slice(body);
    v
}

fn decode_cached(value: &[u8]) -> Option<(u64, &[u8])> {
    let nl = value.iter().position(|b| *b == b'\n')?;
    let ts = std::str::from_utf8(&value[..nl]).ok()?.parse().ok()?;
    Some((ts, &value[nl + 1..]))
}

/// The keys cached for `remote`, parsed once per shared-data version.
fn cached_keys(shared: &Shared, remote: &RemoteJwks) -> Option<Rc<Jwks>> {
    let key = remote.cache_key();
    let (value, cas) = host::shared_get(&key);
    let (value, cas) = (value?, cas.unwrap_or(0));
    if let Some((seen, keys)) = shared.jwks.borrow().get(&key)
        && *seen == cas
    {
        return Some(keys.clone());
    }
    let (_, body) = decode_cached(&value)?;
    let keys = Rc::new(Jwks::parse(body).ok()?);
    shared.jwks.borrow_mut().insert(key, (cas, keys.clone()));
    Some(keys)
}

/// Stores a fetched JWKS when it parses; returns the parsed keys or why not.
fn store_jwks(
    shared: &Shared,
    remote: &RemoteJwks,
    status: Option<&str>,
    body: &[u8],
) -> Result<Rc<Jwks>, String> {
    if status != Some("200") {
        return Err(format!("status {}", status.unwrap_or("none (no response)")));
    }
    let keys = Rc::new(Jwks::parse(body)?);
    let value = encode_cached(host::now_secs(), body);
    if let Err(e) = proxy_wasm::hostcalls::set_shared_data(&remote.cache_key(), Some(&value), None)
    {
        return Err(format!("cannot store it in shared data: {e:?}"));
    }
    let (_, cas) = host::shared_get(&remote.cache_key());
    shared
        .jwks
        .borrow_mut()
        .insert(remote.cache_key(), (cas.unwrap_or(0), keys.clone()));
    Ok(keys)
}

fn jwks_request_headers(remote: &RemoteJwks) -> Vec<(&str, &str)> {
    vec![
        (":method", "GET"),
        (":path", remote.path.as_str()),
        (":authority", remote.authority.as_str()),
        ("accept", "application/json"),
        ("user-agent", "weft-authz"),
    ]
}

// === root context ===

/// Fetch state of one remote JWKS (by location).
#[derive(Debug)]
struct Remote {
    remote: RemoteJwks,
    in_flight: Option<u32>,
    in_flight_since: u64,
    failures: u32,
    next_attempt: u64,
}

/// The root context.
#[derive(Default)]
pub struct AuthzRoot {
    shared: Option<Rc<Shared>>,
    remotes: Vec<Remote>,
}

impl Context for AuthzRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Some(i) = self.remotes.iter().position(|r| r.in_flight == Some(token)) else {
            return;
        };
        let now = host::now_secs();
        let status = host::call_status(num_headers);
        let body = if body_size > MAX_JWKS_BYTES {
            None
        } else {
            host::call_body(body_size)
        };
        let remote = self.remotes[i].remote.clone();
        let result = match body {
            None if body_size > MAX_JWKS_BYTES => {
                Err(format!("larger than {MAX_JWKS_BYTES} bytes"))
            }
            body => store_jwks(
                &shared,
                &remote,
                status.as_deref(),
                &body.unwrap_or_default(),
            ),
        };
        let r = &mut self.remotes[i];
        r.in_flight = None;
        match result {
            Ok(keys) => {
                r.failures = 0;
                r.next_attempt = 0;
                shared.count(&labeled(
                    "authz_jwks_fetch_total",
                    &[("cluster", &r.remote.cluster), ("result", "success")],
                ));
                proxy_wasm::hostcalls::log(
                    LogLevel::Debug,
                    &format!(
                        "authz: fetched {} keys from {}{}",
                        keys.keys.len(),
                        r.remote.authority,
                        r.remote.path
                    ),
                )
                .ok();
            }
            Err(why) => {
                r.failures = r.failures.saturating_add(1);
                r.next_attempt = now + backoff(r.failures);
                shared.count(&labeled(
                    "authz_jwks_fetch_total",
                    &[("cluster", &r.remote.cluster), ("result", "error")],
                ));
                proxy_wasm::hostcalls::log(
                    LogLevel::Warn,
                    &format!(
                        "authz: JWKS fetch from cluster {} ({}{}) failed: {why}; keeping the cached keys if any",
                        r.remote.cluster, r.remote.authority, r.remote.path
                    ),
                )
                .ok();
            }
        }
    }
}

fn backoff(failures: u32) -> u64 {
    1u64.checked_shl(failures.min(16))
        .unwrap_or(MAX_BACKOFF_SECS)
        .min(MAX_BACKOFF_SECS)
}

impl RootContext for AuthzRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Compiled::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                weft_sdk::config::log_error(&e);
                return false;
            }
        };
        let mut remotes: Vec<Remote> = Vec::new();
        for p in &config.providers {
            if let Some(r) = &p.remote
                && !remotes
                    .iter()
                    .any(|x| x.remote.cache_key() == r.cache_key())
            {
                remotes.push(Remote {
                    remote: r.clone(),
                    in_flight: None,
                    in_flight_since: 0,
                    failures: 0,
                    next_attempt: 0,
                });
            }
        }
        if !remotes.is_empty() {
            let _ = proxy_wasm::hostcalls::set_tick_period(TICK);
        }
        self.remotes = remotes;
        self.shared = Some(Rc::new(Shared {
            config,
            metrics: RefCell::new(Metrics::new()),
            jwks: RefCell::new(HashMap::new()),
            verified: RefCell::new(authn::VerifiedCache::default()),
        }));
        true
    }

    fn on_tick(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let now = host::now_secs();
        for i in 0..self.remotes.len() {
            let r = &self.remotes[i];
            if r.in_flight.is_some() && now < r.in_flight_since + r.remote.timeout_ms / 1000 + 5 {
                continue;
            }
            if now < r.next_attempt {
                continue;
            }
            let (value, _) = host::shared_get(&r.remote.cache_key());
            let fresh = value
                .as_deref()
                .and_then(decode_cached)
                .is_some_and(|(at, _)| now < at.saturating_add(r.remote.cache_duration));
            if fresh {
                continue;
            }
            let remote = r.remote.clone();
            let call = self.dispatch_http_call(
                &remote.cluster,
                jwks_request_headers(&remote),
                None,
                vec![],
                Duration::from_millis(remote.timeout_ms),
            );
            let r = &mut self.remotes[i];
            match call {
                Ok(token) => {
                    r.in_flight = Some(token);
                    r.in_flight_since = now;
                }
                Err(e) => {
                    r.failures = r.failures.saturating_add(1);
                    r.next_attempt = now + backoff(r.failures);
                    shared.count(&labeled(
                        "authz_jwks_fetch_total",
                        &[("cluster", &remote.cluster), ("result", "error")],
                    ));
                    proxy_wasm::hostcalls::log(
                        LogLevel::Warn,
                        &format!(
                            "authz: cannot call cluster {} for the JWKS: {e:?}",
                            remote.cluster
                        ),
                    )
                    .ok();
                }
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(AuthzFilter {
            shared,
            attrs: RequestAttrs::default(),
            headers: Vec::new(),
            raw_path: String::new(),
            pending: Pending::None,
            token: None,
            strip: Vec::new(),
            claim_headers: Vec::new(),
            presented: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

// === HTTP context ===

/// What the request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    /// The JWKS of provider `.0`, for the token being checked.
    Jwks(usize, u32),
    /// The external authorization service.
    ExtAuthz(u32),
}

/// What a step of the flow ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The request goes on.
    Continue,
    /// A callout is in flight.
    Wait,
    /// A local reply was sent.
    Replied,
}

/// The HTTP context of one request.
pub struct AuthzFilter {
    shared: Rc<Shared>,
    attrs: RequestAttrs,
    headers: Vec<(String, String)>,
    raw_path: String,
    pending: Pending,
    /// The JWT being checked: (provider, token).
    token: Option<(usize, String)>,
    /// Credentials to remove before the request goes upstream.
    strip: Vec<Location>,
    /// Headers to set upstream on success.
    claim_headers: Vec<(String, String)>,
    /// Whether the request carried a valid credential.
    presented: bool,
}

impl Context for AuthzFilter {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let step = match self.pending {
            Pending::Jwks(provider, t) if t == token => {
                self.pending = Pending::None;
                self.on_jwks(provider, num_headers, body_size)
            }
            Pending::ExtAuthz(t) if t == token => {
                self.pending = Pending::None;
                self.on_ext_authz(num_headers, body_size)
            }
            _ => return,
        };
        if step == Step::Continue {
            host::resume();
        }
    }
}

impl HttpContext for AuthzFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.start() {
            Step::Continue => Action::Continue,
            Step::Wait | Step::Replied => Action::Pause,
        }
    }
}

impl AuthzFilter {
    fn config(&self) -> &Compiled {
        &self.shared.config
    }

    fn property(&self, name: &str) -> Option<String> {
        let bytes = host::property(name.split('.').collect())?;
        (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
    }

    fn start(&mut self) -> Step {
        // Headers this plugin sets must not come from the client.
        let shared = self.shared.clone();
        for p in &shared.config.providers {
            for (h, _) in &p.claim_headers {
                host::set_request_header(h, None);
            }
        }
        host::set_request_header(FAILURE_MODE_HEADER, None);
        if let Some(ext) = &shared.config.ext_authz {
            for h in &ext.headers_to_upstream {
                host::set_request_header(h, None);
            }
        }

        // Not truncated: a DENY condition on a header must not be evaded by pushing the header
        // past a limit (the proxy bounds the header count and size).
        self.headers = host::request_headers()
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_ascii_lowercase(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        let header = |name: &str| {
            weft_sdk::http::header(&self.headers, name)
                .unwrap_or_default()
                .to_owned()
        };
        self.raw_path = header(":path");
        let peer = self
            .property("source.principal")
            .or_else(|| self.property("connection.uri_san_peer_certificate"))
            .map(|p| p.strip_prefix("spiffe://").map(str::to_owned).unwrap_or(p));
        self.attrs = RequestAttrs {
            method: header(":method"),
            host: header(":authority").to_ascii_lowercase(),
            path: normalize_path(&self.raw_path),
            destination_port: host::property(vec!["destination", "port"])
                .and_then(|b| weft_sdk::properties::decode_u64(&b))
                .and_then(|p| u16::try_from(p).ok()),
            destination_ip: self
                .property("destination.address")
                .and_then(|a| parse_socket_ip(&a)),
            source_ip: self
                .property("source.address")
                .and_then(|a| parse_socket_ip(&a)),
            peer_principal: peer,
            sni: self.property("connection.requested_server_name"),
            headers: self
                .headers
                .iter()
                .filter(|(k, _)| !k.starts_with(':'))
                .cloned()
                .collect(),
            request_principal: None,
            claims: None,
            api_key: None,
        };
        self.authenticate_jwt()
    }

    /// Step 1: the JWT, if any.
    fn authenticate_jwt(&mut self) -> Step {
        let shared = self.shared.clone();
        let providers = &shared.config.providers;
        let Some(found) = authn::find_jwt(providers, &self.headers, &self.raw_path) else {
            return self.authenticate_api_key();
        };
        let Some(i) = found.provider else {
            let e = authn::unclaimed_token_error(&found.token);
            return self.reject_jwt(e);
        };
        self.strip_later(!providers[i].forward, found.location);
        self.token = Some((i, found.token));
        match self.keys_for(i) {
            Some(keys) => self.verify_token(&keys),
            None => self.fetch_jwks(i),
        }
    }

    fn strip_later(&mut self, strip: bool, location: Location) {
        if strip {
            self.strip.push(location);
        }
    }

    /// The keys of provider `i`: inline ones, plus the cached remote JWKS.
    fn keys_for(&self, i: usize) -> Option<Rc<Jwks>> {
        let p = &self.config().providers[i];
        let remote = p.remote.as_ref().and_then(|r| cached_keys(&self.shared, r));
        match (&p.inline, remote) {
            (Some(inline), None) => Some(inline.clone()),
            (None, Some(remote)) => Some(remote),
            (Some(inline), Some(remote)) => {
                let mut keys = inline.keys.clone();
                keys.extend(remote.keys.iter().cloned());
                Some(Rc::new(Jwks { keys }))
            }
            (None, None) => None,
        }
    }

    /// No instance has the JWKS yet: fetch it for this request.
    fn fetch_jwks(&mut self, provider: usize) -> Step {
        let shared = self.shared.clone();
        let Some(remote) = &shared.config.providers[provider].remote else {
            return self.reject(
                401,
                "jwks_unavailable",
                "the token's signing keys are not available",
            );
        };
        match self.dispatch_http_call(
            &remote.cluster,
            jwks_request_headers(remote),
            None,
            vec![],
            Duration::from_millis(remote.timeout_ms),
        ) {
            Ok(token) => {
                self.pending = Pending::Jwks(provider, token);
                Step::Wait
            }
            Err(e) => {
                shared.count(&labeled(
                    "authz_jwks_fetch_total",
                    &[("cluster", &remote.cluster), ("result", "error")],
                ));
                self.log(
                    LogLevel::Warn,
                    &format!("cannot call cluster {} for the JWKS: {e:?}", remote.cluster),
                );
                self.reject(
                    401,
                    "jwks_unavailable",
                    "the token's signing keys are not available",
                )
            }
        }
    }

    fn on_jwks(&mut self, provider: usize, num_headers: usize, body_size: usize) -> Step {
        let shared = self.shared.clone();
        let Some(remote) = &shared.config.providers[provider].remote else {
            return self.reject(
                401,
                "jwks_unavailable",
                "the token's signing keys are not available",
            );
        };
        let status = host::call_status(num_headers);
        let result = if body_size > MAX_JWKS_BYTES {
            Err(format!("larger than {MAX_JWKS_BYTES} bytes"))
        } else {
            let body = host::call_body(body_size).unwrap_or_default();
            store_jwks(&shared, remote, status.as_deref(), &body)
        };
        let result_label = if result.is_ok() { "success" } else { "error" };
        shared.count(&labeled(
            "authz_jwks_fetch_total",
            &[("cluster", &remote.cluster), ("result", result_label)],
        ));
        match result {
            Ok(_) => match self.keys_for(provider) {
                Some(keys) => self.verify_token(&keys),
                None => self.reject(
                    401,
                    "jwks_unavailable",
                    "the token's signing keys are not available",
                ),
            },
            Err(why) => {
                self.log(
                    LogLevel::Warn,
                    &format!("JWKS fetch from cluster {} failed: {why}", remote.cluster),
                );
                self.reject(
                    401,
                    "jwks_unavailable",
                    "the token's signing keys are not available",
                )
            }
        }
    }

    fn verify_token(&mut self, keys: &Rc<Jwks>) -> Step {
        let Some((i, token)) = self.token.take() else {
            return self.authenticate_api_key();
        };
        let shared = self.shared.clone();
        let provider = &shared.config.providers[i];
        let now = host::now_secs();
        let cached = shared.verified.borrow().get(&token, i, keys, now);
        let result = match cached {
            Some(v) => Ok(v),
            None => authn::verify_jwt(provider, keys, &token, now).inspect(|v| {
                shared.verified.borrow_mut().insert(
                    &token,
                    i,
                    keys.clone(),
                    v.clone(),
                    now,
                    provider.clock_skew,
                );
            }),
        };
        match result {
            Ok(v) => {
                for (header, path) in &provider.claim_headers {
                    if let Some(value) = authn::claim_header_value(&v.claims, path) {
                        self.claim_headers.push((header.clone(), value));
                    }
                }
                self.attrs.request_principal = v.principal;
                self.attrs.claims = Some(v.claims);
                self.presented = true;
                self.authenticate_api_key()
            }
            Err(e) => self.reject_jwt(e),
        }
    }

    /// Step 2: the API key, if configured.
    fn authenticate_api_key(&mut self) -> Step {
        let shared = self.shared.clone();
        if let Some(cfg) = &shared.config.api_keys {
            match authn::check_api_key(cfg, &self.headers, &self.raw_path) {
                ApiKeyCheck::Valid(name, location) => {
                    self.strip_later(!cfg.forward, location);
                    if self.attrs.request_principal.is_none() {
                        self.attrs.request_principal = Some(format!("api-key/{name}"));
                    }
                    self.attrs.api_key = Some(name);
                    self.presented = true;
                }
                ApiKeyCheck::Invalid(_) => {
                    return self.reject(401, "api_key_invalid", "the API key is not valid");
                }
                ApiKeyCheck::Missing if cfg.required && !self.presented => {
                    return self.reject(401, "no_credentials", "credentials are required");
                }
                ApiKeyCheck::Missing => {}
            }
        }
        self.authorize()
    }

    /// Step 3: the policies, then the external service.
    fn authorize(&mut self) -> Step {
        let shared = self.shared.clone();
        let set = &shared.config.policies;
        let eval = set.evaluate(&self.attrs);
        for i in &eval.audited {
            let name = &set.policies[*i].name;
            shared.count(&labeled("authz_decisions_total", &[("decision", "audit")]));
            shared.count(&labeled(
                "authz_policy_matches_total",
                &[("policy", name), ("action", "AUDIT")],
            ));
            self.log(
                LogLevel::Info,
                &format!(
                    "audit: policy {name} matched {} {} (principal {})",
                    self.attrs.method,
                    self.attrs.path,
                    self.attrs.request_principal.as_deref().unwrap_or("-")
                ),
            );
        }
        if eval.verdict != Verdict::Allow {
            if !self.presented && set.denial_needs_credentials(&eval.verdict) {
                return self.reject(401, "no_credentials", "credentials are required");
            }
            return match eval.verdict {
                Verdict::DeniedBy(i) => {
                    let name = &set.policies[i].name;
                    shared.count(&labeled(
                        "authz_policy_matches_total",
                        &[("policy", name), ("action", "DENY")],
                    ));
                    let reason = format!("denied_by_policy:{name}");
                    self.reject(403, &reason, "denied by policy")
                }
                _ => self.reject(403, "no_allow_match", "no policy allows this request"),
            };
        }
        match &shared.config.ext_authz {
            Some(ext) if eval.custom => self.call_ext_authz(ext),
            _ => self.allow(),
        }
    }

    fn call_ext_authz(&mut self, ext: &ExtAuthz) -> Step {
        let path = format!("{}{}", ext.path_prefix, self.raw_path);
        let original_host = weft_sdk::http::header(&self.headers, ":authority").unwrap_or_default();
        let authority = ext
            .authority
            .as_deref()
            .unwrap_or(if original_host.is_empty() {
                ext.cluster.as_str()
            } else {
                original_host
            });
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", self.attrs.method.as_str()),
            (":path", path.as_str()),
            (":authority", authority),
        ];
        for (k, v) in &self.headers {
            if !k.starts_with(':')
                && k != "content-length"
                && k != "transfer-encoding"
                && ext
                    .allowed_request_headers
                    .iter()
                    .any(|p| weft_sdk::http::glob_match(p, k))
                && !v.contains('\u{fffd}')
            {
                headers.push((k.as_str(), v.as_str()));
            }
        }
        match self.dispatch_http_call(
            &ext.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(ext.timeout_ms),
        ) {
            Ok(token) => {
                self.pending = Pending::ExtAuthz(token);
                Step::Wait
            }
            Err(e) => {
                self.log(
                    LogLevel::Warn,
                    &format!(
                        "cannot call the authorization cluster {}: {e:?}",
                        ext.cluster
                    ),
                );
                self.ext_authz_failed()
            }
        }
    }

    fn on_ext_authz(&mut self, num_headers: usize, body_size: usize) -> Step {
        let shared = self.shared.clone();
        let Some(ext) = &shared.config.ext_authz else {
            return self.allow();
        };
        let headers: Vec<(String, String)> = host::call_headers(num_headers)
            .into_iter()
            .take(MAX_HEADERS)
            .filter_map(|(k, v)| Some((k.to_ascii_lowercase(), String::from_utf8(v).ok()?)))
            .collect();
        let status =
            weft_sdk::http::header(&headers, ":status").and_then(|s| s.parse::<u32>().ok());
        match status {
            Some(200) => {
                shared.count(&labeled("authz_ext_authz_total", &[("result", "allow")]));
                for name in &ext.headers_to_upstream {
                    if let Some(v) = weft_sdk::http::header(&headers, name) {
                        host::set_request_header(name, Some(v));
                    }
                }
                self.allow()
            }
            Some(s @ 200..=499) => {
                shared.count(&labeled("authz_ext_authz_total", &[("result", "deny")]));
                let reason_header = shared.config.reason_header.as_str();
                let mut out: Vec<(&str, &str)> = headers
                    .iter()
                    .filter(|(k, _)| {
                        !is_hop_by_hop(k)
                            && ext
                                .headers_to_client
                                .as_ref()
                                .is_none_or(|list| list.iter().any(|n| n == k))
                    })
                    .filter(|(k, _)| k != reason_header)
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                out.push((reason_header, "ext_authz_denied"));
                let body = if body_size > 0 && body_size <= MAX_EXT_BODY_BYTES {
                    host::call_body(body_size)
                } else {
                    None
                };
                let decision = if s == 401 { "unauthenticated" } else { "deny" };
                shared.count(&labeled("authz_decisions_total", &[("decision", decision)]));
                shared.count(&labeled(
                    "authz_denials_total",
                    &[("reason", "ext_authz_denied")],
                ));
                match body {
                    Some(body) => host::send(s, out, &body),
                    None => {
                        if !out.iter().any(|(k, _)| *k == "content-type") {
                            out.push(("content-type", "application/json"));
                        }
                        let code = if s == 401 {
                            "unauthenticated"
                        } else {
                            "forbidden"
                        };
                        let body = error_body(
                            code,
                            "the authorization service denied the request",
                            "ext_authz_denied",
                        );
                        host::send(s, out, body.as_bytes());
                    }
                }
                Step::Replied
            }
            other => {
                self.log(
                    LogLevel::Warn,
                    &format!(
                        "authorization cluster {} failed: {}",
                        ext.cluster,
                        other.map_or(
                            "no response (connect error or timeout)".to_owned(),
                            |s| format!("status {s}")
                        )
                    ),
                );
                self.ext_authz_failed()
            }
        }
    }

    fn ext_authz_failed(&mut self) -> Step {
        let shared = self.shared.clone();
        let Some(ext) = &shared.config.ext_authz else {
            return self.allow();
        };
        if ext.failure_mode_allow {
            shared.count(&labeled(
                "authz_ext_authz_total",
                &[("result", "error_allowed")],
            ));
            host::set_request_header(FAILURE_MODE_HEADER, Some("true"));
            self.allow()
        } else {
            shared.count(&labeled("authz_ext_authz_total", &[("result", "error")]));
            self.reject(
                ext.status_on_error,
                "ext_authz_unavailable",
                "the authorization service is unavailable",
            )
        }
    }

    /// The request goes on: credentials stripped, claim headers set.
    fn allow(&mut self) -> Step {
        for location in std::mem::take(&mut self.strip) {
            match location {
                Location::Header(h) => host::set_request_header(&h, None),
                Location::Param(q) => {
                    let path = authn::remove_query_param(&self.raw_path, &q);
                    host::set_request_header(":path", Some(&path));
                    self.raw_path = path;
                }
            }
        }
        for (h, v) in std::mem::take(&mut self.claim_headers) {
            host::set_request_header(&h, Some(&v));
        }
        self.shared
            .count(&labeled("authz_decisions_total", &[("decision", "allow")]));
        Step::Continue
    }

    fn reject_jwt(&mut self, e: JwtError) -> Step {
        self.reject(401, e.code(), e.message())
    }

    /// A local reply: 401 `unauthenticated`, 403 `forbidden`, or the configured error status.
    fn reject(&mut self, status: u32, reason: &str, message: &str) -> Step {
        let shared = self.shared.clone();
        let (code, decision) = match status {
            401 => ("unauthenticated", "unauthenticated"),
            403 => ("forbidden", "deny"),
            _ => ("unavailable", "deny"),
        };
        shared.count(&labeled("authz_decisions_total", &[("decision", decision)]));
        let metric_reason = reason.split(':').next().unwrap_or(reason);
        shared.count(&labeled(
            "authz_denials_total",
            &[("reason", metric_reason)],
        ));
        self.log(
            LogLevel::Debug,
            &format!(
                "{status} {reason}: {} {} (principal {})",
                self.attrs.method,
                self.attrs.path,
                self.attrs.request_principal.as_deref().unwrap_or("-")
            ),
        );
        let body = error_body(code, message, reason);
        let reason_header = shared.config.reason_header.as_str();
        let mut headers: Vec<(&str, &str)> = vec![
            ("content-type", "application/json"),
            (reason_header, reason),
        ];
        let challenge;
        if status == 401 && !shared.config.providers.is_empty() {
            challenge = if reason.starts_with("jwt_") {
                format!(
                    "Bearer realm=\"weft\", error=\"invalid_token\", error_description=\"{message}\""
                )
            } else {
                "Bearer realm=\"weft\"".to_owned()
            };
            headers.push(("www-authenticate", challenge.as_str()));
        }
        host::send(status, headers, body.as_bytes());
        Step::Replied
    }

    fn log(&self, level: LogLevel, message: &str) {
        proxy_wasm::hostcalls::log(level, &format!("authz: {message}")).ok();
    }
}

fn error_body(code: &str, message: &str, reason: &str) -> String {
    json!({"error": code, "message": message, "reason": reason}).to_string()
}

fn is_hop_by_hop(name: &str) -> bool {
    name.starts_with(':')
        || matches!(
            name,
            "connection"
                | "keep-alive"
                | "transfer-encoding"
                | "te"
                | "trailer"
                | "upgrade"
                | "proxy-authenticate"
                | "proxy-authorization"
                | "content-length"
                | "host"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_values_round_trip() {
        let v = encode_cached(1234, b"{\"keys\":[]}\n");
        assert_eq!(decode_cached(&v), Some((1234, &b"{\"keys\":[]}\n"[..])));
        assert_eq!(decode_cached(b"nope"), None);
        assert_eq!(decode_cached(b"x\n{}"), None);
    }

    #[test]
    fn backoff_is_bounded() {
        assert_eq!(backoff(1), 2);
        assert_eq!(backoff(5), 32);
        assert_eq!(backoff(6), MAX_BACKOFF_SECS);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF_SECS);
    }

    #[test]
    fn hop_by_hop_headers_stay() {
        assert!(is_hop_by_hop(":status"));
        assert!(is_hop_by_hop("content-length"));
        assert!(!is_hop_by_hop("www-authenticate"));
    }
}
