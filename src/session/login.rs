//! USER, PASS and HOST: where a session's user and route are decided. The route rules apply in
//! order (the SNI name, then HOST, then `USER name@route`), a later one never overriding an
//! earlier one; the user is the name the backend accepted, at its 230, and nobody before.

use std::sync::Arc;

use tracing::{info, warn, Span};

use super::phase::Phase;
use super::refusal::{Halt, Refusal};
use super::Session;
use crate::access::{Attempt, Barred, NoAttempt};
use crate::audit::Event;
use crate::config::Networks;
use crate::ftp::{escaped, Command, Verb};
use crate::tls;
use crate::upstream::Upstream;

impl Session {
    /// Moves a session that has not logged in to `upstream`: a connection to another backend
    /// is closed, and the next command opens one to this.
    /// True when the route was not chosen before.
    pub(super) async fn choose(&mut self, upstream: &Arc<Upstream>) -> bool {
        let Phase::LoggingIn(waiting) = &mut self.phase else {
            return false;
        };
        if let Some(link) = &mut waiting.link {
            if Arc::ptr_eq(link.lease.upstream(), upstream) {
                return false;
            }
            let _ = link.backend.send(b"QUIT\r\n").await;
            waiting.link = None;
        }
        info!(route = %upstream.name, "route chosen");
        waiting.route.replace(Arc::clone(upstream)).is_none()
    }

    /// USER and PASS, relayed. The session's user changes only when the backend says 230: a
    /// name it refused never reaches a log line, a metric or a route decision.
    pub(super) async fn login(&mut self, mut cmd: Command) -> Result<(), Halt> {
        let ip = self.client.peer.ip();
        if let Err(Barred::Banned(left)) = self.ctx.access.not_banned(ip) {
            return Err(Refusal::Banned { left }.into());
        }
        if cmd.verb() == Verb::Pass && !self.phase.is_logged_in() && self.attempt.is_none() {
            return Err(Refusal::PassWithoutUser.into());
        }
        if cmd.verb() == Verb::User {
            // Untrimmed: `USER name @route` must not become `name` for the rules and `name `
            // for the backend (see `front_door`).
            let mut user = String::from_utf8_lossy(cmd.arg()).into_owned();
            // `USER name@route`: the route is the gateway's business; the backend sees `name`.
            if let Some((upstream, name)) = self.ctx.router.by_user(&user) {
                let upstream = Arc::clone(upstream);
                if let Some(fixed) = self.fixed_route().filter(|f| !Arc::ptr_eq(f, &upstream)) {
                    return Err(Refusal::UserElsewhere {
                        wanted: upstream.name.clone(),
                        route: fixed.name.clone(),
                    }
                    .into());
                }
                user = name.to_string();
                cmd = Command::user(&user);
                if self.choose(&upstream).await {
                    if let Phase::LoggingIn(waiting) = &mut self.phase {
                        waiting.route_by_user = true;
                    }
                }
            }
            self.front_door(&user).await?;
            self.attempt = Some(user);
        }
        // A password holds one of the address's remaining attempts while the backend checks
        // it, so parallel sessions cannot all guess before the first failure counts.
        let attempt = match cmd.verb() {
            Verb::Pass => {
                let wait = self.ctx.settings.timeouts.backend_reply();
                match self.ctx.access.attempt(ip, wait).await {
                    Ok(attempt) => Some(attempt),
                    Err(NoAttempt::Banned(left)) => return Err(Refusal::Banned { left }.into()),
                    Err(NoAttempt::Busy) => return Err(Refusal::LoginsInFlight.into()),
                }
            }
            _ => None,
        };
        let reply = self.forward(&cmd).await?;
        if reply.code() == 230 {
            // Before the client hears 230: a TLS backend's data channel is secured first.
            self.backend().await?.protect_data().await?;
            if let Some(user) = self.attempt.take() {
                Span::current().record("user", escaped(&user).as_str());
                self.phase.log_in(user);
            }
            if let (Some(membership), Some(who)) = (&self.membership, self.identity()) {
                membership.logged_in(who);
            }
            info!("logged in");
            self.audit(&Event::Login {
                who: self.who(None),
                outcome: "ok",
            });
        } else if reply.code() >= 400 {
            if let (Some(attempt), 530) = (attempt, reply.code()) {
                let tried = self.attempt.clone().unwrap_or_default();
                self.failed_login(&tried, Some(attempt)).await;
            }
            self.attempt = None;
            if let Phase::LoggingIn(waiting) = &mut self.phase {
                if std::mem::take(&mut waiting.route_by_user) {
                    // The refused name's suffix does not fix the route.
                    waiting.route = None;
                }
            }
            info!(code = reply.code(), "login refused by backend");
        }
        Ok(self.client.send(&reply).await?)
    }

