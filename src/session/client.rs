//! The client's control connection: command lines in, replies out within the write limit, and
//! the in-place upgrade to TLS on `AUTH TLS`, on the shared [`ControlConn`] (`control`), worded
//! for the session. It runs over any [`Io`]: a TCP socket, or in tests one end of a
//! `tokio::io::duplex`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;

use crate::control::{CommandLines, ControlConn, Handshake, SendError, UpgradeError};
use crate::ftp::{LineError, Reply};
use crate::stream::Io;
use crate::tls::x509::subject;
use crate::tls::TlsFacts;

pub(super) struct ClientControl {
    conn: ControlConn<CommandLines>,
    /// A line read during a transfer and not yet served: the next `read_line` returns it.
    deferred: Option<Result<Vec<u8>, LineError>>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

impl ClientControl {
    /// `write_limit`: how long one reply may wait for the client to read. A client that stops
    /// reading must not hold its session (see docs/ARCHITECTURE.md, "Every wait is bounded").
    pub(super) fn new(
        io: Box<dyn Io>,
        peer: SocketAddr,
        local: SocketAddr,
        max_line: usize,
        write_limit: Duration,
    ) -> Self {
        let framing = CommandLines::new(max_line);
        Self {
            conn: ControlConn::new(io, framing, write_limit, "control connection lost"),
            deferred: None,
            peer,
            local,
        }
    }

    pub(super) fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }

    /// Bytes the client sent that are not yet a full line.
    pub(super) fn has_pending_input(&self) -> bool {
        self.conn.framing().has_pending()
    }

    /// The next line; `Ok(None)` when the client closed the connection. Cancel-safe: bytes are
    /// moved into the framer in the same poll that reads them.
    pub(super) async fn read_line(&mut self) -> io::Result<Option<Result<Vec<u8>, LineError>>> {
        if let Some(line) = self.deferred.take() {
            return Ok(Some(line));
        }
        match self.conn.read().await {
            // A TLS client that closes without close_notify has still gone away.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            read => read,
        }
    }

    /// Keeps `line` for the next [`Self::read_line`]: a command sent during a transfer is
    /// served after it, as on a plain server.
    pub(super) fn defer(&mut self, line: Result<Vec<u8>, LineError>) {
        self.deferred = Some(line);
    }

    pub(super) fn has_deferred(&self) -> bool {
        self.deferred.is_some()
    }

    /// Writes one reply, within the write limit: past it the client is taken to have stopped
    /// reading, and the error ends the session.
    pub(super) async fn send(&mut self, reply: &Reply) -> io::Result<()> {
        self.conn.send(reply.as_bytes()).await.map_err(|e| match e {
            SendError::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read its replies in time",
            ),
            SendError::Io(e) => e,
        })
    }

    /// Runs the TLS handshake on the plain connection (after `234`, or at once for implicit
    /// FTPS).
    pub(super) async fn upgrade(
        &mut self,
        config: Arc<ServerConfig>,
        limit: Duration,
    ) -> io::Result<()> {
        self.conn
            .upgrade(Handshake::Accept(config), limit)
            .await
            .map_err(|e| match e {
                UpgradeError::NotPlain => io::Error::other("control connection is already TLS"),
                UpgradeError::TimedOut => {
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                }
                UpgradeError::Handshake(e) => e,
            })
    }

    /// The TLS version and whether the handshake resumed a session.
    pub(super) fn tls_info(&self) -> Option<TlsFacts> {
        self.conn.tls_info()
    }

    /// The user the client's certificate names, as `tls.client_cert_user` reads it (an email
    /// counts only in one of `email_domains`, `tls.client_cert_email_domains`).
    pub(super) fn certificate_user(
        &self,
        field: crate::config::CertUser,
        email_domains: &[String],
    ) -> Option<String> {
        let cert = self.conn.peer_certificate()?;
        crate::tls::x509::certificate_user(cert, field, email_domains)
    }

    /// The subject of the client's certificate, when it presented one (mutual TLS).
    pub(super) fn peer_subject(&self) -> Option<String> {
        subject(self.conn.peer_certificate()?)
    }

    /// The server name the client asked for in its TLS handshake (SNI), if any. rustls only
    /// accepts DNS names here, but the name still goes through [`crate::ftp::Escaped`] in logs.
    pub(super) fn sni(&self) -> Option<String> {
        self.conn.sni().map(String::from)
    }

    /// Says goodbye politely: TLS close_notify, then FIN.
    pub(super) async fn close(&mut self) {
        self.conn.close().await;
    }
}
