//! Transfers: RETR, STOR, STOU, APPE, LIST, NLST, MLSD, and ABOR while one runs.
//!
//! The backend's final reply is held until the bridge reports both data connections closed: a
//! client that sees `226` before the last byte reads a short file (docs/ARCHITECTURE.md,
//! "A transfer").

use std::time::Duration;

use tokio::time::{sleep_until, timeout_at, Instant};
use tracing::{debug, info, warn};

use super::refusal::{Halt, Refusal};
use super::{BackendError, Fatal, Protection, Session};
use crate::audit::Event;
use crate::data::{BridgeError, DataBridge, Transferred};
use crate::ftp::{abort, Command, Escaped, Reply, Verb};
use crate::metrics::{Outcome, Reason};

impl Session {
    pub(super) async fn transfer(&mut self, cmd: Command) -> Result<(), Halt> {
        let Some(direction) = cmd.verb().transfer() else {
            return Ok(());
        };
        let pending = self.pending.take().ok_or(Refusal::NoDataConnection)?;
        if pending.protection != self.prot {
            return Err(Refusal::ProtChanged.into());
        }
        let command = cmd.name().to_string();
        if self.prot == Protection::Clear
            && self.client.is_tls()
            && !self.ctx.settings.tls.allow_clear_data
        {
            return Err(Refusal::ClearTransfer { command }.into());
        }
        let mut bridge = pending.bridge;
        if let Some(Err(error)) = bridge.ended() {
            return Err(Refusal::DataLost { command, error }.into());
        }
        let backend = self.backend().await?;
        backend.send(&cmd.to_wire()).await?;
        bridge.start(direction);
        let first = backend.expect_reply().await?;
        self.client.send(&first).await?;
        if !first.is_preliminary() {
            // Refused (550 and the like): dropping the bridge releases the lease.
            return Ok(());
        }
        Ok(self.await_transfer(&cmd, bridge).await?)
    }

