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
//!
//! The session is a thin command loop over owned machines, each taking only what it needs and
//! returning an [`Answer`] for the loop to send: `secure` (AUTH TLS, PBSZ, PROT: the control
//! channel's security), `login` (USER, PASS, HOST, the phase and the route: the login),
//! `channel` (PASV, EPSV, PORT, EPRT, EPSV ALL and the transfer: the data channel), with
//! `transfer` (the transfer in flight and ABOR), `relay` (forwarding to the backend) and
//! `client` (the client's connection); every refusal's reply, metric and log line come from
//! [`crate::refusal`] (docs/ARCHITECTURE.md, "A session").

mod answer;
mod channel;
mod client;
mod context;
mod login;
mod phase;
mod relay;
mod scanned;
mod secure;
#[cfg(test)]
mod tests;
mod transfer;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::{sleep_until, timeout_at, Instant};
use tracing::{debug, info, warn, Span};

use crate::audit::Who;
use crate::backend::RouteError;
use crate::ftp::{gateway_feat, Command, LineError, Reply, Request};
use crate::metrics::Reason;
use crate::refusal::Refusal;
pub use crate::stream::Io;
use crate::tls;

use answer::{Answer, Fatal, Halt};
use channel::{DataChannel, Parts};
use client::ClientControl;
pub use context::Context;
use login::Login;
use phase::{Link, Phase};
use relay::backend_reply;
use secure::{Protection, Security};

/// How the client's control connection starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plain until `AUTH TLS`.
    Explicit,
    /// TLS from the first byte.
    Implicit,
}

struct Session {
    ctx: Arc<Context>,
    client: ClientControl,
    /// The control channel's security: AUTH, PBSZ, PROT, and the TLS binding.
    security: Security,
    /// The login: its phase, the route, the backend connection.
    login: Login,
    /// The data channel: PASV, EPSV, PORT, EPRT, and the transfers on what they set up.
    data: DataChannel,
    /// When the session last finished a command: the idle deadline counts from here.
    idle_since: Instant,
}

