//! The audit log (`[audit] log = FILE`): one JSON object a line for each transfer, login,
//! ban and refusal, for a security team's collector. With `audit.sha256` a transfer's record
//! carries the SHA-256 of the bytes relayed, hashed as the pump writes them
//! (docs/ARCHITECTURE.md, "Access policy and audit").
//!
//! Why a thread of its own. The task that has the event encodes its line and hands it to one
//! writer thread through a bounded queue, and never waits for it: a write that blocks (a slow
//! disk, a full pipe, a FIFO whose reader stopped) used to block the runtime thread that made
//! it, so new connections got no 220 and every session on that core froze. Now the queue fills
//! instead; a record that does not fit is dropped, counted
//! (`ftpsgate_audit_dropped_total{reason="queue_full"}`) and logged at most every 10 s, and once
//! the writer gets through, a `dropped` record in the log says how many are missing. One thread
//! writes in queue order, so the order of lines is the order of events, each line flushed as it
//! is written. Refusal records are rate-limited (`audit.refusals_per_sec`, a token bucket), so
//! a flood of refused connections cannot fill the disk: the rest are counted
//! (`reason="rate_limited"`) and summed up in a `dropped` record at most once a second.
//!
//! A failed write is logged and counted (`ftpsgate_audit_write_errors_total`); the transfer it
//! describes goes on. SIGHUP reopens the file (for logrotate), in the writer thread, between
//! two lines. A stopping gateway gives the writer [`DRAIN`] to write what is queued.
//!
//! The file is opened without following a symbolic link, created 0600, and checked once open
//! (see [`append`]): what fails refuses the start, or, on SIGHUP, keeps the old file.

use std::fs::{File, Metadata};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::warn;

use crate::config::AuditSettings;
use crate::metrics::{AuditDrop, Metrics, Reason};

/// Records queued for the writer at most: room for a burst while the disk is busy.
const QUEUE_RECORDS: usize = 4096;
/// Bytes queued at most, whatever the records' size: a record holds a client's path, up to
/// `limits.max_line_length`, and memory must stay bounded while the writer is stuck.
const QUEUE_BYTES: usize = 8 << 20;
/// How often the writer sums up dropped records in a `dropped` record, at most.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);
/// How often dropped records are logged, at most: a stuck writer must not flood the log too.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long a stopping gateway waits for the writer to write what is queued; a writer that is
/// stuck (a FIFO nobody reads) must not hold up the stop.
const DRAIN: Duration = Duration::from_secs(2);

/// What a session knows of itself when it writes a record.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Who<'a> {
    pub session: u64,
    /// The real client, behind a PROXY header when a trusted balancer sent one.
    pub client: IpAddr,
    pub user: Option<&'a str>,
    pub route: Option<&'a str>,
}

/// One line of the audit log.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    Transfer {
        #[serde(flatten)]
        who: Who<'a>,
        command: &'a str,
        path: &'a str,
        direction: &'a str,
        bytes: u64,
        duration_ms: u64,
        outcome: &'a str,
        tls_version: Option<String>,
        tls_resumed: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
    },
    Login {
        #[serde(flatten)]
        who: Who<'a>,
        outcome: &'a str,
    },
    Ban {
        client: IpAddr,
        ban_secs: u64,
    },
    Refusal {
        #[serde(flatten)]
        who: Who<'a>,
        reason: Reason,
        reply: u16,
    },
    /// Records not written since the last `dropped` record of this reason: the log says
    /// where it has a gap, and how large.
    Dropped {
        reason: AuditDrop,
        records: u64,
    },
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a Event<'a>,
}

pub struct Audit {
    /// `None`: no audit log configured.
    sink: Option<Sink>,
    /// Transfers' bytes are hashed for their records (`audit.sha256` with a log to put them in).
    hashes: bool,
}

impl Audit {
    /// Opens (creating, appending) the configured file and starts its writer; an error refuses
    /// the start, since a security team that asked for an audit log must not silently go
    /// without one.
    pub fn open(settings: &AuditSettings, metrics: &Arc<Metrics>) -> io::Result<Audit> {
        let sink = match &settings.log {
            Some(path) => Some(Sink::start(path, settings.refusals_per_sec, metrics)?),
            None => None,
        };
        let hashes = settings.sha256 && sink.is_some();
        Ok(Audit { sink, hashes })
    }

    pub fn hashes(&self) -> bool {
        self.hashes
    }

