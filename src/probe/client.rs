//! The probe's control connection: one command, one reply, every wait bounded by `--timeout`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::{TlsConnector, TlsStream};

use crate::backend::{BackendError, ReplyReader};
use crate::ftp::Reply;
use crate::stream::Control;

pub struct Ctl {
    /// `None` only during the TLS upgrade.
    stream: Option<Control>,
    replies: ReplyReader,
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
    pub fn new(tcp: TcpStream, limit: Duration) -> io::Result<Ctl> {
        Ok(Ctl {
            peer: tcp.peer_addr()?,
            local: tcp.local_addr()?,
            stream: Some(Control::Plain(Box::new(tcp))),
            replies: ReplyReader::default(),
            limit,
        })
    }

    /// TLS on the control connection (after `AUTH TLS`, or at once for implicit FTPS).
    pub async fn secure(
        &mut self,
        config: Arc<ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<()> {
        let Some(Control::Plain(plain)) = self.stream.take() else {
            return Err(io::Error::other("not a plain connection"));
        };
        let tls = timeout(self.limit, TlsConnector::from(config).connect(name, plain))
            .await
            .map_err(|_| timed_out("TLS handshake"))??;
        self.stream = Some(Control::Tls(Box::new(TlsStream::Client(tls))));
        Ok(())
    }

    /// `(version, cipher suite)` once TLS is up.
    pub fn tls_summary(&self) -> Option<(String, String)> {
        let conn = self.stream.as_ref()?.tls_client()?;
        Some((
            format!("{:?}", conn.protocol_version()?),
            format!("{:?}", conn.negotiated_cipher_suite()?.suite()),
        ))
    }

    /// Sends `line` and returns the next reply (a transfer command's is its 1xx mark).
    pub async fn cmd(&mut self, line: &str) -> io::Result<Reply> {
        self.send(line).await?;
        self.reply().await
    }

    pub async fn send(&mut self, line: &str) -> io::Result<()> {
        let limit = self.limit;
        let stream = self.stream()?;
        let write = async {
            stream.write_all(format!("{line}\r\n").as_bytes()).await?;
            stream.flush().await
        };
        timeout(limit, write)
            .await
            .map_err(|_| timed_out("sending a command"))?
    }

    /// The next whole reply, within the limit.
    pub async fn reply(&mut self) -> io::Result<Reply> {
        let limit = self.limit;
        timeout(limit, self.read_reply())
            .await
            .map_err(|_| timed_out("waiting for a reply"))?
    }

    async fn read_reply(&mut self) -> io::Result<Reply> {
        let stream = self.stream.as_mut().ok_or_else(lost)?;
        self.replies.read(stream).await.map_err(|e| match e {
            BackendError::Closed => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the control connection",
            ),
            BackendError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        })
    }

    fn stream(&mut self) -> io::Result<&mut Control> {
        self.stream.as_mut().ok_or_else(lost)
    }
}

fn lost() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection lost")
}