    /// Waits for both the backend's final reply and the end of the copy, watching the client
    /// for ABOR meanwhile.
    async fn await_transfer(&mut self, cmd: &Command, mut bridge: DataBridge) -> Result<(), Fatal> {
        let began = std::time::Instant::now();
        let mut last: Option<Reply> = None;
        // A 1xx after the one relayed already. pure-ftpd ends a download cut short with its
        // statistics line coded 150: it stands for the transfer's reply, and is never relayed
        // (a client would read it as the answer to its next command).
        let mut stray = false;
        let mut outcome: Option<Result<Transferred, BridgeError>> = None;
        // Once the copy is over, the backend gets the usual reply timeout to say so.
        let mut reply_deadline: Option<Instant> = None;
        while last.is_none() || outcome.is_none() {
            tokio::select! {
                reply = super::backend_reply(self.phase.link_mut()), if last.is_none() => {
                    let reply = match reply {
                        Ok(reply) => reply,
                        Err(e) => {
                            // The backend died mid-transfer: the client hears first that the
                            // transfer failed (426), then, from `serve`, that the session is
                            // over (421). The bridge drops with this frame, resetting the
                            // backend's side.
                            let record = Record::now(cmd, &bridge, began, None);
                            let lost = std::io::Error::other(format!("backend control: {e}"));
                            let lost = BridgeError::Backend(lost);
                            self.log_transfer(record, Err(&lost));
                            self.client.send(&lost.reply()).await?;
                            return Err(e.into());
                        }
                    };
                    if reply.is_preliminary() {
                        debug!(code = reply.code(), "extra preliminary reply withheld");
                        stray = true;
                    } else {
                        last = Some(reply);
                    }
                }
                done = bridge.finished(), if outcome.is_none() => {
                    outcome = Some(done);
                    reply_deadline = Some(Instant::now() + self.ctx.settings.timeouts.backend_reply());
                }
                _ = sleep_until(reply_deadline.unwrap_or_else(Instant::now)), if reply_deadline.is_some() && last.is_none() => {
                    return Err(BackendError::Timeout.into());
                }
                line = self.client.read_line(), if self.deferred.is_none() => {
                    let Some(line) = line? else {
                        info!("client closed the control connection during a transfer");
                        return Err(std::io::Error::from(std::io::ErrorKind::ConnectionAborted).into());
                    };
                    let verb = match &line {
                        Ok(l) => Command::parse(l.clone()).ok().map(|c| (c.verb(), c.arg().is_empty())),
                        Err(_) => None,
                    };
                    match verb {
                        Some((Verb::Abor, _)) => {
                            let record = Record::now(cmd, &bridge, began, None);
                            return self.abort(record, bridge, (last, stray), outcome).await;
                        }
                        // STAT without argument asks about the transfer itself (RFC 959
                        // §4.1.3): answered here, since the backend's answer would interleave
                        // with the transfer's own replies.
                        Some((Verb::Stat, true)) => {
                            let status = Reply::multi(
                                211,
                                "Transfer in progress:",
                                &[format!(" {} {} bytes so far", cmd, bridge.progress())],
                                "End of status.",
                            );
                            self.client.send(&status).await?;
                            continue;
                        }
                        _ => {}
                    }
                    // Anything else waits until the transfer is over, as on a plain server.
                    self.deferred = Some(line);
                }
            }
        }
        let (Some(last), Some(outcome)) = (last, outcome) else {
            return Ok(());
        };
        let record = Record::now(cmd, &bridge, began, Some(last.code()));
        let reply = match outcome {
            Ok(t) => {
                self.log_transfer(record, Ok(&t));
                last
            }
            Err(e) => {
                self.log_transfer(record, Err(&e));
                e.reply()
            }
        };
        Ok(self.client.send(&reply).await?)
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
        &mut self,
        record: Record<'_>,
        bridge: DataBridge,
        (last, mut stray): (Option<Reply>, bool),
        outcome: Option<Result<Transferred, BridgeError>>,
    ) -> Result<(), Fatal> {
        let began = Instant::now();
        let backend = self.backend().await?;
        backend.send(b"ABOR\r\n").await?;
        drop(bridge);
        let mut after = Vec::with_capacity(2);
        // The transfer's reply is in hand when it came before ABOR, or a stray 1xx stood for
        // it; ABOR's is still to come.
        let transfer_replied = |stray: bool| last.is_some() || stray;
        let mut in_step = true;
        while after.len() < abort::expected(transfer_replied(stray)) {
            match timeout_at(began + ABOR_SETTLE, backend.read_reply()).await {
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
            while let Ok(reply) = timeout_at(began + ABOR_LIMIT, backend.read_reply()).await {
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
        let copied_whole = matches!(outcome, Some(Ok(_)));
        let replies = abort::settle(last.as_ref(), &after, copied_whole);
        match &outcome {
            Some(Ok(t)) if replies.completed => self.log_transfer(record, Ok(t)),
            _ => self.log_transfer(record, Err(&BridgeError::Cancelled)),
        }
        self.client.send(&replies.transfer).await?;
        self.client.send(&replies.abor).await?;
        if !in_step {
            return Err(BackendError::Timeout.into());
        }
        Ok(())
    }
}

/// How long the backend has to send both the transfer's reply and ABOR's before the gateway
/// asks with a NOOP where it stands.
const ABOR_SETTLE: Duration = Duration::from_secs(2);
/// How long an ABOR may take in all before the backend counts as lost.
const ABOR_LIMIT: Duration = Duration::from_secs(5);

/// What the transfer log line says about a transfer besides its outcome.
struct Record<'a> {
    cmd: &'a Command,
    /// The backend's final reply, when it came.
    backend_code: Option<u16>,
    bytes: u64,
    elapsed: std::time::Duration,
    /// The client data connection's TLS `(version, resumed)`, if its handshake passed, whether
    /// or not the transfer then did.
    tls: Option<(rustls::ProtocolVersion, bool)>,
}

impl<'a> Record<'a> {
    /// The transfer as it stands: its bytes so far and its time since `began`.
    fn now(
        cmd: &'a Command,
        bridge: &DataBridge,
        began: std::time::Instant,
        backend_code: Option<u16>,
    ) -> Self {
        Record {
            cmd,
            backend_code,
            bytes: bridge.progress(),
            elapsed: began.elapsed(),
            tls: bridge.tls(),
        }
    }
}

impl Session {
    /// One line per transfer, like an xferlog, and its count in the metrics.
    fn log_transfer(&self, r: Record<'_>, result: Result<&Transferred, &BridgeError>) {
        let Some(direction) = r.cmd.verb().transfer() else {
            return;
        };
        let path = Escaped(r.cmd.arg()).to_string();
        if let Err(BridgeError::Stalled { .. }) = result {
            self.ctx.metrics.refused(Reason::data_stalled);
        }
        let outcome = match result {
            Ok(_) => Outcome::ok,
            Err(BridgeError::Cancelled) => Outcome::aborted,
            Err(_) => Outcome::failed,
        };
        self.ctx.metrics.transfer(direction, outcome.clone());
        let (bytes, ms) = match result {
            Ok(t) => (t.bytes, t.elapsed.as_millis() as u64),
            Err(_) => (r.bytes, r.elapsed.as_millis() as u64),
        };
        let version = r.tls.map(|(v, _)| format!("{v:?}"));
        let resumed = r.tls.is_some_and(|(_, resumed)| resumed);
        let error = result.err().map(ToString::to_string);
        let sha256 = result
            .ok()
            .and_then(|t| t.sha256)
            .map(|d| d.iter().map(|b| format!("{b:02x}")).collect::<String>());
        self.audit(&Event::Transfer {
            who: self.who(None),
            command: &r.cmd.name(),
            path: &path,
            direction: &direction.to_string(),
            bytes,
            duration_ms: ms,
            outcome: &format!("{outcome:?}"),
            tls_version: version.clone(),
            tls_resumed: resumed,
            sha256,
        });
        if outcome == Outcome::failed {
            warn!(command = %r.cmd.name(), path, %direction, bytes, ms, outcome = ?outcome,
                tls = version.as_deref(), resumed, backend_code = r.backend_code,
                error = error.as_deref(), "transfer");
        } else {
            info!(command = %r.cmd.name(), path, %direction, bytes, ms, outcome = ?outcome,
                tls = version.as_deref(), resumed, backend_code = r.backend_code, "transfer");
        }
    }
}
