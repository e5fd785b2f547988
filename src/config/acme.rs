//! `[tls.acme]`: certificates ordered from an ACME CA (RFC 8555) and renewed by the gateway
//! itself, and where it keeps them. docs/ARCHITECTURE.md, "Certificates from ACME".

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Bad, CertPair, ConfigError};

/// Let's Encrypt's production directory; its staging one is
/// `https://acme-staging-v02.api.letsencrypt.org/directory` (untrusted certificates, higher
/// rate limits: the one to try a set-up against first).
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeSettings {
    /// The CA's directory URL.
    pub directory: String,
    /// An email address the CA may write to about the account (expiry, policy changes).
    pub contact: Option<String>,
    /// The names on the default certificate; the first is its subject.
    pub domains: Vec<String>,
    /// How the CA checks the gateway holds each name.
    pub challenge: Challenge,
    /// Where the http-01 responder listens: the CA connects to port 80 of each name.
    pub http_listen: SocketAddr,
    /// Where the tls-alpn-01 responder listens: the CA connects to port 443 of each name.
    pub tls_alpn_listen: SocketAddr,
    /// The account key and the certificates: a 0700 directory of 0600 files.
    pub state_dir: PathBuf,
    /// A root certificate (PEM) trusted, besides the system's, for the directory's own HTTPS:
    /// for a private ACME server.
    pub directory_ca: Option<PathBuf>,
    /// Renew once fewer days than this remain on a certificate.
    pub renew_before_days: u32,
    /// More certificates, each its own order, chosen by the name a client asks for (SNI) as
    /// `tls.sni` certificates are: one list of names per certificate.
    pub sni: Vec<Vec<String>>,
    /// One order, from the first request to the downloaded certificate, at most this long.
    pub timeout_secs: u64,
    /// The wait before the first retry of a failed order; it doubles on each failure up to six
    /// hours, with ±20 % jitter so replicas sharing a CA spread out.
    pub retry_secs: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Challenge {
    /// An HTTP request to `/.well-known/acme-challenge/TOKEN` on port 80.
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// A TLS handshake with ALPN `acme-tls/1` on port 443 (RFC 8737).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl Default for AcmeSettings {
    fn default() -> Self {
        Self {
            directory: LETS_ENCRYPT.into(),
            contact: None,
            domains: Vec::new(),
            challenge: Challenge::Http01,
            http_listen: SocketAddr::from(([0, 0, 0, 0], 80)),
            tls_alpn_listen: SocketAddr::from(([0, 0, 0, 0], 443)),
            state_dir: PathBuf::from("/var/lib/ftpsgate/acme"),
            directory_ca: None,
            renew_before_days: 30,
            sni: Vec::new(),
            timeout_secs: 120,
            retry_secs: 60,
        }
    }
}

/// One certificate the gateway orders: its names (the first is the subject) and its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeCert {
    pub names: Vec<String>,
    pub files: CertPair,
}

