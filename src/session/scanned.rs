//! An upload scanned before the backend sees it (`[scan]`): the gateway answers the client's
//! STOR with its own 150, receives the file whole into a spool, has the scanner judge it, and
//! only then sends STOR to the backend and the spooled bytes after it; the client's final
//! reply is the backend's. A flagged file, or one without a verdict under `fail = "closed"`,
//! gets 550 or 451 and never reaches the backend under any name. docs/ARCHITECTURE.md,
//! "Scanned uploads".

use std::time::Instant;

use tracing::{debug, info, warn};

use super::client::ClientControl;
use super::phase::Account;
use super::transfer::InFlight;
use super::{Answer, Context, Halt};
use crate::audit::{Event, Who};
use crate::config::{FailMode, Oversize};
use crate::data::{BridgeError, DataBridge, Received};
use crate::ftp::{Command, Direction, Escaped, Line, Reply, Request};
use crate::metrics::{Outcome, ScanVerdict};
use crate::refusal::{Refusal, UploadRefusal};
use crate::scan::{Scanner, Verdict};

/// A STOR or STOU on a route that scans, on the data connection set up before it.
pub(super) struct Upload<'a> {
    pub line: Line,
    pub bridge: DataBridge,
    pub scanner: &'a Scanner,
    /// A REST offset is pending at the backend.
    pub after_rest: bool,
    pub session: u64,
}

