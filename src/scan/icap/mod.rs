//! The gateway's ICAP client (RFC 3507): one REQMOD per upload, on connections kept alive in a
//! small pool, the service's OPTIONS asked once per `Options-TTL`.
//!
//! Written against the scanner operators run, c-icap with ClamAV (docs/TESTING.md, "ICAP test
//! bed", records what it answers). The protocol is in [`wire`], pure and fuzzed; this module is
//! the I/O: connections, the pool, the preview and the rest of the body, and the one retry.
//!
//! Why our own client: no well-kept Rust ICAP client fits. The one on crates.io (`icap-rs`,
//! 0.x, one author) keeps a single idle connection rather than a pool, does not retry a dead
//! kept-alive one, buffers whole answers, and brings an ICAP server, the `http` crate and all of
//! tokio's features with it; what the gateway needs is a few hundred lines.
//!
//! Why the retry: c-icap closes a kept-alive connection after `MaxKeepAliveRequests`, and after
//! a c-icap restart every pooled connection is dead. A pooled connection found closed before
//! the server said a word (a write fails, or EOF before the first byte of a reply) is therefore
//! retried once on a fresh connection; the preview is kept in memory for that, so nothing of
//! the upload has been lost. Once the body past the preview is on its way, a failure is final.

pub mod wire;

#[cfg(test)]
mod tests;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

pub(crate) use crate::config::IcapUrl;
use wire::{Answer, HeadFinder, ResponseHead, Section, ServiceOptions};

use super::lock;
pub(crate) use wire::{Verdict, WireError};

/// Idle connections kept for reuse; more are closed when they come back. One per upload being
/// scanned at once is what a busy gateway uses; c-icap's `ThreadsPerChild` is far above.
const MAX_IDLE: usize = 16;

/// The largest preview sent, whatever the service asks: the preview is held in memory (for the
/// retry), and c-icap asks 1024.
const MAX_PREVIEW: u64 = 64 * 1024;

/// The longest an OPTIONS answer is trusted, whatever its `Options-TTL`: a day, so a service
/// reconfigured (another preview size, REQMOD gone) is noticed by the next day at the latest.
const MAX_OPTIONS_TTL: u64 = 24 * 3600;

/// The chunks the body after the preview goes in.
const CHUNK: usize = 64 * 1024;

