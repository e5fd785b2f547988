//! The gateway's certificates: a default one plus any chosen by SNI, swapped atomically on
//! reload so sessions are never dropped.
//!
//! The store is the `ServerConfig`'s certificate resolver, and every session's config is a clone
//! of the base config sharing the same resolver `Arc`: after a reload, the next handshake of any
//! session (a new control connection, or a data connection of an old session) gets the new
//! certificate, while connections already up keep the keys they negotiated.
//!
//! A reload that fails (a missing file, a half-written key, a key that does not match its
//! certificate) changes nothing: the old certificates stay and the caller logs why.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::{Event, EventKind, RecursiveMode, Watcher};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::x509::dns_names;

use super::{parse_cert_key, CertKey, TlsError};
use crate::config::{AcmeCert, CertPair, TlsSettings};
use crate::metrics::{Metrics, Reload};

/// Where the certificates come from.
#[derive(Debug, Clone)]
enum Source {
    /// Generated (no files configured), made anew at each reload and at half its lifetime.
    Generated,
    Files {
        default: CertPair,
        sni: Vec<CertPair>,
    },
    /// Written by the ACME client (`tls.acme`): the default certificate first, then the SNI
    /// ones. One not there yet (or unreadable) is served by a temporary self-signed
    /// certificate for its names until its order completes.
    Acme(Vec<AcmeCert>),
}

#[derive(Debug)]
struct Certs {
    default: Arc<CertifiedKey>,
    /// Lower-case DNS names (`*.example.com` for wildcards) to their certificate.
    by_name: HashMap<String, Arc<CertifiedKey>>,
    /// SHA-256 over every file's bytes: a change event that changed nothing reloads nothing.
    digest: [u8; 32],
    /// How many are temporary stand-ins for ACME certificates not issued yet.
    temporary: usize,
    /// Each ACME certificate's issued key, in `Source::Acme`'s order (`None`: a stand-in
    /// serves), kept through a reload that cannot read its files.
    issued: Vec<Option<Arc<CertifiedKey>>>,
}

#[derive(Debug)]
pub struct CertStore {
    source: Source,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Certs>>,
    /// SIGHUP's word to the ACME renewal loops: look at your certificate now.
    nudge: tokio::sync::Notify,
    reloading: std::sync::Mutex<()>,
}

impl CertStore {
    /// Loads the configured certificates, or generates a self-signed one when none are
    /// configured (then `generated` is true, for the caller's warning).
    pub fn load(
        settings: &TlsSettings,
        provider: Arc<CryptoProvider>,
    ) -> Result<(Arc<CertStore>, bool), TlsError> {
        let (source, generated) = match (&settings.cert, &settings.key) {
            _ if settings.acme.is_some() => (
                Source::Acme(
                    settings
                        .acme
                        .iter()
                        .flat_map(|a| a.certificates())
                        .collect(),
                ),
                false,
            ),
            (Some(cert), Some(key)) => (
                Source::Files {
                    default: CertPair {
                        cert: cert.clone(),
                        key: key.clone(),
                    },
                    sni: settings.sni.clone(),
                },
                false,
            ),
            _ => (Source::Generated, true),
        };
        let certs = build(&source, &provider, None)?;
        let store = CertStore {
            source,
            provider,
            current: RwLock::new(Arc::new(certs)),
            nudge: tokio::sync::Notify::new(),
            reloading: std::sync::Mutex::new(()),
        };
        Ok((Arc::new(store), generated))
    }

    /// Reads the files again. On success the new certificates serve every handshake from now
    /// on and `Ok(true)` says something changed; on error the old ones stay.
    pub fn reload(&self) -> Result<bool, TlsError> {
        // One reload at a time, read to swap: a SIGHUP's read of the old files must not land
        // after an ACME order's reload of the new ones.
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let certs = build(&self.source, &self.provider, Some(&self.certs()))?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.digest == certs.digest {
            return Ok(false);
        }
        *current = Arc::new(certs);
        Ok(true)
    }

