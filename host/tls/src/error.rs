//! Errors of the TLS layer; each names the file (or peer) it is about.

use std::path::PathBuf;

/// Why TLS material or a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The certificate is outside its validity period.
    #[error("{}: certificate is not valid now (valid {not_before} .. {not_after})", path.display())]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// Start of validity (RFC 3339).
        not_before: String,
        /// End of validity (RFC 3339).
        not_after: String,
    },
    /// The private key does not belong to the certificate.
    #[error("{}: private key does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The certificate's identity is not acceptable.
    #[error("{}: {source}", path.display())]
    Identity {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        source: crate::peer::SanError,
    },
    /// The certificate does not chain to the trust bundle.
    #[error("{}: certificate does not chain to the trust bundle {}: {why}", cert.display(), bundle.display())]
    Untrusted {
        /// The certificate file.
        cert: PathBuf,
        /// The bundle file.
        bundle: PathBuf,
        /// webpki's reason.
        why: String,
    },
    /// A rustls configuration could not be built.
    #[error("TLS configuration: {0}")]
    Rustls(String),
    /// The CA refused or failed an operation.
    #[error("CA: {0}")]
    Ca(String),
}