/// Why a file could not be scanned. The session refuses the upload on any of them: no verdict
/// is never taken for clean.
#[derive(Debug, Error)]
pub(crate) enum ScanError {
    #[error("cannot connect to the ICAP server {scanner}: {source}")]
    Unreachable { scanner: String, source: io::Error },
    #[error("the ICAP server did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("the ICAP connection failed: {0}")]
    Io(#[source] io::Error),
    #[error("the ICAP server answered {status} {reason}")]
    Status { status: u16, reason: String },
    #[error("the ICAP server broke the protocol: {0}")]
    Protocol(#[from] WireError),
    #[error("reading the upload: {0}")]
    Upload(#[source] io::Error),
    /// c-icap answers 204 to a preview, without reading the rest, for objects above its
    /// `MaxObjectSize` and for file types outside its `ScanFileTypes`: not a verdict on the
    /// file (docs/TESTING.md, "ICAP test bed").
    #[error("the ICAP server passed the file after its first {preview} bytes without reading the rest (above its size limit, or a type it does not scan)")]
    NotRead { preview: u64 },
}

/// Scans uploads with one ICAP service. Cheap to clone: clones share the pool and the cached
/// OPTIONS.
#[derive(Clone)]
pub(crate) struct IcapClient {
    inner: Arc<Inner>,
}

struct Inner {
    url: IcapUrl,
    timeout: Duration,
    /// Idle connections, the most recently used last. Never locked across an await.
    idle: Mutex<Vec<Conn>>,
    options: Mutex<Option<Cached>>,
    /// TCP connections opened so far: the honest measure of the pool's reuse, for tests.
    opened: AtomicU64,
}

struct Cached {
    options: ServiceOptions,
    until: Instant,
}

impl IcapClient {
    /// A client of the service at `url`; every [`scan`](IcapClient::scan) (OPTIONS included
    /// when due) is bounded by `timeout`. Connects on first use.
    pub(crate) fn new(url: IcapUrl, timeout: Duration) -> IcapClient {
        IcapClient {
            inner: Arc::new(Inner {
                url,
                timeout,
                idle: Mutex::new(Vec::new()),
                options: Mutex::new(None),
                opened: AtomicU64::new(0),
            }),
        }
    }

    /// The scanner, for logs and the audit log.
    pub(crate) fn url(&self) -> &IcapUrl {
        &self.inner.url
    }

    /// The service's `ISTag` from its last OPTIONS answer (which rules judged), for logs.
    pub(crate) fn istag(&self) -> Option<String> {
        lock(&self.inner.options)
            .as_ref()
            .and_then(|c| c.options.istag.clone())
    }

    /// TCP connections opened since the client was made (the tests' witness of reuse).
    #[cfg(test)]
    pub(crate) fn connections_opened(&self) -> u64 {
        self.inner.opened.load(Ordering::Relaxed)
    }

    /// Scans the `len` bytes of `body` (a spooled upload) named `name` (its FTP path). Bounded
    /// as a whole by the client's timeout; a connection in use when it strikes is dropped.
    pub(crate) async fn scan<R: AsyncRead + Unpin>(
        &self,
        name: &str,
        len: u64,
        body: R,
    ) -> Result<Verdict, ScanError> {
        let timeout = self.inner.timeout;
        tokio::time::timeout(timeout, self.scan_within(name, len, body))
            .await
            .unwrap_or(Err(ScanError::TimedOut(timeout)))
    }

    async fn scan_within<R: AsyncRead + Unpin>(
        &self,
        name: &str,
        len: u64,
        mut body: R,
    ) -> Result<Verdict, ScanError> {
        let options = self.options().await?;
        let url = &self.inner.url;
        // An empty file goes as `null-body`, without a preview (see `wire::reqmod_request`).
        let preview = options
            .preview
            .filter(|_| len > 0)
            .map(|p| p.min(MAX_PREVIEW).min(len));
        let mut first =
            wire::reqmod_request(&url.to_string(), &url.authority(), name, len, preview);
        if let Some(n) = preview {
            let mut data = vec![0; usize::try_from(n).unwrap_or(0)];
            body.read_exact(&mut data).await.map_err(short_upload)?;
            wire::push_preview(&mut first, &data, n == len);
        }
        let exchange = Exchange {
            first: &first,
            waits: preview.is_some() || len == 0,
            rest: len - preview.unwrap_or(0),
            read: preview.unwrap_or(0),
        };
        let mut fresh = false;
        loop {
            let (mut conn, reused) = self.checkout(fresh).await?;
            match exchange.run(&mut conn, &mut body).await {
                Ok((verdict, keep)) => {
                    if keep {
                        self.checkin(conn);
                    }
                    return Ok(verdict);
                }
                Err(Failure::Stale(e)) if reused && !fresh => {
                    debug!(scanner = %url, error = %e, "pooled ICAP connection was closed; retrying on a new one");
                    self.forget_idle();
                    fresh = true;
                }
                Err(Failure::Stale(e)) => return Err(ScanError::Io(e)),
                Err(Failure::Fatal(e)) => return Err(e),
            }
        }
    }

    /// The service's OPTIONS, asked when none is cached or the cached answer's `Options-TTL`
    /// ran out.
    async fn options(&self) -> Result<ServiceOptions, ScanError> {
        if let Some(cached) = lock(&self.inner.options).as_ref() {
            if Instant::now() < cached.until {
                return Ok(cached.options.clone());
            }
        }
        let url = &self.inner.url;
        let request = wire::options_request(&url.to_string(), &url.authority());
        let mut fresh = false;
        let (head, conn) = loop {
            let (mut conn, reused) = self.checkout(fresh).await?;
            match send_first(&mut conn, &request).await {
                Ok(head) => break (head, conn),
                Err(Failure::Stale(_)) if reused && !fresh => {
                    self.forget_idle();
                    fresh = true;
                }
                Err(Failure::Stale(e)) => return Err(ScanError::Io(e)),
                Err(Failure::Fatal(e)) => return Err(e),
            }
        };
        match head.status() {
            200 => {}
            status @ 400..=599 => {
                return Err(ScanError::Status {
                    status,
                    reason: head.reason().to_string(),
                })
            }
            other => return Err(WireError::UnexpectedStatus(other).into()),
        }
        let options = ServiceOptions::from_head(&head)?;
        // An `opt-body` would follow the head; not worth reading, the connection just goes.
        if reusable(&head, &conn) {
            self.checkin(conn);
        }
        debug!(scanner = %url, istag = ?options.istag, preview = ?options.preview, ttl = options.ttl, "ICAP service options");
        let now = Instant::now();
        let until = now
            .checked_add(Duration::from_secs(options.ttl.min(MAX_OPTIONS_TTL)))
            .unwrap_or(now);
        *lock(&self.inner.options) = Some(Cached {
            options: options.clone(),
            until,
        });
        Ok(options)
    }

    /// An idle connection that still looks open (unless `fresh`), else a new one; and whether
    /// it was reused.
    async fn checkout(&self, fresh: bool) -> Result<(Conn, bool), ScanError> {
        if !fresh {
            let mut idle = lock(&self.inner.idle);
            while let Some(conn) = idle.pop() {
                if conn.looks_open() {
                    return Ok((conn, true));
                }
            }
        }
        let url = &self.inner.url;
        let stream = TcpStream::connect((url.host(), url.port()))
            .await
            .map_err(|source| ScanError::Unreachable {
                scanner: url.to_string(),
                source,
            })?;
        self.inner.opened.fetch_add(1, Ordering::Relaxed);
        // Small writes (a head, a preview) go at once rather than waiting for an ACK.
        let _ = stream.set_nodelay(true);
        Ok((
            Conn {
                stream,
                buf: Vec::new(),
            },
            false,
        ))
    }

    fn checkin(&self, conn: Conn) {
        let mut idle = lock(&self.inner.idle);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Closes every idle connection: one found closed says the server went away, and after a
    /// restart all of them are dead.
    fn forget_idle(&self) {
        lock(&self.inner.idle).clear();
    }
}

/// A failed attempt: `Stale` when the connection turned out closed before the server answered
/// and nothing is lost by trying again, `Fatal` otherwise.
enum Failure {
    Stale(io::Error),
    Fatal(ScanError),
}

impl From<ScanError> for Failure {
    fn from(e: ScanError) -> Self {
        Failure::Fatal(e)
    }
}

/// One REQMOD, attempted on one connection.
struct Exchange<'a> {
    /// The request head and, when the service takes one, the preview and its end.
    first: &'a [u8],
    /// Whether the server answers `first` before any more is sent: it holds a preview, or the
    /// whole (empty) request. Otherwise the rest of the body follows at once.
    waits: bool,
    /// The bytes of the body not in `first`.
    rest: u64,
    /// The bytes of the body in `first` (the preview).
    read: u64,
}

impl Exchange<'_> {
    /// The verdict, and whether the connection may serve another request.
    async fn run<R: AsyncRead + Unpin>(
        &self,
        conn: &mut Conn,
        body: &mut R,
    ) -> Result<(Verdict, bool), Failure> {
        let mut head = if self.waits {
            send_first(conn, self.first).await?
        } else {
            // No preview: the whole body goes before any answer, so only a failure to write
            // the head leaves the upload unread and the attempt repeatable.
            conn.stream
                .write_all(self.first)
                .await
                .map_err(Failure::Stale)?;
            send_rest(conn, body, self.rest).await?;
            conn.read_head().await.map_err(HeadError::fatal)?
        };
        let mut answer = wire::answer(&head).map_err(ScanError::from)?;
        let continued = answer == Answer::Continue;
        if continued {
            // A 100 is an answer to a preview that did not hold the whole body, nothing else.
            if !self.waits || self.rest == 0 {
                return Err(Failure::Fatal(WireError::UnexpectedStatus(100).into()));
            }
            send_rest(conn, body, self.rest).await?;
            head = conn.read_head().await.map_err(HeadError::fatal)?;
            answer = wire::answer(&head).map_err(ScanError::from)?;
        }
        match answer {
            // A 204 to a preview that did not hold the whole file judged only the preview.
            Answer::Verdict(Verdict::Clean) if self.waits && self.rest > 0 && !continued => {
                let read = self.read;
                Err(Failure::Fatal(ScanError::NotRead { preview: read }))
            }
            Answer::Verdict(Verdict::Clean) => Ok((Verdict::Clean, reusable(&head, conn))),
            // A 200's encapsulated message (a block page, an echo) follows its head: rather
            // than read it, the connection is closed. Infections are rare.
            Answer::Verdict(infected) => Ok((infected, false)),
            Answer::Failed { status, reason } => {
                Err(Failure::Fatal(ScanError::Status { status, reason }))
            }
            Answer::Continue => Err(Failure::Fatal(WireError::UnexpectedStatus(100).into())),
        }
    }
}

/// Writes `request` (nothing of which is lost if it must be sent again) and reads the answer's
/// head; a connection that turns out closed before the first byte of the answer is `Stale`.
async fn send_first(conn: &mut Conn, request: &[u8]) -> Result<ResponseHead, Failure> {
    conn.stream
        .write_all(request)
        .await
        .map_err(Failure::Stale)?;
    conn.read_head().await.map_err(|e| match e {
        HeadError::Closed(e) => Failure::Stale(e),
        other => HeadError::fatal(other),
    })
}

/// Sends the `rest` bytes of the body in chunks, then the last chunk.
async fn send_rest<R: AsyncRead + Unpin>(
    conn: &mut Conn,
    body: &mut R,
    mut rest: u64,
) -> Result<(), ScanError> {
    let mut data = vec![0; CHUNK];
    let mut frame = Vec::with_capacity(CHUNK + 16);
    while rest > 0 {
        let want = usize::try_from(rest).map_or(CHUNK, |r| r.min(CHUNK));
        let into = data.get_mut(..want).unwrap_or_default();
        let n = body.read(into).await.map_err(ScanError::Upload)?;
        if n == 0 {
            return Err(short_upload(io::ErrorKind::UnexpectedEof.into()));
        }
        frame.clear();
        wire::push_chunk(&mut frame, into.get(..n).unwrap_or_default());
        conn.stream.write_all(&frame).await.map_err(ScanError::Io)?;
        rest -= n as u64;
    }
    conn.stream
        .write_all(wire::LAST_CHUNK)
        .await
        .map_err(ScanError::Io)
}

fn short_upload(e: io::Error) -> ScanError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ScanError::Upload(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the upload is shorter than its length",
        ))
    } else {
        ScanError::Upload(e)
    }
}

