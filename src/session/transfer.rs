//! A transfer in flight: from its 1xx to its final reply, with ABOR and STAT while it runs.
//!
//! The backend's final reply is held until the bridge reports both data connections closed: a
//! client that sees `226` before the last byte reads a short file (docs/ARCHITECTURE.md,
//! "A transfer").

use std::time::Duration;

use tokio::time::{sleep_until, timeout_at, Instant};
use tracing::{debug, info, warn};

use super::client::ClientControl;
use super::phase::Account;
use super::{Context, Fatal};
use crate::audit::{Event, Who};
use crate::backend::BackendError;
use crate::data::{BridgeError, DataBridge, Transferred};
use crate::ftp::{abort, Command, Direction, Escaped, Line, Reply, Request};
use crate::metrics::{Outcome, Reason};

/// A transfer between the 1xx the client has heard and the final reply it is owed.
pub(super) struct InFlight {
    line: Line,
    direction: Direction,
    bridge: DataBridge,
    session: u64,
    began: std::time::Instant,
    /// The backend's final reply, once it came.
    last: Option<Reply>,
    /// A 1xx after the one relayed already. pure-ftpd ends a download cut short with its
    /// statistics line coded 150: it stands for the transfer's reply, and is never relayed (a
    /// client would read it as the answer to its next command).
    stray: bool,
    /// How the copy ended, once it did.
    copied: Option<Result<Transferred, BridgeError>>,
}

impl InFlight {
    pub(super) fn new(
        line: Line,
        direction: Direction,
        bridge: DataBridge,
        session: u64,
    ) -> InFlight {
        InFlight {
            line,
            direction,
            bridge,
            session,
            began: std::time::Instant::now(),
            last: None,
            stray: false,
            copied: None,
        }
    }

    /// Waits for both the backend's final reply and the end of the copy, watching the client
    /// for ABOR meanwhile; a line it sends that is not ABOR or STAT waits in `client` for the
    /// transfer to end, as on a plain server.
    pub(super) async fn run(
        mut self,
        ctx: &Context,
        client: &mut ClientControl,
        account: Account<'_>,
    ) -> Result<(), Fatal> {
        // Once the copy is over, the backend gets the usual reply timeout to say so.
        let mut reply_deadline: Option<Instant> = None;
        while self.last.is_none() || self.copied.is_none() {
            tokio::select! {
                reply = account.backend.read_reply(), if self.last.is_none() => {
                    let reply = match reply {
                        Ok(reply) => reply,
                        Err(e) => {
                            // The backend died mid-transfer: the client hears first that the
                            // transfer failed (426), then, from `serve`, that the session is
                            // over (421). The bridge drops with this frame, resetting the
                            // backend's side.
                            let lost = std::io::Error::other(format!("backend control: {e}"));
                            let lost = BridgeError::Backend(lost);
                            self.log(ctx, client, &account, None, Err(&lost));
                            client.send(&lost.reply()).await?;
                            return Err(e.into());
                        }
                    };
                    if reply.is_preliminary() {
                        debug!(code = reply.code(), "extra preliminary reply withheld");
                        self.stray = true;
                    } else {
                        self.last = Some(reply);
                    }
                }
                done = self.bridge.finished(), if self.copied.is_none() => {
                    self.copied = Some(done);
                    reply_deadline = Some(Instant::now() + ctx.settings.timeouts.backend_reply());
                }
                _ = sleep_until(reply_deadline.unwrap_or_else(Instant::now)), if reply_deadline.is_some() && self.last.is_none() => {
                    return Err(BackendError::Timeout.into());
                }
                line = client.read_line(), if !client.has_deferred() => {
                    let Some(line) = line? else {
                        info!("client closed the control connection during a transfer");
                        return Err(std::io::Error::from(std::io::ErrorKind::ConnectionAborted).into());
                    };
                    let command = line.as_ref().ok().and_then(|l| Request::parse(l.clone()).ok());
                    match command.map(|r| r.command) {
                        Some(Command::Abor) => return self.abort(ctx, client, account).await,
                        // STAT without argument asks about the transfer itself (RFC 959
                        // §4.1.3): answered here, since the backend's answer would interleave
                        // with the transfer's own replies.
                        Some(Command::Status) => {
                            let status = Reply::multi(
                                211,
                                "Transfer in progress:",
                                &[format!(" {} {} bytes so far", self.line, self.bridge.progress())],
                                "End of status.",
                            );
                            client.send(&status).await?;
                            continue;
                        }
                        _ => {}
                    }
                    // Anything else waits until the transfer is over, as on a plain server.
                    client.defer(line);
                }
            }
        }
        let (Some(last), Some(copied)) = (self.last.take(), self.copied.take()) else {
            return Ok(());
        };
        let reply = match copied {
            Ok(t) => {
                self.log(ctx, client, &account, Some(last.code()), Ok(&t));
                last
            }
            Err(e) => {
                self.log(ctx, client, &account, Some(last.code()), Err(&e));
                e.reply()
            }
        };
        Ok(client.send(&reply).await?)
    }