    /// Reopens the file by its name (after logrotate moved it away), before the next line.
    pub fn reopen(&self) {
        if let Some(sink) = &self.sink {
            sink.shared.reopen.store(true, Ordering::Relaxed);
            // Wakes the writer; when the queue is full it is awake anyway.
            sink.try_send(Msg::Reopen);
        }
    }

    /// Queues `event` as one line, without waiting: dropped (and counted) when the writer is
    /// behind, or when it is a refusal beyond `audit.refusals_per_sec`.
    pub fn record(&self, event: &Event<'_>) {
        let Some(sink) = &self.sink else {
            return;
        };
        if matches!(event, Event::Refusal { .. }) && !sink.refusal_allowed() {
            sink.dropped(AuditDrop::rate_limited);
            return;
        }
        if let Some(line) = encode(event) {
            sink.send(line);
        }
    }
}

/// What the writer thread is sent.
enum Msg {
    Line(Vec<u8>),
    /// Only a wake-up: the request is [`Shared::reopen`], which a full queue cannot lose.
    Reopen,
}

/// The callers' side of the writer thread.
struct Sink {
    /// `None` once dropped: the writer sees the queue close, writes what is in it, and ends.
    queue: Option<SyncSender<Msg>>,
    shared: Arc<Shared>,
    refusals: Mutex<Bucket>,
    /// Records dropped for want of room, logged at most every [`WARN_EVERY`].
    warned: Mutex<Every>,
    /// Disconnected when the writer thread ends (in a mutex only to be `Sync`).
    ended: Mutex<Receiver<()>>,
}

/// What the callers and the writer both see.
struct Shared {
    path: PathBuf,
    metrics: Arc<Metrics>,
    /// Bytes of the records in the queue.
    queued: AtomicUsize,
    /// SIGHUP: reopen the file before the next line.
    reopen: AtomicBool,
    /// Records dropped and not yet summed up in a `dropped` record, by reason.
    full: AtomicU64,
    limited: AtomicU64,
}

impl Sink {
    fn start(path: &Path, refusals_per_sec: u32, metrics: &Arc<Metrics>) -> io::Result<Sink> {
        let file = append(path)?;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            metrics: Arc::clone(metrics),
            queued: AtomicUsize::new(0),
            reopen: AtomicBool::new(false),
            full: AtomicU64::new(0),
            limited: AtomicU64::new(0),
        });
        let (queue, lines) = mpsc::sync_channel(QUEUE_RECORDS);
        let (ending, ended) = mpsc::sync_channel::<()>(0);
        let writer = Writer {
            file,
            shared: Arc::clone(&shared),
            failures: Every::new(WARN_EVERY),
        };
        thread::Builder::new()
            .name("ftpsgate-audit".into())
            .spawn(move || {
                // Dropped when the writer is done: `ended` sees it.
                let _ending = ending;
                writer.run(&lines);
            })?;
        Ok(Sink {
            queue: Some(queue),
            shared,
            refusals: Mutex::new(Bucket::new(refusals_per_sec, Instant::now())),
            warned: Mutex::new(Every::new(WARN_EVERY)),
            ended: Mutex::new(ended),
        })
    }

    fn refusal_allowed(&self) -> bool {
        self.refusals
            .lock()
            .is_ok_and(|mut bucket| bucket.take(Instant::now()))
    }

    /// Queues `line` if the queue has room for it, in records and in bytes.
    fn send(&self, line: Vec<u8>) {
        let len = line.len();
        let before = self.shared.queued.fetch_add(len, Ordering::Relaxed);
        let sent = before.saturating_add(len) <= QUEUE_BYTES && self.try_send(Msg::Line(line));
        if !sent {
            self.shared.queued.fetch_sub(len, Ordering::Relaxed);
            self.dropped(AuditDrop::queue_full);
        }
    }

    fn try_send(&self, msg: Msg) -> bool {
        self.queue.as_ref().is_some_and(|q| q.try_send(msg).is_ok())
    }

    /// Counts a record not written; logs those the queue had no room for, at most every
    /// [`WARN_EVERY`] (refusals beyond the rate are what a flood is expected to cost).
    fn dropped(&self, reason: AuditDrop) {
        self.shared.metrics.audit_dropped(reason);
        self.shared.unsummed(reason).fetch_add(1, Ordering::Relaxed);
        if reason != AuditDrop::queue_full {
            return;
        }
        let due = self
            .warned
            .lock()
            .ok()
            .and_then(|mut every| every.tick(Instant::now()));
        if let Some(dropped) = due {
            warn!(
                file = %self.shared.path.display(),
                dropped,
                "audit records dropped: the audit log's writer is behind (a slow disk, a full pipe?)"
            );
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.queue = None;
        if let Ok(ended) = self.ended.get_mut() {
            let _ = ended.recv_timeout(DRAIN);
        }
    }
}

