//! `[tls]`: the gateway's certificates toward clients, what it asks of their TLS, and the
//! binding of data connections to their session.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{AcmeSettings, Bad, ConfigError};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM certificate chain. Unset (with `key` unset): a self-signed pair is generated at start.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    pub min_version: TlsVersion,
    /// Must a TLS data connection resume the control connection's TLS session? This proves it
    /// comes from the same client, as vsftpd, ProFTPD and FileZilla Server check.
    pub data_session_reuse: ReuseMode,
    /// Refuse `USER` and everything but `AUTH`, `FEAT`, `HELP`, `QUIT`, `HOST`, `SYST`, `NOOP`
    /// until the control channel is encrypted.
    pub required: bool,
    /// Let clients choose `PROT C` (unencrypted data connections).
    pub allow_clear_data: bool,
    /// More certificates, chosen by the name the client asks for (SNI). Each serves the DNS
    /// names in its own subjectAltName; `cert`/`key` stay the default for other names and for
    /// clients that send no SNI.
    pub sni: Vec<CertPair>,
    /// Reload the certificates when their files change (SIGHUP always reloads).
    pub watch: bool,
    /// Client certificates: `none`, `optional` (checked when presented) or `required`.
    pub client_auth: ClientAuth,
    /// CA bundle (PEM) that client certificates must chain to; needed unless `client_auth` is
    /// `none`.
    pub client_ca: Option<PathBuf>,
    /// Bind logins to client certificates: a session may log in only as the user its
    /// certificate names, its subject's CN (`"cn"`) or the local part of its rfc822Name
    /// (`"email"`). A second factor the backend never has to know about. Unset: no binding.
    pub client_cert_user: Option<CertUser>,
    /// With `client_cert_user = "email"`: the domains whose addresses may log in. A CA that
    /// certifies addresses in several domains would otherwise let `ftpuser@elsewhere.example`
    /// log in as `ftpuser`. Exact names, any case; required with email binding, since an
    /// empty list meaning "any domain" would be that hole by default.
    pub client_cert_email_domains: Vec<String>,
    /// Certificates ordered from an ACME CA and renewed by the gateway, instead of files.
    pub acme: Option<AcmeSettings>,
}

/// Which name in a client certificate is the user it may log in as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertUser {
    Cn,
    Email,
}

/// A PEM certificate chain and its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    None,
    Optional,
    Required,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            min_version: TlsVersion::V1_2,
            data_session_reuse: ReuseMode::Require,
            required: true,
            allow_clear_data: false,
            sni: Vec::new(),
            watch: true,
            client_auth: ClientAuth::None,
            client_ca: None,
            client_cert_user: None,
            client_cert_email_domains: Vec::new(),
            acme: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReuseMode {
    /// No session resumption on data connections at all.
    Off,
    /// Resume when the client offers; accept full handshakes too.
    Allow,
    /// Refuse a data connection that does not resume this FTP session's TLS session.
    Require,
}

impl TlsSettings {
    pub(super) fn validate(&self, bad: Bad) -> Result<(), ConfigError> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(bad(
                "tls.cert".into(),
                "set both tls.cert and tls.key, or neither (a self-signed pair is then generated)"
                    .into(),
            ));
        }
        if self.client_auth != ClientAuth::None && self.client_ca.is_none() {
            return Err(bad(
                "tls.client_ca".into(),
                "client_auth needs a CA bundle to check client certificates against".into(),
            ));
        }
        if self.client_cert_user.is_some() && self.client_auth == ClientAuth::None {
            return Err(bad(
                "tls.client_cert_user".into(),
                "binds logins to client certificates: set tls.client_auth to \"required\" (or \"optional\", refusing logins without one)".into(),
            ));
        }
        let email = self.client_cert_user == Some(CertUser::Email);
        if email && self.client_cert_email_domains.is_empty() {
            return Err(bad(
                "tls.client_cert_email_domains".into(),
                "client_cert_user = \"email\" needs the domains whose addresses may log in (a certificate for user@any.other.domain would log in as user)".into(),
            ));
        }
        if !email && !self.client_cert_email_domains.is_empty() {
            return Err(bad(
                "tls.client_cert_email_domains".into(),
                "applies only with client_cert_user = \"email\"".into(),
            ));
        }
        if let Some(d) = self
            .client_cert_email_domains
            .iter()
            .find(|d| d.is_empty() || d.contains(['@', ' ']) || d.chars().any(char::is_control))
        {
            return Err(bad(
                "tls.client_cert_email_domains".into(),
                format!(
                    "`{}` is not a domain name (e.g. \"example.org\")",
                    d.escape_default()
                ),
            ));
        }
        if let Some(acme) = &self.acme {
            if self.cert.is_some() || !self.sni.is_empty() {
                return Err(bad(
                    "tls.acme".into(),
                    "certificates come from ACME: leave tls.cert, tls.key and tls.sni unset \
                     (tls.acme.sni orders SNI certificates)"
                        .into(),
                ));
            }
            acme.validate(bad)?;
        }
        if !self.sni.is_empty() && self.cert.is_none() {
            return Err(bad(
                "tls.sni".into(),
                "SNI certificates need a default tls.cert/tls.key for clients without SNI".into(),
            ));
        }
        Ok(())
    }
}
