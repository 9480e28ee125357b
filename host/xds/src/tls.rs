//! mTLS to the control plane: the `xds.cluster`'s `tls` (certificate files, SPIFFE validation of
//! the control plane's identity, rotated by their watcher), the same client TLS as any cluster's
//! ([`weft_upstream::tls::UpstreamTls`]), under tonic's HTTP/2.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use weft_upstream::tls::{UpstreamIo, UpstreamTls};

/// Dials the control plane and runs the TLS handshake (tonic's connector).
#[derive(Clone)]
pub(crate) struct Connector {
    /// `host:port` of the control plane.
    pub address: String,
    /// The client TLS.
    pub tls: Arc<UpstreamTls>,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<UpstreamIo>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (address, tls) = (self.address.clone(), self.tls.clone());
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(&address).await?;
            let _ = tcp.set_nodelay(true);
            let io = UpstreamTls::wrap(Some(&tls), tcp).await?;
            Ok(TokioIo::new(io))
        })
    }
}
