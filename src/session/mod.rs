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
//! Where things happen: the command loop and its deadlines here; `phase` (before and after
//! login), `refusal` (every refusal's reply, metric and log line), `secure` (AUTH TLS, PBSZ,
//! PROT), `login` (USER, PASS, HOST and the route rules), `relay` (the backend connection and
//! forwarding), `pasv` (PASV and EPSV answered from the pool, PORT and EPRT checked),
//! `transfer` (transfers, the held final reply, ABOR), `client` (the client's connection).

mod client;
mod context;
mod login;
mod pasv;
mod phase;
mod refusal;
mod relay;
mod secure;
mod transfer;

use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout_at, Instant};
use tracing::{debug, info, warn, Span};

use crate::audit::{Event, Who};
use crate::data::DataBridge;
use crate::ftp::{escaped, gateway_feat, Command, LineError, Reply, Verb};
use crate::metrics::Reason;
pub use crate::stream::Io;
use crate::tls;
use crate::upstream::{BackendError, RouteError};

use client::ClientControl;
pub use context::Context;
use phase::{Link, Phase};
use refusal::{Halt, Refusal};
use relay::backend_reply;
use secure::{join_siblings, secure_control};

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
    /// The number every log line of the session carries, and its audit records.
    id: u64,
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
                unreachable(&ctx, &mut client, e).await;
                client.close().await;
                return;
            }
        }
    } else {
        (None, vec![Reply::new(220, &ctx.settings.greeting)])
    };
    let mut session = Session {
        id,
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
        Err(Fatal::Unreachable(e)) => unreachable(&ctx, &mut session.client, e).await,
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
    if let Some(reason) = refusal.reason() {
        ctx.metrics.refused(reason);
    }
    refusal.log();
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
                return Ok(self.refuse(Refusal::Timeout { why }).await?);
            }
            let line = match line {
                Ok(line) => line,
                Err(e) => {
                    self.refuse(Refusal::BadLine(e)).await?;
                    continue;
                }
            };
            let cmd = match Command::parse(line) {
                Ok(cmd) => cmd,
                Err(e) => {
                    self.refuse(Refusal::Unrecognized(e)).await?;
                    continue;
                }
            };
            // A transfer is bounded by the data plane's limits (connection, stall), not by the
            // idle deadline; everything else must be done by the deadline.
            let bounded = !self.phase.is_logged_in() || cmd.verb().transfer().is_none();
            let flow = if bounded {
                match timeout_at(deadline, self.handle(cmd)).await {
                    Ok(flow) => flow?,
                    Err(_) => return Ok(self.refuse(Refusal::Timeout { why }).await?),
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

    async fn refuse(&mut self, refusal: Refusal) -> std::io::Result<()> {
        if let Some(reason) = refusal.reason() {
            let reply = refusal.reply().code();
            self.audit(&Event::Refusal {
                who: self.who(None),
                reason,
                reply,
            });
        }
        refuse(&self.ctx, &mut self.client, refusal).await
    }

    /// The session as its audit records name it; `user` stands in for a user not logged in
    /// (the name a failed login tried).
    fn who<'a>(&'a self, user: Option<&'a str>) -> Who<'a> {
        let (logged_in, route) = match &self.phase {
            Phase::LoggedIn(s) => (
                Some(s.user.as_str()),
                Some(s.link.lease.upstream().name.as_str()),
            ),
            Phase::LoggingIn(_) => (None, None),
        };
        Who {
            session: self.id,
            client: self.client.peer.ip(),
            user: logged_in.or(user),
            route,
        }
    }

    fn audit(&self, event: &Event<'_>) {
        self.ctx.audit.record(event);
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
                    self.refuse(Refusal::ShuttingDown).await?;
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
                    self.refuse(Refusal::Timeout { why }).await?;
                    return Ok(None);
                }
            }
        }
    }

    async fn reply(&mut self, code: u16, text: &str) -> std::io::Result<()> {
        self.client.send(&Reply::new(code, text)).await
    }

    /// One command: answered, or refused in one place.
    async fn handle(&mut self, cmd: Command) -> Result<Flow, Fatal> {
        match self.dispatch(cmd).await {
            Ok(flow) => Ok(flow),
            Err(Halt::Refused(refusal)) => {
                let ends = refusal.ends_session();
                self.refuse(refusal).await?;
                Ok(if ends { Flow::Close } else { Flow::Continue })
            }
            Err(Halt::Fatal(fatal)) => Err(fatal),
        }
    }

    async fn dispatch(&mut self, cmd: Command) -> Result<Flow, Halt> {
        // Display hides PASS and USER and escapes the rest.
        debug!(command = %cmd, "client command");
        let verb = cmd.verb();
        if self.ctx.settings.tls.required && !self.client.is_tls() && !verb.allowed_before_tls() {
            let command = cmd.name().to_string();
            return Err(Refusal::TlsRequired { command }.into());
        }
        match verb {
            Verb::Auth => return self.auth(&cmd).await,
            Verb::Pbsz => self.pbsz(&cmd).await?,
            Verb::Prot => self.prot(&cmd).await?,
            Verb::Ccc => return Err(Refusal::Ccc.into()),
            Verb::Adat | Verb::Mic | Verb::Conf | Verb::Enc => {
                return Err(Refusal::OtherSecurity.into())
            }
            Verb::Lprt | Verb::Lpsv => return Err(Refusal::LongAddress.into()),
            Verb::Port | Verb::Eprt => self.active(&cmd).await?,
            Verb::Rein => return Err(Refusal::Rein.into()),
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
}
