//! Credentials loaded from files and swapped atomically when the files change.
//!
//! A [`Credentials`] holds the current [`Material`] (certificate chain with its signing key, and
//! the trust bundle) behind an `ArcSwap`. It is the rustls certificate resolver itself, so each
//! new handshake takes whatever is current while established connections keep the session they
//! negotiated. The watcher ([`Credentials::watch`], a [`weft_watch::Watcher`]) follows the
//! files' directories (atomic renames and Kubernetes Secret `..data` symlink swaps included);
//! new material is validated first (parsable, key matches the certificate, certificate valid
//! now, no bad SAN) and a refusal is logged while the last good material keeps serving.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::RootCertStore;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::TlsError;
use crate::peer::{self, SanError};
use crate::spiffe::SpiffeId;

const DEBOUNCE: Duration = Duration::from_millis(200);

/// Where a credential set is read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CredentialFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// PEM trust bundle (root certificates).
    pub bundle: PathBuf,
}

/// One validated set of TLS material.
#[derive(Debug)]
pub struct Material {
    /// Certificate chain and signing key.
    pub certified: Arc<CertifiedKey>,
    /// Trust anchors for verifying peers.
    pub roots: Arc<RootCertStore>,
    /// Our own SPIFFE ID, when our certificate carries one.
    pub identity: Option<SpiffeId>,
    /// End of our certificate's validity, Unix seconds.
    pub not_after: i64,
    /// Start of our certificate's validity, Unix seconds.
    pub not_before: i64,
}

impl Material {
    /// Our trust domain, if our certificate has a SPIFFE ID.
    pub fn trust_domain(&self) -> Option<&str> {
        self.identity.as_ref().map(SpiffeId::trust_domain)
    }
}

/// A rotating credential set; the rustls resolver for both sides.
#[derive(Debug)]
pub struct Credentials {
    files: CredentialFiles,
    current: ArcSwap<Material>,
    /// Successful rotations since start.
    pub rotations: AtomicU64,
    /// Refused rotations since start.
    pub refusals: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Rotation attempts so far (successful or refused), for those waiting on one.
    attempts: tokio::sync::watch::Sender<u64>,
    /// The file watcher, while [`Credentials::watch`] is on; it stops with `self`.
    watcher: Mutex<Option<weft_watch::Watcher>>,
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses every certificate of a PEM file.
pub fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        what: format!("not a PEM certificate file: {e}"),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// Builds a root store from a PEM bundle.
pub fn parse_bundle(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, c) in parse_certs(path, pem)?.into_iter().enumerate() {
        roots.add(c).map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("certificate #{} is not a usable trust anchor: {e}", i + 1),
        })?;
    }
    Ok(roots)
}

/// Validates and assembles material from PEM contents (`files` only names them in errors).
pub fn material_from_pem(
    files: &CredentialFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
    bundle_pem: &[u8],
    now: i64,
) -> Result<Material, TlsError> {
    let chain = parse_certs(&files.cert, cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
        path: files.key.clone(),
        what: format!("no usable PRIVATE KEY block: {e}"),
    })?;
    let signing = crate::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Pem {
            path: files.key.clone(),
            what: format!("unsupported private key: {e}"),
        })?;
    let leaf = chain[0].clone();
    let certified = CertifiedKey::new(chain, signing);
    if certified.keys_match().is_err() {
        return Err(TlsError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        });
    }
    let facts = peer::facts(&leaf).map_err(|source| TlsError::Identity {
        path: files.cert.clone(),
        source,
    })?;
    if now < facts.not_before || now >= facts.not_after {
        return Err(TlsError::Expired {
            path: files.cert.clone(),
            not_before: rfc3339(facts.not_before),
            not_after: rfc3339(facts.not_after),
        });
    }
    if facts.has_nul {
        return Err(TlsError::Identity {
            path: files.cert.clone(),
            source: SanError::Nul,
        });
    }
    // Our own certificate need not be a SPIFFE SVID (e.g. an ingress certificate), but when it
    // has URI SANs it must be a valid one.
    let identity = if facts.uri_sans.is_empty() {
        None
    } else {
        Some(
            peer::identity(&leaf)
                .map_err(|source| TlsError::Identity {
                    path: files.cert.clone(),
                    source,
                })?
                .spiffe,
        )
    };
    let roots = parse_bundle(&files.bundle, bundle_pem)?;
    Ok(Material {
        certified: Arc::new(certified),
        roots: Arc::new(roots),
        identity,
        not_after: facts.not_after,
        not_before: facts.not_before,
    })
}

