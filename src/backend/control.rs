//! The gateway's own control connection to the backend FTP server: plain, explicit TLS
//! (`AUTH TLS`) or implicit TLS, over any [`Io`] (TCP, or in tests a scripted peer on a
//! `tokio::io::duplex`), on the shared [`ControlConn`] (`control`), worded as
//! [`BackendError`]s. Data connections to the backend are always TCP, to its control address.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout;
use tracing::debug;

use crate::control::{BadReply, ControlConn, Handshake, Replies, SendError, UpgradeError};
use crate::ftp::addr::{self, AddrError};
use crate::ftp::{LineError, Reply, ReplyError};
use crate::stream::Io;
use crate::tls::backend::BackendSession;

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, io::Error),
    #[error("closed the control connection")]
    Closed,
    #[error("control connection: {0}")]
    Io(#[from] io::Error),
    #[error("sent a bad line: {0}")]
    Line(#[from] LineError),
    #[error("sent a bad reply: {0}")]
    Reply(#[from] ReplyError),
    #[error("did not answer in time")]
    Timeout,
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error("refused {what}: {reply}")]
    Refused { what: &'static str, reply: String },
}

/// How the backend is asked for its data port. EPSV carries no address to distrust and works
/// over IPv6; PASV is the fallback for servers that lack EPSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PassiveStyle {
    Epsv,
    Pasv,
}

/// Why the backend gave no data port for PASV/EPSV. Not an error of the connection, which
/// goes on: the session chooses what the client hears (`crate::refusal`).
#[derive(Debug)]
pub enum NoDataPort {
    /// It refused, in its own reply (fit to relay).
    Refused(Reply),
    /// It said yes in a reply that names no usable port.
    Unusable(AddrError),
}

pub struct Backend {
    conn: ControlConn<Replies>,
    tls: Option<BackendSession>,
    peer: SocketAddr,
    local: SocketAddr,
    style: PassiveStyle,
    reply_timeout: Duration,
}

impl Backend {
    /// Connects to `address` (`host:port`, resolved now so DNS changes are followed), sets up
    /// TLS as configured, and returns the backend with its greeting (relayed to the client).
    /// `proxy_header` (PROXY protocol) is written first, before TLS or anything else.
    pub async fn connect(
        address: &str,
        tls: Option<BackendSession>,
        proxy_header: Option<&[u8]>,
        connect_timeout: Duration,
        reply_timeout: Duration,
    ) -> Result<(Backend, Vec<Reply>), BackendError> {
        let fail = |e: io::Error| BackendError::Connect(address.to_string(), e);
        let tcp = timeout(connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| fail(io::ErrorKind::TimedOut.into()))?
            .map_err(fail)?;
        tcp.set_nodelay(true)?;
        let (peer, local) = (tcp.peer_addr()?, tcp.local_addr()?);
        let timeouts = (connect_timeout, reply_timeout);
        Backend::over(Box::new(tcp), (peer, local), tls, proxy_header, timeouts).await
    }

    /// The greeting, TLS and all, over a connection already open to a backend whose control
    /// address is `addrs.0` (where its data connections go) from `addrs.1`; `timeouts` =
    /// (handshake, reply).
    pub async fn over(
        io: Box<dyn Io>,
        addrs: (SocketAddr, SocketAddr),
        tls: Option<BackendSession>,
        proxy_header: Option<&[u8]>,
        timeouts: (Duration, Duration),
    ) -> Result<(Backend, Vec<Reply>), BackendError> {
        let (connect_timeout, reply_timeout) = timeouts;
        let conn = ControlConn::new(
            io,
            Replies::default(),
            reply_timeout,
            "backend connection lost",
        );
        let mut backend = Backend {
            peer: addrs.0,
            local: addrs.1,
            conn,
            tls,
            style: PassiveStyle::Epsv,
            reply_timeout,
        };
        // The PROXY header goes first, before TLS or anything else, within the same limit
        // as a command.
        if let Some(header) = proxy_header {
            backend.send(header).await?;
        }
        let implicit = backend.tls.as_ref().map(|t| t.implicit);
        if implicit == Some(true) {
            backend.upgrade(connect_timeout).await?;
        }
        let mut greeting = Vec::new();
        loop {
            let reply = backend.expect_reply().await?;
            let done = !reply.is_preliminary();
            greeting.push(reply);
            if done {
                break;
            }
        }
        let ready = greeting.last().is_some_and(Reply::is_success);
        if implicit == Some(false) && ready {
            backend.send(b"AUTH TLS\r\n").await?;
            backend.expect(234, "AUTH TLS").await?;
            backend.upgrade(connect_timeout).await?;
        }
        Ok((backend, greeting))
    }

    async fn upgrade(&mut self, limit: Duration) -> Result<(), BackendError> {
        let Some(tls) = self.tls.clone() else {
            return Err(BackendError::Handshake(io::Error::other(
                "no TLS configured",
            )));
        };
        let handshake = Handshake::Connect(tls.connector, tls.server_name);
        self.conn
            .upgrade(handshake, limit)
            .await
            .map_err(|e| match e {
                UpgradeError::NotPlain => {
                    BackendError::Handshake(io::Error::other("not a plain connection"))
                }
                UpgradeError::TimedOut => BackendError::Handshake(io::ErrorKind::TimedOut.into()),
                UpgradeError::Handshake(e) => BackendError::Handshake(e),
            })
    }

    /// After login on a TLS backend: `PBSZ 0` and `PROT P`, so the backend's data connections
    /// are encrypted too (RFC 4217 §9). Servers such as vsftpd want these after login.
    pub async fn protect_data(&mut self) -> Result<(), BackendError> {
        if !self.tls.as_ref().is_some_and(|t| t.protect_data) {
            return Ok(());
        }
        self.send(b"PBSZ 0\r\n").await?;
        self.expect(200, "PBSZ 0").await?;
        self.send(b"PROT P\r\n").await?;
        self.expect(200, "PROT P").await?;
        Ok(())
    }

    /// The TLS settings for this session's data connections to the backend, when protected.
    pub fn data_tls(&self) -> Option<BackendSession> {
        self.tls.clone().filter(|t| t.protect_data)
    }

    async fn expect(&mut self, code: u16, what: &'static str) -> Result<(), BackendError> {
        let reply = self.expect_reply().await?;
        if reply.code() == code {
            return Ok(());
        }
        Err(BackendError::Refused {
            what,
            reply: reply.text(),
        })
    }

    /// Whether this backend greets as ProFTPD and encrypts its data connections under TLS 1.3
    /// with the gateway: ProFTPD 1.3.8 then refuses a session's third data connection and
    /// every third after it (docs/configuration.md, "FTPS backends": cap it at TLS 1.2). A
    /// server that hides its name in the greeting (`ServerIdent off`) is not recognised.
    pub fn proftpd_on_tls13(&self, greeting: &[Reply]) -> bool {
        let tls13 = self
            .conn
            .tls_info()
            .is_some_and(|(version, _)| version == rustls::ProtocolVersion::TLSv1_3);
        let protected = self.tls.as_ref().is_some_and(|t| t.protect_data);
        tls13 && protected && greeting.iter().any(|g| g.text().contains("ProFTPD"))
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The SHA-256 of the certificate a TLS backend presented, as `pin_sha256` wants it.
    pub fn certificate_pin(&self) -> Option<String> {
        Some(crate::tls::backend::pin_of(self.conn.peer_certificate()?))
    }

    /// Writes a command, within the reply timeout: a backend that stops reading is as dead as
    /// one that stops answering.
    pub async fn send(&mut self, wire: &[u8]) -> Result<(), BackendError> {
        self.conn.send(wire).await.map_err(|e| match e {
            SendError::TimedOut => BackendError::Timeout,
            SendError::Io(e) => BackendError::Io(e),
        })
    }

    /// The next complete reply, however the bytes were split. Cancel-safe.
    pub async fn read_reply(&mut self) -> Result<Reply, BackendError> {
        match self.conn.read().await? {
            Some(Ok(reply)) => Ok(reply),
            Some(Err(BadReply::Line(e))) => Err(BackendError::Line(e)),
            Some(Err(BadReply::Reply(e))) => Err(BackendError::Reply(e)),
            None => Err(BackendError::Closed),
        }
    }

    /// [`Self::read_reply`] bounded by the reply timeout.
    pub async fn expect_reply(&mut self) -> Result<Reply, BackendError> {
        timeout(self.reply_timeout, self.read_reply())
            .await
            .map_err(|_| BackendError::Timeout)?
    }

    /// Asks the backend for a passive data port. `Ok(Err(_))` is no port, the connection
    /// still in step: the session words it for the client.
    pub async fn open_passive(&mut self) -> Result<Result<u16, NoDataPort>, BackendError> {
        if self.style == PassiveStyle::Epsv {
            self.send(b"EPSV\r\n").await?;
            let reply = self.expect_reply().await?;
            if reply.code() == 229 {
                return Ok(addr::parse_epsv(&reply.text()).map_err(NoDataPort::Unusable));
            }
            if !matches!(reply.code(), 500 | 501 | 502 | 504) {
                return Ok(Err(NoDataPort::Refused(reply)));
            }
            debug!("backend has no EPSV; using PASV from now on");
            self.style = PassiveStyle::Pasv;
        }
        self.send(b"PASV\r\n").await?;
        let reply = self.expect_reply().await?;
        if reply.code() != 227 {
            return Ok(Err(NoDataPort::Refused(reply)));
        }
        // Only the port is used: the address in the reply is the backend's idea of itself and
        // must never decide where the gateway connects (docs/ARCHITECTURE.md, "A transfer").
        match addr::parse_pasv(&reply.text()) {
            Ok(a) => {
                if a.ip() != &self.peer.ip() {
                    debug!(advertised = %a.ip(), "backend PASV address ignored; using its control address");
                }
                Ok(Ok(a.port()))
            }
            Err(e) => Ok(Err(NoDataPort::Unusable(e))),
        }
    }

    /// Active mode toward the backend: listens on the local address of the control connection
    /// and tells the backend with PORT (IPv4) or EPRT (IPv6). `Ok(Err(reply))` is a refusal.
    pub async fn listen_active(&mut self) -> Result<Result<TcpListener, Reply>, BackendError> {
        let listener = TcpListener::bind(SocketAddr::new(self.local.ip(), 0)).await?;
        let command = format!("{}\r\n", addr::format_active(listener.local_addr()?));
        self.send(command.as_bytes()).await?;
        let reply = self.expect_reply().await?;
        if reply.code() != 200 {
            return Ok(Err(reply));
        }
        Ok(Ok(listener))
    }

    /// Connects to the backend's data `port` at the backend's control address, from the local
    /// address of the control connection (servers check that both come from one peer).
    ///
    /// The socket closes with RST (zero linger) whenever it is dropped: the bridge reads the
    /// backend's end of file before it lets go of a successful transfer, so only a failed or
    /// cancelled one ever resets, and the backend never mistakes a cut upload for a whole one.
    pub async fn connect_data(&self, port: u16, limit: Duration) -> io::Result<TcpStream> {
        let target = SocketAddr::new(self.peer.ip(), port);
        let socket = match target {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(self.local.ip(), 0))?;
        let tcp = timeout(limit, socket.connect(target))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "data connect timed out"))??;
        tcp.set_zero_linger()?;
        Ok(tcp)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;

    /// A backend scripted on a duplex pipe: each command it reads is answered with the next
    /// reply of `script` (the greeting goes first, unasked).
    fn scripted(script: &'static [(&'static str, &'static str)]) -> Box<dyn Io> {
        let (ours, theirs) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let (read, mut write) = tokio::io::split(theirs);
            let mut lines = BufReader::new(read).lines();
            write.write_all(b"220 ready\r\n").await.unwrap();
            for (expected, reply) in script {
                let line = lines.next_line().await.unwrap().unwrap();
                assert_eq!(line, *expected);
                write.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        Box::new(ours)
    }

    /// EPSV's port; a 229 that names none is no port, the connection still in step; EPSV
    /// refused as unknown falls back to PASV for good, whose address is ignored; a refusal is
    /// the backend's own reply.
    #[tokio::test]
    async fn passive_ports_unusable_replies_and_refusals_are_told_apart() {
        let io = scripted(&[
            ("EPSV", "229 Entering Extended Passive Mode (|||2121|)\r\n"),
            ("EPSV", "229 Entering Extended Passive Mode (no port)\r\n"),
            ("EPSV", "502 EPSV not implemented\r\n"),
            ("PASV", "227 Entering Passive Mode (10,0,0,9,8,1)\r\n"),
            ("PASV", "227 Entering Passive Mode (10,0,0,9)\r\n"),
            ("PASV", "421 Too many connections\r\n"),
        ]);
        let addrs = (
            "127.0.0.1:21".parse().unwrap(),
            "127.0.0.1:5000".parse().unwrap(),
        );
        let timeouts = (Duration::from_secs(5), Duration::from_secs(5));
        let (mut backend, greeting) = Backend::over(io, addrs, None, None, timeouts)
            .await
            .unwrap();
        assert_eq!(greeting.last().map(Reply::code), Some(220));
        assert_eq!(backend.open_passive().await.unwrap().unwrap(), 2121);
        let unusable = backend.open_passive().await.unwrap();
        assert!(
            matches!(unusable, Err(NoDataPort::Unusable(_))),
            "{unusable:?}"
        );
        assert_eq!(backend.open_passive().await.unwrap().unwrap(), 2049);
        let unusable = backend.open_passive().await.unwrap();
        assert!(
            matches!(unusable, Err(NoDataPort::Unusable(_))),
            "{unusable:?}"
        );
        match backend.open_passive().await.unwrap() {
            Err(NoDataPort::Refused(reply)) => assert_eq!(reply.code(), 421),
            other => panic!("{other:?}"),
        }
    }
}