    /// Reloads, logs and counts the outcome (for SIGHUP and the file watcher).
    pub fn reload_and_log(&self, why: &str, metrics: &Metrics) {
        match self.reload() {
            Ok(true) => {
                metrics.reloaded(Reload::changed);
                info!(trigger = why, "certificates reloaded")
            }
            Ok(false) => {
                metrics.reloaded(Reload::unchanged);
                debug!(trigger = why, "certificates unchanged")
            }
            Err(e) => {
                metrics.reloaded(Reload::failed);
                warn!(trigger = why, error = %e, "certificate reload failed; keeping the old certificates")
            }
        }
    }

    /// SIGHUP: reloads the files, and has every ACME certificate checked for renewal now.
    pub fn sighup(&self, metrics: &Metrics) {
        self.reload_and_log("SIGHUP", metrics);
        self.nudge.notify_waiters();
    }

    /// Resolves at the next SIGHUP.
    pub(crate) async fn acme_nudged(&self) {
        self.nudge.notified().await
    }

    /// When each certificate now in use expires (Unix seconds), by name: `default` for the
    /// default one, and each SNI certificate by the first of its names (sorted). For
    /// `ftpsgate_certificate_expiry_timestamp_seconds`, read at scrape time so reloads show.
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let certs = self.certs();
        let not_after = |key: &CertifiedKey| {
            let der = key.end_entity_cert().ok()?;
            let (_, cert) = X509Certificate::from_der(der).ok()?;
            Some(cert.validity().not_after.timestamp())
        };
        let mut out: Vec<(String, i64)> = Vec::new();
        if let Some(t) = not_after(&certs.default) {
            out.push(("default".into(), t));
        }
        let mut names: Vec<(&String, &Arc<CertifiedKey>)> = certs.by_name.iter().collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        let mut seen: Vec<&Arc<CertifiedKey>> = Vec::new();
        for (name, key) in names {
            if seen.iter().any(|k| Arc::ptr_eq(k, key)) {
                continue;
            }
            seen.push(key);
            if let Some(t) = not_after(key) {
                out.push((name.clone(), t));
            }
        }
        out
    }

    /// The default certificate chain now in use.
    pub fn default_chain(&self) -> Vec<CertificateDer<'static>> {
        self.certs().default.cert.clone()
    }

    /// How many ACME certificates are still served by a temporary stand-in (`/readyz` is not
    /// ready while any is).
    pub fn temporary(&self) -> usize {
        self.certs().temporary
    }

    fn certs(&self) -> Arc<Certs> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Watches the directories holding the certificate files and reloads on any change there.
    /// Directories, not files: Kubernetes updates a Secret volume by swapping a `..data`
    /// symlink, which replaces every file at once without writing to any of them.
    /// A generated certificate has no files: it is renewed at half its lifetime instead.
    pub fn watch(self: &Arc<Self>, metrics: Arc<Metrics>) -> Result<(), TlsError> {
        let (default, sni) = match &self.source {
            Source::Files { default, sni } => (default, sni),
            Source::Generated => {
                let store = Arc::clone(self);
                let half = Duration::from_secs(u64::from(super::GENERATED_DAYS) * 86_400 / 2);
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(half).await;
                        store
                            .reload_and_log("generated certificate at half its lifetime", &metrics);
                    }
                });
                return Ok(());
            }
            Source::Acme(_) => return Ok(()),
        };
        let files: Vec<&PathBuf> = std::iter::once(default)
            .chain(sni)
            .flat_map(|p| [&p.cert, &p.key])
            .collect();
        let names: Vec<OsString> = files
            .iter()
            .filter_map(|f| f.file_name().map(OsString::from))
            .collect();
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(|d| d.to_path_buf()))
            .map(|d| {
                if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d
                }
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            // Only changes to the certificate files count, or to Kubernetes' `..data` style
            // entries; anything else in the directory (a log file, say) must not trigger a
            // reload, let alone a loop of them.
            let Ok(event) = event else { return };
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            let relevant = event.paths.iter().any(|p| {
                p.file_name().is_some_and(|n| {
                    names.iter().any(|w| w == n) || n.to_string_lossy().starts_with("..")
                })
            });
            if relevant {
                let _ = tx.send(());
            }
        })
        .map_err(|e| TlsError::Config(format!("cannot watch the certificate files: {e}")))?;
        for dir in &dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|e| TlsError::Config(format!("cannot watch {}: {e}", dir.display())))?;
        }
        let store = Arc::clone(self);
        tokio::spawn(async move {
            // The watcher lives as long as this task.
            let _watcher = watcher;
            while rx.recv().await.is_some() {
                // A rotation writes several files: wait for the burst to end, then reload once.
                tokio::time::sleep(Duration::from_millis(300)).await;
                while rx.try_recv().is_ok() {}
                store.reload_and_log("files changed", &metrics);
            }
        });
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs();
        let chosen = hello.server_name().and_then(|name| {
            let name = name.to_ascii_lowercase();
            certs
                .by_name
                .get(&name)
                .or_else(|| certs.by_name.get(&super::wildcard_of(&name)?))
        });
        Some(Arc::clone(chosen.unwrap_or(&certs.default)))
    }
}