impl Shared {
    fn unsummed(&self, reason: AuditDrop) -> &AtomicU64 {
        match reason {
            AuditDrop::queue_full => &self.full,
            AuditDrop::rate_limited => &self.limited,
        }
    }
}

/// The writer thread's own state.
struct Writer {
    file: File,
    shared: Arc<Shared>,
    /// Failed writes, logged at most every [`WARN_EVERY`]: a full disk fails every line.
    failures: Every,
}

impl Writer {
    /// Lines in queue order until the queue closes, reopening the file when told and summing
    /// up dropped records at most every [`SUMMARY_EVERY`].
    fn run(mut self, lines: &Receiver<Msg>) {
        let mut summed = Instant::now();
        loop {
            let msg = match lines.recv_timeout(SUMMARY_EVERY) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if self.shared.reopen.swap(false, Ordering::Relaxed) {
                self.reopen();
            }
            if summed.elapsed() >= SUMMARY_EVERY {
                summed = Instant::now();
                self.sum_up();
            }
            if let Some(Msg::Line(line)) = msg {
                self.write(&line);
                self.shared.queued.fetch_sub(line.len(), Ordering::Relaxed);
            }
        }
        self.sum_up();
    }

    fn reopen(&mut self) {
        match append(&self.shared.path) {
            Ok(new) => self.file = new,
            Err(e) => {
                warn!(file = %self.shared.path.display(), error = %e, "cannot reopen the audit log; writing to the old file")
            }
        }
    }

    fn sum_up(&mut self) {
        for reason in [AuditDrop::queue_full, AuditDrop::rate_limited] {
            let records = self.shared.unsummed(reason).swap(0, Ordering::Relaxed);
            if records > 0 {
                if let Some(line) = encode(&Event::Dropped { reason, records }) {
                    self.write(&line);
                }
            }
        }
    }

    /// Appends one line and flushes it.
    fn write(&mut self, line: &[u8]) {
        if let Err(e) = self.file.write_all(line).and_then(|()| self.file.flush()) {
            self.shared.metrics.audit_write_errors.inc();
            if let Some(failed) = self.failures.tick(Instant::now()) {
                warn!(file = %self.shared.path.display(), error = %e, failed, "audit records not written");
            }
        }
    }
}

/// Something that happens once a record, said at most once a period, with how many times.
struct Every {
    period: Duration,
    last: Option<Instant>,
    unsaid: u64,
}

impl Every {
    fn new(period: Duration) -> Every {
        Every {
            period,
            last: None,
            unsaid: 0,
        }
    }

    /// Counts one; returns the count since it was last said when it is time to say it.
    fn tick(&mut self, now: Instant) -> Option<u64> {
        self.unsaid += 1;
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < self.period)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unsaid))
    }
}

