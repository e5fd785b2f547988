//! One FTP session: the client's control connection, the gateway's own control connection to
//! the backend, and the relay between them (DESIGN §2).
//!
//! The relay is lockstep, as FTP is: read one client command, decide (answer locally,
//! translate, or pass through), relay the backend's replies. The only time both sides are read
//! at once is during a transfer, when the client may send `ABOR`.

mod backend;
mod client;
mod setup;
mod transfer;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn, Span};

use crate::config::Settings;
use crate::data::{DataBridge, PassivePool};
use crate::ftp::{rewrite_feat, Command, LineError, Reply, Verb};
use crate::metrics::{Channel, Metrics, Reason};
use crate::proxy_protocol::Trusted;
use crate::stream::Stream;
use crate::tls;
use crate::tls::backend::BackendTls;
use crate::tls::store::CertStore;

pub(crate) use backend::Backend;
pub use backend::BackendError;
use client::ClientControl;

/// What every session shares.
pub struct Context {
    pub settings: Settings,
    /// The base TLS config; each session clones it (see [`tls::session_config`]).
    pub tls: Arc<ServerConfig>,
    /// The certificates behind `tls`, reloadable.
    pub certs: Arc<CertStore>,
    pub pool: Arc<PassivePool>,
    pub external_ip: Option<IpAddr>,
    /// `None` for a plain-FTP backend.
    pub backend_tls: Option<BackendTls>,
    pub metrics: Arc<Metrics>,
    /// Becomes true when the gateway shuts down: idle sessions say 421 and end.
    pub draining: watch::Receiver<bool>,
    /// Load balancers whose PROXY headers name the real client (control and data).
    pub trusted: Trusted,
}

/// Connects to the backend as `settings` say, with `tls`, and (if the backend wants PROXY
/// protocol) a header naming `client` = (client address, gateway address it reached); `None`
/// is the gateway's own probe.
pub(crate) async fn connect_backend(
    settings: &Settings,
    tls: Option<&BackendTls>,
    client: Option<(SocketAddr, SocketAddr)>,
) -> Result<(Backend, Vec<Reply>), BackendError> {
    let t = &settings.timeouts;
    let header = crate::proxy_protocol::header(settings.backend.proxy_protocol, client);
    Backend::connect(
        &settings.backend.address,
        tls.map(BackendTls::session),
        header.as_deref(),
        t.backend_connect(),
        t.backend_reply(),
    )
    .await
}

impl Context {
    /// Connects to the backend as a session would (TLS included) and checks its greeting, for
    /// `/readyz`.
    pub async fn probe_backend(&self) -> Result<Reply, BackendError> {
        let (mut backend, greeting) =
            connect_backend(&self.settings, self.backend_tls.as_ref(), None).await?;
        let last = greeting.last().cloned().ok_or(BackendError::Closed)?;
        let _ = backend.send(b"QUIT\r\n").await;
        if last.is_success() {
            Ok(last)
        } else {
            Err(BackendError::Refused {
                what: "the connection",
                reply: format!("{} {}", last.code(), last.text()),
            })
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
    backend: Backend,
    /// This session's own TLS configs, for its control and data handshakes.
    tls: tls::SessionTls,
    prot: Protection,
    epsv_all: bool,
    user: Option<String>,
    /// `None` once logged in.
    login_deadline: Option<Instant>,
    pending: Option<Pending>,
    /// A client line received during a transfer, handled after it.
    deferred: Option<Result<Vec<u8>, LineError>>,
}

/// Serves one client connection from accept to close.
/// `peer` is the client: the TCP peer, or the one a trusted balancer's PROXY header named.
pub async fn serve(ctx: Arc<Context>, tcp: TcpStream, mode: Mode, peer: SocketAddr) {
    let Ok(local) = tcp.local_addr() else {
        return;
    };
    let _ = tcp.set_nodelay(true);
    let session_tls = match tls::session_config(&ctx.tls, ctx.settings.tls.data_session_reuse) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot set up session TLS");
            return;
        }
    };
    let max_line = ctx.settings.limits.max_line_length;
    let mut client = ClientControl::new(Stream::Plain(tcp), peer, local, max_line);
    if mode == Mode::Implicit {
        let config = Arc::clone(&session_tls.control);
        if let Err(e) = secure_control(&ctx, &mut client, config).await {
            info!(error = %e, "implicit TLS handshake failed");
            return;
        }
    }
    let t = &ctx.settings.timeouts;
    let connected = connect_backend(&ctx.settings, ctx.backend_tls.as_ref(), Some((peer, local)));
    let (backend, greeting) = match connected.await {
        Ok(b) => b,
        Err(e) => {
            ctx.metrics.backend_connect_errors.inc();
            warn!(error = %e, "backend unreachable");
            let _ = client
                .send(&Reply::new(
                    421,
                    "Service not available: the FTP server cannot be reached.",
                ))
                .await;
            client.close().await;
            return;
        }
    };
    let implicit = mode == Mode::Implicit;
    let mut session = Session {
        login_deadline: Some(Instant::now() + t.login()),
        ctx: Arc::clone(&ctx),
        client,
        backend,
        tls: session_tls,
        // Implicit FTPS: the data channel is protected from the start (DESIGN §2).
        prot: if implicit {
            Protection::Private
        } else {
            Protection::Clear
        },
        epsv_all: false,
        user: None,
        pending: None,
        deferred: None,
    };
    Span::current().record("backend", tracing::field::display(session.backend.peer()));
    info!(?mode, "session started");
    match session.run(greeting).await {
        Ok(()) => info!(user = session.user.as_deref(), "session closed"),
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
        Err(Fatal::Client(e)) => info!(error = %e, "client connection lost"),
    }
    session.client.close().await;
}

