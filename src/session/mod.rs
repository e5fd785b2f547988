//! One FTP session: the client's control connection, the gateway's own control connection to
//! the backend, and the relay between them (docs/ARCHITECTURE.md, "A session").
//!
//! The relay is lockstep, as FTP is: read one client command, decide (answer locally,
//! translate, or pass through), relay the backend's replies. The only time both sides are read
//! at once is during a transfer, when the client may send `ABOR`.
//!
//! Every wait is bounded (docs/ARCHITECTURE.md): each reply to the client within
//! `timeouts.client_write_secs`, and the whole handling of a command, not only the read of the
//! next one, within the login deadline (before login) or the idle one (after). Transfers are
//! bounded by the data plane's own limits instead.
//!
//! The gateway greets the client itself and connects to the backend only when a command needs
//! it, which, when TLS is required, is only once TLS is up: a client that never finishes TLS
//! never reaches the backend (see `backend.relay_greeting` for the old way).

mod client;
mod phase;
mod setup;
mod transfer;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use thiserror::Error;
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout_at, Instant};
use tracing::{debug, info, warn, Span};

use crate::config::Settings;
use crate::data::{DataBridge, PassivePool};
use crate::ftp::{escaped, gateway_feat, rewrite_feat, Command, LineError, Reply, Verb};
use crate::metrics::{Channel, Metrics, Reason};
pub use crate::stream::Io;
use crate::tls;
use crate::tls::store::CertStore;
use crate::upstream::{Backend, BackendError, RouteError, Router, Upstream};

use client::ClientControl;
use phase::{Link, Phase};

/// What every session shares.
pub struct Context {
    pub settings: Settings,
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
}

