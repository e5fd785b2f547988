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
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{parse_cert_key, CertKey, TlsError};
use crate::config::{CertPair, CertUser, TlsSettings};
use crate::metrics::{Metrics, Reload};

/// Where the certificates come from.
#[derive(Debug, Clone)]
enum Source {
    /// Generated at start (no files configured): nothing to reload.
    Generated,
    Files {
        default: CertPair,
        sni: Vec<CertPair>,
    },
}

#[derive(Debug)]
struct Certs {
    default: Arc<CertifiedKey>,
    /// Lower-case DNS names (`*.example.com` for wildcards) to their certificate.
    by_name: HashMap<String, Arc<CertifiedKey>>,
    /// SHA-256 over every file's bytes: a change event that changed nothing reloads nothing.
    digest: [u8; 32],
}

#[derive(Debug)]
pub struct CertStore {
    source: Source,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Certs>>,
}

impl CertStore {
    /// Loads the configured certificates, or generates a self-signed one when none are
    /// configured (then `generated` is true, for the caller's warning).
    pub fn load(
        settings: &TlsSettings,
        provider: Arc<CryptoProvider>,
    ) -> Result<(Arc<CertStore>, bool), TlsError> {
        let (source, generated) = match (&settings.cert, &settings.key) {
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
        let certs = build(&source, &provider)?;
        let store = CertStore {
            source,
            provider,
            current: RwLock::new(Arc::new(certs)),
        };
        Ok((Arc::new(store), generated))
    }

    /// Reads the files again. On success the new certificates serve every handshake from now
    /// on and `Ok(true)` says something changed; on error the old ones stay.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let certs = build(&self.source, &self.provider)?;
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

    fn certs(&self) -> Arc<Certs> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Watches the directories holding the certificate files and reloads on any change there.
    /// Directories, not files: Kubernetes updates a Secret volume by swapping a `..data`
    /// symlink, which replaces every file at once without writing to any of them.
    pub fn watch(self: &Arc<Self>, metrics: Arc<Metrics>) -> Result<(), TlsError> {
        let Source::Files { default, sni } = &self.source else {
            return Ok(());
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

fn build(source: &Source, provider: &CryptoProvider) -> Result<Certs, TlsError> {
    let mut digest = Sha256::new();
    let (default, sni) = match source {
        Source::Generated => {
            let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            let pair = super::self_signed(&names)?.cert_key()?;
            (certified(pair, provider)?, Vec::new())
        }
        Source::Files { default, sni } => {
            let mut load = |pair: &CertPair| -> Result<Arc<CertifiedKey>, TlsError> {
                // Read once: the digest and the parse see the same bytes, even mid-rotation.
                let read = |file: &PathBuf| {
                    std::fs::read(file).map_err(|e| TlsError::File {
                        file: file.clone(),
                        why: e.to_string(),
                    })
                };
                let (cert, key) = (read(&pair.cert)?, read(&pair.key)?);
                digest.update(&cert);
                digest.update(&key);
                let parsed = parse_cert_key((&pair.cert, &cert), (&pair.key, &key))?;
                let key = certified(parsed, provider).map_err(|e| TlsError::File {
                    file: pair.key.clone(),
                    why: e.to_string(),
                })?;
                Ok(key)
            };
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
    })
}

fn certified(pair: CertKey, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    Ok(Arc::new(CertifiedKey::from_der(
        pair.chain, pair.key, provider,
    )?))
}

/// The DNS names in a certificate's subjectAltName, as written (SNI selects by them).
pub fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => san_names(&cert, false),
        Err(_) => Vec::new(),
    }
}

/// The names a certificate answers to, lower-cased: the DNS names and IP addresses of its
/// subjectAltName (what `doctor` and `probe` compare with the name clients use).
pub fn subject_alt_names(cert: &X509Certificate<'_>) -> Vec<String> {
    san_names(cert, true)
        .into_iter()
        .map(|n| n.to_ascii_lowercase())
        .collect()
}

fn san_names(cert: &X509Certificate<'_>, with_ips: bool) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) if with_ips => ip_from_bytes(b).map(|ip| ip.to_string()),
            _ => None,
        })
        .collect()
}

fn ip_from_bytes(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// The user a client certificate names: its subject's common name, or the local part of its
/// first rfc822Name (email) in the subjectAltName whose domain is one of `email_domains`.
/// The domain matters: a CA may certify addresses in domains whose users are not ours, and
/// `alice@elsewhere.example` is not `alice`.
pub fn certificate_user(
    der: &CertificateDer<'_>,
    field: CertUser,
    email_domains: &[String],
) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    match field {
        CertUser::Cn => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        CertUser::Email => {
            let san = cert.subject_alternative_name().ok()??;
            san.value.general_names.iter().find_map(|n| match n {
                GeneralName::RFC822Name(mail) => mail
                    .rsplit_once('@')
                    .filter(|(_, domain)| {
                        email_domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
                    })
                    .map(|(local, _)| local.to_string()),
                _ => None,
            })
        }
    }
}

/// A certificate's subject, e.g. `CN=alice, O=Example`, for the logs.
pub fn subject(der: &CertificateDer<'_>) -> Option<String> {
    X509Certificate::from_der(der)
        .ok()
        .map(|(_, c)| c.subject().to_string())
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

    #[test]
    fn an_email_names_a_user_only_in_a_listed_domain() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        for mail in ["alice@evil.example", "bob@Example.ORG"] {
            params
                .subject_alt_names
                .push(rcgen::SanType::Rfc822Name(mail.try_into().expect("email")));
        }
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let der = cert.der();
        let user = |domains: &[&str]| {
            let domains: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
            certificate_user(der, CertUser::Email, &domains)
        };
        assert_eq!(user(&["example.org"]).as_deref(), Some("bob"));
        assert_eq!(
            user(&["EVIL.example", "example.org"]).as_deref(),
            Some("alice")
        );
        assert_eq!(user(&["sub.example.org", "example"]), None);
        assert_eq!(user(&[]), None);
    }
}
