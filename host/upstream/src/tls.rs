//! The upstream connector's TLS: a cluster's client-side TLS settings and the stream type
//! both plaintext and TLS connections share.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use weft_framing::upstream::ResponseChecker;

use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use weft_config::schema::{self, TlsVersion};
use weft_tls::TlsError;
use weft_tls::config::{ClientOptions, MinVersion};
use weft_tls::creds::{CredentialFiles, Credentials};
use weft_tls::verify::PeerRules;

/// `file` as configured: absolute, or relative to the configuration's directory.
pub fn resolve(base_dir: &Path, file: &str) -> std::path::PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base_dir.join(p)
    }
}

/// The configuration's minimum TLS version for rustls.
pub fn min_version(v: TlsVersion) -> MinVersion {
    match v {
        TlsVersion::Tls12 => MinVersion::Tls12,
        TlsVersion::Tls13 => MinVersion::Tls13,
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .field("creds", &self.creds.files())
            .finish_non_exhaustive()
    }
}

/// A cluster's TLS client side.
pub struct UpstreamTls {
    /// The connector.
    pub connector: tokio_rustls::TlsConnector,
    /// SNI to send (`None`: the endpoint's IP, which sends no SNI).
    pub sni: Option<rustls::pki_types::ServerName<'static>>,
    /// The credentials (rotated by their watcher).
    pub creds: Arc<Credentials>,
}

impl UpstreamTls {
    /// Loads the cluster's material and starts watching it.
    pub fn build(
        cfg: &schema::ClusterTls,
        protocol: schema::UpstreamProtocol,
        base_dir: &Path,
    ) -> Result<Arc<UpstreamTls>, TlsError> {
        let creds = Credentials::load(CredentialFiles {
            cert: resolve(base_dir, &cfg.cert_file),
            key: resolve(base_dir, &cfg.key_file),
            bundle: resolve(base_dir, &cfg.trust_bundle_file),
        })?;
        let alpn: Vec<Vec<u8>> = if cfg.alpn.is_empty() {
            match protocol {
                schema::UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
                // The HTTP/2 pool of a `downstream` cluster uses `with_alpn`.
                schema::UpstreamProtocol::Http1 | schema::UpstreamProtocol::Downstream => {
                    vec![b"http/1.1".to_vec()]
                }
            }
        } else {
            cfg.alpn.iter().map(|a| a.as_bytes().to_vec()).collect()
        };
        let client = weft_tls::config::client_config(
            creds.clone(),
            &ClientOptions {
                alpn,
                min_version: min_version(cfg.min_version),
                rules: PeerRules {
                    trust_domain: cfg.trust_domain.clone(),
                    allowed: cfg.match_identities.clone(),
                },
            },
        )?;
        let sni = match &cfg.sni {
            Some(s) => Some(
                rustls::pki_types::ServerName::try_from(s.clone())
                    .map_err(|e| TlsError::Rustls(format!("sni `{s}`: {e}")))?,
            ),
            None => None,
        };
        creds.watch();
        Ok(Arc::new(UpstreamTls {
            connector: tokio_rustls::TlsConnector::from(client),
            sni,
            creds,
        }))
    }
}

impl UpstreamTls {
    /// The same client side (credentials, verification, SNI) offering `alpn` instead.
    pub fn with_alpn(&self, alpn: &[&[u8]]) -> Arc<UpstreamTls> {
        let mut config = (**self.connector.config()).clone();
        config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Arc::new(UpstreamTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            sni: self.sni.clone(),
            creds: self.creds.clone(),
        })
    }

    /// `tcp` as it should carry the cluster's traffic: plaintext without `tls`, else after a
    /// TLS handshake (SNI from the configuration, else the endpoint's IP, which sends none).
    pub async fn wrap(tls: Option<&UpstreamTls>, tcp: TcpStream) -> std::io::Result<UpstreamIo> {
        let Some(tls) = tls else {
            return Ok(UpstreamIo::Plain(tcp));
        };
        let name = match &tls.sni {
            Some(n) => n.clone(),
            None => rustls::pki_types::ServerName::IpAddress(tcp.peer_addr()?.ip().into()),
        };
        let stream = tls.connector.connect(name, tcp).await.inspect_err(|e| {
            tracing::debug!(error = %e, "upstream TLS handshake failed");
        })?;
        let identity = UpstreamIdentity {
            peer: stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|der| weft_tls::peer::identity(der).ok())
                .map(|id| Arc::from(id.uri_san)),
            local: tls
                .creds
                .current()
                .identity
                .as_ref()
                .map(|id| Arc::from(id.to_string())),
        };
        Ok(UpstreamIo::Tls(Box::new(stream), identity))
    }
}

/// An upstream connection: plaintext or TLS.
#[derive(Debug)]
pub enum UpstreamIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, and the identities the handshake established.
    Tls(
        Box<tokio_rustls::client::TlsStream<TcpStream>>,
        UpstreamIdentity,
    ),
}

/// The SPIFFE identities of a TLS upstream connection (URI SANs): the server's verified
/// certificate and the one Weft presented. Set on every response the connection carries (the
/// HTTP client copies it into the response's extensions), for Istio's source-side principals.
#[derive(Debug, Clone, Default)]
pub struct UpstreamIdentity {
    /// The upstream's certificate.
    pub peer: Option<Arc<str>>,
    /// Weft's own certificate on the connection.
    pub local: Option<Arc<str>>,
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        match self {
            UpstreamIo::Plain(s) => s.connected(),
            UpstreamIo::Tls(s, identity) => {
                let (tcp, conn) = s.get_ref();
                let c = tcp.connected().extra(identity.clone());
                if conn.alpn_protocol() == Some(b"h2") {
                    c.negotiated_h2()
                } else {
                    c
                }
            }
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s, _) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An upstream connection of the HTTP client: HTTP/1 responses are read through a
/// [`ResponseChecker`] (bare CR/LF in a head, a broken chunked body: the read fails with an
/// `UpstreamFramingError` before hyper parses the bytes, and the request is answered 502).
#[derive(Debug)]
pub struct HttpIo {
    io: UpstreamIo,
    checker: Option<Box<ResponseChecker>>,
}

impl HttpIo {
    /// Wraps `io`; `http1`: check its responses (never for HTTP/2).
    pub fn new(io: UpstreamIo, http1: bool) -> HttpIo {
        let h2 = match &io {
            UpstreamIo::Tls(s, _) => s.get_ref().1.alpn_protocol() == Some(b"h2"),
            UpstreamIo::Plain(_) => false,
        };
        HttpIo {
            io,
            checker: (http1 && !h2).then(Box::default),
        }
    }
}

impl Connection for HttpIo {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl AsyncRead for HttpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(checker)) = (&polled, this.checker.as_mut())
            && let Err(e) = checker.on_read(&buf.filled()[before..])
        {
            return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)));
        }
        polled
    }
}

impl AsyncWrite for HttpIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(checker)) = (&polled, this.checker.as_mut()) {
            checker.on_write(&buf[..*n]);
        }
        polled
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(checker)) = (&polled, this.checker.as_mut())
            && *n > 0
            && let Some(first) = bufs.iter().find(|b| !b.is_empty())
        {
            checker.on_write(&first[..first.len().min(*n)]);
        }
        polled
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
