//! The audit log's writer thread and the bounded queue in front of it (why: see the module
//! above): callers never wait, what does not fit is dropped and counted, refusals beyond their
//! rate too, and the writer sums both up in `dropped` records.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tracing::warn;

use super::file::append;
use super::{encode, Event};
use crate::metrics::{AuditDrop, Metrics};

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

/// What the writer thread is sent.
enum Msg {
    Line(Vec<u8>),
    /// Only a wake-up: the request is [`Shared::reopen`], which a full queue cannot lose.
    Reopen,
}

/// The callers' side of the writer thread.
pub(super) struct Sink {
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
    pub(super) fn start(
        path: &Path,
        refusals_per_sec: u32,
        metrics: &Arc<Metrics>,
    ) -> io::Result<Sink> {
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

    pub(super) fn refusal_allowed(&self) -> bool {
        self.refusals
            .lock()
            .is_ok_and(|mut bucket| bucket.take(Instant::now()))
    }

    /// Queues `line` if the queue has room for it, in records and in bytes.
    pub(super) fn send(&self, line: Vec<u8>) {
        let len = line.len();
        let before = self.shared.queued.fetch_add(len, Ordering::Relaxed);
        let sent = before.saturating_add(len) <= QUEUE_BYTES && self.try_send(Msg::Line(line));
        if !sent {
            self.shared.queued.fetch_sub(len, Ordering::Relaxed);
            self.dropped(AuditDrop::queue_full);
        }
    }

    /// SIGHUP: the writer reopens the file before its next line.
    pub(super) fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Relaxed);
        // Wakes the writer; when the queue is full it is awake anyway.
        self.try_send(Msg::Reopen);
    }

    fn try_send(&self, msg: Msg) -> bool {
        self.queue.as_ref().is_some_and(|q| q.try_send(msg).is_ok())
    }

    /// Counts a record not written; logs those the queue had no room for, at most every
    /// [`WARN_EVERY`] (refusals beyond the rate are what a flood is expected to cost).
    pub(super) fn dropped(&self, reason: AuditDrop) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
