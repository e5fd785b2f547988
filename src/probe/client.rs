//! The probe's control connection: one command, one reply, every wait bounded by `--timeout`,
//! on the shared [`ControlConn`] (`control`), worded for the probe's report.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::backend::BackendError;
use crate::control::{BadReply, ControlConn, Handshake, Replies, SendError, UpgradeError};
use crate::ftp::Reply;

pub(super) struct Ctl {
    conn: ControlConn<Replies>,
    /// The address this connection reached: what a 227 should name.
    pub peer: SocketAddr,
    /// This end's address: where the server connects back in active mode.
    pub local: SocketAddr,
    limit: Duration,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

impl Ctl {
    pub(super) fn new(tcp: TcpStream, limit: Duration) -> io::Result<Ctl> {
        Ok(Ctl {
            peer: tcp.peer_addr()?,
            local: tcp.local_addr()?,
            conn: ControlConn::new(Box::new(tcp), Replies::default(), limit, "connection lost"),
            limit,
        })
    }

    /// TLS on the control connection (after `AUTH TLS`, or at once for implicit FTPS).
    pub(super) async fn secure(
        &mut self,
        config: Arc<ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<()> {
        let handshake = Handshake::Connect(TlsConnector::from(config), name);
        self.conn
            .upgrade(handshake, self.limit)
            .await
            .map_err(|e| match e {
                UpgradeError::NotPlain => io::Error::other("not a plain connection"),
                UpgradeError::TimedOut => timed_out("TLS handshake"),
                UpgradeError::Handshake(e) => e,
            })
    }

    /// `(version, cipher suite)` once TLS is up.
    pub(super) fn tls_summary(&self) -> Option<(String, String)> {
        let conn = self.conn.tls()?;
        Some((
            format!("{:?}", conn.protocol_version()?),
            format!("{:?}", conn.negotiated_cipher_suite()?.suite()),
        ))
    }

    /// Sends `line` and returns the next reply (a transfer command's is its 1xx mark).
    pub(super) async fn cmd(&mut self, line: &str) -> io::Result<Reply> {
        self.send(line).await?;
        self.reply().await
    }

    pub(super) async fn send(&mut self, line: &str) -> io::Result<()> {
        let wire = format!("{line}\r\n");
        self.conn.send(wire.as_bytes()).await.map_err(|e| match e {
            SendError::TimedOut => timed_out("sending a command"),
            SendError::Io(e) => e,
        })
    }

    /// The next whole reply, within the limit.
    pub(super) async fn reply(&mut self) -> io::Result<Reply> {
        let limit = self.limit;
        timeout(limit, self.read_reply())
            .await
            .map_err(|_| timed_out("waiting for a reply"))?
    }

    async fn read_reply(&mut self) -> io::Result<Reply> {
        // A reply that is no reply is worded as the gateway words a backend's.
        let bad = |e: BackendError| io::Error::other(e.to_string());
        match self.conn.read().await? {
            Some(Ok(reply)) => Ok(reply),
            Some(Err(BadReply::Line(e))) => Err(bad(BackendError::Line(e))),
            Some(Err(BadReply::Reply(e))) => Err(bad(BackendError::Reply(e))),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the control connection",
            )),
        }
    }
}