/// Reads `source` into certificates. `previous` is what serves now: an issued ACME certificate
/// whose files cannot be read (a moment's EMFILE, a read between an order's two writes) stays
/// rather than giving way to a stand-in that nothing would replace until the next order.
fn build(
    source: &Source,
    provider: &CryptoProvider,
    previous: Option<&Certs>,
) -> Result<Certs, TlsError> {
    let mut digest = Sha256::new();
    let mut temporary = 0;
    let mut issued = Vec::new();
    let mut load = |pair: &CertPair| -> Result<Arc<CertifiedKey>, TlsError> {
        // Read once: the digest and the parse see the same bytes, even mid-rotation.
        let read = |file: &PathBuf| {
            std::fs::read(file).map_err(|e| TlsError::File {
                file: file.clone(),
                why: e.to_string(),
            })
        };
        let read = (read(&pair.cert), read(&pair.key));
        for file in [&read.0, &read.1] {
            // A file not there yet counts too: its arrival is a change.
            digest.update(file.as_deref().unwrap_or(b"\0missing"));
        }
        let (cert, key) = (read.0?, read.1?);
        let parsed = parse_cert_key((&pair.cert, &cert), (&pair.key, &key))?;
        certified(parsed, provider).map_err(|e| TlsError::File {
            file: pair.key.clone(),
            why: e.to_string(),
        })
    };
    let (default, sni) = match source {
        Source::Generated => {
            let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            let pair = super::self_signed_for(&names, super::GENERATED_DAYS)?;
            // A new one each time: every reload renews it.
            digest.update(&pair.cert_pem);
            (certified(pair.cert_key()?, provider)?, Vec::new())
        }
        Source::Acme(certs) => {
            let mut keys = Vec::new();
            for (i, c) in certs.iter().enumerate() {
                let kept = previous.and_then(|p| p.issued.get(i).cloned().flatten());
                let key = match (load(&c.files), kept) {
                    (Ok(key), _) => {
                        issued.push(Some(Arc::clone(&key)));
                        key
                    }
                    (Err(e), Some(kept)) => {
                        warn!(error = %e, "an ACME certificate on disk cannot be read now; the one in use stays");
                        issued.push(Some(Arc::clone(&kept)));
                        kept
                    }
                    (Err(e), None) => {
                        if c.files.cert.exists() {
                            warn!(error = %e, "an ACME certificate on disk cannot be used; a new one is ordered");
                        }
                        temporary += 1;
                        issued.push(None);
                        let stand_in = super::self_signed_for(&c.names, super::GENERATED_DAYS)?;
                        certified(stand_in.cert_key()?, provider)?
                    }
                };
                keys.push((c.names.clone(), key));
            }
            let mut keys = keys.into_iter();
            let Some((_, default)) = keys.next() else {
                return Err(TlsError::Config("tls.acme names no certificate".into()));
            };
            (default, keys.collect())
        }
        Source::Files { default, sni } => {
            let default = load(default)?;
            let mut extra = Vec::new();
            for pair in sni {
                let key = load(pair)?;
                let names = dns_names(key.end_entity_cert()?);
                if names.is_empty() {
                    return Err(TlsError::File {
                        file: pair.cert.clone(),
                        why: "no DNS name in its subjectAltName to select it by SNI".into(),
                    });
                }
                extra.push((names, key));
            }
            (default, extra)
        }
    };
    let mut by_name = HashMap::new();
    for (names, key) in sni {
        for name in names {
            by_name.insert(name.to_ascii_lowercase(), Arc::clone(&key));
        }
    }
    Ok(Certs {
        default,
        by_name,
        digest: digest.finalize().into(),
        temporary,
        issued,
    })
}

