//! Fault injection per route (Istio's `fault`): a fixed delay and an abort (HTTP status or gRPC
//! status), each for a percentage of requests, optionally only for requests matching headers.
//! Response flags: `DI` (delayed), `FI` (aborted).

use std::time::Duration;

use weft_config::resilience::Fault;

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
