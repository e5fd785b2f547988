//! The certificate check: the gateway's certificates load, match their keys, carry the names
//! clients ask for, and are not about to expire.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::prelude::{FromDer, X509Certificate};

use super::{check, with_fix, Check, Level};
use crate::config::Settings;
use crate::tls::store::CertStore;
use crate::tls::x509::subject_alt_names;
use crate::tls::{self, TlsError};

/// What to do about a certificate clients will not trust.
const FIX_SELF_SIGNED: &str = "order one from a CA with [tls.acme] (or --acme-domains), or set \
     tls.cert and tls.key (or --cert/--key) to a certificate from a CA clients trust";

/// A certificate this close to expiry is a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

pub(super) fn certificate(settings: &Settings) -> Vec<Check> {
    let what = "certificate";
    let store = match CertStore::load(&settings.tls, tls::provider()) {
        Ok((_, true)) => {
            return vec![with_fix(
                check(
                    Level::Warn,
                    what,
                    "none configured: a self-signed one is generated in memory (30 days, renewed)",
                ),
                FIX_SELF_SIGNED,
            )]
        }
        Ok((store, false)) => store,
        Err(e) => {
            return vec![with_fix(
                check(Level::Fail, what, e.to_string()),
                "point tls.cert/tls.key at a readable PEM chain and its matching key",
            )]
        }
    };
    let chain = store.default_chain();
    let Some(Ok((_, cert))) = chain.first().map(|c| X509Certificate::from_der(c)) else {
        return vec![check(
            Level::Fail,
            what,
            TlsError::Config("unparsable certificate".into()).to_string(),
        )];
    };
    let mut out = Vec::new();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let not_after = cert.validity().not_after.timestamp();
    let not_before = cert.validity().not_before.timestamp();
    let subject = cert.subject().to_string();
    if now > not_after {
        out.push(with_fix(
            check(
                Level::Fail,
                what,
                format!("{subject} expired on {}", cert.validity().not_after),
            ),
            "renew it; the gateway reloads it on SIGHUP or when the file changes",
        ));
    } else if now < not_before {
        out.push(check(
            Level::Fail,
            what,
            format!(
                "{subject} is not valid before {}",
                cert.validity().not_before
            ),
        ));
    } else if not_after - now < EXPIRY_WARNING.as_secs() as i64 {
        out.push(with_fix(
            check(
                Level::Warn,
                what,
                format!("{subject} expires on {}", cert.validity().not_after),
            ),
            "renew it soon, or let [tls.acme] renew it",
        ));
    } else {
        out.push(check(
            Level::Ok,
            what,
            format!("{subject}, valid until {}", cert.validity().not_after),
        ));
    }
    if cert.issuer() == cert.subject() {
        out.push(with_fix(
            check(
                Level::Warn,
                what,
                format!(
                    "{subject} is self-signed: clients will not trust it unless each imports it"
                ),
            ),
            FIX_SELF_SIGNED,
        ));
    }
    if let Some(host) = settings.passive.external_host() {
        let names = subject_alt_names(&cert);
        let host = host.to_ascii_lowercase();
        let wildcard = tls::wildcard_of(&host);
        if names.contains(&host) || wildcard.is_some_and(|w| names.contains(&w)) {
            out.push(check(Level::Ok, what, format!("names {host}")));
        } else {
            out.push(with_fix(
                check(
                    Level::Warn,
                    what,
                    if names.is_empty() {
                        format!("does not name the external address {host} (no subjectAltName)")
                    } else {
                        format!(
                            "does not name the external address {host} (it names {})",
                            names.join(", ")
                        )
                    },
                ),
                "clients that connect by that name will reject the certificate",
            ));
        }
    }
    out
}