/// `event` as one line, stamped now.
fn encode(event: &Event<'_>) -> Option<Vec<u8>> {
    let time = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    match serde_json::to_vec(&Line { time, event }) {
        Ok(mut line) => {
            line.push(b'\n');
            Some(line)
        }
        Err(e) => {
            warn!(error = %e, "cannot encode an audit record");
            None
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `rate` held (a burst of one second's worth).
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32, now: Instant) -> Bucket {
        let rate = f64::from(rate);
        Bucket {
            rate,
            tokens: rate,
            at: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Opens `path` for appending, and refuses what would let someone else read, redirect, forge
/// or erase the records (a mistake, or a user with write access to the directory):
///
/// - `O_NOFOLLOW`: a symbolic link as the file itself is refused, so the log cannot be aimed at
///   another file (a key, a system file) that the gateway would append to. Directories above
///   it may be links (`/var/log` often is).
/// - Created `0600`: the records name users and client addresses. `O_CREAT`'s mode applies only
///   to a new file, so an existing one is checked instead (see [`unfit`]), on the descriptor
///   opened, so no rename between the check and the use can swap it.
fn append(path: &Path) -> io::Result<File> {
    let flags =
        OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::RUSR | Mode::WUSR).map_err(|e| {
        if e == Errno::LOOP {
            io::Error::other("a symbolic link (the audit log must be the file itself: it is opened with O_NOFOLLOW)")
        } else {
            io::Error::from(e)
        }
    })?;
    let file = File::from(fd);
    match unfit(&file.metadata()?, rustix::process::geteuid().as_raw()) {
        Some(why) => Err(io::Error::other(why)),
        None => Ok(file),
    }
}

/// Why an opened audit log must not be used, if it must not. It must be a regular file or a
/// FIFO (a collector's named pipe), owned by the gateway's own user (`euid`), writable by no one
/// else and readable by no one outside its group: 0600 or 0640. An existing file keeps its mode
/// and owner whatever the gateway would have created, so both are checked, not assumed.
fn unfit(meta: &Metadata, euid: u32) -> Option<String> {
    let kind = meta.file_type();
    if !kind.is_file() && !kind.is_fifo() {
        return Some("not a regular file (nor a FIFO)".into());
    }
    if meta.uid() != euid {
        return Some(format!(
            "owned by uid {}, not by the gateway's user (uid {euid}): chown it, or let the gateway create it",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o027 != 0 {
        return Some(format!(
            "mode {mode:04o}: others could read it, or someone else write (forge or erase records) into it; chmod it to 0600 or 0640"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal's record names its reason as the metric label does.
    #[test]
    fn a_refusal_record_names_its_reason_as_the_metric_does() {
        let event = Event::Refusal {
            who: Who {
                session: 7,
                client: "192.0.2.7".parse().expect("ip"),
                user: None,
                route: None,
            },
            reason: Reason::denied_user,
            reply: 530,
        };
        let json = serde_json::to_string(&event).expect("json");
        assert_eq!(
            json,
            r#"{"event":"refusal","session":7,"client":"192.0.2.7","user":null,"route":null,"reason":"denied_user","reply":530}"#
        );
        let dropped = Event::Dropped {
            reason: AuditDrop::rate_limited,
            records: 12,
        };
        assert_eq!(
            serde_json::to_string(&dropped).expect("json"),
            r#"{"event":"dropped","reason":"rate_limited","records":12}"#
        );
    }

    /// A burst of `rate`, then one more each 1/`rate` of a second, never more than `rate` saved.
    #[test]
    fn the_refusal_bucket_allows_a_second_s_worth_then_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(10, start);
        assert_eq!((0..100).filter(|_| bucket.take(start)).count(), 10);
        let later = start + Duration::from_millis(500);
        assert_eq!((0..100).filter(|_| bucket.take(later)).count(), 5);
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..100).filter(|_| bucket.take(much_later)).count(), 10);
    }

    /// The gateway's own regular file or FIFO, 0600 or 0640; nothing else.
    #[test]
    fn only_the_gateway_s_own_file_closed_to_others_is_fit() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let euid = rustix::process::geteuid().as_raw();
        let with_mode = |name: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"").expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            std::fs::metadata(&path).expect("stat")
        };
        assert_eq!(unfit(&with_mode("a", 0o600), euid), None);
        assert_eq!(unfit(&with_mode("b", 0o640), euid), None);
        for (name, mode) in [("c", 0o666), ("d", 0o620), ("e", 0o644), ("f", 0o602)] {
            let why = unfit(&with_mode(name, mode), euid).expect("refused");
            assert!(why.starts_with(&format!("mode {mode:04o}: ")), "{why}");
        }
        let why = unfit(&with_mode("g", 0o600), euid.wrapping_add(1)).expect("refused");
        assert!(why.contains("not by the gateway's user"), "{why}");
        let null = std::fs::metadata("/dev/null").expect("stat");
        let why = unfit(&null, null.uid()).expect("refused");
        assert!(why.starts_with("not a regular file"), "{why}");
    }

    /// A symbolic link is refused, even to a fit file; a new file is created 0600.
    #[test]
    fn a_symbolic_link_is_refused_and_a_new_file_is_created_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let new = dir.path().join("audit.jsonl");
        append(&new).expect("created");
        let mode = std::fs::metadata(&new).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&new, &link).expect("symlink");
        let err = append(&link).expect_err("a symlink");
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    /// The first time at once, then once a period with the count of all in between.
    #[test]
    fn a_repeated_warning_is_said_once_a_period_with_its_count() {
        let start = Instant::now();
        let mut every = Every::new(Duration::from_secs(10));
        assert_eq!(every.tick(start), Some(1));
        assert_eq!(every.tick(start + Duration::from_secs(1)), None);
        assert_eq!(every.tick(start + Duration::from_secs(9)), None);
        assert_eq!(every.tick(start + Duration::from_secs(10)), Some(3));
    }
}
