//! What every session shares: the settings, TLS, the pool, the router, the binding registry,
//! the metrics, and the drain signal.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::ServerConfig;
use tokio::sync::watch;

use crate::access::Access;
use crate::audit::{Audit, Event, Who};
use crate::backend::{BackendError, Route, RouteError, Router};
use crate::config::{PolicySettings, Settings};
use crate::data::PassivePool;
use crate::ftp::Reply;
use crate::metrics::Metrics;
use crate::refusal::Refusal;
use crate::scan::Scanners;
use crate::tls;
use crate::tls::store::CertStore;

/// What every session shares.
pub struct Context {
    pub settings: Settings,
    /// Address rules, bans and denied users (see [`crate::access`]).
    pub access: Access,
    /// The audit log, when one is configured (see [`crate::audit`]).
    pub audit: Audit,
    /// The base TLS config; each session clones it (see [`tls::session_config`]).
    pub tls: Arc<ServerConfig>,
    /// The certificates behind `tls`, reloadable.
    pub certs: Arc<CertStore>,
    pub pool: Arc<PassivePool>,
    pub external_ip: Option<IpAddr>,
    /// The backends, and which one a session goes to.
    pub router: Router,
    /// Logged-in sessions by client address, user and route, whose TLS sessions their
    /// siblings' data connections may resume (see [`tls::binding`]).
    pub bindings: Arc<tls::binding::Registry>,
    pub metrics: Arc<Metrics>,
    /// Becomes true when the gateway shuts down: idle sessions say 421 and end.
    pub draining: watch::Receiver<bool>,
    /// The scanner of each route whose uploads are scanned (`[scan]`).
    pub(crate) scanners: Scanners,
}

impl Context {
    /// The command and name rules of `route` (the default route's for `None`): its own, or
    /// the global `[policy]`.
    pub(crate) fn policy<'a>(&'a self, route: Option<&'a Route>) -> &'a PolicySettings {
        let route = route.unwrap_or(self.router.default_route());
        route
            .settings
            .policy
            .as_ref()
            .unwrap_or(&self.settings.policy)
    }

    /// A refusal counted and logged as it says, and audited when `who` names the client: every
    /// refusal, at the door or in a session, goes through here, whoever then sends its reply.
    pub(crate) fn note(&self, refusal: &Refusal, who: Option<Who<'_>>) {
        if let Some(reason) = refusal.reason() {
            self.metrics.refused(reason.clone());
            if let Some(who) = who {
                let reply = refusal.reply().code();
                let command = refusal.command();
                self.audit.record(&Event::Refusal {
                    who,
                    reason,
                    reply,
                    command,
                });
            }
        }
        refusal.log();
    }

    /// Connects to the default backend as a session would (TLS included) and checks its
    /// greeting, for `/readyz`.
    pub async fn probe_backend(&self) -> Result<Reply, RouteError> {
        let route = self.router.default_route();
        let (mut backend, greeting, _slot) = route.connect(None, &self.settings.timeouts).await?;
        let last = greeting.last().cloned().ok_or(BackendError::Closed)?;
        let _ = backend.send(b"QUIT\r\n").await;
        if last.is_success() {
            Ok(last)
        } else {
            Err(BackendError::Refused {
                what: "the connection",
                reply: format!("{} {}", last.code(), last.text()),
            }
            .into())
        }
    }
}
