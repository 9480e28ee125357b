//! Phases `weft.listener_rate_limit` and `weft.route_rate_limit`: a token bucket per listener
//! (before routing) or per route (Envoy's `local_ratelimit`). A request without a token gets
//! 429 with `Retry-After` and response flag `RL`; a request with one continues.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, StatusCode, header};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use weft_config::resilience::LocalRateLimit;
use weft_observe::flags;
use weft_upstream::clock::now_ms;

use crate::ctx::RequestCtx;
use crate::phase::{Flow, Phase};
use crate::reply::LocalReply;

/// Takes a token from a bucket, or answers 429.
#[derive(Debug)]
pub struct RateLimitPhase {
    /// `weft.listener_rate_limit` or `weft.route_rate_limit`.
    name: &'static str,
    /// The bucket (shared with the next generation when its settings are unchanged).
    pub bucket: Arc<TokenBucket>,
    limited: Counter,
}

impl RateLimitPhase {
    /// The listener-wide limit (runs before routing).
    pub fn listener(bucket: Arc<TokenBucket>, limited: Counter) -> RateLimitPhase {
        RateLimitPhase {
            name: "weft.listener_rate_limit",
            bucket,
            limited,
        }
    }

    /// A route's limit.
    pub fn route(bucket: Arc<TokenBucket>, limited: Counter) -> RateLimitPhase {
        RateLimitPhase {
            name: "weft.route_rate_limit",
            bucket,
            limited,
        }
    }
}

impl Phase for RateLimitPhase {
    fn name(&self) -> String {
        self.name.to_owned()
    }

    async fn request<'a>(&'a self, _ctx: &mut RequestCtx<'a>) -> Flow {
        match self.bucket.try_take(now_ms()) {
            Ok(()) => Flow::Continue,
            Err(wait) => {
                self.limited.inc();
                Flow::Reply(
                    LocalReply::text(
                        StatusCode::TOO_MANY_REQUESTS,
                        "local_rate_limited",
                        flags::RATE_LIMITED,
                    )
                    .with_header(
                        header::RETRY_AFTER,
                        HeaderValue::from(retry_after_secs(wait)),
                    ),
                )
            }
        }
    }
}

/// A token bucket on an injectable millisecond clock.
#[derive(Debug)]
pub struct TokenBucket {
    /// The settings it was built from (a reload with the same settings keeps the bucket).
    pub config: LocalRateLimit,
    max_tokens: u64,
    tokens_per_fill: u64,
    fill_interval_ms: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: u64,
    last_fill_ms: u64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn new(cfg: &LocalRateLimit, now_ms: u64) -> TokenBucket {
        TokenBucket {
            config: cfg.clone(),
            max_tokens: u64::from(cfg.max_tokens),
            tokens_per_fill: u64::from(cfg.tokens_per_fill),
            fill_interval_ms: (cfg.fill_interval.as_millis() as u64).max(1),
            state: Mutex::new(State {
                tokens: u64::from(cfg.max_tokens),
                last_fill_ms: now_ms,
            }),
        }
    }

    /// Takes a token at `now_ms`; without one, says how long until the next fill.
    pub fn try_take(&self, now_ms: u64) -> Result<(), Duration> {
        let mut s = self.state.lock();
        let elapsed = now_ms.saturating_sub(s.last_fill_ms);
        let fills = elapsed / self.fill_interval_ms;
        if fills > 0 {
            s.tokens = s
                .tokens
                .saturating_add(fills.saturating_mul(self.tokens_per_fill))
                .min(self.max_tokens);
            s.last_fill_ms += fills * self.fill_interval_ms;
        }
        if s.tokens > 0 {
            s.tokens -= 1;
            Ok(())
        } else {
            let next = s.last_fill_ms + self.fill_interval_ms;
            Err(Duration::from_millis(next.saturating_sub(now_ms)))
        }
    }
}

/// `previous` when it was built from `cfg`, else a new full bucket: a reload that keeps a
/// limit keeps its tokens (a reload must not refill a bucket under attack).
pub fn carry_over(
    previous: Option<&Arc<TokenBucket>>,
    cfg: &LocalRateLimit,
    now_ms: u64,
) -> Arc<TokenBucket> {
    match previous {
        Some(p) if p.config == *cfg => p.clone(),
        _ => Arc::new(TokenBucket::new(cfg, now_ms)),
    }
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_drains_then_refills_per_interval_up_to_its_size() {
        let cfg = LocalRateLimit {
            max_tokens: 3,
            tokens_per_fill: 2,
            fill_interval: Duration::from_millis(100),
        };
        let b = TokenBucket::new(&cfg, 1000);
        for _ in 0..3 {
            assert!(b.try_take(1000).is_ok());
        }
        assert_eq!(b.try_take(1040), Err(Duration::from_millis(60)));
        assert!(b.try_take(1100).is_ok());
        assert!(b.try_take(1150).is_ok());
        assert!(b.try_take(1199).is_err());
        // A long pause fills to the size, not beyond.
        for _ in 0..3 {
            assert!(b.try_take(5000).is_ok());
        }
        assert!(b.try_take(5000).is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
