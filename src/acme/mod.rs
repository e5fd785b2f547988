//! Certificates without a person: `[tls.acme]` orders each certificate from an ACME CA
//! (RFC 8555), answers the CA's challenges itself, and renews before expiry. A new certificate
//! is written to `state_dir` and reaches clients through the certificate store's reload, the
//! path a rotated file takes: sessions keep the keys they negotiated. docs/ARCHITECTURE.md,
//! "Certificates from ACME".
//!
//! One renewal loop per certificate (the default one and each `tls.acme.sni` list), sharing
//! the account and the challenge responder. [`schedule`] decides when, [`order`] does one
//! order, [`state`] keeps the files, [`responder`] answers the CA.

mod order;
mod responder;
mod schedule;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use instant_acme::Account;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::{AcmeCert, AcmeSettings, Challenge};
use crate::metrics::{AcmeOrder, Metrics, Reload};
use crate::tls::store::CertStore;
use responder::Responses;
pub(crate) use state::{check_state, on_disk};

#[derive(Debug, Error)]
pub enum AcmeError {
    #[error("{}: {why}", path.display())]
    State { path: PathBuf, why: String },
    #[error("cannot listen on {addr} for the {challenge} challenge: {source} (ports below 1024 need root or CAP_NET_BIND_SERVICE)")]
    Bind {
        addr: std::net::SocketAddr,
        challenge: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("{name}: {why}")]
    Refused { name: String, why: String },
    #[error("the order took longer than tls.acme.timeout_secs ({0} s)")]
    Timeout(u64),
    #[error("a challenge certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the account file: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the new certificate does not load: {0}")]
    Load(#[from] crate::tls::TlsError),
}

impl AcmeError {
    /// The error and every cause under it: an HTTP client's "client error (Connect)" alone
    /// does not say that the connection was refused, or by whom.
    fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let next = c.to_string();
            if !text.contains(&next) {
                text = format!("{text}: {next}");
            }
            cause = c.source();
        }
        text
    }

    fn state(path: &Path, e: std::io::Error) -> Self {
        AcmeError::State {
            path: path.to_path_buf(),
            why: e.to_string(),
        }
    }
}

/// Checks `state_dir`, binds the challenge listener and starts a renewal loop per
/// certificate, all in `tasks` (dropping the set stops them). Errors here stop the start: a
/// loose state directory or a challenge port that cannot be bound is a configuration to fix.
pub(crate) async fn start(
    settings: &AcmeSettings,
    store: Arc<CertStore>,
    metrics: Arc<Metrics>,
    tasks: &mut JoinSet<()>,
) -> Result<(), AcmeError> {
    state::prepare(settings)?;
    let responses = Arc::new(Responses::default());
    let (addr, challenge) = match settings.challenge {
        Challenge::Http01 => (settings.http_listen, "http-01"),
        Challenge::TlsAlpn01 => (settings.tls_alpn_listen, "tls-alpn-01"),
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AcmeError::Bind {
            addr,
            challenge,
            source,
        })?;
    info!(%addr, challenge, "ACME challenge responder listening");
    match settings.challenge {
        Challenge::Http01 => {
            tasks.spawn(responder::serve_http(
                listener,
                Arc::clone(&responses),
                Arc::clone(&metrics),
            ));
        }
        Challenge::TlsAlpn01 => {
            let tls = responder::alpn_acceptor(Arc::clone(&responses))?;
            tasks.spawn(responder::serve_alpn(listener, tls, Arc::clone(&metrics)));
        }
    }
    let client = Arc::new(Client {
        http: std::sync::Mutex::new(Some(order::http_client(settings)?)),
        account: tokio::sync::Mutex::new(None),
        settings: settings.clone(),
        responses,
        store,
        metrics,
    });
    for cert in settings.certificates() {
        if state::on_disk(&cert).is_none() {
            info!(domain = %cert.names.join(","), "no ACME certificate yet: serving a temporary self-signed one until the order completes");
        }
        tasks.spawn(Arc::clone(&client).supervise(cert));
    }
    Ok(())
}

/// What the renewal loops share.
struct Client {
    settings: AcmeSettings,
    /// The HTTPS client, until the account takes it.
    http: std::sync::Mutex<Option<Box<dyn instant_acme::HttpClient>>>,
    /// The account, once loaded or created; a lock, so two loops starting together do not
    /// create two accounts.
    account: tokio::sync::Mutex<Option<Account>>,
    responses: Arc<Responses>,
    store: Arc<CertStore>,
    metrics: Arc<Metrics>,
}

impl Client {
    /// Runs `cert`'s renewal loop, and runs it again if it panics (a CA's header no crate
    /// expected, say): a loop that died would leave the certificate to expire in silence.
    async fn supervise(self: Arc<Self>, cert: AcmeCert) {
        loop {
            let run = tokio::spawn(Arc::clone(&self).renew_loop(cert.clone()));
            // Dropping the supervisor (the gateway stopping) stops the loop too.
            match tokio_util::task::AbortOnDropHandle::new(run).await {
                Err(e) if e.is_panic() => {
                    self.metrics.acme_ordered(AcmeOrder::failed);
                    tracing::error!(domain = %cert.names.join(","), "ACME renewal loop panicked; it starts again after tls.acme.retry_secs");
                    tokio::time::sleep(Duration::from_secs(self.settings.retry_secs)).await;
                }
                _ => return,
            }
        }
    }

