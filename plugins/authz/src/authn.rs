//! Finding and checking credentials: JWTs (by provider) and API keys. Pure.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use weft_sdk::http::query_param;

use crate::config::{ApiKeys, Provider};
use crate::jwt::{self, Jwks, JwtError};

/// Where a credential was found (so it can be stripped before the request goes upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A request header (lower-case name).
    Header(String),
    /// A query parameter.
    Param(String),
}

/// A token found on the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundToken {
    /// The provider whose issuer the token names (`None`: no provider has it).
    pub provider: Option<usize>,
    /// The token.
    pub token: String,
    /// Where it was.
    pub location: Location,
}

/// Looks for a JWT in each provider's locations, in order. A token whose (unverified) `iss` is
/// a provider's issuer goes to that provider; when no provider claims any token found, the first
/// one is returned without a provider (it will be refused).
pub fn find_jwt(
    providers: &[Provider],
    headers: &[(String, String)],
    path: &str,
) -> Option<FoundToken> {
    let mut first: Option<FoundToken> = None;
    for p in providers {
        let header_tokens = p.from_headers.iter().filter_map(|(name, prefix)| {
            let value = header(headers, name)?;
            let token = strip_prefix_ignore_case(value.trim(), prefix)?.trim();
            (!token.is_empty()).then(|| (token.to_owned(), Location::Header(name.clone())))
        });
        let param_tokens = p.from_params.iter().filter_map(|name| {
            let token = query_param(path, name)?;
            (!token.is_empty()).then(|| (token, Location::Param(name.clone())))
        });
        for (token, location) in header_tokens.chain(param_tokens) {
            let iss = unverified_issuer(&token);
            if let Some(i) = providers
                .iter()
                .position(|q| Some(q.issuer.as_str()) == iss.as_deref() && q.reads_from(&location))
            {
                return Some(FoundToken {
                    provider: Some(i),
                    token,
                    location,
                });
            }
            if first.is_none() {
                first = Some(FoundToken {
                    provider: None,
                    token,
                    location,
                });
            }
        }
    }
    first
}

impl Provider {
    fn reads_from(&self, location: &Location) -> bool {
        match location {
            Location::Header(h) => self.from_headers.iter().any(|(name, _)| name == h),
            Location::Param(q) => self.from_params.iter().any(|name| name == q),
        }
    }
}

fn unverified_issuer(token: &str) -> Option<String> {
    jwt::decode(token).ok()?.issuer().map(str::to_owned)
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    weft_sdk::http::header(headers, name)
}

/// A verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// `iss/sub` (when the token has a `sub`).
    pub principal: Option<String>,
    /// All claims.
    pub claims: Map<String, Value>,
}

/// Verifies `token` for `provider` with `keys` at `now` (seconds since the epoch).
pub fn verify_jwt(
    provider: &Provider,
    keys: &Jwks,
    token: &str,
    now: u64,
) -> Result<Verified, JwtError> {
    let t = jwt::decode(token)?;
    t.verify_signature(keys)?;
    t.validate_claims(
        &provider.issuer,
        &provider.audiences,
        now,
        provider.clock_skew,
    )?;
    Ok(Verified {
        principal: t.principal(),
        claims: t.claims,
    })
}

/// Why a token found without a provider is refused: malformed, or an unknown issuer.
pub fn unclaimed_token_error(token: &str) -> JwtError {
    match jwt::decode(token) {
        Err(e) => e,
        Ok(_) => JwtError::Issuer,
    }
}

/// Recently verified tokens, so a client sending the same token again costs a hash instead of a
/// signature check (RS256 and ES256 take about a millisecond in wasm). An entry is used only with
/// the very key set it was verified with (a refreshed JWKS invalidates it), only until the
/// token's `exp` plus the skew, and at most [`MAX_CACHED_SECS`] after it was verified.
#[derive(Debug, Default)]
pub struct VerifiedCache {
    entries: HashMap<[u8; 32], CacheEntry>,
    order: VecDeque<[u8; 32]>,
}

#[derive(Debug)]
struct CacheEntry {
    provider: usize,
    keys: Rc<Jwks>,
    verified: Verified,
    valid_until: u64,
}

