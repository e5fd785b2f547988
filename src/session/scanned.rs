//! An upload scanned before the backend sees it (`[scan]`): the gateway answers the client's
//! STOR with its own 150, receives the file whole into a spool, has the scanner judge it, and
//! only then sends STOR to the backend and the spooled bytes after it; the client's final
//! reply is the backend's. A flagged file, or one without a verdict under `fail = "closed"`,
//! gets 550 or 451 and never reaches the backend under any name. docs/ARCHITECTURE.md,
//! "Scanned uploads".

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::time::{Interval, MissedTickBehavior};

use tracing::{debug, info, warn};

use super::client::ClientControl;
use super::phase::Account;
use super::transfer::{hex, InFlight, TransferLog};
use super::{Answer, Context, Fatal, Halt};
use crate::audit::{Event, Who};
use crate::backend::{Backend, BackendError};
use crate::config::{FailMode, Oversize};
use crate::data::{BridgeError, DataBridge, Received};
use crate::ftp::{Command, Direction, Escaped, Line, Reply, Request};
use crate::metrics::{Outcome, ScanVerdict};
use crate::refusal::{Refusal, UploadRefusal};
use crate::scan::{Scanner, Verdict};

/// The client's REST, TYPE and MODE as they stand, as far as uploads are concerned.
#[derive(Default, Clone, Copy)]
pub(super) struct Shape {
    /// REST with an offset other than 0 came, and no RETR, STOR, STOU or APPE since: the
    /// backend holds the offset for the next of those, whatever comes between (vsftpd keeps
    /// it across PASV and LIST).
    pub rest: bool,
    /// TYPE as the client last set it: `None` while it has not (FTP's default is ASCII).
    pub binary: Option<bool>,
    /// A MODE other than S (stream) is in effect: MODE Z, say, stores what it decompresses.
    pub not_stream: bool,
}

/// A STOR or STOU on a route that scans, on the data connection set up before it.
pub(super) struct Upload<'a> {
    pub line: Line,
    pub bridge: DataBridge,
    pub scanner: &'a Scanner,
    /// The client's REST, TYPE and MODE.
    pub shape: Shape,
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
        let shape = self.shape;
        // Stored must be scanned: no append to what is there, no restart offset, no
        // conversion of line ends (TYPE A) or decompression (MODE Z) by the backend, and a
        // name the client learns (STOU's comes in the backend's 150, which it does not hear).
        if matches!(command.as_str(), "APPE" | "STOU")
            || shape.rest
            || shape.binary == Some(false)
            || shape.not_stream
        {
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
        let began = Instant::now();
        let progress = self.bridge.progress_counter();
        let mut watch = Watch {
            client,
            backend: &mut *account.backend,
            line: &self.line,
            progress: &progress,
            noop: noop_timer(Duration::from_secs(settings.backend_noop_secs)),
        };
        let received = match watch.run(self.bridge.received()).await {
            Err(halt) => return Err(self.lost(ctx, client, &account, began, halt).await),
            Ok(Some(Ok(received))) => received,
            Ok(Some(Err(BridgeError::TooLarge { limit }))) => {
                let refusal = if Some(limit) == max_upload {
                    UploadRefusal::TooLarge { limit }
                } else {
                    UploadRefusal::Oversize { limit }
                };
                ctx.metrics.transfer(Direction::Upload, Outcome::failed);
                return Err(Refusal::Upload(refusal).into());
            }
            Ok(Some(Err(error))) => {
                warn!(%command, %error, "upload failed before the scan; nothing was stored");
                self.unfinished(ctx, client, &account, began, &error);
                client.send(&error.reply()).await?;
                return Ok(Answer::Sent);
            }
            Ok(None) => {
                self.unfinished(ctx, client, &account, began, &BridgeError::Cancelled);
                return aborted(client).await;
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
        let scan_began = Instant::now();
        let verdict = if bytes > settings.max_size {
            Err(ScanVerdict::oversize)
        } else {
            let scanning = async {
                match spool.reader().await {
                    Ok(body) => (self.scanner.icap.scan(&path, bytes, body).await)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(format!("reading the spooled upload: {e}")),
                }
            };
            // The client may abort, or leave, while the scanner works: the backend has heard
            // nothing yet, and will not.
            let scanned = match watch.run(scanning).await {
                Err(halt) => return Err(self.lost(ctx, client, &account, began, halt).await),
                Ok(Some(scanned)) => scanned,
                Ok(None) => {
                    self.unfinished(ctx, client, &account, began, &BridgeError::Cancelled);
                    return aborted(client).await;
                }
            };
            ctx.metrics
                .scan_seconds
                .observe(scan_began.elapsed().as_secs_f64());
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
            scan_ms: scan_began.elapsed().as_millis() as u64,
            passed: refusal.is_none(),
        });
        if let Some(refusal) = refusal {
            ctx.metrics.transfer(Direction::Upload, Outcome::failed);
            return Err(Refusal::Upload(refusal).into());
        }
        // Whatever the client set before (a REST offset the gateway did not see through a
        // command it did not track, FTP's default TYPE A): the backend stores from 0, as sent.
        let backend = &mut *account.backend;
        let stor = async {
            for setting in [&b"REST 0\r\n"[..], b"TYPE I\r\n"] {
                backend.send(setting).await?;
                backend.expect_reply().await?;
            }
            backend.send(&self.line.to_wire()).await?;
            backend.expect_reply().await
        };
        let first = match stor.await {
            Ok(first) => first,
            Err(e) => {
                return Err(self
                    .lost(ctx, client, &account, began, Fatal::from(e).into())
                    .await)
            }
        };
        if !first.is_preliminary() {
            // The backend refused the upload (553 and the like): its reply is the client's.
            let refused = std::io::Error::other(format!(
                "the server refused the upload: {} {}",
                first.code(),
                first.text()
            ));
            self.unfinished(ctx, client, &account, began, &BridgeError::Backend(refused));
            client.send(&first).await?;
            return Ok(Answer::Sent);
        }
        self.bridge.release(spool);
        let transfer = InFlight::new(self.line, Direction::Upload, self.bridge, self.session);
        transfer.run(ctx, client, account).await?;
        Ok(Answer::Sent)
    }
}

