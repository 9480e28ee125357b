//! One try of an upstream request to one endpoint, and how it ended.

use hyper::body::Incoming;
use hyper_util::client::legacy::Error as ClientError;
use tokio::time::Instant;
use weft_body::{BoxError, ProxyBody};
use weft_upstream::h1_pool::{H1Error, Lease};
use weft_upstream::{Cluster, Endpoint};

use super::retry::TryOutcome;

/// How one try to an endpoint ended, before any retry decision.
#[expect(
    clippy::large_enum_variant,
    reason = "made once per try and matched at once; boxing the response would allocate per request"
)]
pub(crate) enum Tried {
    /// Response headers arrived (with the pooled HTTP/1.1 connection its body is read
    /// through, if any).
    Response(http::Response<Incoming>, Option<Lease>),
    /// The try failed before response headers.
    Failed(TryOutcome, BoxError),
    /// The per-try or route deadline passed.
    TimedOut,
}

impl Tried {
    /// What the retry policy and outlier detection see of it.
    pub(crate) fn outcome(&self) -> TryOutcome {
        match self {
            Tried::Response(r, _) => {
                let grpc = r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                TryOutcome::Status(r.status().as_u16(), grpc)
            }
            Tried::Failed(o, _) => *o,
            Tried::TimedOut => TryOutcome::PerTryTimeout,
        }
    }
}

/// Sends `req` to `endpoint`, bounded by `deadline`: on a connection of `cluster`'s HTTP/1.1
/// pool when `h1` (origin-form URI, `Host` set), else through its hyper pooled client
/// (absolute URI).
pub(crate) async fn send(
    cluster: &Cluster,
    endpoint: &Endpoint,
    req: http::Request<ProxyBody>,
    deadline: Option<Instant>,
    h1: bool,
) -> Tried {
    let call = async {
        match cluster.h1_pool().filter(|_| h1) {
            Some(pool) => {
                weft_upstream::h1_pool::send(pool, endpoint, req, || cluster.connect(endpoint))
                    .await
                    .map_err(|e| {
                        let outcome = match e {
                            H1Error::Connect(_) => TryOutcome::ConnectFailure,
                            H1Error::Http(_) => TryOutcome::Reset,
                        };
                        (outcome, BoxError::from(e))
                    })
            }
            None => cluster
                .client_for(req.version())
                .request(req)
                .await
                .map(|r| (r, None))
                .map_err(|e| (classify(&e), BoxError::from(e))),
        }
    };
    let done = match deadline {
        Some(d) => match tokio::time::timeout_at(d, call).await {
            Ok(done) => done,
            Err(_) => return Tried::TimedOut,
        },
        None => call.await,
    };
    match done {
        Ok((r, lease)) => Tried::Response(r, lease),
        Err((outcome, e)) => Tried::Failed(outcome, e),
    }
}

/// A connect failure, an HTTP/2 `REFUSED_STREAM` (read from the h2 error code, the stream was
/// never processed: always safe to retry), or another reset.
pub(crate) fn classify(e: &ClientError) -> TryOutcome {
    if e.is_connect() {
        TryOutcome::ConnectFailure
    } else if h2_reason(e) == Some(h2::Reason::REFUSED_STREAM) {
        TryOutcome::RefusedStream
    } else {
        TryOutcome::Reset
    }
}

/// Whether `e` comes from the upstream breaking HTTP/1 framing (weft-framing's checker).
pub(crate) fn framing_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<weft_framing::upstream::UpstreamFramingError>() {
            return true;
        }
        // io::Error's `source` skips the error it wraps: look inside.
        if let Some(inner) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && inner.is::<weft_framing::upstream::UpstreamFramingError>()
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// The HTTP/2 error code anywhere in `e`'s source chain.
fn h2_reason(e: &(dyn std::error::Error + 'static)) -> Option<h2::Reason> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason();
        }
        source = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(h2::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn the_h2_reason_is_read_from_the_source_chain_not_the_text() {
        let refused = Wrapped(h2::Error::from(h2::Reason::REFUSED_STREAM));
        assert_eq!(h2_reason(&refused), Some(h2::Reason::REFUSED_STREAM));
        let cancel = Wrapped(h2::Error::from(h2::Reason::CANCEL));
        assert_eq!(h2_reason(&cancel), Some(h2::Reason::CANCEL));
        // Text that merely mentions the code is not a refused stream.
        let text = std::io::Error::other("peer said REFUSED_STREAM");
        assert_eq!(h2_reason(&text), None);
    }
}