/// The most tokens remembered per instance.
pub const CACHE_CAPACITY: usize = 256;
/// The longest a verification is reused.
pub const MAX_CACHED_SECS: u64 = 300;

impl VerifiedCache {
    /// The verification of `token` by `provider` with `keys`, if still good at `now`.
    pub fn get(&self, token: &str, provider: usize, keys: &Rc<Jwks>, now: u64) -> Option<Verified> {
        let e = self.entries.get(&jwt::sha256(token.as_bytes()))?;
        (e.provider == provider && Rc::ptr_eq(&e.keys, keys) && now <= e.valid_until)
            .then(|| e.verified.clone())
    }

    /// Remembers a verification made at `now`, evicting the oldest beyond the capacity.
    pub fn insert(
        &mut self,
        token: &str,
        provider: usize,
        keys: Rc<Jwks>,
        verified: Verified,
        now: u64,
        skew: u64,
    ) {
        let exp_limit = match verified.claims.get("exp").and_then(Value::as_f64) {
            Some(exp) if exp >= 0.0 => (exp as u64).saturating_add(skew),
            Some(_) => return,
            None => u64::MAX,
        };
        let digest = jwt::sha256(token.as_bytes());
        let entry = CacheEntry {
            provider,
            keys,
            verified,
            valid_until: exp_limit.min(now.saturating_add(MAX_CACHED_SECS)),
        };
        if self.entries.insert(digest, entry).is_none() {
            self.order.push_back(digest);
        }
        while self.order.len() > CACHE_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }

    /// How many verifications are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The value of claim `path` as a header value: strings as they are, numbers and booleans
/// printed, lists of those joined with `,`, objects as JSON. Control characters are dropped and
/// the value is cut at 8 KiB.
pub fn claim_header_value(claims: &Map<String, Value>, path: &[String]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for seg in rest {
        v = v.get(seg)?;
    }
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(_) | Value::Bool(_) => v.to_string(),
        Value::Array(items) => items
            .iter()
            .take(256)
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => v.to_string(),
        Value::Null => return None,
    };
    let mut clean: String = text.chars().filter(|c| !c.is_control()).collect();
    if clean.len() > 8192 {
        let mut end = 8192;
        while !clean.is_char_boundary(end) {
            end -= 1;
        }
        clean.truncate(end);
    }
    Some(clean)
}

/// The outcome of the API-key check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyCheck {
    /// No key on the request.
    Missing,
    /// A key that is not configured.
    Invalid(Location),
    /// A configured key, by name.
    Valid(String, Location),
}

/// The longest API key looked at.
const MAX_API_KEY: usize = 4096;

/// Looks for an API key and compares it with every configured key in constant time (the time
/// does not depend on which key matched, nor on how much of a key matched).
pub fn check_api_key(cfg: &ApiKeys, headers: &[(String, String)], path: &str) -> ApiKeyCheck {
    let found = header(headers, &cfg.from_header)
        .map(|v| {
            (
                v.trim().to_owned(),
                Location::Header(cfg.from_header.clone()),
            )
        })
        .or_else(|| {
            let name = cfg.from_query.as_deref()?;
            query_param(path, name).map(|v| (v, Location::Param(name.to_owned())))
        });
    let Some((key, location)) = found.filter(|(k, _)| !k.is_empty()) else {
        return ApiKeyCheck::Missing;
    };
    if key.len() > MAX_API_KEY {
        return ApiKeyCheck::Invalid(location);
    }
    let digest = jwt::sha256(key.as_bytes());
    let mut matched: Option<usize> = None;
    for (i, (_, want)) in cfg.keys.iter().enumerate() {
        let eq: bool = want.ct_eq(&digest).into();
        if eq && matched.is_none() {
            matched = Some(i);
        }
    }
    match matched.and_then(|i| cfg.keys.get(i)) {
        Some((name, _)) => ApiKeyCheck::Valid(name.clone(), location),
        None => ApiKeyCheck::Invalid(location),
    }
}