    /// ABOR during a transfer (RFC 959 §4.1.3). Inside TLS there is no urgent data, so ABOR is
    /// an ordinary line. It is forwarded first, then the bridge is dropped (resetting the
    /// backend's data connection, which is how servers that only look for ABOR between writes
    /// notice it), then the backend's replies are gathered, in whatever order it sends them:
    /// until the transfer's and ABOR's have both come, for at most [`ABOR_SETTLE`]; after that
    /// a NOOP, whose 200 marks the end of whatever was left, for at most [`ABOR_LIMIT`] in all.
    /// The client then hears the transfer's reply and ABOR's 2xx (`ftp::abort::settle`), and
    /// the session is in step with the backend again. A backend that does not even answer the
    /// NOOP ends the session (421), after the client has had its two replies.
    async fn abort(
        self,
        ctx: &Context,
        client: &mut ClientControl,
        account: Account<'_>,
    ) -> Result<(), Fatal> {
        let InFlight {
            line,
            direction,
            bridge,
            session,
            began,
            last,
            mut stray,
            copied,
        } = self;
        // What the log line says is the transfer as it stood when the client aborted it.
        let record = TransferLog::now(&line, direction, session, began, &bridge, None);
        let asked = Instant::now();
        let backend = &mut *account.backend;
        backend.send(b"ABOR\r\n").await?;
        drop(bridge);
        let mut after = Vec::with_capacity(2);
        // The transfer's reply is in hand when it came before ABOR, or a stray 1xx stood for
        // it; ABOR's is still to come.
        let transfer_replied = |stray: bool| last.is_some() || stray;
        let mut in_step = true;
        while after.len() < abort::expected(transfer_replied(stray)) {
            match timeout_at(asked + ABOR_SETTLE, backend.read_reply()).await {
                Ok(reply) => {
                    let reply = reply?;
                    if !reply.is_preliminary() {
                        after.push(reply);
                    } else if !transfer_replied(stray) {
                        stray = true;
                    }
                }
                Err(_) => {
                    in_step = false;
                    break;
                }
            }
        }
        if !in_step {
            // Fewer replies than expected: a NOOP, whose 200 comes after all the rest.
            debug!(
                replies = after.len(),
                "backend quiet after ABOR; resynchronising with NOOP"
            );
            backend.send(b"NOOP\r\n").await?;
            while let Ok(reply) = timeout_at(asked + ABOR_LIMIT, backend.read_reply()).await {
                let reply = reply?;
                if reply.code() == 200 {
                    in_step = true;
                    break;
                }
                if !reply.is_preliminary() {
                    after.push(reply);
                }
            }
        }
        let copied_whole = matches!(copied, Some(Ok(_)));
        let replies = abort::settle(last.as_ref(), &after, copied_whole);
        match &copied {
            Some(Ok(t)) if replies.completed => record.log(ctx, client, &account, Ok(t)),
            _ => record.log(ctx, client, &account, Err(&BridgeError::Cancelled)),
        }
        client.send(&replies.transfer).await?;
        client.send(&replies.abor).await?;
        if !in_step {
            return Err(BackendError::Timeout.into());
        }
        Ok(())
    }