/// Whether the connection can carry the next request after `head`: the server keeps it open,
/// no message body follows (none, or `null-body`), and nothing unread is left over.
fn reusable(head: &ResponseHead, conn: &Conn) -> bool {
    let bodiless = match head.encapsulated() {
        Ok(None) => true,
        Ok(Some(e)) => e.body().is_some_and(|(s, _)| s == Section::NullBody),
        Err(_) => false,
    };
    bodiless && !head.closes() && conn.buf.is_empty()
}

/// One connection to the scanner, with what has been read past the last head.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

enum HeadError {
    /// Closed (EOF, or reset) before the first byte of the answer.
    Closed(io::Error),
    Io(io::Error),
    Wire(WireError),
}

impl HeadError {
    fn fatal(e: HeadError) -> Failure {
        Failure::Fatal(match e {
            HeadError::Closed(e) | HeadError::Io(e) => ScanError::Io(e),
            HeadError::Wire(e) => ScanError::Protocol(e),
        })
    }
}

impl Conn {
    /// Whether an idle connection is still open as far as can be told without waiting: the
    /// server has sent nothing (an idle connection gets nothing but its close).
    fn looks_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Reads one response head, at most [`wire::MAX_HEAD`] bytes.
    async fn read_head(&mut self) -> Result<ResponseHead, HeadError> {
        let mut finder = HeadFinder::default();
        loop {
            if let Some(n) = finder.find(&self.buf).map_err(HeadError::Wire)? {
                let head = wire::parse_response_head(self.buf.get(..n).unwrap_or_default());
                self.buf.drain(..n.min(self.buf.len()));
                return head.map_err(HeadError::Wire);
            }
            let nothing_yet = self.buf.is_empty();
            self.buf.reserve(8192);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) if nothing_yet => {
                    return Err(HeadError::Closed(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed by the server before answering",
                    )))
                }
                Ok(0) => {
                    return Err(HeadError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed by the server in the middle of its answer",
                    )))
                }
                Ok(_) => {}
                Err(e) if nothing_yet && closed(&e) => return Err(HeadError::Closed(e)),
                Err(e) => return Err(HeadError::Io(e)),
            }
        }
    }
}

/// An error that says the peer closed the connection.
fn closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}