/// Reads and validates the three files.
pub fn load_material(files: &CredentialFiles) -> Result<Material, TlsError> {
    let cert = read(&files.cert)?;
    let key = read(&files.key)?;
    let bundle = read(&files.bundle)?;
    material_from_pem(files, &cert, &key, &bundle, unix_now())
}

/// Writes `data` to `path` (via a temporary file and a rename, so a watcher never sees half a
/// file); `private` files get mode 0600.
pub fn write_file(path: &Path, data: &str, private: bool) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    // A stale temporary file (or a symlink planted there) is removed, and the new one is
    // created exclusively with its final mode: a private key is never readable by others,
    // not even between the write and a chmod.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(data.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)
}

/// RFC 3339 (UTC, seconds) for messages.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

impl Credentials {
    /// Loads the files (refusing bad material with an error naming the file).
    pub fn load(files: CredentialFiles) -> Result<Arc<Credentials>, TlsError> {
        let m = load_material(&files)?;
        Ok(Arc::new(Credentials::new(files, m)))
    }

    fn new(files: CredentialFiles, m: Material) -> Credentials {
        Credentials {
            files,
            current: ArcSwap::from_pointee(m),
            rotations: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            last_error: Mutex::new(None),
            attempts: tokio::sync::watch::Sender::new(0),
            watcher: Mutex::new(None),
        }
    }

    /// Credentials held in memory only (the CA endpoint's own certificate); `label` names them
    /// in errors. They are never reloaded.
    pub fn from_pem(
        label: &str,
        cert_pem: &[u8],
        key_pem: &[u8],
        bundle_pem: &[u8],
    ) -> Result<Arc<Credentials>, TlsError> {
        let files = CredentialFiles {
            cert: PathBuf::from(format!("<{label} certificate>")),
            key: PathBuf::from(format!("<{label} key>")),
            bundle: PathBuf::from(format!("<{label} bundle>")),
        };
        let m = material_from_pem(&files, cert_pem, key_pem, bundle_pem, unix_now())?;
        Ok(Arc::new(Credentials::new(files, m)))
    }

    /// The files this set is read from.
    pub fn files(&self) -> &CredentialFiles {
        &self.files
    }

    /// The current material.
    pub fn current(&self) -> Arc<Material> {
        self.current.load_full()
    }

    /// The last refused rotation's error, if the latest attempt failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock() = e;
    }

    /// Counts rotation attempts ([`Credentials::reload`] calls, successful or refused): wait on
    /// `changed()` to learn that the files were looked at again.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.attempts.subscribe()
    }

    /// Reads the files again; valid new material replaces the current one, otherwise the
    /// error is returned (and recorded) and the current material stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let result = self.try_reload();
        self.attempts.send_modify(|n| *n += 1);
        result
    }

    fn try_reload(&self) -> Result<(), TlsError> {
        match load_material(&self.files) {
            Ok(m) => {
                self.current.store(Arc::new(m));
                self.rotations.fetch_add(1, Ordering::Relaxed);
                self.set_error(None);
                tracing::info!(cert = %self.files.cert.display(), "TLS credentials rotated");
                Ok(())
            }
            Err(e) => {
                self.refusals.fetch_add(1, Ordering::Relaxed);
                self.set_error(Some(e.to_string()));
                tracing::error!(error = %e, "new TLS credentials refused; the previous ones keep serving");
                Err(e)
            }
        }
    }

    /// Watches the files' directories and reloads when their content changed, for as long as
    /// `self` is alive: the watcher belongs to `self`, and the task, holding only a weak
    /// reference, ends when it stops. Calling it again replaces the watcher. Must run inside a
    /// tokio runtime.
    pub fn watch(self: &Arc<Self>) {
        let files = [&self.files.cert, &self.files.key, &self.files.bundle].map(PathBuf::clone);
        let (watcher, mut changes) = match weft_watch::Watcher::new(files, DEBOUNCE) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch TLS files; rotation needs a reload");
                return;
            }
        };
        *self.watcher.lock() = Some(watcher);
        let weak: Weak<Credentials> = Arc::downgrade(self);
        tokio::spawn(async move {
            // Ends when the watcher is dropped (with `self`, or replaced by another `watch`).
            while changes.recv().await.is_some() {
                let Some(creds) = weak.upgrade() else { return };
                // A refusal is logged and recorded; the current material keeps serving.
                let _ = creds.reload();
            }
        });
    }
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().certified.clone())
    }
}

