//! Data connections as a client makes them: dialled (passive) or awaited (active), then TLS
//! and a transfer, with every failure sorted into what it tells about the network.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use super::client::Ctl;

/// The most a probe reads from one data connection: a listing or a small file.
const MAX_DATA: u64 = 2 * 1024 * 1024;

/// Why a connection failed, in the terms that say what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DialError {
    /// Nothing listens there: the port is not forwarded, or the server is not on it.
    Refused,
    /// No answer at all: a firewall drops it.
    TimedOut,
    /// Something answered with a reset mid-way.
    Reset,
    /// No route to the address.
    Unreachable,
    Other(String),
}

impl DialError {
    fn of(e: &io::Error) -> DialError {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => DialError::Refused,
            io::ErrorKind::TimedOut => DialError::TimedOut,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => DialError::Reset,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                DialError::Unreachable
            }
            _ => DialError::Other(e.to_string()),
        }
    }

    /// What to do about it, for a data connection to `to`.
    pub(super) fn fix(&self, to: SocketAddr) -> String {
        match self {
            DialError::Refused => format!(
                "nothing listens on {to}: forward the passive range to the server's host (the same ports; `ftpsgate doctor` prints the router's rules), or the server is not listening there"
            ),
            DialError::TimedOut => format!(
                "a firewall drops connections to {to}: open the passive range on every firewall on the way"
            ),
            DialError::Reset => format!(
                "the connection to {to} was reset: a firewall rejecting it, or a server refusing this client's data connection"
            ),
            DialError::Unreachable => format!(
                "no route to {}: the address is wrong or cannot be reached from here",
                to.ip()
            ),
            DialError::Other(_) => format!("check the path to {to}"),
        }
    }
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DialError::Refused => f.write_str("refused"),
            DialError::TimedOut => f.write_str("timed out"),
            DialError::Reset => f.write_str("reset"),
            DialError::Unreachable => f.write_str("unreachable"),
            DialError::Other(e) => f.write_str(e),
        }
    }
}

/// A TCP connection to `to` within `limit`, and how long it took.
pub(super) async fn dial(
    to: SocketAddr,
    limit: Duration,
) -> Result<(TcpStream, Duration), DialError> {
    let started = Instant::now();
    match timeout(limit, TcpStream::connect(to)).await {
        Err(_) => Err(DialError::TimedOut),
        Ok(Err(e)) => Err(DialError::of(&e)),
        Ok(Ok(tcp)) => Ok((tcp, started.elapsed())),
    }
}

/// What came over a data connection.
pub(super) struct Received {
    pub bytes: Vec<u8>,
    /// The TLS handshake resumed the control connection's session.
    pub resumed: bool,
}

/// TLS for a data connection: `Some((config, name))` when PROT P is in force.
pub(super) type DataTls<'a> = Option<(&'a Arc<ClientConfig>, &'a ServerName<'static>)>;

/// Sends `command` (LIST, NLST, RETR) over `ctl` with the data connection `tcp` already open
/// (passive), and reads it to its end.
pub(super) async fn passive_transfer(
    ctl: &mut Ctl,
    tcp: TcpStream,
    command: &str,
    tls: DataTls<'_>,
    limit: Duration,
) -> Result<Received, String> {
    let mark = ctl.cmd(command).await.map_err(|e| e.to_string())?;
    if !mark.is_preliminary() {
        return Err(format!("{command} answered {}", said(&mark)));
    }
    finish(ctl, tcp, tls, limit).await
}

/// Sends `command` after PORT/EPRT and waits for the server to connect to `listener`.
pub(super) async fn active_transfer(
    ctl: &mut Ctl,
    listener: &TcpListener,
    command: &str,
    tls: DataTls<'_>,
    limit: Duration,
) -> Result<(Received, SocketAddr), String> {
    ctl.send(command).await.map_err(|e| e.to_string())?;
    let (tcp, from) = match timeout(limit, listener.accept()).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("no connection".into()),
    };
    let mark = ctl.reply().await.map_err(|e| e.to_string())?;
    if !mark.is_preliminary() {
        return Err(format!("{command} answered {}", said(&mark)));
    }
    Ok((finish(ctl, tcp, tls, limit).await?, from))
}

/// After the 1xx mark: TLS (RFC 4217: the FTP client is the TLS client whichever side dialled),
/// the bytes to the end, and the final reply.
async fn finish(
    ctl: &mut Ctl,
    tcp: TcpStream,
    tls: DataTls<'_>,
    limit: Duration,
) -> Result<Received, String> {
    let mut bytes = Vec::new();
    let resumed = match tls {
        None => {
            read_all(tcp, &mut bytes, limit).await?;
            false
        }
        Some((config, name)) => {
            let handshake = TlsConnector::from(Arc::clone(config)).connect(name.clone(), tcp);
            let stream = match timeout(limit, handshake).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let after = ctl.reply().await.map(|r| said(&r)).unwrap_or_default();
                    return Err(format!("TLS handshake failed ({e}), then {after}"));
                }
                Err(_) => return Err("TLS handshake timed out".into()),
            };
            let resumed = stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
            read_all(stream, &mut bytes, limit).await?;
            resumed
        }
    };
    let done = ctl.reply().await.map_err(|e| e.to_string())?;
    if !done.is_success() {
        return Err(format!("the transfer ended with {}", said(&done)));
    }
    Ok(Received { bytes, resumed })
}

async fn read_all<S: tokio::io::AsyncRead + Unpin>(
    stream: S,
    into: &mut Vec<u8>,
    limit: Duration,
) -> Result<(), String> {
    match timeout(limit, stream.take(MAX_DATA).read_to_end(into)).await {
        Ok(Ok(_)) => Ok(()),
        // A server that closes without TLS close_notify has still sent everything.
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
        Ok(Err(e)) => Err(format!("data connection: {e}")),
        Err(_) => Err("data connection stalled".into()),
    }
}

/// A reply on one line, code and text, for a report line.
pub(super) fn said(reply: &crate::ftp::Reply) -> String {
    let text = reply.text();
    format!(
        "{} {}",
        reply.code(),
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}