impl AcmeSettings {
    /// Where this directory's account and certificates live: one folder per CA (named by its
    /// host and port), so moving from staging to production starts a new account and orders new
    /// certificates instead of serving staging's.
    pub fn directory_state(&self) -> PathBuf {
        let host = self
            .directory
            .split_once("://")
            .map_or(self.directory.as_str(), |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or_default();
        self.state_dir.join(safe_name(&host.replace(':', "_")))
    }

    pub fn account_file(&self) -> PathBuf {
        self.directory_state().join("account.json")
    }

    /// Every certificate to order: the default one (`domains`) first, then each `sni` list.
    pub fn certificates(&self) -> Vec<AcmeCert> {
        let base = self.directory_state();
        std::iter::once(&self.domains)
            .chain(&self.sni)
            .filter_map(|names| {
                let dir = base.join(safe_name(names.first()?));
                Some(AcmeCert {
                    names: names.clone(),
                    files: CertPair {
                        cert: dir.join("cert.pem"),
                        key: dir.join("key.pem"),
                    },
                })
            })
            .collect()
    }

    /// The contact as an ACME URL: `mailto:` added to a bare address.
    pub fn contact_url(&self) -> Option<String> {
        self.contact.as_ref().map(|c| {
            if c.contains(':') {
                c.clone()
            } else {
                format!("mailto:{c}")
            }
        })
    }

    pub(super) fn validate(&self, bad: Bad) -> Result<(), ConfigError> {
        let key = |k: &str| format!("tls.acme.{k}");
        if !self.directory.starts_with("https://") {
            return Err(bad(
                key("directory"),
                format!("`{}`: an ACME directory is an https:// URL", self.directory),
            ));
        }
        if self.domains.is_empty() {
            return Err(bad(
                key("domains"),
                "name at least one domain for the certificate".into(),
            ));
        }
        for (field, names) in
            std::iter::once(("domains", &self.domains)).chain(self.sni.iter().map(|n| ("sni", n)))
        {
            if names.is_empty() {
                return Err(bad(key(field), "an empty list of names".into()));
            }
            if let Some(n) = names.iter().find(|n| !is_dns_name(n)) {
                return Err(bad(
                    key(field),
                    format!(
                        "`{}` is not a DNS name a public CA certifies (IP addresses and \
                         wildcards need other challenges)",
                        n.escape_default()
                    ),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = self
            .domains
            .iter()
            .chain(self.sni.iter().flatten())
            .find(|n| !seen.insert(n.to_ascii_lowercase()))
        {
            return Err(bad(
                key("sni"),
                format!("`{twice}` is named twice: each name is on one certificate, once"),
            ));
        }
        if let Some(c) = &self.contact {
            if c.is_empty() || c.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                return Err(bad(key("contact"), "not an email address".into()));
            }
        }
        for (field, value) in [
            ("timeout_secs", self.timeout_secs),
            ("retry_secs", self.retry_secs),
            ("renew_before_days", u64::from(self.renew_before_days)),
        ] {
            if value == 0 {
                return Err(bad(key(field), "must be above 0".into()));
            }
        }
        Ok(())
    }
}

/// A name as a file name: anything but letters, digits, `.`, `-` and `_` becomes `_`, and a
/// leading dot too, so no name climbs out of the state directory.
fn safe_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    if out.starts_with('.') || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

/// Letters, digits and hyphens in dot-separated labels of 1 to 63, 253 at most in all.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').count() >= 2
        && name.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && name.parse::<std::net::IpAddr>().is_err()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn each_ca_and_each_certificate_has_a_folder_of_its_own() {
        let s = AcmeSettings {
            directory: "https://127.0.0.1:14000/dir".into(),
            domains: vec!["ftp.example.com".into(), "www.example.com".into()],
            sni: vec![vec!["Other.Example.org".into()]],
            state_dir: "/s".into(),
            ..AcmeSettings::default()
        };
        assert_eq!(
            s.account_file(),
            Path::new("/s/127.0.0.1_14000/account.json")
        );
        let certs = s.certificates();
        assert_eq!(
            certs[0].files.cert,
            Path::new("/s/127.0.0.1_14000/ftp.example.com/cert.pem")
        );
        assert_eq!(
            certs[1].files.key,
            Path::new("/s/127.0.0.1_14000/other.example.org/key.pem")
        );
        let le = AcmeSettings::default();
        assert_eq!(
            le.directory_state(),
            Path::new("/var/lib/ftpsgate/acme/acme-v02.api.letsencrypt.org")
        );
        assert_eq!(safe_name("../x"), "_.._x");
    }

    #[test]
    fn names_a_ca_cannot_certify_by_these_challenges_are_refused() {
        assert!(is_dns_name("ftp.example.com"));
        for bad in [
            "localhost",
            "*.example.com",
            "1.2.3.4",
            "a..b",
            "-a.b",
            "a b.c",
        ] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }
}