impl Context {
    /// Connects to the default backend as a session would (TLS included) and checks its
    /// greeting, for `/readyz`.
    pub async fn probe_backend(&self) -> Result<Reply, RouteError> {
        let upstream = self.router.default_route();
        let (mut backend, greeting, _lease) =
            upstream.connect(None, &self.settings.timeouts).await?;
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

/// How the client's control connection starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plain until `AUTH TLS`.
    Explicit,
    /// TLS from the first byte.
    Implicit,
}

/// Why a session ended early. Logged once; the client gets the reply where one still fits.
#[derive(Debug, Error)]
enum Fatal {
    #[error("client connection: {0}")]
    Client(#[from] std::io::Error),
    #[error("backend {0}")]
    Backend(#[from] BackendError),
    /// No backend could be reached when the session needed one.
    #[error("{0}")]
    Unreachable(RouteError),
    /// The backend turned the session away in its greeting (421 too many users, ...): the
    /// client hears that reply.
    #[error("backend refused the session: {}", .0.code())]
    Greeting(Reply),
}

impl From<RouteError> for Fatal {
    fn from(e: RouteError) -> Self {
        Fatal::Unreachable(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protection {
    Clear,
    Private,
}

/// A passive data connection set up by PASV/EPSV and not yet used.
struct Pending {
    bridge: DataBridge,
    protection: Protection,
}

struct Session {
    ctx: Arc<Context>,
    client: ClientControl,
    /// Before or after login, with what each has (`phase`).
    phase: Phase,
    /// This session's own TLS configs, for its control and data handshakes.
    tls: tls::SessionTls,
    prot: Protection,
    epsv_all: bool,
    /// The name in the last USER, which becomes the session's user on 230.
    attempt: Option<String>,
    /// When the session last finished a command: the idle deadline counts from here.
    idle_since: Instant,
    /// Once the control connection is TLS: the session's place among the sessions whose data
    /// connections may resume each other's TLS sessions (see [`tls::binding`]).
    membership: Option<tls::binding::Membership>,
    pending: Option<Pending>,
    /// A client line received during a transfer, handled after it.
    deferred: Option<Result<Vec<u8>, LineError>>,
}

/// Serves one client connection from accept to close.
/// `peer` is the client: the TCP peer, or the one a trusted balancer's PROXY header named.
///
/// The connection can be anything a session runs over ([`Io`]): the listeners hand a TCP
/// socket; tests may hand one end of a `tokio::io::duplex`. `local` is the address the client
/// reached (PASV answers with it unless an external address is set).
pub async fn serve(
    ctx: Arc<Context>,
    io: Box<dyn Io>,
    local: SocketAddr,
    mode: Mode,
    peer: SocketAddr,
) {
    let session_tls = match tls::session_config(&ctx.tls, ctx.settings.tls.data_session_reuse) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot set up session TLS");
            return;
        }
    };
    let max_line = ctx.settings.limits.max_line_length;
    let write_limit = ctx.settings.timeouts.client_write();
    let mut client = ClientControl::new(io, peer, local, max_line, write_limit);
    let implicit = mode == Mode::Implicit;
    let mut membership = None;
    if implicit {
        membership = join_siblings(&ctx, &session_tls, peer);
        let config = Arc::clone(&session_tls.control);
        if let Err(e) = secure_control(&ctx, &mut client, config).await {
            info!(error = %e, "implicit TLS handshake failed");
            return;
        }
    }
    let t = &ctx.settings.timeouts;
    // `relay_greeting` (one backend only): connect now and relay its greeting, as if the client
    // reached it directly. Otherwise the gateway greets, and connects when a command needs it.
    let (link, greeting) = if ctx.router.is_static() && ctx.settings.backend.relay_greeting {
        let upstream = ctx.router.default_route();
        match upstream.connect(Some((peer, local)), t).await {
            Ok((backend, greeting, lease)) => (Some(Link { backend, lease }), greeting),
            Err(e) => {
                unreachable(&ctx, &mut client, &e).await;
                client.close().await;
                return;
            }
        }
    } else {
        (None, vec![Reply::new(220, &ctx.settings.greeting)])
    };
    let mut session = Session {
        phase: Phase::new(Instant::now() + t.login(), link),
        idle_since: Instant::now(),
        membership,
        ctx: Arc::clone(&ctx),
        client,
        tls: session_tls,
        // Implicit FTPS: the data channel is protected from the start, as clients expect of
        // it (none waits to send PROT P before its first transfer).
        prot: if implicit {
            Protection::Private
        } else {
            Protection::Clear
        },
        epsv_all: false,
        attempt: None,
        pending: None,
        deferred: None,
    };
    if let Some(link) = session.phase.link() {
        Span::current().record("backend", tracing::field::display(link.backend.peer()));
    }
    info!(?mode, "session started");
    match session.run(greeting).await {
        Ok(()) => info!("session closed"),
        Err(Fatal::Backend(e)) => {
            warn!(error = %e, "backend failed; closing session");
            let _ = session
                .client
                .send(&Reply::new(
                    421,
                    "Service not available: lost the FTP server.",
                ))
                .await;
        }
        Err(Fatal::Unreachable(e)) => unreachable(&ctx, &mut session.client, &e).await,
        Err(Fatal::Greeting(reply)) => {
            // The code is relayed; the text, which may name the server, is the gateway's own.
            info!(code = reply.code(), text = %escaped(&reply.text()), "backend refused the session");
            let code = if reply.code() >= 400 {
                reply.code()
            } else {
                421
            };
            let refusal = Reply::new(
                code,
                "Service not available: the FTP server refused the session.",
            );
            let _ = session.client.send(&refusal).await;
        }
        Err(Fatal::Client(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            ctx.metrics.refused(Reason::client_write_timeout);
            info!(error = %e, "client stopped reading its replies; closing");
        }
        Err(Fatal::Client(e)) => info!(error = %e, "client connection lost"),
    }
    session.client.close().await;
}

/// No address of the backend could be reached: counted, logged, and 421 to the client.
async fn unreachable(ctx: &Context, client: &mut ClientControl, e: &RouteError) {
    ctx.metrics.backend_connect_errors.inc();
    ctx.metrics.refused(Reason::backend_down);
    warn!(error = %e, "backend unreachable");
    let _ = client
        .send(&Reply::new(
            421,
            "Service not available: the FTP server cannot be reached.",
        ))
        .await;
}

/// The next reply from the backend, if connected; never resolves otherwise.
async fn backend_reply(link: Option<&mut Link>) -> Result<Reply, BackendError> {
    match link {
        Some(link) => link.backend.read_reply().await,
        None => std::future::pending().await,
    }
}

/// Resolves once the gateway starts draining (never, if it is gone without draining).
async fn until_draining(draining: &mut watch::Receiver<bool>) {
    if draining.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Connects a session to `upstream`, checks the backend's greeting (the client had the
/// gateway's own), and sends it the HOST the gateway answered before, if there was one.
async fn connect(
    ctx: &Context,
    client: &ClientControl,
    upstream: &Arc<Upstream>,
    host: Option<Command>,
) -> Result<Link, Fatal> {
    let (mut backend, greeting, lease) = upstream
        .connect(Some((client.peer, client.local)), &ctx.settings.timeouts)
        .await?;
    let span = Span::current();
    span.record("backend", tracing::field::display(backend.peer()));
    span.record("route", upstream.name.as_str());
    if let Some(last) = greeting.last().filter(|r| !r.is_success()) {
        return Err(Fatal::Greeting(last.clone()));
    }
    info!(route = %upstream.name, "backend connected");
    if let Some(host) = host {
        // Answered already; the backend's own answer only matters to itself.
        backend.send(&host.to_wire()).await?;
        let reply = backend.expect_reply().await?;
        debug!(
            code = reply.code(),
            "backend answered the HOST sent on connect"
        );
    }
    Ok(Link { backend, lease })
}

/// The control connection's TLS handshake, counted, with the client certificate's subject (if
/// the client presented one) put on the session's span.
/// Enters the session in the registry its siblings' data connections look in (see
/// `tls::binding`), as *pending*, before its control handshake starts: the client may hand
/// that handshake's ticket to a sibling's data connection the moment it has it, before this
/// session's task runs again. Joined only after the handshake, rclone's check once had a data
/// connection offer such a ticket first, fail to resume, and wait out its deadline.
fn join_siblings(
    ctx: &Context,
    tls: &tls::SessionTls,
    peer: SocketAddr,
) -> Option<tls::binding::Membership> {
    let ticketer = tls.ticketer.as_ref()?;
    let client = peer.ip().to_canonical();
    Some(ctx.bindings.join(client, Arc::clone(ticketer)))
}

async fn secure_control(
    ctx: &Context,
    client: &mut ClientControl,
    config: Arc<ServerConfig>,
) -> std::io::Result<()> {
    let result = client
        .upgrade(config, ctx.settings.timeouts.tls_handshake())
        .await;
    let resumed = result
        .as_ref()
        .ok()
        .map(|()| client.tls_info().is_some_and(|(_, resumed)| resumed));
    ctx.metrics.handshake(Channel::control, resumed);
    if let Some(subject) = client.peer_subject().map(|s| escaped(&s)) {
        Span::current().record("client_cert", subject.as_str());
        info!(subject, "client certificate accepted");
    }
    result
}

impl Session {
    async fn run(&mut self, greeting: Vec<Reply>) -> Result<(), Fatal> {
        // The greeting: 120 (maybe) then 220, relayed as the backend words it.
        for reply in &greeting {
            self.client.send(reply).await?;
        }
        if !greeting.last().is_some_and(Reply::is_success) {
            return Ok(());
        }
        loop {
            let line = match self.deferred.take() {
                Some(line) => line,
                None => match self.next_line().await? {
                    Some(line) => line,
                    None => return Ok(()),
                },
            };
            // Lines a client keeps queued are served before timers are looked at, so the
            // deadline is checked here too: a client that pipelines without end still meets it.
            let (deadline, why) = self.deadline();
            if Instant::now() >= deadline {
                return Ok(self.timed_out(why).await?);
            }
            let line = match line {
                Ok(line) => line,
                Err(e) => {
                    self.ctx.metrics.refused(Reason::bad_line);
                    info!(error = %e, "refused client line");
                    self.reply(500, &format!("Syntax error: {e}.")).await?;
                    continue;
                }
            };
            let cmd = match Command::parse(line) {
                Ok(cmd) => cmd,
                Err(e) => {
                    self.ctx.metrics.refused(Reason::bad_line);
                    info!(error = %e, "refused client line");
                    self.reply(500, "Syntax error, command unrecognized.")
                        .await?;
                    continue;
                }
            };
            // A transfer is bounded by the data plane's limits (connection, stall), not by the
            // idle deadline; everything else must be done by the deadline.
            let bounded = !self.phase.is_logged_in() || cmd.verb().transfer().is_none();
            let flow = if bounded {
                match timeout_at(deadline, self.handle(cmd)).await {
                    Ok(flow) => flow?,
                    Err(_) => return Ok(self.timed_out(why).await?),
                }
            } else {
                self.handle(cmd).await?
            };
            if flow == Flow::Close {
                return Ok(());
            }
            self.idle_since = Instant::now();
        }
    }

    /// When the session must have been served by, and which timer that is.
    fn deadline(&self) -> (Instant, &'static str) {
        let idle = self.idle_since + self.ctx.settings.timeouts.idle();
        match &self.phase {
            Phase::LoggingIn(l) if l.deadline <= idle => (l.deadline, "login"),
            _ => (idle, "idle"),
        }
    }

    /// The login or idle deadline passed: 421, counted and logged; the session ends.
    async fn timed_out(&mut self, why: &'static str) -> std::io::Result<()> {
        self.ctx.metrics.refused(Reason::timeout);
        info!(timeout = why, "session timed out");
        self.reply(
            421,
            &format!("Timeout ({why}); closing control connection."),
        )
        .await
    }

    /// Waits for the client's next line while watching the backend (it may announce its own
    /// shutdown with an unsolicited 421) and the idle and login timers.
    async fn next_line(&mut self) -> Result<Option<Result<Vec<u8>, LineError>>, Fatal> {
        self.idle_since = Instant::now();
        let (deadline, why) = self.deadline();
        let mut draining = self.ctx.draining.clone();
        loop {
            tokio::select! {
                // Lines already received are served first; a session between commands is idle.
                biased;
                line = self.client.read_line() => return Ok(line?),
                () = until_draining(&mut draining) => {
                    self.ctx.metrics.refused(Reason::shutting_down);
                    info!("gateway shutting down; closing idle session");
                    self.reply(421, "Service shutting down; please reconnect later.").await?;
                    return Ok(None);
                }
                reply = backend_reply(self.phase.link_mut()) => {
                    let reply = reply?;
                    info!(code = reply.code(), "unsolicited backend reply relayed");
                    self.client.send(&reply).await?;
                    if reply.code() == 421 {
                        return Ok(None);
                    }
                }
                _ = sleep_until(deadline) => {
                    self.timed_out(why).await?;
                    return Ok(None);
                }
            }
        }
    }

    async fn reply(&mut self, code: u16, text: &str) -> std::io::Result<()> {
        self.client.send(&Reply::new(code, text)).await
    }

    async fn handle(&mut self, cmd: Command) -> Result<Flow, Fatal> {
        // Display hides PASS and USER and escapes the rest.
        debug!(command = %cmd, "client command");
        let verb = cmd.verb();
        if self.ctx.settings.tls.required && !self.client.is_tls() && !verb.allowed_before_tls() {
            self.ctx.metrics.refused(Reason::tls_required);
            info!(command = %cmd.name(), "refused before AUTH TLS");
            self.reply(530, "TLS required: send AUTH TLS first.")
                .await?;
            return Ok(Flow::Continue);
        }
        match verb {
            Verb::Auth => return self.auth(&cmd).await,
            Verb::Pbsz => self.pbsz(&cmd).await?,
            Verb::Prot => self.prot(&cmd).await?,
            Verb::Ccc => {
                self.reply(534, "CCC refused: the control connection stays encrypted.")
                    .await?
            }
            Verb::Adat | Verb::Mic | Verb::Conf | Verb::Enc => {
                self.reply(
                    502,
                    "Command not implemented: TLS is the only security mechanism.",
                )
                .await?
            }
            Verb::Lprt | Verb::Lpsv => {
                self.reply(502, "Command not implemented; use EPSV.")
                    .await?
            }
            Verb::Port | Verb::Eprt => self.active(&cmd).await?,
            Verb::Rein => {
                self.reply(502, "REIN is not supported; reconnect instead.")
                    .await?
            }
            Verb::Pasv => self.pasv().await?,
            Verb::Epsv => self.epsv(&cmd).await?,
            Verb::Feat if self.unconnected_before_tls() => {
                self.client.send(&gateway_feat()).await?
            }
            Verb::Syst if self.unconnected_before_tls() => self.reply(215, "UNIX Type: L8").await?,
            Verb::Noop if self.unconnected_before_tls() => self.reply(200, "NOOP ok.").await?,
            Verb::Help if self.unconnected_before_tls() => {
                self.reply(214, "Send AUTH TLS, then log in with USER and PASS.")
                    .await?
            }
            Verb::Stat if cmd.arg().is_empty() && !self.relay_stat() => self.status().await?,
            Verb::Feat => self.feat().await?,
            Verb::Quit => {
                self.quit().await?;
                return Ok(Flow::Close);
            }
            Verb::User | Verb::Pass => self.login(cmd).await?,
            Verb::Retr
            | Verb::Stor
            | Verb::Stou
            | Verb::Appe
            | Verb::List
            | Verb::Nlst
            | Verb::Mlsd => self.transfer(cmd).await?,
            Verb::Host => self.host(&cmd).await?,
            Verb::Abor | Verb::Stat | Verb::Help | Verb::Syst | Verb::Noop | Verb::Other => {
                self.pass_through(&cmd).await?;
            }
        }
        Ok(Flow::Continue)
    }

    /// True while the session has no backend and its control connection is not yet
    /// encrypted: the gateway answers the commands allowed before TLS itself, so a client that
    /// never finishes TLS never reaches the backend.
    fn unconnected_before_tls(&self) -> bool {
        self.phase.link().is_none() && !self.client.is_tls()
    }

    /// `backend.relay_stat` of the route the session is on (or would be).
    fn relay_stat(&self) -> bool {
        let upstream = self.phase.upstream();
        upstream
            .unwrap_or(self.ctx.router.default_route())
            .settings
            .relay_stat
    }

    /// STAT without an argument, outside a transfer (RFC 959 §4.1.3): the gateway's own
    /// status, since the backend's names its server, its version and internal addresses.
    async fn status(&mut self) -> std::io::Result<()> {
        let mut lines = vec![format!(" Connected from {}", self.client.peer)];
        match self.phase.user() {
            Some(user) => lines.push(format!(" Logged in as {user}")),
            None => lines.push(" Not logged in".into()),
        }
        lines.push(match self.client.tls_info() {
            Some((version, _)) => format!(" Control connection: {version:?}"),
            None => " Control connection: plain".into(),
        });
        let prot = match self.prot {
            Protection::Private => "private (PROT P)",
            Protection::Clear => "clear (PROT C)",
        };
        lines.push(format!(" Data connections: {prot}"));
        let reply = Reply::multi(211, "FTP gateway status:", &lines, "End of status.");
        self.client.send(&reply).await
    }

    /// Forwards the command and relays its replies.
    async fn pass_through(&mut self, cmd: &Command) -> Result<(), Fatal> {
        let reply = self.forward(cmd).await?;
        Ok(self.client.send(&reply).await?)
    }

    /// The link to the backend, connected now if the session has none yet: to the route HOST
    /// or USER chose, else the one the SNI name selects, else the default.
    async fn link(&mut self) -> Result<&mut Link, Fatal> {
        let waiting = match &mut self.phase {
            Phase::LoggedIn(s) => return Ok(&mut s.link),
            Phase::LoggingIn(l) => l,
        };
        let link = match waiting.link.take() {
            Some(link) => link,
            None => {
                let upstream = match &waiting.route {
                    Some(route) => Arc::clone(route),
                    None => Arc::clone(self.ctx.router.by_sni(self.client.sni().as_deref())),
                };
                let host = waiting.host_pending.take();
                connect(&self.ctx, &self.client, &upstream, host).await?
            }
        };
        Ok(waiting.link.insert(link))
    }

    async fn backend(&mut self) -> Result<&mut Backend, Fatal> {
        Ok(&mut self.link().await?.backend)
    }

    /// Moves a session that has not logged in to `upstream`: a connection to another backend
    /// is closed, and the next command opens one to this.
    /// True when the route was not chosen before.
    async fn choose(&mut self, upstream: &Arc<Upstream>) -> bool {
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

    /// Forwards the command, relays preliminary (1xx) replies, returns the final one unsent.
    async fn forward(&mut self, cmd: &Command) -> Result<Reply, Fatal> {
        self.backend().await?.send(&cmd.to_wire()).await?;
        loop {
            let reply = self.backend().await?.expect_reply().await?;
            if !reply.is_preliminary() {
                return Ok(reply);
            }
            self.client.send(&reply).await?;
        }
    }

    /// USER and PASS, relayed. The session's user changes only when the backend says 230: a
    /// name it refused never reaches a log line, a metric or a route decision.
    async fn login(&mut self, mut cmd: Command) -> Result<(), Fatal> {
        if cmd.verb() == Verb::User {
            let mut user = cmd.arg_text();
            // `USER name@route`: the route is the gateway's business; the backend sees `name`.
            if let Some((upstream, name)) = self.ctx.router.by_user(&user) {
                let upstream = Arc::clone(upstream);
                if let Some(fixed) = self.fixed_route().filter(|f| !Arc::ptr_eq(f, &upstream)) {
                    info!(wanted = %upstream.name, route = %fixed.name, "USER suffix refused: the route is already chosen");
                    let text = format!(
                        "This connection is for route {}; reconnect for {}.",
                        fixed.name, upstream.name
                    );
                    return Ok(self.reply(530, &text).await?);
                }
                user = name.to_string();
                cmd = Command::user(&user);
                if self.choose(&upstream).await {
                    if let Phase::LoggingIn(waiting) = &mut self.phase {
                        waiting.route_by_user = true;
                    }
                }
            }
            self.attempt = Some(user);
        }
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
        } else if reply.code() >= 400 {
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

    /// Who the session is for the TLS binding: the user the backend accepted, on its route.
    fn identity(&self) -> Option<tls::binding::Identity> {
        let Phase::LoggedIn(s) = &self.phase else {
            return None;
        };
        Some(tls::binding::Identity {
            user: s.user.clone(),
            route: s.link.lease.upstream().name.clone(),
        })
    }

    /// What a data connection needs to accept its siblings' TLS sessions.
    fn siblings(&self) -> Option<tls::binding::Siblings> {
        Some(self.membership.as_ref()?.siblings(self.identity()?))
    }

    async fn auth(&mut self, cmd: &Command) -> Result<Flow, Fatal> {
        if self.client.is_tls() {
            self.reply(503, "Already using TLS.").await?;
            return Ok(Flow::Continue);
        }
        // SSL and TLS-P are the pre-RFC 4217 names that also imply PROT P.
        let implies_prot_p = match cmd.arg_text().to_ascii_uppercase().as_str() {
            "TLS" | "TLS-C" => false,
            "SSL" | "TLS-P" => true,
            _ => {
                self.reply(504, "AUTH mechanism not supported; use AUTH TLS.")
                    .await?;
                return Ok(Flow::Continue);
            }
        };
        if self.client.has_pending_input() {
            warn!("client pipelined plaintext after AUTH TLS; closing");
            self.reply(421, "Data after AUTH TLS before the handshake; closing.")
                .await?;
            return Ok(Flow::Close);
        }
        self.reply(234, "AUTH TLS successful.").await?;
        self.membership = join_siblings(&self.ctx, &self.tls, self.client.peer);
        let config = Arc::clone(&self.tls.control);
        if let Err(e) = secure_control(&self.ctx, &mut self.client, config).await {
            info!(error = %e, "control TLS handshake failed");
            return Ok(Flow::Close);
        }
        if implies_prot_p {
            self.prot = Protection::Private;
        }
        Ok(Flow::Continue)
    }

    async fn pbsz(&mut self, cmd: &Command) -> std::io::Result<()> {
        if !self.client.is_tls() {
            return self.reply(503, "PBSZ needs AUTH TLS first.").await;
        }
        if cmd.arg_text().parse::<u32>().is_err() {
            return self.reply(501, "PBSZ takes a number.").await;
        }
        // RFC 4217 §8: TLS needs no protection buffer; the answer is always 0.
        self.reply(200, "PBSZ=0").await
    }

    async fn prot(&mut self, cmd: &Command) -> std::io::Result<()> {
        // RFC 2228 puts PBSZ before PROT; like vsftpd, the gateway does not insist (Python's
        // ftplib sends `PROT C` alone), since TLS has no protection buffer to size anyway.
        if !self.client.is_tls() {
            return self.reply(503, "PROT needs AUTH TLS first.").await;
        }
        match cmd.arg_text().to_ascii_uppercase().as_str() {
            "P" => {
                self.prot = Protection::Private;
                self.reply(200, "Protection level set to Private.").await
            }
            "C" if self.ctx.settings.tls.allow_clear_data => {
                self.prot = Protection::Clear;
                self.reply(200, "Protection level set to Clear.").await
            }
            "C" => {
                self.ctx.metrics.refused(Reason::clear_data);
                info!("PROT C refused by policy");
                self.reply(534, "Clear data connections are not allowed; use PROT P.")
                    .await
            }
            "S" | "E" => {
                self.reply(536, "Protection level not supported; use PROT P.")
                    .await
            }
            _ => self.reply(504, "Unknown protection level.").await,
        }
    }

    /// The route an earlier rule has fixed, which a later one may not change (rules apply in
    /// order: SNI, HOST, USER suffix): the one in use once logged in, else the one HOST chose,
    /// else the one the SNI name selects. `None` while only the default applies.
    fn fixed_route(&self) -> Option<Arc<Upstream>> {
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
    async fn host(&mut self, cmd: &Command) -> Result<(), Fatal> {
        if self.phase.is_logged_in() || self.attempt.is_some() {
            return Ok(self.reply(503, "HOST must come before USER.").await?);
        }
        let name = cmd.arg_text();
        let upstream = self.ctx.router.by_host(&name).cloned();
        if let Some(upstream) = &upstream {
            if let Some(fixed) = self.fixed_route().filter(|f| !Arc::ptr_eq(f, upstream)) {
                info!(wanted = %upstream.name, route = %fixed.name, "HOST refused: an earlier rule chose another route");
                let text = format!(
                    "Host {name} is not served on this connection (it is for route {}).",
                    fixed.name
                );
                return Ok(self.reply(504, &text).await?);
            }
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
            return self.pass_through(cmd).await;
        }
        let reply = self.forward(cmd).await?;
        if matches!(reply.code(), 500 | 502 | 530) {
            return Ok(self.reply(220, &format!("Host {name} selected.")).await?);
        }
        Ok(self.client.send(&reply).await?)
    }

    async fn feat(&mut self) -> Result<(), Fatal> {
        let backend = self.backend().await?;
        backend.send(b"FEAT\r\n").await?;
        let reply = backend.expect_reply().await?;
        self.client.send(&rewrite_feat(&reply)).await?;
        Ok(())
    }

    async fn quit(&mut self) -> Result<(), Fatal> {
        self.pending = None;
        let reply = match self.phase.link_mut() {
            Some(link) => {
                let _ = link.backend.send(b"QUIT\r\n").await;
                tokio::time::timeout(Duration::from_secs(5), link.backend.read_reply()).await
            }
            None => return Ok(self.reply(221, "Goodbye.").await?),
        };
        match reply {
            Ok(Ok(reply)) => self.client.send(&reply).await?,
            _ => self.reply(221, "Goodbye.").await?,
        }
        Ok(())
    }
}
