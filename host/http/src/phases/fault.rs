//! Phase `weft.fault`: fault injection per route (Istio's `fault`): a fixed delay and an abort
//! (HTTP status or gRPC status), each for a percentage of requests, optionally only for requests
//! matching headers. A delayed request continues with flag `DI`; an aborted one ends with a
//! local reply and flag `FI` (`DI,FI` when both).

use std::time::Duration;

use http::{HeaderValue, StatusCode, header};
use prometheus_client::metrics::counter::Counter;
use weft_config::resilience::Fault;
use weft_observe::flags;

use crate::ctx::RequestCtx;
use crate::phase::{Flow, Phase};
use crate::reply::LocalReply;

/// How an injected abort answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// With this HTTP status.
    Http(u16),
    /// HTTP 200 with this `grpc-status`.
    Grpc(u32),
}

/// A route's compiled fault settings.
#[derive(Debug)]
pub struct FaultConfig {
    /// Delay and its percentage.
    pub delay: Option<(Duration, f64)>,
    /// Abort and its percentage.
    pub abort: Option<(Abort, f64)>,
    /// Header conditions (all must hold).
    pub headers: Option<weft_routing::RouteMatcher>,
}

/// What to inject into one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decision {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer with this.
    pub abort: Option<Abort>,
}

impl FaultConfig {
    /// Compiles a validated fault section; `path` names it in errors.
    pub fn new(path: &str, f: &Fault) -> Result<FaultConfig, weft_routing::RoutingError> {
        let headers = if f.headers.is_empty() {
            None
        } else {
            Some(weft_routing::RouteMatcher::for_headers(path, &f.headers)?)
        };
        Ok(FaultConfig {
            delay: f.delay.as_ref().map(|d| (d.fixed_delay, d.percentage)),
            abort: f.abort.as_ref().map(|a| {
                let abort = match (a.http_status, a.grpc_status) {
                    (_, Some(g)) => Abort::Grpc(g),
                    (Some(s), None) => Abort::Http(s),
                    (None, None) => Abort::Http(503),
                };
                (abort, a.percentage)
            }),
            headers,
        })
    }

    /// Decides for one request; `dice` are two uniform numbers in `[0, 100)`.
    pub fn decide(&self, applies: bool, dice: (f64, f64)) -> Decision {
        if !applies {
            return Decision::default();
        }
        Decision {
            delay: self.delay.and_then(|(d, pct)| (dice.0 < pct).then_some(d)),
            abort: self.abort.and_then(|(a, pct)| (dice.1 < pct).then_some(a)),
        }
    }
}

/// The fault phase of one route.
#[derive(Debug)]
pub struct FaultPhase {
    config: FaultConfig,
    delays: Counter,
    aborts: Counter,
}

impl FaultPhase {
    /// Injects `config`, counting on `delays` and `aborts`.
    pub fn new(config: FaultConfig, delays: Counter, aborts: Counter) -> FaultPhase {
        FaultPhase {
            config,
            delays,
            aborts,
        }
    }
}

impl Phase for FaultPhase {
    fn name(&self) -> String {
        "weft.fault".to_owned()
    }

    async fn request<'a>(&'a self, ctx: &mut RequestCtx<'a>) -> Flow {
        let applies = self
            .config
            .headers
            .as_ref()
            .is_none_or(|m| m.matches(&ctx.view()));
        let d = self
            .config
            .decide(applies, (fastrand::f64() * 100.0, fastrand::f64() * 100.0));
        if let Some(delay) = d.delay {
            self.delays.inc();
            ctx.completion.flag = flags::DELAY_INJECTED;
            tokio::time::sleep(delay).await;
        }
        let Some(abort) = d.abort else {
            return Flow::Continue;
        };
        self.aborts.inc();
        let flag = if d.delay.is_some() {
            flags::DELAY_AND_FAULT_INJECTED
        } else {
            flags::FAULT_INJECTED
        };
        Flow::Reply(abort_reply(abort, flag))
    }
}

/// An injected abort: an HTTP status, or HTTP 200 with a `grpc-status`.
fn abort_reply(abort: Abort, flag: &'static str) -> LocalReply {
    match abort {
        Abort::Http(status) => LocalReply::text(
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "fault filter abort",
            flag,
        ),
        Abort::Grpc(code) => LocalReply::text(StatusCode::OK, "", flag)
            .with_header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            )
            .with_header(
                header::HeaderName::from_static("grpc-status"),
                HeaderValue::from(code),
            )
            .with_header(
                header::HeaderName::from_static("grpc-message"),
                HeaderValue::from_static("fault filter abort"),
            ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_and_the_header_condition_decide() {
        let f = FaultConfig {
            delay: Some((Duration::from_millis(5), 30.0)),
            abort: Some((Abort::Http(503), 10.0)),
            headers: None,
        };
        assert_eq!(
            f.decide(true, (29.9, 9.9)),
            Decision {
                delay: Some(Duration::from_millis(5)),
                abort: Some(Abort::Http(503)),
            }
        );
        assert_eq!(f.decide(true, (30.0, 10.0)), Decision::default());
        assert_eq!(f.decide(false, (0.0, 0.0)), Decision::default());
        let all = FaultConfig {
            delay: None,
            abort: Some((Abort::Grpc(14), 100.0)),
            headers: None,
        };
        assert_eq!(
            all.decide(true, (99.99, 99.99)).abort,
            Some(Abort::Grpc(14))
        );
    }
}
