//! An FTP control connection, whichever side of it the gateway is on: a client's connection to
//! the gateway (`session::client`, where command lines are read), the gateway's connection to a
//! backend (`backend::control`) and the probe's to any server (`probe::client`), where replies
//! are read. One [`ControlConn`] does for all three what each once did for itself:
//!
//! - it owns the stream, plain until `AUTH TLS` (or TLS from the start), then TLS over the same
//!   transport, upgraded in place as the TLS server or the TLS client ([`Handshake`]);
//! - it bounds each write, so a peer that stops reading cannot hold the connection
//!   (docs/ARCHITECTURE.md, "Every wait is bounded");
//! - it reads whole frames through the [`Framing`] chosen at construction: [`CommandLines`]
//!   (the framer caps the length and refuses NUL, bare CR and bare LF: docs/ARCHITECTURE.md,
//!   "A session") or [`Replies`] (multi-line replies assembled, their size capped).
//!
//! Failures come back as [`SendError`] and [`UpgradeError`], not as text: each side words them
//! its own way (a session's log, a backend error, the probe's report).
//!
//! It runs over any [`Io`]: a TCP socket, or in tests one end of a `tokio::io::duplex`
//! (docs/ARCHITECTURE.md, "Testing the relay without servers").

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CommonState, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use crate::ftp::{LineError, LineFramer, Peer, Reply, ReplyAssembler, ReplyError};
use crate::stream::{delegate_io, Io};
use crate::tls::{summary, TlsFacts};

/// A server's reply line longer than this is hostile or broken, not FTP.
const MAX_REPLY_LINE: usize = 8 * 1024;
/// A whole reply (STAT and HELP can be long) larger than this is refused.
const MAX_REPLY: usize = 256 * 1024;

/// The transport: plain, or TLS over the same transport.
enum Control {
    Plain(Box<dyn Io>),
    Tls(Box<TlsStream<Box<dyn Io>>>),
}

delegate_io!(Control { Plain, Tls });

impl Control {
    /// The TLS session, on either side, once there is one.
    fn tls(&self) -> Option<&CommonState> {
        let Control::Tls(s) = self else {
            return None;
        };
        let state: &CommonState = match &**s {
            TlsStream::Server(s) => s.get_ref().1,
            TlsStream::Client(c) => c.get_ref().1,
        };
        Some(state)
    }

    /// The gateway's side of a client's TLS session.
    fn tls_server(&self) -> Option<&rustls::ServerConnection> {
        let Control::Tls(s) = self else {
            return None;
        };
        match &**s {
            TlsStream::Server(s) => Some(s.get_ref().1),
            TlsStream::Client(_) => None,
        }
    }
}

/// Which end of the TLS handshake this side is.
pub(crate) enum Handshake {
    /// The TLS server: a client's control connection to the gateway.
    Accept(Arc<ServerConfig>),
    /// The TLS client: the gateway toward a backend, the probe toward a server.
    Connect(TlsConnector, ServerName<'static>),
}

/// Why a write failed.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The write limit passed: the peer is taken to have stopped reading.
    TimedOut,
    /// The connection failed, or is gone (`NotConnected`, in the words given to
    /// [`ControlConn::new`]: a failed upgrade leaves nothing to write to).
    Io(io::Error),
}

impl From<io::Error> for SendError {
    fn from(e: io::Error) -> Self {
        SendError::Io(e)
    }
}

/// Why an upgrade to TLS failed.
#[derive(Debug)]
pub(crate) enum UpgradeError {
    /// The connection is not plain (TLS already, or lost): it is left as it was.
    NotPlain,
    /// The handshake did not finish within its limit. The connection is lost.
    TimedOut,
    /// The handshake failed. The connection is lost.
    Handshake(io::Error),
}

/// How a byte stream becomes frames: pure, no I/O (the framers are fuzzed in `ftp`).
pub(crate) trait Framing {
    /// What one read yields: a line or a reply, or why the bytes are neither.
    type Frame;
    /// The most one read of the socket takes.
    const READ: usize;
    /// Takes bytes as the socket gave them.
    fn extend(&mut self, bytes: &[u8]);
    /// The next whole frame, `None` when more bytes are needed.
    fn next_frame(&mut self) -> Option<Self::Frame>;
}

/// Command lines from a client, each at most `max_line` bytes. A refused line is a frame of its
/// own (`Err`): the session answers it and reads on.
pub(crate) struct CommandLines(LineFramer);

impl CommandLines {
    pub(crate) fn new(max_line: usize) -> Self {
        CommandLines(LineFramer::new(max_line, Peer::Client))
    }

    /// True when bytes are buffered that do not yet form a line (see `LineFramer::has_pending`
    /// on why that matters before a TLS upgrade).
    pub(crate) fn has_pending(&self) -> bool {
        self.0.has_pending()
    }
}