    /// The gateway's own rules for a USER, before any backend hears it: the route's address
    /// rules (the route is known by now), the name's shape, denied users, and the user a
    /// client certificate names.
    ///
    /// A name with whitespace at either end or a control character anywhere is refused
    /// outright: `deny_users` compares exact names, while a backend may trim or split the
    /// argument its own way (pure-ftpd took `USER ftpuser @pure` as `ftpuser`), so such a
    /// name could slip past the list and still log in as the user it names.
    async fn front_door(&self, user: &str) -> Result<(), Refusal> {
        let route = self
            .fixed_route()
            .unwrap_or_else(|| Arc::clone(self.ctx.router.default_route()));
        self.route_admits(&route)?;
        if user.trim() != user || user.chars().any(char::is_control) {
            self.failed_login(user, None).await;
            return Err(Refusal::MalformedUser);
        }
        if self.ctx.access.denies_user(user) {
            self.failed_login(user, None).await;
            let user = user.to_string();
            return Err(Refusal::DeniedUser { user });
        }
        let tls = &self.ctx.settings.tls;
        if let Some(field) = tls.client_cert_user {
            let certified = self
                .client
                .certificate_user(field, &tls.client_cert_email_domains);
            if certified.as_deref() != Some(user) {
                self.failed_login(user, None).await;
                let user = user.to_string();
                return Err(Refusal::CertificateUser { user, certified });
            }
        }
        Ok(())
    }

    /// The route's own `allow`/`deny` for this client: checked before anything is sent to
    /// the route's backend (HOST, USER).
    fn route_admits(&self, route: &Upstream) -> Result<(), Refusal> {
        let rules = &route.settings;
        if Networks::admits(&rules.allow, &rules.deny, self.client.peer.ip()) {
            return Ok(());
        }
        let route = route.name.clone();
        Err(Refusal::RouteDenied { route })
    }

    /// A failed login as `user`: audited, counted toward a ban of the client's address (as
    /// the `attempt` its password held, if it went to a backend), and its reply held back by
    /// `access.failed_login_delay_secs`.
    async fn failed_login(&self, user: &str, attempt: Option<Attempt>) {
        let ip = self.client.peer.ip();
        self.audit(&Event::Login {
            who: self.who(Some(user)),
            outcome: "failed",
        });
        let banned = match attempt {
            Some(attempt) => attempt.refused(),
            None => self.ctx.access.failed_login(ip),
        };
        if banned {
            let ban_secs = self.ctx.settings.access.ban_secs;
            warn!(ban_secs, "address banned after failed logins");
            self.audit(&Event::Ban {
                client: ip,
                ban_secs,
            });
        }
        tokio::time::sleep(self.ctx.access.failed_login_delay()).await;
    }

    /// Who the session is for the TLS binding: the user the backend accepted, on its route.
    pub(super) fn identity(&self) -> Option<tls::binding::Identity> {
        let Phase::LoggedIn(s) = &self.phase else {
            return None;
        };
        Some(tls::binding::Identity {
            user: s.user.clone(),
            route: s.link.lease.upstream().name.clone(),
        })
    }

    /// What a data connection needs to accept its siblings' TLS sessions.
    pub(super) fn siblings(&self) -> Option<tls::binding::Siblings> {
        Some(self.membership.as_ref()?.siblings(self.identity()?))
    }

    /// The route an earlier rule has fixed, which a later one may not change (rules apply in
    /// order: SNI, HOST, USER suffix): the one in use once logged in, else the one HOST chose,
    /// else the one the SNI name selects. `None` while only the default applies.
    pub(super) fn fixed_route(&self) -> Option<Arc<Upstream>> {
        let chosen = match &self.phase {
            Phase::LoggedIn(s) => return Some(Arc::clone(s.link.lease.upstream())),
            Phase::LoggingIn(waiting) => waiting.route.clone(),
        };
        let sni = self.client.sni();
        chosen.or_else(|| self.ctx.router.sni_route(sni.as_deref()).cloned())
    }

    /// HOST (RFC 7151) with routes: a name that selects a route moves the session there (unless
    /// the SNI name chose another: 504), and
    /// the backend hears HOST too, for virtual hosts of its own. A backend that does not know
    /// the command (500, 502, or vsftpd's 530 for anything before login) has still been
    /// chosen, so the gateway answers for it.
    pub(super) async fn host(&mut self, cmd: &Command) -> Result<(), Halt> {
        if self.phase.is_logged_in() || self.attempt.is_some() {
            return Err(Refusal::HostAfterUser.into());
        }
        let name = cmd.arg_text();
        let upstream = self.ctx.router.by_host(&name).cloned();
        if let Some(upstream) = &upstream {
            if let Some(fixed) = self.fixed_route().filter(|f| !Arc::ptr_eq(f, upstream)) {
                let route = fixed.name.clone();
                return Err(Refusal::HostElsewhere { name, route }.into());
            }
            self.route_admits(upstream)?;
            self.choose(upstream).await;
        }
        if self.unconnected_before_tls() {
            // RFC 7151 puts HOST before AUTH TLS, when the gateway does not connect yet: the
            // route (if the name selects one) is chosen now, and the backend hears HOST once
            // it is connected.
            if let Phase::LoggingIn(waiting) = &mut self.phase {
                waiting.host_pending = Some(cmd.clone());
            }
            return Ok(self.reply(220, &format!("Host {name} selected.")).await?);
        }
        if upstream.is_none() {
            return Ok(self.pass_through(cmd).await?);
        }
        let reply = self.forward(cmd).await?;
        if matches!(reply.code(), 500 | 502 | 530) {
            return Ok(self.reply(220, &format!("Host {name} selected.")).await?);
        }
        Ok(self.client.send(&reply).await?)
    }
}
