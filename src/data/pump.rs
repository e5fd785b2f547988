//! Copying a transfer's bytes from one data connection to the other, every read and write
//! bounded by the stall limit.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::io::poll_read_buf;
use tokio_util::task::AbortOnDropHandle;

use super::error::BridgeError;
use crate::scan::Spool;
use crate::stream::Stream;

/// Large enough for several 16 KiB TLS records per read; allocated once per transfer, and
/// never zeroed: reads fill its capacity, so a small listing touches only the pages it uses.
const BUF_SIZE: usize = 256 * 1024;

pub(super) enum PumpError {
    Read(io::Error),
    Write(io::Error),
    /// A read (`true`) or a write (`false`) moved nothing within the stall limit.
    Stalled {
        reading: bool,
    },
    /// An upload went past its size limit (`policy.max_upload_bytes`).
    TooLarge {
        limit: u64,
    },
}

impl PumpError {
    /// The bridge's error, given each side's name and the error its I/O failures become.
    pub(super) fn into_bridge(
        self,
        stall: Duration,
        read: (&'static str, impl FnOnce(io::Error) -> BridgeError),
        write: (&'static str, impl FnOnce(io::Error) -> BridgeError),
    ) -> BridgeError {
        let secs = stall.as_secs();
        match self {
            PumpError::Read(e) => (read.1)(e),
            PumpError::Write(e) => (write.1)(e),
            PumpError::Stalled { reading: true } => BridgeError::Stalled { peer: read.0, secs },
            PumpError::Stalled { reading: false } => BridgeError::Stalled {
                peer: write.0,
                secs,
            },
            PumpError::TooLarge { limit } => BridgeError::TooLarge { limit },
        }
    }
}

/// Where a transfer's bytes are counted: its own progress (for STAT) and the gateway's total;
/// with `hash`, their SHA-256 too (for the audit log).
pub(super) struct Counted<'a> {
    pub(super) progress: &'a AtomicU64,
    pub(super) total: prometheus_client::metrics::counter::Counter,
    pub(super) hash: bool,
    /// The most bytes the copy may move.
    pub(super) limit: Option<u64>,
}

/// What a pump moved.
pub(super) struct Copied {
    pub(super) bytes: u64,
    pub(super) sha256: Option<[u8; 32]>,
}

/// Copies `from` to `to` until a clean end of file, then ends `to` cleanly (FIN, or
/// close_notify then FIN for TLS). Returns the count (and the hash, if asked) and, after a
/// clean end, `from` again. The hash is taken of each chunk as it is written, from the buffer
/// the write uses: one pass over the bytes, no copy.
///
/// An upload (the client's TLS connection as the source) is read and written in turn by one
/// task with one buffer: its reads are decryption, and handing each buffer to another thread
/// to write cost uploads 8-18 % more CPU per GiB. A download's source is read by a task of
/// its own, two buffers going back and forth, so the backend's socket keeps being drained
/// while the writer encrypts toward the client: in turn cost downloads from a plain backend
/// a quarter more, and changed nothing clear from a TLS one (docs/ARCHITECTURE.md, "A
/// transfer"). A dropped pump (a cancelled transfer) drops `from`, and aborts the reader with
/// it. Buffers are allocated once per transfer.
///
/// Each read and each write must complete within `stall`: a peer that stops sending, or stops
/// reading, ends the copy with [`PumpError::Stalled`].
pub(super) async fn pump(
    from: Stream,
    to: &mut Stream,
    counted: &Counted<'_>,
    stall: Duration,
) -> (Result<Copied, PumpError>, Option<Stream>) {
    let mut tally = Tally::new(counted);
    let copied = if matches!(from, Stream::DataTls(_)) {
        in_turn(from, to, &mut tally, stall).await
    } else {
        with_reader(from, to, &mut tally, stall).await
    };
    let from = match copied {
        Ok(from) => from,
        Err(e) => return (Err(e), None),
    };
    match end(to, stall).await {
        Ok(()) => (Ok(tally.finish()), from),
        Err(e) => (Err(e), None),
    }
}

/// One task, one buffer: read what is ready, write it, again.
async fn in_turn(
    mut from: Stream,
    to: &mut Stream,
    tally: &mut Tally<'_>,
    stall: Duration,
) -> Result<Option<Stream>, PumpError> {
    let mut buf = Vec::with_capacity(BUF_SIZE);
    let mut failed = None;
    loop {
        buf.clear();
        if within(stall, true, read_ready(&mut from, &mut buf, &mut failed)).await? == 0 {
            return Ok(Some(from));
        }
        write_chunk(to, &buf, tally, stall).await?;
    }
}

/// A reader task and this one, two buffers going back and forth.
async fn with_reader(
    mut from: Stream,
    to: &mut Stream,
    tally: &mut Tally<'_>,
    stall: Duration,
) -> Result<Option<Stream>, PumpError> {
    let (full_tx, mut full) = mpsc::channel::<Result<Vec<u8>, PumpError>>(2);
    let (empty, mut empty_rx) = mpsc::channel::<Vec<u8>>(2);
    for _ in 0..2 {
        let _ = empty.try_send(Vec::with_capacity(BUF_SIZE));
    }
    let reader = tokio::spawn(async move {
        let mut failed = None;
        while let Some(mut buf) = empty_rx.recv().await {
            let read = match within(stall, true, read_ready(&mut from, &mut buf, &mut failed)).await
            {
                Ok(0) => break,
                Ok(_) => Ok(buf),
                Err(e) => Err(e),
            };
            let stop = read.is_err();
            if full_tx.send(read).await.is_err() || stop {
                break;
            }
        }
        from
    });
    let reader = AbortOnDropHandle::new(reader);
    // `None`: the reader has stopped, at the end of the stream.
    while let Some(read) = full.recv().await {
        let mut chunk = read?;
        write_chunk(to, &chunk, tally, stall).await?;
        chunk.clear();
        let _ = empty.send(chunk).await;
    }
    Ok(reader.await.ok())
}

/// Ends `to` cleanly (FIN, or close_notify then FIN) once every byte is written, within the
/// stall limit.
async fn end(to: &mut Stream, stall: Duration) -> Result<(), PumpError> {
    let ended = async {
        to.flush().await?;
        to.shutdown().await
    };
    within(stall, false, ended).await
}

/// One read (`reading`) or write of the copy, within the stall limit: its failure, or the
/// limit passing, as the [`PumpError`] for that side.
async fn within<T>(
    stall: Duration,
    reading: bool,
    io: impl Future<Output = io::Result<T>>,
) -> Result<T, PumpError> {
    match timeout(stall, io).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) if reading => Err(PumpError::Read(e)),
        Ok(Err(e)) => Err(PumpError::Write(e)),
        Err(_) => Err(PumpError::Stalled { reading }),
    }
}

