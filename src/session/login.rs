//! The login, as one machine: USER, PASS and HOST, the phase they move the session through, the
//! route they choose, and the backend connection that comes with it. The route rules apply in
//! order (the SNI name, then HOST, then `USER name@route`), a later one never overriding an
//! earlier one; the user is the name the backend accepted, at its 230, and nobody before.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::{info, warn, Span};

use super::client::ClientControl;
use super::phase::{Account, Link, Phase, RouteChoice};
use super::relay::{connect, forward};
use super::secure::Security;
use super::Halt;
use super::{Answer, Context, Fatal};
use crate::access::{Attempt, Barred, NoAttempt};
use crate::audit::{Event, Who};
use crate::backend::Route;
use crate::config::Networks;
use crate::ftp::{escaped, Line, Reply};
use crate::refusal::Refusal;
use crate::tls::binding::Identity;

pub(super) struct Login {
    /// The session's number, which its audit records carry.
    session: u64,
    phase: Phase,
    /// The name in the last USER, which becomes the session's user on 230.
    attempt: Option<String>,
}

impl Login {
    pub(super) fn new(session: u64, deadline: Instant, link: Option<Link>) -> Login {
        Login {
            session,
            phase: Phase::new(deadline, link),
            attempt: None,
        }
    }

    pub(super) fn session(&self) -> u64 {
        self.session
    }

    pub(super) fn phase(&self) -> &Phase {
        &self.phase
    }

    pub(super) fn link_mut(&mut self) -> Option<&mut Link> {
        self.phase.link_mut()
    }

