//! `tls.acme.state_dir` on disk: the account key and the certificates, kept where only the
//! gateway's user can read them. The directory must be 0700 and every file 0600 (and the
//! gateway's own): anything looser is refused at start, since the account key lets whoever
//! reads it order and revoke certificates for our names.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use x509_parser::prelude::{FromDer, X509Certificate};

use super::AcmeError;
use crate::config::{AcmeCert, AcmeSettings};
use crate::private;
use crate::tls::x509::subject_alt_names;

/// Creates the state directory (0700) if it is missing, and refuses one that others can
/// read, or that holds a file or folder that others can.
pub(crate) fn prepare(settings: &AcmeSettings) -> Result<(), AcmeError> {
    create_private_dir(&settings.directory_state())?;
    check(&settings.state_dir, 3)
}

/// [`prepare`]'s check alone, creating nothing (for `doctor`).
pub(crate) fn check_state(settings: &AcmeSettings) -> Result<(), AcmeError> {
    check(&settings.state_dir, 3)
}

fn check(path: &Path, depth: u8) -> Result<(), AcmeError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| AcmeError::state(path, e))?;
    let loose = |why: String, want: &str| AcmeError::State {
        path: path.to_path_buf(),
        why: format!(
            "{why}: tls.acme.state_dir and all it holds must be {want} and owned by the \
             gateway's user"
        ),
    };
    if meta.is_dir() {
        if let Some(why) = private::exposed(&meta) {
            return Err(loose(why, "0700"));
        }
        if depth > 0 {
            for entry in std::fs::read_dir(path).map_err(|e| AcmeError::state(path, e))? {
                let entry = entry.map_err(|e| AcmeError::state(path, e))?;
                check(&entry.path(), depth - 1)?;
            }
        }
    } else if !meta.is_file() {
        return Err(loose("not a plain file".into(), "a plain file, 0600"));
    } else if let Some(why) = private::exposed(&meta) {
        return Err(loose(why, "a plain file, 0600"));
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), AcmeError> {
    private::create_dir(dir).map_err(|e| AcmeError::state(dir, e))
}

/// Writes `data` to `path` as a 0600 file, whole or not at all: into a temporary file beside
/// it, then renamed over it, so a crash mid-write leaves the old file.
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), AcmeError> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| AcmeError::state(path, e))
}

/// A certificate written by an earlier order, as far as renewal cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OnDisk {
    pub not_after: i64,
    pub serial: String,
}

/// The certificate on disk for `cert`, if there is one that covers exactly its names and
/// whose key is beside it; `None` means an order is needed now (missing, unreadable, the names
/// changed in the config, or a key that is not the certificate's: a crash between the two
/// writes of an order leaves the new key beside the old certificate).
pub(crate) fn on_disk(cert: &AcmeCert) -> Option<OnDisk> {
    let chain = std::fs::read(&cert.files.cert).ok()?;
    let key = std::fs::read(&cert.files.key).ok()?;
    usable(cert, &chain, &key).ok()
}

/// Checks a chain and key (PEM) as the store will load them, and that the certificate names
/// exactly `cert`'s names: what an order got is checked before it replaces what serves.
pub(crate) fn usable(cert: &AcmeCert, chain: &[u8], key: &[u8]) -> Result<OnDisk, String> {
    let pair = crate::tls::parse_cert_key((&cert.files.cert, chain), (&cert.files.key, key))
        .map_err(|e| e.to_string())?;
    let leaf = pair.chain.first().cloned().ok_or("no certificate")?;
    rustls::sign::CertifiedKey::from_der(pair.chain, pair.key, &crate::tls::provider())
        .map_err(|e| format!("the key is not the certificate's: {e}"))?;
    let (_, parsed) = X509Certificate::from_der(&leaf).map_err(|e| e.to_string())?;
    let mut has = subject_alt_names(&parsed);
    let mut want: Vec<String> = cert.names.iter().map(|n| n.to_ascii_lowercase()).collect();
    has.sort();
    want.sort();
    if has != want {
        return Err(format!(
            "it names {}, not {}",
            has.join(", "),
            want.join(", ")
        ));
    }
    Ok(OnDisk {
        not_after: parsed.validity().not_after.timestamp(),
        serial: parsed.raw_serial_as_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn settings(dir: &Path) -> AcmeSettings {
        AcmeSettings {
            state_dir: dir.join("acme"),
            domains: vec!["ftp.example.com".into()],
            ..AcmeSettings::default()
        }
    }

    #[test]
    fn a_new_state_dir_is_private_and_a_loose_one_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = settings(tmp.path());
        prepare(&s).expect("created");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").mode() & 0o777;
        assert_eq!(mode(&s.state_dir), 0o700);
        assert_eq!(mode(&s.directory_state()), 0o700);
        let cert = &s.certificates()[0];
        write_private(&cert.files.key, b"key").expect("write");
        assert_eq!(mode(&cert.files.key), 0o600);
        prepare(&s).expect("still private");

        std::fs::set_permissions(&cert.files.key, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let err = prepare(&s).expect_err("a readable key is refused");
        assert!(err.to_string().contains("key.pem"), "{err}");
        std::fs::set_permissions(&cert.files.key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        std::fs::set_permissions(&s.state_dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let err = prepare(&s).expect_err("a readable directory is refused");
        assert!(err.to_string().contains("0700"), "{err}");
    }

    #[test]
    fn a_certificate_for_other_names_is_not_the_one_on_disk() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = settings(tmp.path());
        let cert = &s.certificates()[0];
        assert_eq!(on_disk(cert), None, "nothing there yet");
        let other = crate::tls::self_signed(&["other.example.com".into()]).expect("rcgen");
        write_private(&cert.files.cert, other.cert_pem.as_bytes()).expect("write");
        write_private(&cert.files.key, other.key_pem.as_bytes()).expect("write");
        assert_eq!(on_disk(cert), None, "names differ: order anew");
        let right = crate::tls::self_signed(&["FTP.example.com".into()]).expect("rcgen");
        write_private(&cert.files.cert, right.cert_pem.as_bytes()).expect("write");
        assert_eq!(
            on_disk(cert),
            None,
            "the key beside it is another's: order anew"
        );
        write_private(&cert.files.key, right.key_pem.as_bytes()).expect("write");
        assert!(on_disk(cert).is_some_and(|d| d.not_after > 0 && !d.serial.is_empty()));
    }
}