/// Writes one chunk within the stall limit, then counts (and hashes) it.
async fn write_chunk(
    to: &mut Stream,
    chunk: &[u8],
    tally: &mut Tally<'_>,
    stall: Duration,
) -> Result<(), PumpError> {
    tally.room_for(chunk)?;
    within(stall, false, to.write_all(chunk)).await?;
    tally.add(chunk);
    Ok(())
}

/// The bytes written so far: counted where [`Counted`] says, hashed if asked.
struct Tally<'a> {
    counted: &'a Counted<'a>,
    bytes: u64,
    hasher: Option<Sha256>,
}

impl<'a> Tally<'a> {
    fn new(counted: &'a Counted<'a>) -> Tally<'a> {
        Tally {
            counted,
            bytes: 0,
            hasher: counted.hash.then(Sha256::new),
        }
    }

    fn add(&mut self, chunk: &[u8]) {
        if let Some(h) = &mut self.hasher {
            h.update(chunk);
        }
        let n = chunk.len() as u64;
        self.bytes += n;
        self.counted.progress.store(self.bytes, Ordering::Relaxed);
        self.counted.total.inc_by(n);
    }

    /// Refuses a chunk that would take the copy past its limit, before any of it is written.
    fn room_for(&self, chunk: &[u8]) -> Result<(), PumpError> {
        match self.counted.limit {
            Some(limit) if self.bytes + chunk.len() as u64 > limit => {
                Err(PumpError::TooLarge { limit })
            }
            _ => Ok(()),
        }
    }

    fn finish(self) -> Copied {
        Copied {
            bytes: self.bytes,
            sha256: self.hasher.map(|h| h.finalize().into()),
        }
    }
}

