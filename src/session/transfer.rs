//! Transfers: RETR, STOR, STOU, APPE, LIST, NLST, MLSD, and ABOR while one runs.
//!
//! The backend's final reply is held until the bridge reports both data connections closed: a
//! client that sees `226` before the last byte reads a short file (DESIGN §2).

use tokio::time::{sleep_until, Instant};
use tracing::{info, warn};

use super::{BackendError, Fatal, Protection, Session};
use crate::data::{BridgeError, DataBridge, Transferred};
use crate::ftp::{Command, Escaped, Reply, Verb};
use crate::metrics::{Outcome, Reason};

impl Session {
    pub(super) async fn transfer(&mut self, cmd: Command) -> Result<(), Fatal> {
        let Some(direction) = cmd.verb().transfer() else {
            return Ok(());
        };
        let Some(pending) = self.pending.take() else {
            return Ok(self.reply(425, "Use PASV or EPSV first.").await?);
        };
        if pending.protection != self.prot {
            return Ok(self
                .reply(425, "Protection level changed since PASV; send PASV again.")
                .await?);
        }
        if self.prot == Protection::Clear
            && self.client.is_tls()
            && !self.ctx.settings.tls.allow_clear_data
        {
            self.ctx.metrics.refused(Reason::clear_data);
            info!(command = %cmd.name(), "clear data connection refused");
            return Ok(self
                .reply(
                    521,
                    "Data connections must be encrypted: send PBSZ 0 and PROT P.",
                )
                .await?);
        }
        let mut bridge = pending.bridge;
        if let Some(Err(e)) = bridge.ended() {
            // The data connection is already lost (not up in time): the backend never hears
            // of this transfer.
            info!(command = %cmd.name(), error = %e, "data connection gone before the transfer");
            return Ok(self.client.send(&e.reply()).await?);
        }
        let backend = self.linked()?;
        backend.send(&cmd.to_wire()).await?;
        bridge.start(direction);
        let first = backend.expect_reply().await?;
        self.client.send(&first).await?;
        if !first.is_preliminary() {
            // Refused (550 and the like): dropping the bridge releases the lease.
            return Ok(());
        }
        self.await_transfer(&cmd, bridge).await
    }

    /// Waits for both the backend's final reply and the end of the copy, watching the client
    /// for ABOR meanwhile.
    async fn await_transfer(&mut self, cmd: &Command, mut bridge: DataBridge) -> Result<(), Fatal> {
        let began = std::time::Instant::now();
        let mut last: Option<Reply> = None;
        let mut outcome: Option<Result<Transferred, BridgeError>> = None;
        // Once the copy is over, the backend gets the usual reply timeout to say so.
        let mut reply_deadline: Option<Instant> = None;
        while last.is_none() || outcome.is_none() {
            tokio::select! {
                reply = super::backend_reply(&mut self.link), if last.is_none() => {
                    let reply = match reply {
                        Ok(reply) => reply,
                        Err(e) => {
                            // The backend died mid-transfer: the client hears first that the
                            // transfer failed (426), then, from `serve`, that the session is
                            // over (421). The bridge drops with this frame, resetting the
                            // backend's side.
                            let record = Record::now(cmd, &bridge, began, None);
                            let lost = std::io::Error::other(format!("backend control: {e}"));
                            self.log_transfer(record, Err(&BridgeError::Backend(lost)));
                            self.client.send(&Reply::new(426, "Connection closed; transfer aborted.")).await?;
                            return Err(e.into());
                        }
                    };
                    if reply.is_preliminary() {
                        self.client.send(&reply).await?;
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
                            return self.abort(record, bridge, last, outcome).await;
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
    /// an ordinary line: stop the bridge, forward ABOR, and relay two replies, the transfer's
    /// (426 unless it had completed) and the ABOR's own (225/226).
    ///
    /// Servers differ in the order they write those two (vsftpd: 426 then 225; libunftp: 226 for
    /// ABOR at once, the transfer's 426 later), so the gateway reads both and sends them in the
    /// order RFC 959 gives: the transfer's reply first, then the ABOR's 2xx.
    async fn abort(
        &mut self,
        record: Record<'_>,
        bridge: DataBridge,
        last: Option<Reply>,
        outcome: Option<Result<Transferred, BridgeError>>,
    ) -> Result<(), Fatal> {
        let completed =
            matches!(outcome, Some(Ok(_))) && last.as_ref().is_some_and(Reply::is_success);
        drop(bridge);
        match &outcome {
            Some(Ok(t)) if completed => self.log_transfer(record, Ok(t)),
            _ => self.log_transfer(record, Err(&BridgeError::Cancelled)),
        }
        let backend = self.linked()?;
        backend.send(b"ABOR\r\n").await?;
        let mut after_abor = Vec::with_capacity(2);
        let expected = if last.is_some() { 1 } else { 2 };
        while after_abor.len() < expected {
            let reply = backend.expect_reply().await?;
            if !reply.is_preliminary() {
                after_abor.push(reply);
            }
        }
        match (&last, completed) {
            (Some(done), true) => self.client.send(done).await?,
            _ => {
                self.reply(426, "Connection closed; transfer aborted.")
                    .await?
            }
        }
        let abor_reply = after_abor
            .iter()
            .rev()
            .find(|r| r.is_success())
            .or(after_abor.last())
            .cloned()
            .unwrap_or_else(|| Reply::new(226, "ABOR command successful."));
        Ok(self.client.send(&abor_reply).await?)
    }
}

/// What the transfer log line says about a transfer besides its outcome.
struct Record<'a> {
    cmd: &'a Command,
    /// The backend's final reply, when it came.
    backend_code: Option<u16>,
    bytes: u64,
    elapsed: std::time::Duration,
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
        let tls = result.ok().and_then(|t| t.tls);
        let version = tls.map(|(v, _)| format!("{v:?}"));
        let resumed = tls.is_some_and(|(_, resumed)| resumed);
        let error = result.err().map(ToString::to_string);
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