    /// The transfer's log line and audit record, as it stands now.
    fn log(
        &self,
        ctx: &Context,
        client: &ClientControl,
        account: &Account<'_>,
        backend_code: Option<u16>,
        result: Result<&Transferred, &BridgeError>,
    ) {
        self.record(backend_code).log(ctx, client, account, result);
    }

    /// What the log line will say of the transfer as it stands now, besides its outcome.
    fn record(&self, backend_code: Option<u16>) -> TransferLog<'_> {
        let (line, bridge) = (&self.line, &self.bridge);
        TransferLog::now(
            line,
            self.direction,
            self.session,
            self.began,
            bridge,
            backend_code,
        )
    }
}

/// How long the backend has to send both the transfer's reply and ABOR's before the gateway
/// asks with a NOOP where it stands.
const ABOR_SETTLE: Duration = Duration::from_secs(2);
/// How long an ABOR may take in all before the backend counts as lost.
const ABOR_LIMIT: Duration = Duration::from_secs(5);

/// What the transfer log line says about a transfer besides its outcome.
pub(super) struct TransferLog<'a> {
    line: &'a Line,
    direction: Direction,
    session: u64,
    /// The backend's final reply, when it came.
    backend_code: Option<u16>,
    bytes: u64,
    elapsed: std::time::Duration,
    /// The client data connection's TLS `(version, resumed)`, if its handshake passed, whether
    /// or not the transfer then did.
    tls: Option<(rustls::ProtocolVersion, bool)>,
}

impl<'a> TransferLog<'a> {
    /// The transfer of `line` as it stands: its bytes so far and its time since `began`.
    pub(super) fn now(
        line: &'a Line,
        direction: Direction,
        session: u64,
        began: std::time::Instant,
        bridge: &DataBridge,
        backend_code: Option<u16>,
    ) -> Self {
        TransferLog {
            line,
            direction,
            session,
            backend_code,
            bytes: bridge.progress(),
            elapsed: began.elapsed(),
            tls: bridge.tls(),
        }
    }

    /// One line per transfer, like an xferlog, and its count in the metrics.
    pub(super) fn log(
        &self,
        ctx: &Context,
        client: &ClientControl,
        account: &Account<'_>,
        result: Result<&Transferred, &BridgeError>,
    ) {
        let direction = self.direction;
        let command = self.line.name();
        let path = Escaped(self.line.arg()).to_string();
        match result {
            Err(BridgeError::Stalled { .. }) => ctx.metrics.refused(Reason::data_stalled),
            Err(BridgeError::TooLarge { .. }) => ctx.metrics.refused(Reason::upload_too_large),
            _ => {}
        }
        let outcome = match result {
            Ok(_) => Outcome::ok,
            Err(BridgeError::Cancelled) => Outcome::aborted,
            Err(_) => Outcome::failed,
        };
        ctx.metrics.transfer(direction, outcome.clone());
        let (bytes, ms) = match result {
            Ok(t) => (t.bytes, t.elapsed.as_millis() as u64),
            Err(_) => (self.bytes, self.elapsed.as_millis() as u64),
        };
        let version = self.tls.map(|(v, _)| format!("{v:?}"));
        let resumed = self.tls.is_some_and(|(_, resumed)| resumed);
        let error = result.err().map(ToString::to_string);
        let sha256 = result.ok().and_then(|t| t.sha256).map(hex);
        ctx.audit.record(&Event::Transfer {
            who: Who {
                session: self.session,
                client: client.peer.ip(),
                user: Some(account.user),
                route: Some(&account.route.name),
            },
            command: &command,
            path: &path,
            direction: &direction.to_string(),
            bytes,
            duration_ms: ms,
            outcome: &format!("{outcome:?}"),
            tls_version: version.clone(),
            tls_resumed: resumed,
            sha256,
        });
        let backend_code = self.backend_code;
        if outcome == Outcome::failed {
            warn!(%command, path, %direction, bytes, ms, outcome = ?outcome,
                tls = version.as_deref(), resumed, backend_code,
                error = error.as_deref(), "transfer");
        } else {
            info!(%command, path, %direction, bytes, ms, outcome = ?outcome,
                tls = version.as_deref(), resumed, backend_code, "transfer");
        }
    }
}

/// A SHA-256 as the audit log writes it: lower-case hex.
pub(super) fn hex(digest: [u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
