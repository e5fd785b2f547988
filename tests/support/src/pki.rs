//! Certificates for TLS tests: a client CA and client certificates made at run time with
//! rcgen, and PEM files read back.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

pub struct ClientCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate, for `tls.client_ca`.
    pub pem: String,
}

/// A client certificate and its key, in DER (for rustls) and PEM (for curl).
pub struct ClientCert {
    pub cert: CertificateDer<'static>,
    pub key_der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Default for ClientCa {
    fn default() -> ClientCa {
        ClientCa::new()
    }
}

impl ClientCa {
    pub fn new() -> ClientCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "ftpsgate test client CA");
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        let pem = issuer.pem();
        ClientCa { issuer, pem }
    }

    /// A client certificate with subject CN=`cn` and, if given, an rfc822Name SAN.
    pub fn client(&self, cn: &str, email: Option<&str>) -> ClientCert {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if let Some(mail) = email {
            params
                .subject_alt_names
                .push(SanType::Rfc822Name(mail.try_into().expect("email")));
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("client cert");
        ClientCert {
            cert: cert.der().clone(),
            key_der: key.serialize_der(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// The certificates of a PEM file.
pub fn pem_certs(path: &std::path::Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .expect("read PEM")
        .collect::<Result<_, _>>()
        .expect("parse PEM")
}
