//! Retry policy: which failures are retried (Envoy's `retry_on` conditions), exponential
//! back-off with full jitter, and the request body kept for replay.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use weft_config::resilience::{RetryOn, RetryPolicy};

use weft_body::ProxyBody;

/// The header telling the upstream which try this is (1 for the first); Envoy's name, so that
/// services written for Istio read it unchanged.
pub const ATTEMPT_COUNT_HEADER: &str = "x-envoy-attempt-count";

/// A route's compiled retry policy.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Retries after the first try.
    pub num_retries: u32,
    /// Deadline of each try.
    pub per_try_timeout: Option<Duration>,
    /// Conditions.
    pub on: RetryOn,
    /// `retriable_status_codes`.
    pub codes: Vec<u16>,
    /// Back-off base.
    pub base: Duration,
    /// Back-off cap.
    pub max: Duration,
    /// Largest request body kept for replay.
    pub buffer_limit: usize,
}

/// How one try ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryOutcome {
    /// A response with this status (and `grpc-status` header, if any).
    Status(u16, Option<u32>),
    /// The connection could not be opened.
    ConnectFailure,
    /// The upstream refused the HTTP/2 stream.
    RefusedStream,
    /// The connection was reset before the response headers.
    Reset,
    /// The per-try timeout passed.
    PerTryTimeout,
}

impl RetryConfig {
    /// Compiles a validated policy.
    pub fn new(p: &RetryPolicy) -> RetryConfig {
        let base = p
            .retry_back_off
            .as_ref()
            .map_or(Duration::from_millis(25), |b| b.base_interval);
        let max = p
            .retry_back_off
            .as_ref()
            .and_then(|b| b.max_interval)
            .unwrap_or(base.saturating_mul(10));
        RetryConfig {
            num_retries: p.num_retries,
            per_try_timeout: p.per_try_timeout,
            on: RetryOn::parse(&p.retry_on).unwrap_or_default(),
            codes: p.retriable_status_codes.clone(),
            base,
            max,
            buffer_limit: p.per_request_buffer_limit_bytes,
        }
    }

    /// Whether `outcome` is retried under this policy.
    pub fn retries(&self, outcome: TryOutcome) -> bool {
        let on = &self.on;
        match outcome {
            TryOutcome::Status(status, grpc) => {
                (on.server_error && status >= 500)
                    || (on.gateway_error && (502..=504).contains(&status))
                    || (on.retriable_4xx && status == 409)
                    || (on.retriable_status_codes && self.codes.contains(&status))
                    || on.statuses.contains(&status)
                    || grpc.is_some_and(|g| on.grpc_statuses.contains(&g))
            }
            TryOutcome::ConnectFailure => on.connect_failure || on.server_error || on.gateway_error,
            TryOutcome::RefusedStream => on.refused_stream || on.server_error,
            TryOutcome::Reset => on.reset || on.server_error,
            TryOutcome::PerTryTimeout => on.reset || on.server_error || on.gateway_error,
        }
    }
}

/// Back-off before retry number `retry` (1 for the first retry): a random time in
/// `[0, min((2^retry − 1) × base, max)]`, with `unit` a random number in `[0, 1)`.
pub fn backoff(retry: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let factor = (1u64 << retry.clamp(1, 30)) - 1;
    let ceiling = base
        .saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX))
        .min(max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// A request body, kept whole for replay or streamed once.
#[derive(Debug)]
pub enum RequestBody {
    /// Buffered: every try (and mirror) gets a copy.
    Replay(Bytes),
    /// Streamed: only one try is possible.
    Stream(ProxyBody),
}

impl RequestBody {
    /// Buffers `body` when it ends within `limit` bytes; otherwise it is streamed (what was
    /// read ahead goes first).
    pub async fn buffer(
        mut body: ProxyBody,
        limit: usize,
    ) -> Result<RequestBody, weft_body::BoxError> {
        use http_body::Body as _;
        if body.is_end_stream() {
            return Ok(RequestBody::Replay(Bytes::new()));
        }
        let hint = body.size_hint();
        if let Some(n) = hint.exact()
            && n <= limit as u64
        {
            return Ok(RequestBody::Replay(body.collect().await?.to_bytes()));
        }
        if hint.lower() > limit as u64 {
            return Ok(RequestBody::Stream(body));
        }
        // Unknown length (chunked, HTTP/2): read ahead up to the limit.
        let mut read: VecDeque<Frame<Bytes>> = VecDeque::new();
        let mut size = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            let is_data = frame.is_data();
            size += frame.data_ref().map_or(0, Bytes::len);
            read.push_back(frame);
            if !is_data || size > limit {
                // Trailers cannot be replayed from bytes; too much cannot be kept.
                return Ok(RequestBody::Stream(ProxyBody::chain(read, body)));
            }
        }
        let mut all = bytes::BytesMut::with_capacity(size);
        for f in read {
            if let Some(d) = f.data_ref() {
                all.extend_from_slice(d);
            }
        }
        Ok(RequestBody::Replay(all.freeze()))
    }

    /// Whether another try can be sent.
    pub fn replayable(&self) -> bool {
        matches!(self, RequestBody::Replay(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &str) -> RetryConfig {
        RetryConfig {
            num_retries: 2,
            per_try_timeout: None,
            on: RetryOn::parse(on).unwrap(),
            codes: vec![418],
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
            buffer_limit: 1024,
        }
    }

    #[test]
    fn conditions_follow_envoy() {
        let p = policy("5xx");
        assert!(p.retries(TryOutcome::Status(500, None)));
        assert!(p.retries(TryOutcome::ConnectFailure));
        assert!(p.retries(TryOutcome::Reset));
        assert!(p.retries(TryOutcome::PerTryTimeout));
        assert!(!p.retries(TryOutcome::Status(404, None)));
        let p = policy("gateway-error");
        assert!(p.retries(TryOutcome::Status(503, None)));
        assert!(!p.retries(TryOutcome::Status(500, None)));
        assert!(!p.retries(TryOutcome::Reset));
        let p = policy("connect-failure,retriable-4xx,retriable-status-codes,unavailable");
        assert!(p.retries(TryOutcome::ConnectFailure));
        assert!(!p.retries(TryOutcome::Reset));
        assert!(p.retries(TryOutcome::Status(409, None)));
        assert!(p.retries(TryOutcome::Status(418, None)));
        assert!(p.retries(TryOutcome::Status(200, Some(14))));
        assert!(!p.retries(TryOutcome::Status(200, Some(13))));
        let p = policy("reset,refused-stream,503");
        assert!(p.retries(TryOutcome::Reset));
        assert!(p.retries(TryOutcome::RefusedStream));
        assert!(p.retries(TryOutcome::Status(503, None)));
        assert!(!p.retries(TryOutcome::Status(502, None)));
        assert!(!p.retries(TryOutcome::ConnectFailure));
    }

    #[test]
    fn backoff_grows_exponentially_with_full_jitter_and_a_cap() {
        let (base, max) = (Duration::from_millis(25), Duration::from_millis(250));
        assert_eq!(backoff(1, base, max, 0.999_999).as_millis(), 24);
        assert_eq!(backoff(2, base, max, 1.0), Duration::from_millis(75));
        assert_eq!(backoff(3, base, max, 1.0), Duration::from_millis(175));
        assert_eq!(backoff(4, base, max, 1.0), max);
        assert_eq!(backoff(40, base, max, 1.0), max);
        assert_eq!(backoff(3, base, max, 0.0), Duration::ZERO);
        assert_eq!(
            backoff(2, base, max, 0.5),
            Duration::from_millis(37) + Duration::from_micros(500)
        );
    }
}
