//! The client's control connection: reading command lines, writing replies, and the in-place
//! upgrade to TLS on `AUTH TLS`. It runs over any [`Io`]: a TCP socket, or in tests one end of
//! a `tokio::io::duplex`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

use crate::ftp::{LineError, LineFramer, Peer, Reply};
use crate::stream::{Control, Io};
use crate::tls::store::subject;

pub struct ClientControl {
    /// `None` only while an upgrade is in progress (or after it failed).
    stream: Option<Control>,
    framer: LineFramer,
    /// A line read during a transfer and not yet served: the next `read_line` returns it.
    deferred: Option<Result<Vec<u8>, LineError>>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// How long one reply may wait for the client to read: a client that stops reading must
    /// not hold its session (see docs/ARCHITECTURE.md, "Every wait is bounded").
    write_limit: Duration,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "control connection lost")
}

impl ClientControl {
    pub fn new(
        io: Box<dyn Io>,
        peer: SocketAddr,
        local: SocketAddr,
        max_line: usize,
        write_limit: Duration,
    ) -> Self {
        Self {
            stream: Some(Control::Plain(io)),
            framer: LineFramer::new(max_line, Peer::Client),
            deferred: None,
            peer,
            local,
            write_limit,
        }
    }

    pub fn is_tls(&self) -> bool {
        self.stream.as_ref().is_some_and(Control::is_tls)
    }

    /// Bytes the client sent that are not yet a full line.
    pub fn has_pending_input(&self) -> bool {
        self.framer.has_pending()
    }

    /// The next line; `Ok(None)` when the client closed the connection. Cancel-safe: bytes are
    /// moved into the framer in the same poll that reads them.
    pub async fn read_line(&mut self) -> io::Result<Option<Result<Vec<u8>, LineError>>> {
        if let Some(line) = self.deferred.take() {
            return Ok(Some(line));
        }
        let mut chunk = [0u8; 2048];
        loop {
            if let Some(line) = self.framer.next_line() {
                return Ok(Some(line));
            }
            let stream = self.stream.as_mut().ok_or_else(gone)?;
            let n = match stream.read(&mut chunk).await {
                Ok(n) => n,
                // A TLS client that closes without close_notify has still gone away.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(None);
            }
            self.framer.extend(chunk.get(..n).unwrap_or_default());
        }
    }

    /// Keeps `line` for the next [`Self::read_line`]: a command sent during a transfer is
    /// served after it, as on a plain server.
    pub fn defer(&mut self, line: Result<Vec<u8>, LineError>) {
        self.deferred = Some(line);
    }

    pub fn has_deferred(&self) -> bool {
        self.deferred.is_some()
    }

    /// Writes one reply, within the write limit: past it the client is taken to have stopped
    /// reading, and the error ends the session.
    pub async fn send(&mut self, reply: &Reply) -> io::Result<()> {
        let stream = self.stream.as_mut().ok_or_else(gone)?;
        let write = async {
            stream.write_all(reply.as_bytes()).await?;
            stream.flush().await
        };
        tokio::time::timeout(self.write_limit, write)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not read its replies in time",
                )
            })?
    }

    /// Runs the TLS handshake on the plain connection (after `234`, or at once for implicit
    /// FTPS).
    pub async fn upgrade(&mut self, config: Arc<ServerConfig>, limit: Duration) -> io::Result<()> {
        let plain = match self.stream.take() {
            Some(Control::Plain(io)) => io,
            other => {
                self.stream = other;
                return Err(io::Error::other("control connection is already TLS"));
            }
        };
        let tls = tokio::time::timeout(limit, TlsAcceptor::from(config).accept(plain))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        self.stream = Some(Control::Tls(Box::new(tokio_rustls::TlsStream::Server(tls))));
        Ok(())
    }

    /// The TLS version and whether the handshake resumed a session.
    pub fn tls_info(&self) -> Option<(rustls::ProtocolVersion, bool)> {
        self.stream.as_ref().and_then(Control::tls_info)
    }

    /// The gateway's side of the client's TLS session, once there is one.
    fn tls_server(&self) -> Option<&rustls::ServerConnection> {
        self.stream.as_ref()?.tls_server()
    }

    /// The user the client's certificate names, as `tls.client_cert_user` reads it (an email
    /// counts only in one of `email_domains`, `tls.client_cert_email_domains`).
    pub fn certificate_user(
        &self,
        field: crate::config::CertUser,
        email_domains: &[String],
    ) -> Option<String> {
        let cert = self.tls_server()?.peer_certificates()?.first()?;
        crate::tls::store::certificate_user(cert, field, email_domains)
    }

    /// The subject of the client's certificate, when it presented one (mutual TLS).
    pub fn peer_subject(&self) -> Option<String> {
        self.tls_server()?
            .peer_certificates()?
            .first()
            .and_then(subject)
    }

    /// The server name the client asked for in its TLS handshake (SNI), if any. rustls only
    /// accepts DNS names here, but the name still goes through [`crate::ftp::Escaped`] in logs.
    pub fn sni(&self) -> Option<String> {
        self.tls_server()?.server_name().map(String::from)
    }

    /// Says goodbye politely: TLS close_notify, then FIN.
    pub async fn close(&mut self) {
        if let Some(stream) = self.stream.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        }
    }
}