impl ResolvesClientCert for Credentials {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_ca::TestCa;

    fn write(dir: &Path, name: &str, data: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, data).expect("write");
        p
    }

    #[test]
    fn loads_valid_and_refuses_mismatch_and_expired() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = TestCa::new("cluster.local");
        let a = ca.issue("spiffe://cluster.local/ns/a/sa/b", Duration::from_secs(600));
        let b = ca.issue("spiffe://cluster.local/ns/a/sa/c", Duration::from_secs(600));
        let files = CredentialFiles {
            cert: write(dir.path(), "cert.pem", &a.cert_pem),
            key: write(dir.path(), "key.pem", &a.key_pem),
            bundle: write(dir.path(), "bundle.pem", &ca.bundle_pem()),
        };
        let creds = Credentials::load(files.clone()).expect("valid");
        assert_eq!(
            creds
                .current()
                .identity
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("spiffe://cluster.local/ns/a/sa/b")
        );
        // Key of another certificate: refused, old material stays.
        std::fs::write(&files.key, &b.key_pem).expect("write");
        let err = creds.reload().expect_err("mismatch");
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("key.pem"), "{err}");
        assert!(creds.current().identity.is_some());
        // Expired certificate: refused with the file named.
        let now = unix_now();
        let e = material_from_pem(
            &files,
            a.cert_pem.as_bytes(),
            a.key_pem.as_bytes(),
            ca.bundle_pem().as_bytes(),
            now + 10_000,
        )
        .expect_err("expired");
        assert!(matches!(e, TlsError::Expired { .. }));
        assert!(e.to_string().contains("cert.pem"), "{e}");
        // Garbage.
        let e = material_from_pem(&files, b"nope", b"", b"", now).expect_err("garbage");
        assert!(matches!(e, TlsError::Pem { .. }), "{e}");
    }

    fn identity(creds: &Credentials) -> Option<String> {
        creds.current().identity.as_ref().map(ToString::to_string)
    }

    /// Waits (on the attempt counter) until `done` holds; the timeout only guards a hang.
    async fn until(attempts: &mut tokio::sync::watch::Receiver<u64>, done: impl Fn() -> bool) {
        let wait = async {
            while !done() {
                attempts.changed().await.expect("credentials alive");
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("reloaded within 10 s");
    }

    /// Rotation through the watcher: waits on the attempt counter, never on a clock.
    #[tokio::test]
    async fn watch_rotates_and_refuses() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = TestCa::new("cluster.local");
        let a = ca.issue("spiffe://cluster.local/ns/a/sa/a", Duration::from_secs(600));
        let b = ca.issue("spiffe://cluster.local/ns/a/sa/b", Duration::from_secs(600));
        let files = CredentialFiles {
            cert: write(dir.path(), "cert.pem", &a.cert_pem),
            key: write(dir.path(), "key.pem", &a.key_pem),
            bundle: write(dir.path(), "bundle.pem", &ca.bundle_pem()),
        };
        let creds = Credentials::load(files.clone()).expect("valid");
        let mut attempts = creds.subscribe();
        creds.watch();

        // New certificate and key, written the way the agent writes them.
        write_file(&files.key, &b.key_pem, true).expect("key");
        write_file(&files.cert, &b.cert_pem, false).expect("cert");
        until(&mut attempts, || {
            creds.rotations.load(Ordering::Relaxed) == 1
        })
        .await;
        assert_eq!(
            identity(&creds).as_deref(),
            Some("spiffe://cluster.local/ns/a/sa/b")
        );
        assert_eq!(creds.last_error(), None);

        // A key that does not match: refused, the current material keeps serving.
        let refused = creds.refusals.load(Ordering::Relaxed);
        write_file(&files.key, &a.key_pem, true).expect("key");
        until(&mut attempts, || {
            creds.refusals.load(Ordering::Relaxed) > refused
        })
        .await;
        assert_eq!(creds.rotations.load(Ordering::Relaxed), 1);
        assert!(
            creds.last_error().is_some_and(|e| e.contains("key.pem")),
            "{:?}",
            creds.last_error()
        );
        assert_eq!(
            identity(&creds).as_deref(),
            Some("spiffe://cluster.local/ns/a/sa/b")
        );
    }
}
