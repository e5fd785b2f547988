//! Uploads held whole while the scanner decides: in memory while the gateway's budget
//! (`scan.spool_memory`, across all sessions) lasts, then in a file in `scan.spool_dir`.
//!
//! A spool file is unlinked the moment it is created: it has no name while it holds an
//! upload, so a crash, `kill -9` or a full disk leaves no unscanned file behind (one killed
//! between the two system calls leaves an empty one, swept at the next start), and no other
//! process can open it by name. Its bytes go with its descriptor.
//!
//! Disk is promised before it is written: a spool file takes [`GRANT`] bytes at a time from
//! what the file system has free beyond [`HEADROOM`] *and beyond what other spools were
//! promised and have not yet written*, so twenty uploads spilling at once cannot together
//! overrun the headroom that each one alone would have kept.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWriteExt};
use tokio_util::either::Either;

use super::lock;
use crate::private;

/// Free space the spool leaves on its file system: an upload that would take it below this is
/// refused (452) rather than filling the disk the gateway's logs share.
const HEADROOM: u64 = 64 * 1024 * 1024;

/// Disk a spool file is promised at a time: the free space is looked at once per grant.
const GRANT: u64 = 16 * 1024 * 1024;

/// The gateway's spool: where its files go and how much memory all spools share.
#[derive(Debug)]
pub(crate) struct Spooler {
    dir: PathBuf,
    budget: u64,
    /// Memory the spools hold: their buffers' capacity, not only their length.
    in_memory: AtomicU64,
    /// Disk promised to spool files and not yet written (written bytes the file system counts
    /// itself). Held while the free space is read, so two promises cannot both count it.
    promised: Mutex<u64>,
    /// The free space of the spool's file system: [`free_bytes`] (a fixed figure in tests).
    free: fn(&Path) -> io::Result<u64>,
    /// `ftpsgate_spool_bytes`.
    gauge: Gauge,
}

impl Spooler {
    /// Creates `dir` (0700) if it is missing, and refuses one [`check_dir`] refuses.
    pub(crate) fn open(dir: &Path, budget: u64, gauge: Gauge) -> Result<Arc<Spooler>, String> {
        private::create_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        check_dir(dir)?;
        // A file named like ours can only be left by a gateway killed between making one and
        // unlinking it (one system call apart): an upload never scanned, never sent on.
        for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let Ok(entry) = entry else { continue };
            if entry.file_name().to_string_lossy().starts_with("upload-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Arc::new(Spooler {
            dir: dir.to_path_buf(),
            budget,
            in_memory: AtomicU64::new(0),
            promised: Mutex::new(0),
            free: free_bytes,
            gauge,
        }))
    }

    /// An empty spool for one upload.
    pub(crate) fn spool(self: &Arc<Self>) -> Spool {
        Spool {
            spooler: Arc::clone(self),
            kept: Kept::Memory(Vec::new()),
            len: 0,
            reserved: 0,
            promised: 0,
        }
    }

    /// Takes `n` bytes of the memory budget, if they are left.
    fn reserve(&self, n: u64) -> bool {
        self.in_memory
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + n <= self.budget).then_some(used + n)
            })
            .is_ok()
    }

    fn release(&self, n: u64) {
        self.in_memory.fetch_sub(n, Ordering::AcqRel);
    }

    /// A new, already unlinked, 0600 file in the spool directory: made and unlinked in one
    /// blocking step, so no cancelled future can leave it named.
    async fn file(&self) -> io::Result<tokio::fs::File> {
        let path = self.dir.join(format!("upload-{:016x}", fastrand::u64(..)));
        let made = tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            Ok::<_, io::Error>(file)
        });
        let file = made.await.map_err(io::Error::other)??;
        Ok(tokio::fs::File::from_std(file))
    }

    /// Promises `n` bytes of disk, unless that would leave less than the headroom free once
    /// every earlier promise is written too.
    fn promise(&self, n: u64) -> io::Result<()> {
        let mut promised = lock(&self.promised);
        let free = (self.free)(&self.dir)?;
        let wanted = promised.saturating_add(n).saturating_add(HEADROOM);
        if free < wanted {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "scan.spool_dir {} has {free} bytes free, {} promised to uploads being \
                     spooled, keeping {HEADROOM}",
                    self.dir.display(),
                    *promised,
                ),
            ));
        }
        *promised += n;
        Ok(())
    }

    /// `n` promised bytes written (the file system counts them now) or given back.
    fn redeem(&self, n: u64) {
        let mut promised = lock(&self.promised);
        *promised = promised.saturating_sub(n);
    }
}

/// Refuses a spool directory that others can enter or that is not the gateway user's:
/// unscanned uploads wait there.
pub(crate) fn check_dir(dir: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let why = match private::exposed(&meta) {
        None if meta.is_dir() => return Ok(()),
        None => "not a directory".to_string(),
        Some(why) => why,
    };
    Err(format!(
        "{}: {why}: scan.spool_dir must be a 0700 directory of the gateway's user",
        dir.display()
    ))
}

/// Bytes free for the spool in the file system holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

enum Kept {
    Memory(Vec<u8>),
    File(tokio::fs::File),
}

/// One upload's bytes, as received. Dropping it frees its memory or its file.
pub(crate) struct Spool {
    spooler: Arc<Spooler>,
    kept: Kept,
    len: u64,
    /// Bytes of the memory budget this spool holds (its buffer's capacity).
    reserved: u64,
    /// Disk promised to this spool's file and not yet written.
    promised: u64,
}

