//! The probe's TLS client: the system's roots and `--ca`, or `--insecure`; a verifier that
//! remembers what it was shown, so a refused certificate can be described (its names, its
//! expiry) and not only refused; and a second config that never resumes, to ask whether the
//! server insists that data connections resume the control connection's session.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::tls::backend::{add_bundle, Accept};
use crate::tls::x509::subject_alt_names;

/// What the server's certificate turned out to be.
#[derive(Debug, Default, Clone)]
pub(super) struct Seen {
    pub chain_len: usize,
    pub names: Vec<String>,
    pub subject: String,
    /// Whole days until it expires (negative: expired).
    pub days_left: Option<i64>,
    /// Why verification refused it, if it did.
    pub refused: Option<String>,
}

pub(super) struct ProbeTls {
    /// Control and data connections that resume, as FTPS clients do.
    pub resuming: Arc<ClientConfig>,
    /// Data connections that never resume (Python's ftplib by default).
    pub fresh: Arc<ClientConfig>,
    pub name: ServerName<'static>,
    seen: Arc<Mutex<Seen>>,
}

impl ProbeTls {
    pub(super) fn new(host: &str, ca: Option<&Path>, insecure: bool) -> Result<ProbeTls, String> {
        let provider = crate::tls::provider();
        let inner: Arc<dyn ServerCertVerifier> = if insecure {
            Arc::new(Accept::any(Arc::clone(&provider)))
        } else {
            let mut roots = RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if let Some(ca) = ca {
                add_bundle(&mut roots, ca).map_err(|e| e.to_string())?;
            }
            if roots.is_empty() {
                return Err("no trusted roots: give --ca FILE, or --insecure".into());
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| e.to_string())?
        };
        let seen = Arc::new(Mutex::new(Seen::default()));
        let verifier = Arc::new(Recorder {
            inner,
            seen: Arc::clone(&seen),
        });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.resumption = Resumption::in_memory_sessions(8);
        let mut fresh = config.clone();
        fresh.resumption = Resumption::disabled();
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("`{host}` is not a valid TLS server name"))?;
        Ok(ProbeTls {
            resuming: Arc::new(config),
            fresh: Arc::new(fresh),
            name,
            seen,
        })
    }

    /// The certificate of the last handshake.
    pub(super) fn seen(&self) -> Seen {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Verifies as a browser would (or accepts any certificate with `--insecure`), and writes
/// down what it saw.
#[derive(Debug)]
struct Recorder {
    inner: Arc<dyn ServerCertVerifier>,
    seen: Arc<Mutex<Seen>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let mut seen = describe(end_entity);
        seen.chain_len = 1 + intermediates.len();
        seen.refused = verdict.as_ref().err().map(ToString::to_string);
        if let Ok(mut slot) = self.seen.lock() {
            *slot = seen;
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn describe(der: &CertificateDer<'_>) -> Seen {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Seen::default();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    Seen {
        names: subject_alt_names(&cert),
        subject: cert.subject().to_string(),
        days_left: Some((cert.validity().not_after.timestamp() - now) / 86_400),
        ..Seen::default()
    }
}