/// Serves one client connection from accept to close.
/// `peer` is the client: the TCP peer, or the one a trusted balancer's PROXY header named.
///
/// The connection can be anything a session runs over ([`Io`]): the listeners hand a TCP
/// socket; tests may hand one end of a `tokio::io::duplex`. `local` is the address the client
/// reached (PASV answers with it unless an external address is set). `id` numbers the session
/// in its log lines and audit records.
pub async fn serve(
    ctx: Arc<Context>,
    io: Box<dyn Io>,
    local: SocketAddr,
    mode: Mode,
    peer: SocketAddr,
    id: u64,
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
    let mut security = Security::new(session_tls, implicit);
    if implicit {
        if let Err(e) = security.handshake(&ctx, &mut client).await {
            info!(error = %e, "implicit TLS handshake failed");
            return;
        }
    }
    let t = &ctx.settings.timeouts;
    // `relay_greeting` (one backend only): connect now and relay its greeting, as if the client
    // reached it directly. Otherwise the gateway greets, and connects when a command needs it.
    let (link, greeting) = if ctx.router.is_static() && ctx.settings.backend.relay_greeting {
        let route = ctx.router.default_route();
        match route.connect(Some((peer, local)), t).await {
            Ok((backend, greeting, slot)) => (Some(Link { backend, slot }), greeting),
            Err(e) => {
                unreachable(&ctx, &mut client, e).await;
                client.close().await;
                return;
            }
        }
    } else {
        (None, vec![Reply::new(220, &ctx.settings.greeting)])
    };
    let mut session = Session {
        login: Login::new(id, Instant::now() + t.login(), link),
        idle_since: Instant::now(),
        ctx: Arc::clone(&ctx),
        client,
        security,
        data: DataChannel::default(),
    };
    if let Some(link) = session.login.phase().link() {
        Span::current().record("backend", tracing::field::display(link.backend.peer()));
    }
    info!(?mode, "session started");
    match session.run(greeting).await {
        Ok(()) => info!("session closed"),
        Err(Fatal::Backend(e)) => {
            let _ = refuse(&ctx, &mut session.client, Refusal::BackendLost(e)).await;
        }
        Err(Fatal::Unreachable(e)) => unreachable(&ctx, &mut session.client, e).await,
        Err(Fatal::Greeting(reply)) => {
            let _ = refuse(&ctx, &mut session.client, Refusal::BackendRefused(reply)).await;
        }
        Err(Fatal::Client(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            ctx.metrics.refused(Reason::client_write_timeout);
            info!(error = %e, "client stopped reading its replies; closing");
        }
        Err(Fatal::Client(e)) => info!(error = %e, "client connection lost"),
    }
    session.client.close().await;
}

/// No address of the backend could be reached: a connect error counted, and the refusal.
async fn unreachable(ctx: &Context, client: &mut ClientControl, e: RouteError) {
    ctx.metrics.backend_connect_errors.inc();
    let _ = refuse(ctx, client, Refusal::BackendDown(e)).await;
}

/// Turns something down: counted, logged and answered, all as the refusal says.
async fn refuse(
    ctx: &Context,
    client: &mut ClientControl,
    refusal: Refusal,
) -> std::io::Result<()> {
    ctx.note(&refusal, None);
    client.send(&refusal.reply()).await
}

/// Resolves once the gateway starts draining (never, if it is gone without draining).
async fn until_draining(draining: &mut watch::Receiver<bool>) {
    if draining.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
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
            let Some(line) = self.next_line().await? else {
                return Ok(());
            };
            // Lines a client keeps queued are served before timers are looked at, so the
            // deadline is checked here too: a client that pipelines without end still meets it.
            let (deadline, why) = self.deadline();
            if Instant::now() >= deadline {
                return Ok(self.refuse(Refusal::Timeout { why }).await?);
            }
            let request = match line
                .map_err(Refusal::BadLine)
                .and_then(|line| Request::parse(line).map_err(Refusal::Unrecognized))
            {
                Ok(request) => request,
                Err(refusal) => {
                    self.refuse(refusal).await?;
                    continue;
                }
            };
            // A transfer is bounded by the data plane's limits (connection, stall), not by the
            // idle deadline; everything else must be done by the deadline.
            let logged_in = self.login.phase().is_logged_in();
            let bounded = !logged_in || request.command.transfer().is_none();
            let outcome = if bounded {
                match timeout_at(deadline, self.handle(request)).await {
                    Ok(outcome) => outcome?,
                    Err(_) => return Ok(self.refuse(Refusal::Timeout { why }).await?),
                }
            } else {
                self.handle(request).await?
            };
            match outcome {
                Answer::Reply(reply) => self.client.send(&reply).await?,
                Answer::Sent => {}
                Answer::Close(reply) => {
                    if let Some(reply) = reply {
                        self.client.send(&reply).await?;
                    }
                    return Ok(());
                }
            }
            self.idle_since = Instant::now();
        }
    }

    /// When the session must have been served by, and which timer that is.
    fn deadline(&self) -> (Instant, &'static str) {
        let idle = self.idle_since + self.ctx.settings.timeouts.idle();
        match self.login.phase() {
            Phase::LoggingIn(l) if l.deadline <= idle => (l.deadline, "login"),
            _ => (idle, "idle"),
        }
    }

    /// Turns something down: counted, audited, logged and answered, all as the refusal says.
    async fn refuse(&mut self, refusal: Refusal) -> std::io::Result<()> {
        self.ctx.note(&refusal, Some(self.who()));
        self.client.send(&refusal.reply()).await
    }

    /// The session as its audit records name it.
    fn who(&self) -> Who<'_> {
        self.login.who(self.client.peer.ip(), None)
    }

    /// Waits for the client's next line while watching the backend (it may announce its own
    /// shutdown with an unsolicited 421) and the idle and login timers. A line deferred during
    /// a transfer comes first.
    async fn next_line(&mut self) -> Result<Option<Result<Vec<u8>, LineError>>, Fatal> {
        if self.client.has_deferred() {
            return Ok(self.client.read_line().await?);
        }
        self.idle_since = Instant::now();
        let (deadline, why) = self.deadline();
        let mut draining = self.ctx.draining.clone();
        loop {
            tokio::select! {
                // A session between commands is idle: once the drain has begun it gets 421,
                // even with a line waiting (a line polled first would be served, and a client
                // could keep its session through the drain by sending one).
                biased;
                () = until_draining(&mut draining) => {
                    self.refuse(Refusal::ShuttingDown).await?;
                    return Ok(None);
                }
                line = self.client.read_line() => return Ok(line?),
                reply = backend_reply(self.login.link_mut()) => {
                    let reply = reply?;
                    info!(code = reply.code(), "unsolicited backend reply relayed");
                    self.client.send(&reply).await?;
                    if reply.code() == 421 {
                        return Ok(None);
                    }
                }
                _ = sleep_until(deadline) => {
                    self.refuse(Refusal::Timeout { why }).await?;
                    return Ok(None);
                }
            }
        }
    }

    /// One command: answered, or refused in one place.
    async fn handle(&mut self, request: Request) -> Result<Answer, Fatal> {
        match self.dispatch(request).await {
            Ok(outcome) => Ok(outcome),
            Err(Halt::Refused(refusal)) => {
                let ends = refusal.ends_session();
                self.refuse(refusal).await?;
                Ok(if ends {
                    Answer::Close(None)
                } else {
                    Answer::Sent
                })
            }
            Err(Halt::Fatal(fatal)) => Err(fatal),
        }
    }

    /// Each command to the machine that owns it, with what that machine may borrow.
    async fn dispatch(&mut self, request: Request) -> Result<Answer, Halt> {
        // Display hides PASS and USER and escapes the rest.
        debug!(command = %request.line, "client command");
        let Request { command, line } = request;
        let ctx = &*self.ctx;
        let client = &mut self.client;
        if ctx.settings.tls.required && !client.is_tls() && !command.allowed_before_tls() {
            let command = line.name();
            return Err(Refusal::TlsRequired { command }.into());
        }
        let route = self.login.phase().route().map(|r| &**r);
        let verdict = crate::policy::check(ctx.policy(route), &line.name(), line.arg());
        if let Some(denied) = verdict {
            return Err(Refusal::Policy(denied).into());
        }
        self.data.note(&line);
        let before_tls = self.login.unconnected_before_tls(client);
        let (security, login, data) = (&mut self.security, &mut self.login, &mut self.data);
        match command {
            Command::Auth(mechanism) => security.auth(mechanism, ctx, client).await,
            Command::Pbsz(size) => security.pbsz(size, client),
            Command::Prot(level) => security.prot(level, ctx, client),
            Command::Ccc => Err(Refusal::Ccc.into()),
            Command::OtherSecurity => Err(Refusal::OtherSecurity.into()),
            Command::LongAddress => Err(Refusal::LongAddress.into()),
            Command::Rein => Err(Refusal::Rein.into()),
            Command::Pasv => {
                let parts = Parts {
                    ctx,
                    client,
                    login,
                    security,
                };
                data.pasv(parts).await
            }
            Command::Epsv(arg) => {
                let parts = Parts {
                    ctx,
                    client,
                    login,
                    security,
                };
                data.epsv(arg, parts).await
            }
            Command::Active(target) => {
                let parts = Parts {
                    ctx,
                    client,
                    login,
                    security,
                };
                data.active(line.name(), target, parts).await
            }
            Command::Transfer(direction) => {
                let parts = Parts {
                    ctx,
                    client,
                    login,
                    security,
                };
                data.transfer(line, direction, parts).await
            }
            Command::User(name) => login.user(name, line, ctx, client, security).await,
            Command::Pass => login.pass(line, ctx, client, security).await,
            Command::Host(name) => login.host(name, line, ctx, client).await,
            Command::Feat if before_tls => Ok(gateway_feat().into()),
            Command::Syst if before_tls => Ok(Reply::new(215, "UNIX Type: L8").into()),
            Command::Noop if before_tls => Ok(Reply::new(200, "NOOP ok.").into()),
            Command::Help if before_tls => {
                let text = "Send AUTH TLS, then log in with USER and PASS.";
                Ok(Reply::new(214, text).into())
            }
            Command::Status if !relay_stat(ctx, login) => {
                Ok(status(client, login, security).into())
            }
            Command::Feat => Ok(relay::feat(login.link(ctx, client).await?).await?.into()),
            Command::Quit => {
                data.close();
                Ok(Answer::Close(Some(relay::quit(login.link_mut()).await)))
            }
            Command::Abor
            | Command::Status
            | Command::Help
            | Command::Syst
            | Command::Noop
            | Command::Forward => Ok(login.pass_through(ctx, client, &line).await?),
        }
    }
}

/// `backend.relay_stat` of the route the session is on (or would be).
fn relay_stat(ctx: &Context, login: &Login) -> bool {
    let route = login.phase().route();
    route
        .unwrap_or(ctx.router.default_route())
        .settings
        .relay_stat
}

/// STAT without an argument, outside a transfer (RFC 959 §4.1.3): the gateway's own status,
/// since the backend's names its server, its version and internal addresses.
fn status(client: &ClientControl, login: &Login, security: &Security) -> Reply {
    let mut lines = vec![format!(" Connected from {}", client.peer)];
    match login.phase().user() {
        Some(user) => lines.push(format!(" Logged in as {user}")),
        None => lines.push(" Not logged in".into()),
    }
    lines.push(match client.tls_info() {
        Some((version, _)) => format!(" Control connection: {version:?}"),
        None => " Control connection: plain".into(),
    });
    let prot = match security.protection() {
        Protection::Private => "private (PROT P)",
        Protection::Clear => "clear (PROT C)",
    };
    lines.push(format!(" Data connections: {prot}"));
    Reply::multi(211, "FTP gateway status:", &lines, "End of status.")
}