impl Spool {
    /// Appends `chunk`, spilling to a file once the memory budget is spent.
    pub(crate) async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        let n = chunk.len() as u64;
        if let Kept::Memory(buf) = &mut self.kept {
            // The buffer grows as a Vec does (doubling), and the budget counts what it
            // allocates: a 5 MiB upload may hold 8 MiB.
            let need = buf.len() + chunk.len();
            let capacity = if need > buf.capacity() {
                need.max(buf.capacity() * 2)
            } else {
                buf.capacity()
            };
            let grow = (capacity - buf.capacity()) as u64;
            if self.spooler.reserve(grow) {
                buf.reserve_exact(capacity - buf.len());
                buf.extend_from_slice(chunk);
                self.reserved += grow;
                self.grew(n);
                return Ok(());
            }
            let held = std::mem::take(buf);
            self.disk(held.len() as u64 + n)?;
            let mut file = self.spooler.file().await?;
            file.write_all(&held).await?;
            self.wrote(held.len() as u64);
            self.kept = Kept::File(file);
            self.spooler.release(std::mem::take(&mut self.reserved));
        }
        self.disk(n)?;
        if let Kept::File(file) = &mut self.kept {
            file.write_all(chunk).await?;
        }
        self.wrote(n);
        self.grew(n);
        Ok(())
    }

    /// Makes sure `n` bytes of disk are promised to this spool.
    fn disk(&mut self, n: u64) -> io::Result<()> {
        if self.promised < n {
            let more = (n - self.promised).max(GRANT);
            self.spooler.promise(more)?;
            self.promised += more;
        }
        Ok(())
    }

    /// `n` promised bytes are in the file now.
    fn wrote(&mut self, n: u64) {
        let n = n.min(self.promised);
        self.promised -= n;
        self.spooler.redeem(n);
    }

    fn grew(&mut self, n: u64) {
        self.len += n;
        self.spooler.gauge.inc_by(n as i64);
    }

    /// Whether the upload spilled to a file (for the log).
    pub(crate) fn on_disk(&self) -> bool {
        matches!(self.kept, Kept::File(_))
    }

    /// The bytes from the first, for the scanner and then for the backend.
    pub(crate) async fn reader(&mut self) -> io::Result<impl AsyncRead + Unpin + Send + '_> {
        Ok(match &mut self.kept {
            Kept::Memory(buf) => Either::Left(&buf[..]),
            Kept::File(file) => {
                file.flush().await?;
                file.rewind().await?;
                Either::Right(file)
            }
        })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.spooler.release(self.reserved);
        self.spooler.redeem(self.promised);
        self.spooler.gauge.dec_by(self.len as i64);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use tokio::io::AsyncReadExt;

    use super::*;

    async fn read_all(spool: &mut Spool) -> Vec<u8> {
        let mut out = Vec::new();
        spool
            .reader()
            .await
            .expect("reader")
            .read_to_end(&mut out)
            .await
            .expect("read");
        out
    }

    /// Within the budget an upload stays in memory; past it, it spills to a file that has no
    /// name in the directory; both read back whole, twice (scanner, then backend), and the
    /// budget and the gauge come back when the spools drop.
    #[tokio::test]
    async fn spools_in_memory_then_on_disk_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool_dir = dir.path().join("spool");
        let gauge = Gauge::default();
        let spooler = Spooler::open(&spool_dir, 100_000, gauge.clone()).expect("open");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut small = spooler.spool();
        small.write(&data[..60_000]).await.expect("write");
        let mut large = spooler.spool();
        for chunk in data.chunks(30_000) {
            large.write(chunk).await.expect("write");
        }
        assert!(!small.on_disk());
        assert!(large.on_disk(), "past the shared budget the second spills");
        assert_eq!(gauge.get(), 360_000);
        assert_eq!(std::fs::read_dir(&spool_dir).expect("ls").count(), 0);
        for _ in 0..2 {
            assert_eq!(read_all(&mut small).await, &data[..60_000]);
            assert_eq!(read_all(&mut large).await, data);
        }
        drop(small);
        drop(large);
        assert_eq!(gauge.get(), 0);
        assert_eq!(spooler.in_memory.load(Ordering::Acquire), 0);
        let meta = std::fs::metadata(&spool_dir).expect("stat");
        assert_eq!(meta.mode() & 0o777, 0o700);
    }

    /// Spools spilling at once share the free space: each promise counts the ones before it
    /// that are not yet written, so the third of three finds no room where two fit, and finds
    /// it once one of the two has ended.
    #[tokio::test]
    async fn spools_spilling_at_once_cannot_overrun_the_headroom_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dir = dir.path().join("spool");
        let mut spooler = Spooler::open(&dir, 0, Gauge::default()).expect("open");
        // Room for two grants and a half beyond the headroom.
        Arc::get_mut(&mut spooler).expect("one owner").free = |_| Ok(HEADROOM + 5 * GRANT / 2);
        let mut spools = Vec::new();
        for _ in 0..2 {
            let mut spool = spooler.spool();
            spool.write(b"x").await.expect("room for two");
            assert!(spool.on_disk());
            spools.push(spool);
        }
        let mut third = spooler.spool();
        let full = third.write(b"x").await.expect_err("no room for a third");
        assert_eq!(full.kind(), io::ErrorKind::StorageFull, "{full}");
        assert!(full.to_string().contains("promised"), "{full}");
        spools.pop();
        let mut third = spooler.spool();
        third.write(b"x").await.expect("room once one has ended");
        drop(third);
        drop(spools);
        assert_eq!(*spooler.promised.lock().expect("lock"), 0);
    }

    #[test]
    fn a_spool_dir_others_can_enter_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let refused = Spooler::open(&open, 1, Gauge::default()).expect_err("0755 refused");
        assert!(refused.contains("0700"), "{refused}");
    }
}