/// Reads as much as `from` has ready into `buf` (empty), up to [`BUF_SIZE`], waiting only while
/// nothing is; returns how much.
///
/// Why: a TLS stream yields one record (16 KiB at most) per read, so one read per buffer
/// would pass 16 KiB per channel message, wake-up and system call on the other side; taking
/// every record already received fills the buffer instead. An error after some bytes is kept
/// in `failed` and returned by the next call, never lost: a reset must not read as a clean
/// end once the bytes before it are passed on.
async fn read_ready(
    from: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    failed: &mut Option<io::Error>,
) -> io::Result<usize> {
    if let Some(e) = failed.take() {
        return Err(e);
    }
    poll_fn(|cx| loop {
        let filled = buf.len();
        // Fills the spare capacity only: `buf` never grows past BUF_SIZE.
        match poll_read_buf(Pin::new(&mut *from), cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n == 0 || buf.len() >= BUF_SIZE {
                    return Poll::Ready(Ok(buf.len()));
                }
            }
            Poll::Ready(Err(e)) if filled == 0 => return Poll::Ready(Err(e)),
            Poll::Ready(Err(e)) => {
                *failed = Some(e);
                return Poll::Ready(Ok(filled));
            }
            Poll::Pending if filled == 0 => return Poll::Pending,
            Poll::Pending => return Poll::Ready(Ok(filled)),
        }
    })
    .await
}

/// Reads an upload whole into `spool` (`[scan]`): each read within the stall limit, no more
/// than the counted limit, the spool's own writes bounded by the stall limit too (a disk that
/// stops is a peer that stops).
pub(super) async fn receive(
    from: &mut Stream,
    spool: &mut Spool,
    counted: &Counted<'_>,
    stall: Duration,
) -> Result<Copied, BridgeError> {
    let mut tally = Tally::new(counted);
    let mut buf = Vec::with_capacity(BUF_SIZE);
    let mut failed = None;
    let stalled = |peer| BridgeError::Stalled {
        peer,
        secs: stall.as_secs(),
    };
    loop {
        buf.clear();
        let read = timeout(stall, read_ready(from, &mut buf, &mut failed)).await;
        match read.map_err(|_| stalled("client"))? {
            Ok(0) => return Ok(tally.finish()),
            Ok(_) => {}
            Err(e) => return Err(upload_read_error(e)),
        }
        if let Err(PumpError::TooLarge { limit }) = tally.room_for(&buf) {
            return Err(BridgeError::TooLarge { limit });
        }
        timeout(stall, spool.write(&buf))
            .await
            .map_err(|_| stalled("spool"))?
            .map_err(BridgeError::Spool)?;
        tally.add(&buf);
    }
}

/// Sends a spooled upload to the backend, then ends the connection cleanly, as [`pump`] does.
pub(super) async fn send(
    mut from: impl AsyncRead + Unpin,
    to: &mut Stream,
    counted: &Counted<'_>,
    stall: Duration,
) -> Result<Copied, PumpError> {
    let mut tally = Tally::new(counted);
    let mut buf = Vec::with_capacity(BUF_SIZE);
    let mut failed = None;
    loop {
        buf.clear();
        let n = read_ready(&mut from, &mut buf, &mut failed)
            .await
            .map_err(PumpError::Read)?;
        if n == 0 {
            break;
        }
        write_chunk(to, &buf, &mut tally, stall).await?;
    }
    end(to, stall).await?;
    Ok(tally.finish())
}

/// A TLS upload whose TCP stream ends without close_notify was cut short: rustls reports it as
/// `UnexpectedEof`, and it must not reach the backend as a clean end of file.
pub(super) fn upload_read_error(e: io::Error) -> BridgeError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        BridgeError::Truncated
    } else {
        BridgeError::Client(e)
    }
}

/// Reads until end of file, discarding: after an upload the backend sends no data, only
/// (for TLS) session tickets and close_notify.
pub(super) async fn drain(stream: &mut Stream) -> io::Result<()> {
    let mut sink = [0u8; 1024];
    loop {
        match stream.read(&mut sink).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // A server that closes without close_notify after an upload has still read it all.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Bytes followed by a reset: the bytes come first, then the error, and never a clean end
    /// of file (after reporting ECONNRESET once, a socket reads as end of file, which would
    /// pass a cut transfer on as complete).
    #[tokio::test]
    async fn bytes_then_a_reset_read_as_bytes_then_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        peer.write_all(&[7u8; 100_000]).await.unwrap();
        peer.set_zero_linger().unwrap();
        drop(peer);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut from = Stream::Plain(ours);
        let mut buf = Vec::with_capacity(BUF_SIZE);
        let mut failed = None;
        let mut got = 0;
        let error = loop {
            buf.clear();
            match read_ready(&mut from, &mut buf, &mut failed).await {
                Ok(0) => panic!("a reset read as a clean end after {got} bytes"),
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        assert_eq!(got, 100_000);
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    }
}