/// Resolves once the gateway starts draining (never, if it is gone without draining).
async fn until_draining(draining: &mut watch::Receiver<bool>) {
    if draining.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The control connection's TLS handshake, counted, with the client certificate's subject (if
/// the client presented one) put on the session's span.
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
    if let Some(subject) = client.peer_subject() {
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
            if self.handle(cmd).await? == Flow::Close {
                return Ok(());
            }
        }
    }

    /// Waits for the client's next line while watching the backend (it may announce its own
    /// shutdown with an unsolicited 421) and the idle and login timers.
    async fn next_line(&mut self) -> Result<Option<Result<Vec<u8>, LineError>>, Fatal> {
        let t = &self.ctx.settings.timeouts;
        let idle = Instant::now() + t.idle();
        let deadline = self.login_deadline.map_or(idle, |login| login.min(idle));
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
                reply = self.backend.read_reply() => {
                    let reply = reply?;
                    info!(code = reply.code(), "unsolicited backend reply relayed");
                    self.client.send(&reply).await?;
                    if reply.code() == 421 {
                        return Ok(None);
                    }
                }
                _ = sleep_until(deadline) => {
                    let why = if self.login_deadline.is_some_and(|l| l <= Instant::now()) {
                        "login"
                    } else {
                        "idle"
                    };
                    self.ctx.metrics.refused(Reason::timeout);
                    info!(timeout = why, "session timed out");
                    self.reply(421, &format!("Timeout ({why}); closing control connection.")).await?;
                    return Ok(None);
                }
            }
        }
    }

    async fn reply(&mut self, code: u16, text: &str) -> std::io::Result<()> {
        self.client.send(&Reply::new(code, text)).await
    }

    async fn handle(&mut self, cmd: Command) -> Result<Flow, Fatal> {
        // Display redacts PASS.
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
            Verb::Feat => self.feat().await?,
            Verb::Quit => {
                self.quit().await?;
                return Ok(Flow::Close);
            }
            Verb::User | Verb::Pass => self.login(&cmd).await?,
            Verb::Retr
            | Verb::Stor
            | Verb::Stou
            | Verb::Appe
            | Verb::List
            | Verb::Nlst
            | Verb::Mlsd => self.transfer(cmd).await?,
            Verb::Abor
            | Verb::Stat
            | Verb::Help
            | Verb::Syst
            | Verb::Noop
            | Verb::Host
            | Verb::Other => {
                self.pass_through(&cmd).await?;
            }
        }
        Ok(Flow::Continue)
    }

    /// Forwards the command and relays its replies.
    async fn pass_through(&mut self, cmd: &Command) -> Result<(), Fatal> {
        let reply = self.forward(cmd).await?;
        Ok(self.client.send(&reply).await?)
    }

    /// Forwards the command, relays preliminary (1xx) replies, returns the final one unsent.
    async fn forward(&mut self, cmd: &Command) -> Result<Reply, Fatal> {
        self.backend.send(&cmd.to_wire()).await?;
        loop {
            let reply = self.backend.expect_reply().await?;
            if !reply.is_preliminary() {
                return Ok(reply);
            }
            self.client.send(&reply).await?;
        }
    }

    async fn login(&mut self, cmd: &Command) -> Result<(), Fatal> {
        if cmd.verb() == Verb::User {
            let user = cmd.arg_text();
            Span::current().record("user", user.as_str());
            self.user = Some(user);
        }
        let reply = self.forward(cmd).await?;
        if reply.code() == 230 {
            // Before the client hears 230: a TLS backend's data channel is secured first.
            self.backend.protect_data().await?;
            self.login_deadline = None;
            info!(user = self.user.as_deref(), "logged in");
        } else if reply.code() >= 400 {
            info!(
                user = self.user.as_deref(),
                code = reply.code(),
                "login refused by backend"
            );
        }
        Ok(self.client.send(&reply).await?)
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

    async fn feat(&mut self) -> Result<(), Fatal> {
        self.backend.send(b"FEAT\r\n").await?;
        let backend = self.backend.expect_reply().await?;
        self.client.send(&rewrite_feat(&backend)).await?;
        Ok(())
    }

    async fn quit(&mut self) -> Result<(), Fatal> {
        self.pending = None;
        let _ = self.backend.send(b"QUIT\r\n").await;
        let reply = tokio::time::timeout(Duration::from_secs(5), self.backend.read_reply()).await;
        match reply {
            Ok(Ok(reply)) => self.client.send(&reply).await?,
            _ => self.reply(221, "Goodbye.").await?,
        }
        Ok(())
    }
}
