//! TLS toward clients: certificates, the base `ServerConfig`, and the per-FTP-session clone that
//! binds data connections to their control connection. TLS toward backends is in [`backend`];
//! data connections' TLS, both ways, in `data`.

pub mod backend;
pub mod binding;
pub(crate) mod data;
pub mod store;
mod ticket_hold;
pub mod x509;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{CommonState, HandshakeKind, ProtocolVersion, RootCertStore, ServerConfig};
use thiserror::Error;

use crate::config::{ClientAuth, ReuseMode, TlsSettings, TlsVersion};
use store::CertStore;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{file}: {why}")]
    File { file: PathBuf, why: String },
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Config(String),
}

/// `(version, resumed)` of a TLS connection, for logs and the audit log.
pub type TlsFacts = (ProtocolVersion, bool);

/// The [`TlsFacts`] of a connection whose handshake is over.
pub(crate) fn summary(conn: &CommonState) -> Option<TlsFacts> {
    Some((
        conn.protocol_version()?,
        conn.handshake_kind() == Some(HandshakeKind::Resumed),
    ))
}

/// A certificate chain and its key, DER-encoded.
pub struct CertKey {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// A freshly generated self-signed pair, in PEM.
pub struct SelfSigned {
    pub cert_pem: String,
    pub key_pem: String,
}

/// How long a certificate `ftpsgate cert` writes lasts unless `--days` says otherwise: the
/// longest a public CA may issue (397 days, CA/Browser Forum), so a test key is not kept for
/// ever by default.
pub const CERT_DAYS: u32 = 397;

/// How long the certificate `run` generates in memory (no certificate configured) lasts. It is
/// made anew at every reload and every [`GENERATED_DAYS`] / 2 days, so it never expires while
/// the process lives, and a key that lived in memory is never valid for long after.
pub const GENERATED_DAYS: u32 = 30;

/// Generates a self-signed ECDSA P-256 certificate for `names` (DNS names or IP addresses),
/// valid for [`CERT_DAYS`]. See [`self_signed_for`].
pub fn self_signed(names: &[String]) -> Result<SelfSigned, TlsError> {
    self_signed_for(names, CERT_DAYS)
}

/// Generates a self-signed ECDSA P-256 certificate for `names`, valid for `days`, made as a
/// careful operator would: the first name as the subject's CN (what a client's trust dialog
/// shows) and every name in the subjectAltName; valid from an hour ago (a client whose clock
/// is a little behind still accepts it); a random 128-bit serial from the crypto provider;
/// the usages of a TLS server certificate (digitalSignature, serverAuth) and `CA:FALSE`.
pub fn self_signed_for(names: &[String], days: u32) -> Result<SelfSigned, TlsError> {
    use rcgen::{DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SerialNumber};
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    if let Some(first) = names.first() {
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    let mut serial = [0u8; 16];
    provider()
        .secure_random
        .fill(&mut serial)
        .map_err(|_| TlsError::Config("no random bytes for a serial number".into()))?;
    // Positive, and 16 bytes long whatever the draw (DER drops leading zero bytes).
    serial[0] = (serial[0] & 0x7f) | 0x40;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.is_ca = IsCa::ExplicitNoCa;
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(SelfSigned {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl SelfSigned {
    /// Writes `cert.pem` and `key.pem` (mode 0600) into `dir`.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, &self.cert_pem)?;
        write_private(&key, self.key_pem.as_bytes())?;
        Ok((cert, key))
    }

    pub fn cert_key(&self) -> Result<CertKey, TlsError> {
        let file = || PathBuf::from("<generated>");
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::File {
                file: file(),
                why: e.to_string(),
            })?;
        let key =
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| TlsError::File {
                file: file(),
                why: e.to_string(),
            })?;
        Ok(CertKey { chain, key })
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// A PEM error in words an operator can act on (the library's own names markers as bytes).
fn pem_why(e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "a PEM block is cut short: no `-----END {}-----` line (a half-written file?)",
            String::from_utf8_lossy(&end_marker)
        ),
        Error::IllegalSectionStart { line } => {
            format!("bad PEM line `{}`", String::from_utf8_lossy(&line))
        }
        Error::NoItemsFound => "no PEM block of the expected kind".into(),
        other => other.to_string(),
    }
}

/// Loads a PEM chain and key from disk.
pub fn load_cert_key(cert: &Path, key: &Path) -> Result<CertKey, TlsError> {
    let read = |file: &Path| {
        std::fs::read(file).map_err(|e| TlsError::File {
            file: file.into(),
            why: e.to_string(),
        })
    };
    parse_cert_key((cert, &read(cert)?), (key, &read(key)?))
}

/// Parses a PEM chain and key already read from `(path, bytes)`; errors name the path.
pub fn parse_cert_key(cert: (&Path, &[u8]), key: (&Path, &[u8])) -> Result<CertKey, TlsError> {
    let file_err = |file: &Path, why: String| TlsError::File {
        file: file.into(),
        why,
    };
    let chain = CertificateDer::pem_slice_iter(cert.1)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(cert.0, pem_why(e)))?;
    if chain.is_empty() {
        return Err(file_err(cert.0, "no CERTIFICATE block found".into()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(key.1).map_err(|e| file_err(key.0, pem_why(e)))?;
    Ok(CertKey {
        chain,
        key: key_der,
    })
}

/// The crypto provider for every TLS config toward clients. Explicit instead of the process
/// default: libunftp and suppaftp pull in rustls too, and two enabled providers would leave the
/// default ambiguous.
/// The wildcard name that covers `name`, as certificates use them (RFC 6125 §6.4.3: one whole
/// label): `a.example.com` → `*.example.com`. `None` for a name without a parent or with an
/// empty first label. SNI routes, SNI certificates and `doctor` all match through this.
pub fn wildcard_of(name: &str) -> Option<String> {
    let (label, parent) = name.split_once('.')?;
    (!label.is_empty() && !parent.is_empty()).then(|| format!("*.{parent}"))
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// Builds the gateway's base server config around the certificate store. Sessions never use it
/// directly: see [`session_config`].
pub fn server_config(
    store: Arc<CertStore>,
    settings: &TlsSettings,
) -> Result<Arc<ServerConfig>, TlsError> {
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)?;
    let builder = match (settings.client_auth, &settings.client_ca) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (mode, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            let file_err = |why: String| TlsError::File {
                file: ca.clone(),
                why,
            };
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| file_err(pem_why(e)))? {
                roots
                    .add(cert.map_err(|e| file_err(pem_why(e)))?)
                    .map_err(|e| file_err(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match mode {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            let verifier = verifier
                .build()
                .map_err(|e| file_err(format!("client CA bundle: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    Ok(Arc::new(builder.with_cert_resolver(store)))
}

/// The TLS configs of one FTP session: one for its control handshake, one for its data
/// handshakes.
///
/// Both share a ticketer of their own (a fresh random key) and a small session-ID cache of their
/// own. A data connection can only resume a session this FTP session issued, so
/// `HandshakeKind::Resumed` proves the data connection comes from the client that owns this
/// control connection (docs/ARCHITECTURE.md, "The TLS binding"). A ticketer or cache shared between sessions would prove
/// nothing: another client's ticket would resume just as well. Stateless tickets rather than
/// rustls' stateful TLS 1.3 tickets, because the stateful ones are single-use and FTP clients
/// resume the control connection's session once per data connection.
///
/// Data handshakes send one TLS 1.3 ticket, not the default two: clients built on rustls use
/// each ticket once, so every data connection must hand out a replacement; one is enough. The
/// bridge holds it back until its first write (see `ticket_hold`, under `data`).
pub struct SessionTls {
    pub control: Arc<ServerConfig>,
    pub data: data::DataConfig,
    /// The session's own ticketer, which its siblings' data connections may use too (see
    /// [`binding`]); `None` with `data_session_reuse = "off"`.
    pub ticketer: Option<Arc<binding::Tagged>>,
}

pub fn session_config(base: &Arc<ServerConfig>, reuse: ReuseMode) -> Result<SessionTls, TlsError> {
    let mut config = (**base).clone();
    let ticketer = match reuse {
        ReuseMode::Off => {
            config.session_storage = Arc::new(NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
            None
        }
        ReuseMode::Allow | ReuseMode::Require => {
            config.session_storage = ServerSessionMemoryCache::new(16);
            let ticketer = binding::Tagged::new(aws_lc_rs::Ticketer::new()?);
            config.ticketer = Arc::clone(&ticketer) as _;
            Some(ticketer)
        }
    };
    let mut data = config.clone();
    data.send_tls13_tickets = data.send_tls13_tickets.min(1);
    Ok(SessionTls {
        control: Arc::new(config),
        data: Arc::new(data),
        ticketer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_covers_exactly_one_whole_label() {
        assert_eq!(
            wildcard_of("a.example.com").as_deref(),
            Some("*.example.com")
        );
        assert_eq!(
            wildcard_of("a.b.example.com").as_deref(),
            Some("*.b.example.com")
        );
        assert_eq!(wildcard_of(".example.com"), None);
        assert_eq!(wildcard_of("localhost"), None);
        assert_eq!(wildcard_of("a."), None);
    }

    #[test]
    fn generated_pair_loads_and_builds_a_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pair = self_signed(&["localhost".into(), "127.0.0.1".into()]).expect("rcgen");
        let (cert, key) = pair.write_to(dir.path()).expect("write");
        let id = load_cert_key(&cert, &key).expect("load");
        assert_eq!(id.chain.len(), 1);
        let settings = TlsSettings {
            cert: Some(cert),
            key: Some(key),
            ..TlsSettings::default()
        };
        let (store, _) = CertStore::load(&settings, provider()).expect("store");
        server_config(store, &settings).expect("config");
    }

    #[test]
    fn missing_or_empty_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let err = load_cert_key(&empty, &empty)
            .err()
            .expect("empty is refused");
        assert!(err.to_string().contains("empty.pem"), "{err}");
        let err = load_cert_key(&dir.path().join("nope.pem"), &empty)
            .err()
            .expect("missing is refused");
        assert!(err.to_string().contains("nope.pem"), "{err}");
    }
}