impl Framing for CommandLines {
    type Frame = Result<Vec<u8>, LineError>;
    const READ: usize = 2048;

    fn extend(&mut self, bytes: &[u8]) {
        self.0.extend(bytes);
    }

    fn next_frame(&mut self) -> Option<Self::Frame> {
        self.0.next_line()
    }
}

/// Replies from a server, however the bytes were split, multi-line ones assembled.
pub(crate) struct Replies {
    framer: LineFramer,
    assembler: ReplyAssembler,
}

impl Default for Replies {
    fn default() -> Self {
        Replies {
            framer: LineFramer::new(MAX_REPLY_LINE, Peer::Backend),
            assembler: ReplyAssembler::new(MAX_REPLY),
        }
    }
}

/// Bytes that are no reply: the connection cannot be read in step any more.
#[derive(Debug)]
pub(crate) enum BadReply {
    Line(LineError),
    Reply(ReplyError),
}

impl Framing for Replies {
    type Frame = Result<Reply, BadReply>;
    const READ: usize = 4096;

    fn extend(&mut self, bytes: &[u8]) {
        self.framer.extend(bytes);
    }

    fn next_frame(&mut self) -> Option<Self::Frame> {
        while let Some(line) = self.framer.next_line() {
            let pushed = match line {
                Ok(line) => self.assembler.push(&line),
                Err(e) => return Some(Err(BadReply::Line(e))),
            };
            match pushed {
                Ok(Some(reply)) => return Some(Ok(reply)),
                Ok(None) => {}
                Err(e) => return Some(Err(BadReply::Reply(e))),
            }
        }
        None
    }
}

/// One FTP control connection (see the module's doc).
pub(crate) struct ControlConn<F> {
    /// `None` only while an upgrade is under way, or after one failed.
    stream: Option<Control>,
    framing: F,
    /// What one read brought, on its way into `framing`: kept, so reads allocate nothing, and
    /// filled through its spare capacity, so no index can pass on the wrong bytes.
    chunk: Vec<u8>,
    /// How long one write may take.
    write_limit: Duration,
    /// A lost connection's error, in this side's words.
    lost: &'static str,
}

fn lost(words: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, words)
}

impl<F: Framing> ControlConn<F> {
    /// A plain connection over `io`. `lost` words the error of a connection that is gone.
    pub(crate) fn new(
        io: Box<dyn Io>,
        framing: F,
        write_limit: Duration,
        lost: &'static str,
    ) -> Self {
        ControlConn {
            stream: Some(Control::Plain(io)),
            framing,
            chunk: Vec::with_capacity(F::READ),
            write_limit,
            lost,
        }
    }