    /// Waits until `cert` is due, orders it (retrying with back-off until an order succeeds),
    /// and again, for as long as the gateway runs.
    async fn renew_loop(self: Arc<Self>, cert: AcmeCert) {
        let domain = cert.names.join(",");
        let mut floor: Option<Instant> = None;
        loop {
            loop {
                let wait = self.until_due(&cert, floor);
                if wait.is_zero() {
                    break;
                }
                if self.sleep_or_nudge(wait.min(schedule::LOOK_EVERY)).await {
                    floor = None;
                }
            }
            let mut failures: u32 = 0;
            loop {
                match self.order_once(&cert).await {
                    Ok(serial) => {
                        self.metrics.acme_ordered(AcmeOrder::issued);
                        info!(%domain, %serial, "ACME certificate issued");
                        if self.until_due(&cert, None).is_zero() {
                            warn!(%domain, renew_before_days = self.settings.renew_before_days, "the new certificate is already inside tls.acme.renew_before_days: it lives shorter than that; it is renewed at most hourly, lower the setting");
                        }
                        floor = Some(Instant::now() + schedule::REORDER_FLOOR);
                        break;
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        self.metrics.acme_ordered(AcmeOrder::failed);
                        let first = Duration::from_secs(self.settings.retry_secs);
                        let wait = schedule::backoff(first, failures, fastrand::f64());
                        warn!(%domain, error = %e.with_causes(), retry_in = wait.as_secs_f64(), failures, "ACME order failed; the current certificate keeps serving");
                        self.sleep_or_nudge(wait).await;
                    }
                }
            }
        }
    }

    /// How long until `cert` should be ordered: now if it is missing, for other names or
    /// inside its renewal window, but never before `floor`.
    fn until_due(&self, cert: &AcmeCert, floor: Option<Instant>) -> Duration {
        let due = state::on_disk(cert).map_or(Duration::ZERO, |d| {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            schedule::until_due(d.not_after, now, self.settings.renew_before_days)
        });
        let floor = floor.map_or(Duration::ZERO, |f| {
            f.saturating_duration_since(Instant::now())
        });
        due.max(floor)
    }

    /// Sleeps `wait`, or until SIGHUP asks for a look now (then `true`).
    async fn sleep_or_nudge(&self, wait: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(wait) => false,
            () = self.store.acme_nudged() => true,
        }
    }

    /// One order, bounded by `timeout_secs`, its result written and loaded. Returns the new
    /// certificate's serial.
    async fn order_once(&self, cert: &AcmeCert) -> Result<String, AcmeError> {
        let secs = self.settings.timeout_secs;
        let limit = Duration::from_secs(secs);
        let issued = tokio::time::timeout(limit, async {
            let account = self.account().await?;
            order::order(
                &account,
                cert,
                self.settings.challenge,
                &self.responses,
                limit,
            )
            .await
        })
        .await
        .map_err(|_| AcmeError::Timeout(secs))??;
        let checked =
            state::usable(cert, issued.chain.as_bytes(), issued.key.as_bytes()).map_err(|why| {
                AcmeError::Refused {
                    name: cert.names.join(","),
                    why: format!("the CA's certificate cannot serve: {why}"),
                }
            })?;
        // Two writes, each whole. Between them the pair on disk does not match: a reload then
        // (a SIGHUP) serves a temporary certificate until this one's, a moment later, and a
        // crash then leaves a pair `on_disk` refuses, so the next start orders again.
        state::write_private(&cert.files.key, issued.key.as_bytes())?;
        state::write_private(&cert.files.cert, issued.chain.as_bytes())?;
        match self.store.reload() {
            Ok(_) => self.metrics.reloaded(Reload::changed),
            Err(e) => {
                self.metrics.reloaded(Reload::failed);
                return Err(e.into());
            }
        }
        Ok(checked.serial)
    }

    async fn account(&self) -> Result<Account, AcmeError> {
        let mut account = self.account.lock().await;
        if let Some(a) = account.as_ref() {
            return Ok(a.clone());
        }
        let http = self.http.lock().unwrap_or_else(|p| p.into_inner()).take();
        let http = match http {
            Some(h) => h,
            None => order::http_client(&self.settings)?,
        };
        let a = order::account(&self.settings, http).await?;
        *account = Some(a.clone());
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsSettings;

    /// What serves while an order is under way, and after: a stand-in until the files come, the
    /// issued certificate once they do, and that one still when a reload cannot read them.
    #[test]
    fn the_store_serves_a_stand_in_then_the_issued_certificate_and_keeps_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let acme = AcmeSettings {
            state_dir: dir.path().join("acme"),
            domains: vec!["ftp.example.com".into()],
            ..AcmeSettings::default()
        };
        let settings = TlsSettings {
            acme: Some(acme.clone()),
            ..TlsSettings::default()
        };
        let (store, _) = CertStore::load(&settings, crate::tls::provider()).expect("load");
        assert_eq!(store.temporary(), 1, "nothing issued yet");
        let cert = &acme.certificates()[0];
        let issued = crate::tls::self_signed(&cert.names).expect("rcgen");
        state::write_private(&cert.files.key, issued.key_pem.as_bytes()).expect("key");
        state::write_private(&cert.files.cert, issued.cert_pem.as_bytes()).expect("cert");
        assert!(store.reload().expect("reload"));
        assert_eq!(store.temporary(), 0);
        let serving = store.default_chain();
        std::fs::remove_file(&cert.files.cert).expect("gone");
        let _ = store.reload().expect("reload");
        assert_eq!(
            store.temporary(),
            0,
            "no stand-in for an issued certificate"
        );
        assert_eq!(store.default_chain(), serving);
    }
}