impl Upload<'_> {
    pub(super) async fn run(
        mut self,
        ctx: &Context,
        client: &mut ClientControl,
        account: Account<'_>,
    ) -> Result<Answer, Halt> {
        let command = self.line.name();
        if command == "APPE" || self.after_rest {
            if self.after_rest {
                // The backend holds the REST offset for the next STOR: clear it.
                account.backend.send(b"REST 0\r\n").await?;
                account.backend.expect_reply().await?;
            }
            return Err(Refusal::Upload(UploadRefusal::Partial { command }).into());
        }
        let settings = &self.scanner.settings;
        let max_upload = ctx.policy(Some(account.route)).max_upload_bytes;
        let limit = match settings.oversize {
            Oversize::Refuse => {
                Some(max_upload.map_or(settings.max_size, |m| m.min(settings.max_size)))
            }
            Oversize::Pass => max_upload,
        };
        self.bridge.spool(self.scanner.spooler.spool(), limit);
        let ready = "Ok to send data; the file is scanned before it is stored.";
        client.send(&Reply::new(150, ready)).await?;
        let received = match self.receive(client).await? {
            Some(Ok(received)) => received,
            Some(Err(BridgeError::TooLarge { limit })) => {
                let refusal = if Some(limit) == max_upload {
                    UploadRefusal::TooLarge { limit }
                } else {
                    UploadRefusal::Oversize { limit }
                };
                ctx.metrics.transfer(Direction::Upload, Outcome::failed);
                return Err(Refusal::Upload(refusal).into());
            }
            Some(Err(error)) => {
                warn!(%command, %error, "upload failed before the scan; nothing was stored");
                ctx.metrics.transfer(Direction::Upload, Outcome::failed);
                client.send(&error.reply()).await?;
                return Ok(Answer::Sent);
            }
            None => {
                // ABOR: the backend never heard of this upload.
                ctx.metrics.transfer(Direction::Upload, Outcome::aborted);
                client
                    .send(&Reply::new(426, "Transfer aborted; nothing was stored."))
                    .await?;
                client
                    .send(&Reply::new(226, "ABOR command successful."))
                    .await?;
                return Ok(Answer::Sent);
            }
        };
        let Received {
            mut spool,
            bytes,
            sha256,
            ..
        } = received;
        let path = Escaped(self.line.arg()).to_string();
        debug!(%path, bytes, on_disk = spool.on_disk(), "upload received whole; scanning");
        let began = Instant::now();
        let verdict = if bytes > settings.max_size {
            Err(ScanVerdict::oversize)
        } else {
            let scanned = match spool.reader().await {
                Ok(body) => {
                    (self.scanner.icap.scan(&path, bytes, body).await).map_err(|e| e.to_string())
                }
                Err(e) => Err(format!("reading the spooled upload: {e}")),
            };
            ctx.metrics
                .scan_seconds
                .observe(began.elapsed().as_secs_f64());
            Ok(scanned)
        };
        let scanner = self.scanner.icap.url().to_string();
        let (label, refusal, threat) = match &verdict {
            Err(label) => (*label, None, None),
            Ok(Ok(Verdict::Clean)) => (ScanVerdict::clean, None, None),
            Ok(Ok(Verdict::Infected { threat })) => {
                let refusal = UploadRefusal::Infected {
                    threat: threat.clone(),
                    scanner: scanner.clone(),
                };
                (ScanVerdict::infected, Some(refusal), Some(threat.as_str()))
            }
            Ok(Err(error)) => {
                let refusal =
                    (settings.fail == FailMode::Closed).then(|| UploadRefusal::Unscanned {
                        error: error.to_string(),
                        scanner: scanner.clone(),
                    });
                if refusal.is_none() {
                    warn!(%error, %scanner, %path, "upload stored unscanned: no verdict (scan.fail = open)");
                }
                (ScanVerdict::error, refusal, None)
            }
        };
        if label == ScanVerdict::oversize {
            info!(%path, bytes, limit = settings.max_size, "upload stored unscanned: larger than scan.max_size (scan.oversize = pass)");
        }
        ctx.metrics.scanned(label);
        let who = Who {
            session: self.session,
            client: client.peer.ip(),
            user: Some(account.user),
            route: Some(&account.route.name),
        };
        ctx.audit.record(&Event::Scan {
            who,
            command: &command,
            path: &path,
            bytes,
            sha256: sha256.map(hex),
            verdict: label,
            threat,
            scanner: &scanner,
            istag: self.scanner.icap.istag(),
            scan_ms: began.elapsed().as_millis() as u64,
            stored: refusal.is_none(),
        });
        if let Some(refusal) = refusal {
            ctx.metrics.transfer(Direction::Upload, Outcome::failed);
            return Err(Refusal::Upload(refusal).into());
        }
        account.backend.send(&self.line.to_wire()).await?;
        let first = account.backend.expect_reply().await?;
        if !first.is_preliminary() {
            // The backend refused the upload (553 and the like): its reply is the client's.
            client.send(&first).await?;
            return Ok(Answer::Sent);
        }
        self.bridge.release(spool);
        let transfer = InFlight::new(self.line, Direction::Upload, self.bridge, self.session);
        transfer.run(ctx, client, account).await?;
        Ok(Answer::Sent)
    }

    /// The upload, whole, or why not; `None` when the client sent ABOR meanwhile. Other
    /// commands wait for the transfer to end, as on a plain server; STAT says how far it is.
    async fn receive(
        &mut self,
        client: &mut ClientControl,
    ) -> Result<Option<Result<Received, BridgeError>>, Halt> {
        loop {
            tokio::select! {
                received = self.bridge.received() => return Ok(Some(received)),
                line = client.read_line(), if !client.has_deferred() => {
                    let Some(line) = line.map_err(super::Fatal::from)? else {
                        info!("client closed the control connection during a scanned upload");
                        let closed = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
                        return Err(super::Fatal::from(closed).into());
                    };
                    let request = line.as_ref().ok().and_then(|l| Request::parse(l.clone()).ok());
                    match request.map(|r| r.command) {
                        Some(Command::Abor) => return Ok(None),
                        Some(Command::Status) => {
                            let status = Reply::multi(
                                211,
                                "Transfer in progress:",
                                &[format!(" {} {} bytes received so far", self.line, self.bridge.progress())],
                                "End of status.",
                            );
                            client.send(&status).await?;
                        }
                        _ => client.defer(line),
                    }
                }
            }
        }
    }
}

fn hex(digest: [u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
