//! The relay toward the backend: the session's control connection to it (opened when a command
//! first needs it), commands forwarded with their preliminary replies relayed, FEAT rewritten,
//! QUIT.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, Span};

use super::client::ClientControl;
use super::phase::Link;
use super::{Context, Fatal};
use crate::backend::{BackendError, Route};
use crate::ftp::{rewrite_feat, Line, Reply};

/// The next reply from the backend, if connected; never resolves otherwise.
pub(super) async fn backend_reply(link: Option<&mut Link>) -> Result<Reply, BackendError> {
    match link {
        Some(link) => link.backend.read_reply().await,
        None => std::future::pending().await,
    }
}

/// Connects a session to `route`, checks the backend's greeting (the client had the
/// gateway's own), and sends it the HOST the gateway answered before, if there was one.
pub(super) async fn connect(
    ctx: &Context,
    client: &ClientControl,
    route: &Arc<Route>,
    host: Option<Line>,
) -> Result<Link, Fatal> {
    let (mut backend, greeting, slot) = route
        .connect(Some((client.peer, client.local)), &ctx.settings.timeouts)
        .await?;
    let span = Span::current();
    span.record("backend", tracing::field::display(backend.peer()));
    span.record("route", route.name.as_str());
    if let Some(last) = greeting.last().filter(|r| !r.is_success()) {
        return Err(Fatal::Greeting(last.clone()));
    }
    info!(route = %route.name, "backend connected");
    if let Some(host) = host {
        // Answered already; the backend's own answer only matters to itself.
        backend.send(&host.to_wire()).await?;
        let reply = backend.expect_reply().await?;
        debug!(
            code = reply.code(),
            "backend answered the HOST sent on connect"
        );
    }
    Ok(Link { backend, slot })
}

/// Forwards the command, relays preliminary (1xx) replies, returns the final one unsent.
pub(super) async fn forward(
    link: &mut Link,
    client: &mut ClientControl,
    line: &Line,
) -> Result<Reply, Fatal> {
    link.backend.send(&line.to_wire()).await?;
    loop {
        let reply = link.backend.expect_reply().await?;
        if !reply.is_preliminary() {
            return Ok(reply);
        }
        client.send(&reply).await?;
    }
}

/// FEAT, answered by the backend and rewritten: what the gateway does itself (AUTH TLS, PBSZ,
/// PROT, EPSV...) added, what it cannot relay removed.
pub(super) async fn feat(link: &mut Link) -> Result<Reply, Fatal> {
    link.backend.send(b"FEAT\r\n").await?;
    let reply = link.backend.expect_reply().await?;
    Ok(rewrite_feat(&reply))
}

/// QUIT: the backend's goodbye relayed when it says one within 5 s, the gateway's own
/// otherwise.
pub(super) async fn quit(link: Option<&mut Link>) -> Reply {
    let goodbye = || Reply::new(221, "Goodbye.");
    let Some(link) = link else {
        return goodbye();
    };
    let _ = link.backend.send(b"QUIT\r\n").await;
    match tokio::time::timeout(Duration::from_secs(5), link.backend.read_reply()).await {
        Ok(Ok(reply)) => reply,
        _ => goodbye(),
    }
}
