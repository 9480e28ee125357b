//! HTTP/1.1 upgrades (WebSocket and the like): once the upstream answers 101 Switching
//! Protocols, the two upgraded connections are spliced together and bytes flow both ways
//! until either side closes.

use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use weft_framing::GuardHandle;

/// Splices the downstream connection (`down`) with the upstream one behind `resp`.
pub(super) fn splice(
    down: OnUpgrade,
    resp: &mut http::Response<Incoming>,
    guard: Option<&GuardHandle>,
) {
    let up = hyper::upgrade::on(resp);
    if let Some(g) = guard {
        g.mark_upgraded();
    }
    tokio::spawn(async move {
        match tokio::try_join!(down, up) {
            Ok((d, u)) => {
                let mut d = TokioIo::new(d);
                let mut u = TokioIo::new(u);
                let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
}
