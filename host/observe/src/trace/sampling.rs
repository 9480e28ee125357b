//! The sampling decision, as Envoy makes it for its HTTP connection manager's `tracing`
//! (`client_sampling`, `random_sampling`, `overall_sampling`) with its OpenTelemetry and
//! Zipkin tracers:
//!
//! 1. a caller that sent a sampling decision (`traceparent`'s sampled flag, `x-b3-sampled`,
//!    `b3`'s sampling state, B3 debug) is followed: parent-based sampling;
//! 2. otherwise a request with `x-client-trace-id` is traced with probability
//!    `client_sampling` (100 % by default): the client forces a trace;
//! 3. otherwise with probability `random_sampling`;
//! 4. and a decision of 2 or 3 is kept with probability `overall_sampling` (100 % by default).

/// Sampling percentages (each 0–100).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Requests that start a trace and are sampled.
    pub random: f64,
    /// Requests with `x-client-trace-id` that are sampled.
    pub client: f64,
    /// The cap applied after the two above.
    pub overall: f64,
}

/// Why a request is (or is not) sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The caller's decision.
    Parent,
    /// `x-client-trace-id` within `client_sampling`.
    Client,
    /// `random_sampling`.
    Random,
    /// Not sampled.
    NotSampled,
}

impl Sampling {
    /// Decides for a request: `parent` is the caller's decision if it sent one,
    /// `client_trace_id` whether it carries `x-client-trace-id`; `roll` draws a uniform
    /// number in `[0, 100)` (injected for tests).
    pub fn decide(
        &self,
        parent: Option<bool>,
        client_trace_id: bool,
        mut roll: impl FnMut() -> f64,
    ) -> Reason {
        if let Some(sampled) = parent {
            return if sampled {
                Reason::Parent
            } else {
                Reason::NotSampled
            };
        }
        let reason = if client_trace_id && hit(self.client, &mut roll) {
            Reason::Client
        } else if hit(self.random, &mut roll) {
            Reason::Random
        } else {
            return Reason::NotSampled;
        };
        if hit(self.overall, &mut roll) {
            reason
        } else {
            Reason::NotSampled
        }
    }
}

impl Reason {
    /// The span is recorded and exported.
    pub fn sampled(self) -> bool {
        self != Reason::NotSampled
    }
}

fn hit(percent: f64, roll: &mut impl FnMut() -> f64) -> bool {
    // 0 and 100 decide without drawing.
    percent >= 100.0 || (percent > 0.0 && roll() < percent)
}

/// A uniform draw in `[0, 100)`.
pub fn roll() -> f64 {
    fastrand::f64() * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Sampling = Sampling {
        random: 1.0,
        client: 100.0,
        overall: 100.0,
    };

    #[test]
    fn the_parent_decides_when_it_said() {
        let never = || panic!("no draw when the parent decided");
        assert_eq!(S.decide(Some(true), false, never), Reason::Parent);
        assert_eq!(S.decide(Some(false), true, never), Reason::NotSampled);
    }

    #[test]
    fn client_trace_id_forces_and_random_draws() {
        assert_eq!(S.decide(None, true, || 99.9), Reason::Client);
        assert_eq!(S.decide(None, false, || 0.5), Reason::Random);
        assert_eq!(S.decide(None, false, || 1.0), Reason::NotSampled);
        let off = Sampling { overall: 0.0, ..S };
        assert_eq!(off.decide(None, true, || 0.0), Reason::NotSampled);
        let no_client = Sampling {
            client: 0.0,
            random: 0.0,
            ..S
        };
        assert_eq!(no_client.decide(None, true, || 0.0), Reason::NotSampled);
    }
}