fn certified(pair: CertKey, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    Ok(Arc::new(CertifiedKey::from_der(
        pair.chain, pair.key, provider,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::aws_lc_rs;

    fn pair(dir: &std::path::Path, sub: &str, names: &[&str]) -> CertPair {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let (cert, key) = super::super::self_signed(&names)
            .expect("rcgen")
            .write_to(&dir.join(sub))
            .expect("write");
        CertPair { cert, key }
    }

    #[test]
    fn a_broken_reload_keeps_the_old_certificate_and_a_good_one_replaces_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = pair(dir.path(), "a", &["one.test"]);
        let settings = TlsSettings {
            cert: Some(first.cert.clone()),
            key: Some(first.key.clone()),
            ..TlsSettings::default()
        };
        let provider = Arc::new(aws_lc_rs::default_provider());
        let (store, generated) = CertStore::load(&settings, provider).expect("load");
        assert!(!generated);
        let before = store.default_chain();
        assert!(
            !store.reload().expect("same files reload"),
            "nothing changed"
        );

        std::fs::write(&first.cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").expect("break");
        assert!(store.reload().is_err(), "a broken file is refused");
        assert_eq!(store.default_chain(), before, "the old certificate stays");

        let second = pair(dir.path(), "b", &["two.test"]);
        std::fs::copy(&second.cert, &first.cert).expect("swap cert");
        std::fs::copy(&second.key, &first.key).expect("swap key");
        assert!(store.reload().expect("good files reload"));
        assert_ne!(store.default_chain(), before);
        assert_eq!(dns_names(&store.default_chain()[0]), vec!["two.test"]);
    }

    #[tokio::test]
    async fn a_generated_certificate_lives_thirty_days_and_each_reload_renews_it() {
        let store = CertStore::load(
            &TlsSettings::default(),
            Arc::new(aws_lc_rs::default_provider()),
        )
        .expect("generated")
        .0;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let expiry = store.expiries()[0].1;
        assert!(
            expiry <= now + 30 * 86_400 && expiry > now + 29 * 86_400,
            "{expiry}"
        );
        let before = store.default_chain();
        assert!(store.reload().expect("renewed"), "a reload makes a new one");
        assert_ne!(store.default_chain(), before);
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = pair(dir.path(), "a", &["a.test"]);
        let b = pair(dir.path(), "b", &["b.test"]);
        let settings = TlsSettings {
            cert: Some(a.cert),
            key: Some(b.key),
            ..TlsSettings::default()
        };
        let err = CertStore::load(&settings, Arc::new(aws_lc_rs::default_provider()))
            .expect_err("mismatch refused");
        assert!(err.to_string().contains("key.pem"), "{err}");
    }
}