    /// The logged-in session's backend and who it is there; `None` before login.
    pub(super) fn account(&mut self) -> Option<Account<'_>> {
        self.phase.account()
    }

    /// The session as its audit records name it; `tried` stands in for a user not logged in
    /// (the name a failed login tried).
    pub(super) fn who<'a>(&'a self, client: IpAddr, tried: Option<&'a str>) -> Who<'a> {
        let route = self.phase.link().map(|l| l.slot.route().name.as_str());
        let logged_in = self.phase.user();
        Who {
            session: self.session,
            client,
            user: logged_in.or(tried),
            route: route.filter(|_| logged_in.is_some()),
        }
    }

    /// Who the session is for the TLS binding: the user the backend accepted, on its route.
    pub(super) fn identity(&self) -> Option<Identity> {
        let Phase::LoggedIn(s) = &self.phase else {
            return None;
        };
        Some(Identity {
            user: s.user.clone(),
            route: s.link.slot.route().name.clone(),
        })
    }

    /// True while the session has no backend and its control connection is not yet
    /// encrypted: the gateway answers the commands allowed before TLS itself, so a client that
    /// never finishes TLS never reaches the backend.
    pub(super) fn unconnected_before_tls(&self, client: &ClientControl) -> bool {
        self.phase.link().is_none() && !client.is_tls()
    }

    /// The link to the backend, connected now if the session has none yet: to the route HOST
    /// or USER chose, else the one the SNI name selects, else the default.
    pub(super) async fn link(
        &mut self,
        ctx: &Context,
        client: &ClientControl,
    ) -> Result<&mut Link, Fatal> {
        let waiting = match &mut self.phase {
            Phase::LoggedIn(s) => return Ok(&mut s.link),
            Phase::LoggingIn(l) => l,
        };
        let link = match waiting.link.take() {
            Some(link) => link,
            None => {
                let route = match waiting.route.route() {
                    Some(route) => Arc::clone(route),
                    None => Arc::clone(ctx.router.by_sni(client.sni().as_deref())),
                };
                let host = waiting.host_pending.take();
                connect(ctx, client, &route, host).await?
            }
        };
        Ok(waiting.link.insert(link))
    }

    /// Forwards a command and relays its replies: the final one is the outcome.
    pub(super) async fn pass_through(
        &mut self,
        ctx: &Context,
        client: &mut ClientControl,
        line: &Line,
    ) -> Result<Answer, Fatal> {
        let link = self.link(ctx, client).await?;
        Ok(forward(link, client, line).await?.into())
    }

    /// Moves a session that has not logged in to `route`, chosen by HOST or a user suffix
    /// (`by`): a connection to another backend is closed, and the next command opens one to
    /// this. A route chosen already stays chosen by what chose it first.
    async fn choose(&mut self, route: &Arc<Route>, by: fn(Arc<Route>) -> RouteChoice) {
        let Phase::LoggingIn(waiting) = &mut self.phase else {
            return;
        };
        if let Some(link) = &mut waiting.link {
            if Arc::ptr_eq(link.slot.route(), route) {
                return;
            }
            let _ = link.backend.send(b"QUIT\r\n").await;
            waiting.link = None;
        }
        info!(route = %route.name, "route chosen");
        if waiting.route.route().is_none() {
            waiting.route = by(Arc::clone(route));
        }
    }

    /// USER, relayed once the gateway's own rules pass it (`front_door`). A suffix naming a
    /// route (`USER name@route`) is the gateway's business: the backend hears `USER name`.
    pub(super) async fn user(
        &mut self,
        name: String,
        line: Line,
        ctx: &Context,
        client: &mut ClientControl,
        security: &Security,
    ) -> Result<Answer, Halt> {
        not_banned(ctx, client)?;
        let (user, line) = match ctx.router.by_user(&name) {
            Some((route, user)) => {
                let route = Arc::clone(route);
                if let Some(fixed) = self.fixed_route(ctx, client) {
                    if !Arc::ptr_eq(&fixed, &route) {
                        return Err(Refusal::UserElsewhere {
                            wanted: route.name.clone(),
                            route: fixed.name.clone(),
                        }
                        .into());
                    }
                }
                let user = user.to_string();
                self.choose(&route, RouteChoice::User).await;
                let line = Line::user(&user);
                (user, line)
            }
            None => (name, line),
        };
        self.front_door(ctx, client, &user).await?;
        self.attempt = Some(user);
        self.relay_login(ctx, client, security, &line, None).await
    }

    /// PASS, relayed. A password holds one of the address's remaining attempts while the
    /// backend checks it, so parallel sessions cannot all guess before the first failure
    /// counts.
    pub(super) async fn pass(
        &mut self,
        line: Line,
        ctx: &Context,
        client: &mut ClientControl,
        security: &Security,
    ) -> Result<Answer, Halt> {
        not_banned(ctx, client)?;
        let ip = client.peer.ip();
        if !self.phase.is_logged_in() && self.attempt.is_none() {
            return Err(Refusal::PassWithoutUser.into());
        }
        let wait = ctx.settings.timeouts.backend_reply();
        let attempt = match ctx.access.attempt(ip, wait).await {
            Ok(attempt) => attempt,
            Err(NoAttempt::Banned(left)) => return Err(Refusal::Banned { left }.into()),
            Err(NoAttempt::Busy) => return Err(Refusal::LoginsInFlight.into()),
        };
        self.relay_login(ctx, client, security, &line, Some(attempt))
            .await
    }

    /// USER or PASS sent on, and the backend's answer acted on. The session's user changes
    /// only when the backend says 230: a name it refused never reaches a log line, a metric
    /// or a route decision.
    async fn relay_login(
        &mut self,
        ctx: &Context,
        client: &mut ClientControl,
        security: &Security,
        line: &Line,
        attempt: Option<Attempt>,
    ) -> Result<Answer, Halt> {
        let link = self.link(ctx, client).await?;
        let reply = forward(link, client, line).await?;
        if reply.code() == 230 {
            // Before the client hears 230: a TLS backend's data channel is secured first.
            link.backend.protect_data().await?;
            if let Some(user) = self.attempt.take() {
                Span::current().record("user", escaped(&user).as_str());
                self.phase.log_in(user);
            }
            if let Some(who) = self.identity() {
                security.logged_in(who);
            }
            info!("logged in");
            ctx.audit.record(&Event::Login {
                who: self.who(client.peer.ip(), None),
                outcome: "ok",
            });
        } else if reply.code() >= 400 {
            if let (Some(attempt), 530) = (attempt, reply.code()) {
                let tried = self.attempt.clone().unwrap_or_default();
                self.failed_login(ctx, client, &tried, Some(attempt)).await;
            }
            self.attempt = None;
            if let Phase::LoggingIn(waiting) = &mut self.phase {
                if let RouteChoice::User(_) = waiting.route {
                    // The refused name's suffix does not fix the route.
                    waiting.route = RouteChoice::Open;
                }
            }
            info!(code = reply.code(), "login refused by backend");
        }
        Ok(reply.into())
    }

    /// The gateway's own rules for a USER, before any backend hears it: the route's address
    /// rules (the route is known by now), the name's shape, denied users, and the user a
    /// client certificate names.
    ///
    /// A name with whitespace at either end or a control character anywhere is refused
    /// outright: `deny_users` compares exact names, while a backend may trim or split the
    /// argument its own way (pure-ftpd took `USER ftpuser @pure` as `ftpuser`), so such a
    /// name could slip past the list and still log in as the user it names.
    async fn front_door(
        &self,
        ctx: &Context,
        client: &ClientControl,
        user: &str,
    ) -> Result<(), Refusal> {
        let route = self
            .fixed_route(ctx, client)
            .unwrap_or_else(|| Arc::clone(ctx.router.default_route()));
        route_admits(&route, client)?;
        if user.trim() != user || user.chars().any(char::is_control) {
            self.failed_login(ctx, client, user, None).await;
            return Err(Refusal::MalformedUser);
        }
        if ctx.access.denies_user(user) {
            self.failed_login(ctx, client, user, None).await;
            let user = user.to_string();
            return Err(Refusal::DeniedUser { user });
        }
        let tls = &ctx.settings.tls;
        if let Some(field) = tls.client_cert_user {
            let certified = client.certificate_user(field, &tls.client_cert_email_domains);
            if certified.as_deref() != Some(user) {
                self.failed_login(ctx, client, user, None).await;
                let user = user.to_string();
                return Err(Refusal::CertificateUser { user, certified });
            }
        }
        Ok(())
    }

    /// A failed login as `user`: audited, counted toward a ban of the client's address (as
    /// the `attempt` its password held, if it went to a backend), and its reply held back by
    /// `access.failed_login_delay_secs`.
    async fn failed_login(
        &self,
        ctx: &Context,
        client: &ClientControl,
        user: &str,
        attempt: Option<Attempt>,
    ) {
        let ip = client.peer.ip();
        ctx.audit.record(&Event::Login {
            who: self.who(ip, Some(user)),
            outcome: "failed",
        });
        let banned = match attempt {
            Some(attempt) => attempt.refused(),
            None => ctx.access.failed_login(ip),
        };
        if banned {
            let ban_secs = ctx.settings.access.ban_secs;
            warn!(ban_secs, "address banned after failed logins");
            ctx.audit.record(&Event::Ban {
                client: ip,
                ban_secs,
            });
        }
        tokio::time::sleep(ctx.access.failed_login_delay()).await;
    }

    /// The route an earlier rule has fixed, which a later one may not change (rules apply in
    /// order: SNI, HOST, USER suffix): the one in use once logged in, else the one HOST chose,
    /// else the one the SNI name selects. `None` while only the default applies.
    fn fixed_route(&self, ctx: &Context, client: &ClientControl) -> Option<Arc<Route>> {
        let chosen = match &self.phase {
            Phase::LoggedIn(s) => return Some(Arc::clone(s.link.slot.route())),
            Phase::LoggingIn(waiting) => waiting.route.route().cloned(),
        };
        let sni = client.sni();
        chosen.or_else(|| ctx.router.sni_route(sni.as_deref()).cloned())
    }

    /// HOST (RFC 7151) with routes: a name that selects a route moves the session there (unless
    /// the SNI name chose another: 504), and the backend hears HOST too, for virtual hosts of
    /// its own. A backend that does not know the command (500, 502, or vsftpd's 530 for
    /// anything before login) has still been chosen, so the gateway answers for it.
    pub(super) async fn host(
        &mut self,
        name: String,
        line: Line,
        ctx: &Context,
        client: &mut ClientControl,
    ) -> Result<Answer, Halt> {
        if self.phase.is_logged_in() || self.attempt.is_some() {
            return Err(Refusal::HostAfterUser.into());
        }
        let selected = || Reply::new(220, &format!("Host {name} selected.")).into();
        let route = ctx.router.by_host(&name).cloned();
        if let Some(route) = &route {
            if let Some(fixed) = self.fixed_route(ctx, client) {
                if !Arc::ptr_eq(&fixed, route) {
                    let route = fixed.name.clone();
                    return Err(Refusal::HostElsewhere { name, route }.into());
                }
            }
            route_admits(route, client)?;
            self.choose(route, RouteChoice::Host).await;
        }
        if self.unconnected_before_tls(client) {
            // RFC 7151 puts HOST before AUTH TLS, when the gateway does not connect yet: the
            // route (if the name selects one) is chosen now, and the backend hears HOST once
            // it is connected.
            if let Phase::LoggingIn(waiting) = &mut self.phase {
                waiting.host_pending = Some(line);
            }
            return Ok(selected());
        }
        if route.is_none() {
            return Ok(self.pass_through(ctx, client, &line).await?);
        }
        let link = self.link(ctx, client).await?;
        let reply = forward(link, client, &line).await?;
        if matches!(reply.code(), 500 | 502 | 530) {
            return Ok(selected());
        }
        Ok(reply.into())
    }
}

/// A USER or PASS from a banned address is refused before anything else: a session opened
/// before the ban gets no more tries.
fn not_banned(ctx: &Context, client: &ClientControl) -> Result<(), Refusal> {
    match ctx.access.not_banned(client.peer.ip()) {
        Err(Barred::Banned(left)) => Err(Refusal::Banned { left }),
        Ok(()) | Err(Barred::Denied) => Ok(()),
    }
}

/// The route's own `allow`/`deny` for this client: checked before anything is sent to the
/// route's backend (HOST, USER).
fn route_admits(route: &Route, client: &ClientControl) -> Result<(), Refusal> {
    let rules = &route.settings;
    if Networks::admits(&rules.allow, &rules.deny, client.peer.ip()) {
        return Ok(());
    }
    let route = route.name.clone();
    Err(Refusal::RouteDenied { route })
}
