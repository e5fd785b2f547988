//! The relay toward the backend: the session's control connection to it (opened when a command
//! first needs it), commands forwarded with their preliminary replies relayed, FEAT rewritten,
//! QUIT.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, Span};

use super::client::ClientControl;
use super::phase::{Link, Phase};
use super::{Context, Fatal, Session};
use crate::ftp::{rewrite_feat, Command, Reply};
use crate::upstream::{Backend, BackendError, Upstream};

/// The next reply from the backend, if connected; never resolves otherwise.
pub(super) async fn backend_reply(link: Option<&mut Link>) -> Result<Reply, BackendError> {
    match link {
        Some(link) => link.backend.read_reply().await,
        None => std::future::pending().await,
    }
}

/// Connects a session to `upstream`, checks the backend's greeting (the client had the
/// gateway's own), and sends it the HOST the gateway answered before, if there was one.
pub(super) async fn connect(
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

impl Session {
    /// Forwards the command and relays its replies.
    pub(super) async fn pass_through(&mut self, cmd: &Command) -> Result<(), Fatal> {
        let reply = self.forward(cmd).await?;
        Ok(self.client.send(&reply).await?)
    }

    /// The link to the backend, connected now if the session has none yet: to the route HOST
    /// or USER chose, else the one the SNI name selects, else the default.
    pub(super) async fn link(&mut self) -> Result<&mut Link, Fatal> {
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

    pub(super) async fn backend(&mut self) -> Result<&mut Backend, Fatal> {
        Ok(&mut self.link().await?.backend)
    }

    /// Forwards the command, relays preliminary (1xx) replies, returns the final one unsent.
    pub(super) async fn forward(&mut self, cmd: &Command) -> Result<Reply, Fatal> {
        self.backend().await?.send(&cmd.to_wire()).await?;
        loop {
            let reply = self.backend().await?.expect_reply().await?;
            if !reply.is_preliminary() {
                return Ok(reply);
            }
            self.client.send(&reply).await?;
        }
    }

    pub(super) async fn feat(&mut self) -> Result<(), Fatal> {
        let backend = self.backend().await?;
        backend.send(b"FEAT\r\n").await?;
        let reply = backend.expect_reply().await?;
        self.client.send(&rewrite_feat(&reply)).await?;
        Ok(())
    }

    pub(super) async fn quit(&mut self) -> Result<(), Fatal> {
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