    pub(crate) fn framing(&self) -> &F {
        &self.framing
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.stream, Some(Control::Tls(_)))
    }

    /// The TLS session, once there is one: version, cipher suite, the peer's certificates.
    pub(crate) fn tls(&self) -> Option<&CommonState> {
        self.stream.as_ref()?.tls()
    }

    /// `(version, resumed)` once TLS is up.
    pub(crate) fn tls_info(&self) -> Option<TlsFacts> {
        summary(self.tls()?)
    }

    /// The first certificate the peer presented: a client's (mutual TLS) or a server's.
    pub(crate) fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        self.tls()?.peer_certificates()?.first()
    }

    /// The server name a client asked for in its TLS handshake (SNI), when the gateway is the
    /// TLS server and the client sent one.
    pub(crate) fn sni(&self) -> Option<&str> {
        self.stream.as_ref()?.tls_server()?.server_name()
    }

    /// Writes `bytes` and flushes them, within the write limit: past it the peer is taken to
    /// have stopped reading.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        let stream = self.stream.as_mut().ok_or_else(|| lost(self.lost))?;
        let write = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        timeout(self.write_limit, write)
            .await
            .map_err(|_| SendError::TimedOut)??;
        Ok(())
    }

    /// The next frame; `Ok(None)` when the peer closed the connection. Unbounded: each side
    /// puts its own deadline around it. Cancel-safe: bytes are moved into the framing in the
    /// same poll that reads them.
    pub(crate) async fn read(&mut self) -> io::Result<Option<F::Frame>> {
        loop {
            if let Some(frame) = self.framing.next_frame() {
                return Ok(Some(frame));
            }
            let stream = self.stream.as_mut().ok_or_else(|| lost(self.lost))?;
            self.chunk.clear();
            if stream.read_buf(&mut self.chunk).await? == 0 {
                return Ok(None);
            }
            self.framing.extend(&self.chunk);
        }
    }

    /// Runs the TLS handshake on the plain connection, within `limit` (after `234`, or at
    /// once for implicit FTPS). A connection that is not plain is left as it is.
    pub(crate) async fn upgrade(
        &mut self,
        handshake: Handshake,
        limit: Duration,
    ) -> Result<(), UpgradeError> {
        let plain = match self.stream.take() {
            Some(Control::Plain(io)) => io,
            other => {
                self.stream = other;
                return Err(UpgradeError::NotPlain);
            }
        };
        let tls = match handshake {
            Handshake::Accept(config) => {
                let accept = TlsAcceptor::from(config).accept(plain);
                timeout(limit, accept)
                    .await
                    .map(|r| r.map(TlsStream::Server))
            }
            Handshake::Connect(connector, name) => {
                let connect = connector.connect(name, plain);
                timeout(limit, connect)
                    .await
                    .map(|r| r.map(TlsStream::Client))
            }
        };
        let tls = tls
            .map_err(|_| UpgradeError::TimedOut)?
            .map_err(UpgradeError::Handshake)?;
        self.stream = Some(Control::Tls(Box::new(tls)));
        Ok(())
    }

    /// Says goodbye politely: TLS close_notify, then FIN, for at most a second.
    pub(crate) async fn close(&mut self) {
        if let Some(stream) = self.stream.as_mut() {
            let _ = timeout(Duration::from_secs(1), stream.shutdown()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn over_duplex<F: Framing>(framing: F) -> (ControlConn<F>, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let conn = ControlConn::new(Box::new(ours), framing, Duration::from_secs(5), "gone");
        (conn, theirs)
    }

    /// Lines split anywhere come out whole; a refused line is a frame and reading goes on; the
    /// peer's close is `None`.
    #[tokio::test]
    async fn command_lines_whole_however_split_then_the_end() {
        let (mut conn, mut peer) = over_duplex(CommandLines::new(16));
        peer.write_all(b"US").await.unwrap();
        peer.write_all(b"ER a\r\nNOOP\r\nNUL\0\r\n").await.unwrap();
        drop(peer);
        assert_eq!(conn.read().await.unwrap(), Some(Ok(b"USER a".to_vec())));
        assert_eq!(conn.read().await.unwrap(), Some(Ok(b"NOOP".to_vec())));
        assert_eq!(conn.read().await.unwrap(), Some(Err(LineError::Nul)));
        assert_eq!(conn.read().await.unwrap(), None);
    }

    /// A multi-line reply is one frame; bytes that are no reply are an error frame.
    #[tokio::test]
    async fn replies_assembled_and_garbage_refused() {
        let (mut conn, mut peer) = over_duplex(Replies::default());
        peer.write_all(b"211-Features\r\n UTF8\r\n211 End\r\n220 ok\r\nhello\r\n")
            .await
            .unwrap();
        let first = conn.read().await.unwrap().unwrap().unwrap();
        assert_eq!(first.code(), 211);
        let second = conn.read().await.unwrap().unwrap().unwrap();
        assert_eq!(second.code(), 220);
        assert!(matches!(
            conn.read().await.unwrap(),
            Some(Err(BadReply::Reply(_)))
        ));
    }

    /// A write is whole and flushed; one the peer never reads times out.
    #[tokio::test]
    async fn a_write_that_nobody_reads_times_out() {
        let (ours, mut theirs) = tokio::io::duplex(8);
        let limit = Duration::from_millis(50);
        let mut conn = ControlConn::new(Box::new(ours), CommandLines::new(16), limit, "gone");
        conn.send(b"200 ok\r\n").await.unwrap();
        let mut got = [0u8; 8];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"200 ok\r\n");
        let stuck = conn.send(b"a reply longer than the pipe\r\n").await;
        assert!(matches!(stuck, Err(SendError::TimedOut)));
    }

    /// A failed handshake leaves the connection lost, in this side's words, and no longer
    /// plain: a second upgrade is refused.
    #[tokio::test]
    async fn a_failed_handshake_leaves_the_connection_lost() {
        let (mut conn, peer) = over_duplex(Replies::default());
        drop(peer);
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from("example.test").unwrap();
        let handshake = Handshake::Connect(connector.clone(), name.clone());
        let upgrade = conn.upgrade(handshake, Duration::from_secs(5)).await;
        assert!(matches!(upgrade, Err(UpgradeError::Handshake(_))));
        let lost = conn.send(b"NOOP\r\n").await;
        assert!(
            matches!(lost, Err(SendError::Io(e)) if e.kind() == io::ErrorKind::NotConnected && e.to_string() == "gone")
        );
        assert!(!conn.is_tls());
        let again = conn
            .upgrade(Handshake::Connect(connector, name), Duration::from_secs(5))
            .await;
        assert!(matches!(again, Err(UpgradeError::NotPlain)));
    }
}