impl Upload<'_> {
    /// The transfer's record (log line, metrics, audit) for an upload that ended before the
    /// backend took it: cut, stalled, truncated or without room while it was received,
    /// aborted while it was received or scanned, or refused by the backend after the scan.
    fn unfinished(
        &self,
        ctx: &Context,
        client: &ClientControl,
        account: &Account<'_>,
        began: Instant,
        error: &BridgeError,
    ) {
        let direction = Direction::Upload;
        let log = TransferLog::now(
            &self.line,
            direction,
            self.session,
            began,
            &self.bridge,
            None,
        );
        log.log(ctx, client, account, Err(error));
    }

    /// The same for an upload whose session ends before the backend took it (the client
    /// gone, the backend lost): `halt` ends it. A client whose backend is lost hears first
    /// that the transfer failed (426), then, from `serve`, that the session is over (421), as
    /// in a relayed transfer.
    async fn lost(
        &self,
        ctx: &Context,
        client: &mut ClientControl,
        account: &Account<'_>,
        began: Instant,
        halt: Halt,
    ) -> Halt {
        let error = match &halt {
            Halt::Fatal(Fatal::Backend(e)) => {
                BridgeError::Backend(std::io::Error::other(format!("backend control: {e}")))
            }
            _ => BridgeError::Client(std::io::ErrorKind::ConnectionAborted.into()),
        };
        self.unfinished(ctx, client, account, began, &error);
        if matches!(error, BridgeError::Backend(_)) {
            let _ = client.send(&error.reply()).await;
        }
        halt
    }
}

/// What a scanned upload watches while the bridge receives it and the scanner judges it.
struct Watch<'a, 'b> {
    client: &'a mut ClientControl,
    /// Has heard nothing of the upload yet; its idle timer runs.
    backend: &'a mut Backend,
    line: &'b Line,
    progress: &'b AtomicU64,
    /// Ticks every `scan.backend_noop_secs` from the gateway's 150, through receiving and
    /// scanning alike.
    noop: Interval,
}

/// The first tick `every` from now; a tick missed (the backend slow to answer the last NOOP)
/// comes `every` after the late one, not at once.
fn noop_timer(every: Duration) -> Interval {
    let mut noop = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    noop.set_missed_tick_behavior(MissedTickBehavior::Delay);
    noop
}

impl Watch<'_, '_> {
    /// Runs `work` while watching the client: `None` when it sends ABOR meanwhile. STAT says
    /// how far the upload is; other commands wait for the transfer to end, as on a plain
    /// server. The backend gets a NOOP on each tick of `noop`, so it does not end an idle
    /// session the client is busy in.
    async fn run<T>(&mut self, work: impl Future<Output = T>) -> Result<Option<T>, Halt> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Ok(Some(done)),
                _ = self.noop.tick() => {
                    // Run to its end before `work` is polled again: the reply is bounded by
                    // `timeouts.backend_reply_secs`, and a lost backend ends the session.
                    self.backend.send(b"NOOP\r\n").await?;
                    let reply = self.backend.expect_reply().await?;
                    if reply.code() == 421 {
                        // Closing (shutting down, or its idle timer came first): lost now.
                        let closing = BackendError::Refused { what: "NOOP", reply: reply.text() };
                        return Err(Fatal::from(closing).into());
                    }
                    debug!(code = reply.code(), "NOOP to the backend while the upload is scanned");
                }
                read = self.client.read_line(), if !self.client.has_deferred() => {
                    let Some(read) = read.map_err(Fatal::from)? else {
                        info!("client closed the control connection during a scanned upload");
                        let closed = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
                        return Err(Fatal::from(closed).into());
                    };
                    let request = read.as_ref().ok().and_then(|l| Request::parse(l.clone()).ok());
                    match request.map(|r| r.command) {
                        Some(Command::Abor) => return Ok(None),
                        Some(Command::Status) => {
                            let so_far = self.progress.load(Ordering::Relaxed);
                            let status = Reply::multi(
                                211,
                                "Transfer in progress:",
                                &[format!(" {} {so_far} bytes received so far", self.line)],
                                "End of status.",
                            );
                            self.client.send(&status).await?;
                        }
                        _ => self.client.defer(read),
                    }
                }
            }
        }
    }
}

/// ABOR before the backend heard of the upload: 426 for the transfer, 226 for ABOR (RFC 959).
async fn aborted(client: &mut ClientControl) -> Result<Answer, Halt> {
    let cut = Reply::new(426, "Transfer aborted; nothing was stored.");
    client.send(&cut).await?;
    client
        .send(&Reply::new(226, "ABOR command successful."))
        .await?;
    Ok(Answer::Sent)
}
