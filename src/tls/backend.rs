//! TLS toward FTPS backends: verification, client certificates, and the per-FTP-session client
//! config whose session store makes the backend's data connections resume *this* session's
//! control connection, as vsftpd's `require_ssl_reuse` and ProFTPD's mod_tls demand.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::{aws_lc_rs, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsConnector;

use super::{load_cert_key, TlsError};
use crate::config::{BackendSettings, BackendTlsMode, DataProtection, HostPort, TlsVersion};

/// How the gateway reaches a TLS backend. Built once at start.
#[derive(Debug)]
pub struct BackendTls {
    pub implicit: bool,
    pub protect_data: bool,
    /// `server_name` from the settings; without it, each address is checked against its own
    /// host (see [`BackendTls::session`]).
    server_name: Option<ServerName<'static>>,
    base: Arc<ClientConfig>,
}

/// One FTP session's TLS toward the backend: its control connection and all its data
/// connections share this connector, and so its session store.
#[derive(Clone)]
pub struct BackendSession {
    pub implicit: bool,
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
    pub protect_data: bool,
}

impl BackendTls {
    /// `None` when the backend speaks plain FTP.
    pub fn from_settings(b: &BackendSettings) -> Result<Option<BackendTls>, TlsError> {
        let implicit = match b.tls {
            BackendTlsMode::None => return Ok(None),
            BackendTlsMode::Explicit => false,
            BackendTlsMode::Implicit => true,
        };
        let provider = Arc::new(aws_lc_rs::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match b.max_tls_version {
            TlsVersion::V1_3 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V1_2 => &[&rustls::version::TLS12],
        };
        let verifier = verifier(b, &provider)?;
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&b.client_cert, &b.client_key) {
            (Some(cert), Some(key)) => {
                let id = load_cert_key(cert, key)?;
                builder.with_client_auth_cert(id.chain, id.key)?
            }
            _ => builder.with_no_client_auth(),
        };
        let server_name = b.server_name.as_deref().map(server_name).transpose()?;
        // Every address must give a name now, not at a session's connect.
        for address in &b.addresses {
            name_of(address)?;
        }
        Ok(Some(BackendTls {
            implicit,
            protect_data: b.data_protection == DataProtection::Private,
            server_name,
            base: Arc::new(config),
        }))
    }

    /// A config for one FTP session with the backend at `address`: the shared verifier and
    /// client certificate, but its own session store. Resumption across FTP sessions would not
    /// satisfy a strict backend anyway (it wants *this* control connection's session), and
    /// must not leak between users. The certificate must name `server_name` if set, else the
    /// host of `address` itself: each of several addresses has its own.
    pub fn session(&self, address: &HostPort) -> Result<BackendSession, TlsError> {
        let mut config = (*self.base).clone();
        config.resumption = Resumption::in_memory_sessions(32);
        let server_name = match &self.server_name {
            Some(name) => name.clone(),
            None => name_of(address)?,
        };
        Ok(BackendSession {
            implicit: self.implicit,
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            protect_data: self.protect_data,
        })
    }
}

/// The TLS name of a backend address: its host (a DNS name or an IP address).
fn name_of(address: &HostPort) -> Result<ServerName<'static>, TlsError> {
    server_name(address.host())
}

fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string())
        .map_err(|_| TlsError::Config(format!("`{name}` is not a valid server name")))
}

fn verifier(
    b: &BackendSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    if b.insecure_skip_verify {
        return Ok(Arc::new(Accept::any(Arc::clone(provider))));
    }
    if let Some(pin) = &b.pin_sha256 {
        return Ok(Arc::new(Accept {
            pin: Some(pin.0),
            provider: Arc::clone(provider),
        }));
    }
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A broken system certificate is skipped, as every TLS client does.
        let _ = roots.add(cert);
    }
    if let Some(ca) = &b.ca {
        add_bundle(&mut roots, ca)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Config(
            "no trusted roots for the backend: set backend.ca, backend.pin_sha256 or install system CA certificates".into(),
        ));
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| TlsError::Config(format!("backend verifier: {e}")))
        .map(|v| v as Arc<dyn ServerCertVerifier>)
}

pub(crate) fn add_bundle(roots: &mut RootCertStore, ca: &Path) -> Result<(), TlsError> {
    let file_err = |why: String| TlsError::File {
        file: ca.into(),
        why,
    };
    let mut added = 0;
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| file_err(e.to_string()))? {
        let cert = cert.map_err(|e| file_err(e.to_string()))?;
        roots.add(cert).map_err(|e| file_err(e.to_string()))?;
        added += 1;
    }
    if added == 0 {
        return Err(file_err("no CERTIFICATE block found".into()));
    }
    Ok(())
}

/// Accepts the backend's certificate by its pinned SHA-256, or (with no pin, only through
/// `insecure_skip_verify` or `probe --insecure`) any certificate. Handshake signatures are still
/// checked, so the peer must hold the certificate's key.
#[derive(Debug)]
pub(crate) struct Accept {
    pin: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl Accept {
    /// Any certificate whose key signs the handshake.
    pub(crate) fn any(provider: Arc<CryptoProvider>) -> Accept {
        Accept {
            pin: None,
            provider,
        }
    }
}

impl ServerCertVerifier for Accept {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            Some(pin) if Sha256::digest(end_entity.as_ref()).as_slice() != pin => {
                Err(rustls::Error::General(
                    "backend certificate does not match the pinned SHA-256".into(),
                ))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The SHA-256 fingerprint of a PEM certificate file, as `backend.pin_sha256` wants it.
pub fn fingerprint(cert: &Path) -> Result<String, TlsError> {
    let der = CertificateDer::from_pem_file(cert).map_err(|e| TlsError::File {
        file: cert.into(),
        why: e.to_string(),
    })?;
    Ok(pin_of(&der))
}

/// The SHA-256 fingerprint of a DER certificate, as `backend.pin_sha256` wants it.
pub fn pin_of(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explicit(addresses: &[&str], server_name: Option<&str>) -> BackendTls {
        let settings = BackendSettings {
            addresses: addresses
                .iter()
                .map(|a| a.parse().expect("address"))
                .collect(),
            tls: BackendTlsMode::Explicit,
            insecure_skip_verify: true,
            server_name: server_name.map(String::from),
            ..BackendSettings::default()
        };
        BackendTls::from_settings(&settings)
            .expect("valid")
            .expect("TLS")
    }

    #[test]
    fn each_address_is_checked_against_its_own_host_unless_a_name_is_set() {
        let tls = explicit(&["ftp-a.internal:21", "10.0.0.2:2121", "[::1]:21"], None);
        let name = |a: &str| {
            tls.session(&a.parse().expect("address"))
                .expect("session")
                .server_name
                .to_str()
                .to_string()
        };
        assert_eq!(name("ftp-a.internal:21"), "ftp-a.internal");
        assert_eq!(name("10.0.0.2:2121"), "10.0.0.2");
        assert_eq!(name("[::1]:21"), "::1");
        let pinned = explicit(&["10.0.0.1:21", "10.0.0.2:21"], Some("ftp.internal"));
        for a in ["10.0.0.1:21", "10.0.0.2:21"] {
            let s = pinned
                .session(&a.parse().expect("address"))
                .expect("session");
            assert_eq!(s.server_name.to_str(), "ftp.internal");
        }
    }
}