/// `path` with query parameter `name` removed (the token must not travel upstream).
pub fn remove_query_param(path: &str, name: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            weft_sdk::http::percent_decode(key) != name
        })
        .collect();
    let mut out = base.to_owned();
    if !kept.is_empty() && kept.iter().any(|p| !p.is_empty()) {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Compiled;
    use crate::jwt::test_keys::{HS_SECRET, sign};
    use serde_json::json;

    fn providers() -> Vec<Provider> {
        let secret = std::str::from_utf8(HS_SECRET).expect("utf8");
        Compiled::parse(
            json!({"jwt": {"providers": [
                {"name": "a", "issuer": "https://a", "secret": secret, "audiences": ["api"],
                 "output_claim_to_headers": [{"header": "x-org", "claim": "org.id"}]},
                {"name": "b", "issuer": "https://b", "secret": secret,
                 "from_headers": [{"name": "x-b-token"}, {"name": "authorization", "prefix": "Bearer "}]}
            ]}})
            .to_string()
            .as_bytes(),
        )
        .expect("config")
        .providers
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn tokens_go_to_their_issuer() {
        let ps = providers();
        let ta = sign(
            "HS256",
            None,
            &json!({"iss": "https://a", "sub": "x", "aud": "api"}),
        );
        let tb = sign("HS256", None, &json!({"iss": "https://b", "sub": "y"}));
        let f =
            find_jwt(&ps, &h(&[("authorization", &format!("Bearer {ta}"))]), "/").expect("found");
        assert_eq!(
            (f.provider, f.location),
            (Some(0), Location::Header("authorization".into()))
        );
        let f =
            find_jwt(&ps, &h(&[("Authorization", &format!("bearer {tb}"))]), "/").expect("found");
        assert_eq!(f.provider, Some(1));
        let f = find_jwt(&ps, &h(&[("x-b-token", &tb)]), "/").expect("found");
        assert_eq!(
            (f.provider, f.location),
            (Some(1), Location::Header("x-b-token".into()))
        );
        // Provider a reads access_token; b does not.
        let f = find_jwt(&ps, &[], &format!("/x?access_token={ta}")).expect("found");
        assert_eq!(
            (f.provider, f.location),
            (Some(0), Location::Param("access_token".into()))
        );
        let f = find_jwt(&ps, &[], &format!("/x?access_token={tb}")).expect("found");
        assert_eq!(f.provider, None, "b does not read the query");
        assert_eq!(unclaimed_token_error(&f.token), JwtError::Issuer);
        let f = find_jwt(&ps, &h(&[("authorization", "Bearer garbage")]), "/").expect("found");
        assert_eq!(f.provider, None);
        assert_eq!(unclaimed_token_error(&f.token), JwtError::Malformed);
        assert_eq!(
            find_jwt(&ps, &h(&[("authorization", "Basic abc")]), "/"),
            None
        );
        assert_eq!(
            find_jwt(&ps, &h(&[("authorization", "Bearer ")]), "/"),
            None
        );
        assert_eq!(find_jwt(&ps, &[], "/"), None);
    }

    #[test]
    fn verification_and_claim_headers() {
        let ps = providers();
        let keys = ps[0].inline.clone().expect("keys");
        let t = sign(
            "HS256",
            None,
            &json!({"iss": "https://a", "sub": "x", "aud": "api", "exp": 2000, "org": {"id": 7}}),
        );
        let v = verify_jwt(&ps[0], &keys, &t, 1000).expect("valid");
        assert_eq!(v.principal.as_deref(), Some("https://a/x"));
        assert_eq!(
            claim_header_value(&v.claims, &ps[0].claim_headers[0].1).as_deref(),
            Some("7")
        );
        assert_eq!(verify_jwt(&ps[0], &keys, &t, 2061), Err(JwtError::Expired));
        let wrong_aud = sign(
            "HS256",
            None,
            &json!({"iss": "https://a", "sub": "x", "aud": "web"}),
        );
        assert_eq!(
            verify_jwt(&ps[0], &keys, &wrong_aud, 1000),
            Err(JwtError::Audience)
        );
        let claims = json!({"g": ["a", 1, true], "s": "x\r\ny", "n": null, "o": {"k": "v"}});
        let claims = claims.as_object().expect("obj");
        let path = |p: &str| vec![p.to_owned()];
        assert_eq!(
            claim_header_value(claims, &path("g")).as_deref(),
            Some("a,1,true")
        );
        assert_eq!(
            claim_header_value(claims, &path("s")).as_deref(),
            Some("xy")
        );
        assert_eq!(claim_header_value(claims, &path("n")), None);
        assert_eq!(
            claim_header_value(claims, &path("o")).as_deref(),
            Some(r#"{"k":"v"}"#)
        );
        assert_eq!(claim_header_value(claims, &path("missing")), None);
    }

    #[test]
    fn api_keys() {
        let cfg = Compiled::parse(
            json!({"api_keys": {"from_query": "key", "keys": [
                {"name": "ci", "key": "ci-key-0123456789"},
                {"name": "ops", "key_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}]}})
            .to_string()
            .as_bytes(),
        )
        .expect("config")
        .api_keys
        .expect("keys");
        let hdr = Location::Header("x-api-key".into());
        assert_eq!(
            check_api_key(&cfg, &h(&[("X-Api-Key", "ci-key-0123456789")]), "/"),
            ApiKeyCheck::Valid("ci".into(), hdr.clone())
        );
        assert_eq!(
            check_api_key(&cfg, &h(&[("x-api-key", "test")]), "/"),
            ApiKeyCheck::Valid("ops".into(), hdr.clone())
        );
        assert_eq!(
            check_api_key(&cfg, &h(&[("x-api-key", "ci-key-012345678")]), "/"),
            ApiKeyCheck::Invalid(hdr)
        );
        assert_eq!(
            check_api_key(&cfg, &[], "/x?key=test"),
            ApiKeyCheck::Valid("ops".into(), Location::Param("key".into()))
        );
        assert_eq!(check_api_key(&cfg, &[], "/x"), ApiKeyCheck::Missing);
        assert_eq!(
            check_api_key(&cfg, &h(&[("x-api-key", " ")]), "/"),
            ApiKeyCheck::Missing
        );
        let huge = "k".repeat(MAX_API_KEY + 1);
        assert!(matches!(
            check_api_key(&cfg, &h(&[("x-api-key", &huge)]), "/"),
            ApiKeyCheck::Invalid(_)
        ));
    }

    #[test]
    fn verified_tokens_are_cached_with_their_keys() {
        let ps = providers();
        let keys = ps[0].inline.clone().expect("keys");
        let t = sign(
            "HS256",
            None,
            &json!({"iss": "https://a", "sub": "x", "aud": "api", "exp": 2000}),
        );
        let v = verify_jwt(&ps[0], &keys, &t, 1000).expect("valid");
        let mut cache = VerifiedCache::default();
        cache.insert(&t, 0, keys.clone(), v.clone(), 1000, 60);
        assert_eq!(cache.get(&t, 0, &keys, 1200), Some(v.clone()));
        assert_eq!(cache.get(&t, 1, &keys, 1200), None, "another provider");
        let other_keys = Rc::new((*keys).clone());
        assert_eq!(cache.get(&t, 0, &other_keys, 1200), None, "another key set");
        assert_eq!(
            cache.get(&t, 0, &keys, 1000 + MAX_CACHED_SECS + 1),
            None,
            "too old"
        );
        cache.insert(&t, 0, keys.clone(), v.clone(), 1900, 60);
        assert_eq!(cache.get(&t, 0, &keys, 2060), Some(v.clone()));
        assert_eq!(cache.get(&t, 0, &keys, 2061), None, "past exp + skew");
        for i in 0..CACHE_CAPACITY + 10 {
            cache.insert(&format!("token-{i}"), 0, keys.clone(), v.clone(), 1000, 60);
        }
        assert_eq!(cache.len(), CACHE_CAPACITY);
        assert_eq!(
            cache.get(&t, 0, &keys, 1000),
            None,
            "the oldest was evicted"
        );
    }

    #[test]
    fn query_params_are_removed() {
        assert_eq!(
            remove_query_param("/a?access_token=x&b=1", "access_token"),
            "/a?b=1"
        );
        assert_eq!(
            remove_query_param("/a?access_token=x", "access_token"),
            "/a"
        );
        assert_eq!(
            remove_query_param("/a?b=1&access_token=x#f", "access_token"),
            "/a?b=1#f"
        );
        assert_eq!(remove_query_param("/a", "access_token"), "/a");
    }
}
