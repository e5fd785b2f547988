//! Transfers: RETR, STOR, STOU, APPE, LIST, NLST, MLSD, and ABOR while one runs.
//!
//! The backend's final reply is held until the bridge reports both data connections closed: a
//! client that sees `226` before the last byte reads a short file (DESIGN §2).

use tokio::time::{sleep_until, Instant};
use tracing::{info, warn};

use super::{BackendError, Fatal, Protection, Session};
use crate::data::{BridgeError, DataBridge, Transferred};
use crate::ftp::{Command, Reply, Verb};

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
            info!(command = %cmd.name(), "clear data connection refused");
            return Ok(self
                .reply(
                    521,
                    "Data connections must be encrypted: send PBSZ 0 and PROT P.",
                )
                .await?);
        }
        let mut bridge = pending.bridge;
        self.backend.send(&cmd.to_wire()).await?;
        bridge.start(direction);
        let first = self.backend.expect_reply().await?;
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
        let mut last: Option<Reply> = None;
        let mut outcome: Option<Result<Transferred, BridgeError>> = None;
        // Once the copy is over, the backend gets the usual reply timeout to say so.
        let mut reply_deadline: Option<Instant> = None;
        while last.is_none() || outcome.is_none() {
            tokio::select! {
                reply = self.backend.read_reply(), if last.is_none() => {
                    let reply = reply?;
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
                        Some((Verb::Abor, _)) => return self.abort(cmd, bridge, last, outcome).await,
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
        let reply = match outcome {
            Ok(t) => {
                log_transfer(cmd, Ok(&t), last.code());
                last
            }
            Err(e) => {
                log_transfer(cmd, Err(&e), last.code());
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
        cmd: &Command,
        bridge: DataBridge,
        last: Option<Reply>,
        outcome: Option<Result<Transferred, BridgeError>>,
    ) -> Result<(), Fatal> {
        let completed =
            matches!(outcome, Some(Ok(_))) && last.as_ref().is_some_and(Reply::is_success);
        drop(bridge);
        info!(command = %cmd.name(), completed, "transfer aborted by client");
        self.backend.send(b"ABOR\r\n").await?;
        let mut after_abor = Vec::with_capacity(2);
        let expected = if last.is_some() { 1 } else { 2 };
        while after_abor.len() < expected {
            let reply = self.backend.expect_reply().await?;
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

/// One line per transfer, like an xferlog.
fn log_transfer(cmd: &Command, result: Result<&Transferred, &BridgeError>, backend_code: u16) {
    let path = String::from_utf8_lossy(cmd.arg()).into_owned();
    match result {
        Ok(t) => info!(
            command = %cmd.name(),
            path,
            direction = %t.direction,
            bytes = t.bytes,
            ms = t.elapsed.as_millis() as u64,
            tls = ?t.tls.map(|(v, _)| v),
            resumed = t.tls.is_some_and(|(_, r)| r),
            backend_code,
            "transfer complete"
        ),
        Err(e) => warn!(command = %cmd.name(), path, error = %e, backend_code, "transfer failed"),
    }
}
