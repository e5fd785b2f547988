//! Speaking FTP by hand: [`Control`], the one control connection every test and the benchmark
//! drive line by line (over TCP, TLS or a duplex pipe), and rustls clients that trust a test's
//! certificate.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::pki::pem_certs;

/// What the clients that report their failures, rather than panic, return (the benchmark's:
/// a peer's failure is a result there).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a reply line may take, unless [`Control::with_limit`] says otherwise.
pub const REPLY_LIMIT: Duration = Duration::from_secs(30);

/// One FTP control connection: commands out, whole replies (multi-line ones too, RFC 959 §4.2)
/// back, `AUTH TLS` to secure it.
///
/// Every command is flushed before its reply is awaited: a client that only writes leaves the
/// command in rustls' buffer whenever the socket is momentarily full, and waits forever for a
/// reply to a command nobody sent (suppaftp does).
pub struct Control<S> {
    io: BufReader<S>,
    limit: Duration,
}

impl Control<TcpStream> {
    /// A control connection to `addr`; its greeting is the first [`Control::reply`].
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        Ok(Control::new(TcpStream::connect(addr).await?))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Control<S> {
    pub fn new(io: S) -> Self {
        Control {
            io: BufReader::new(io),
            limit: REPLY_LIMIT,
        }
    }

    /// The same connection, waiting up to `limit` for each reply line.
    pub fn with_limit(mut self, limit: Duration) -> Self {
        self.limit = limit;
        self
    }

    pub fn get_ref(&self) -> &S {
        self.io.get_ref()
    }

    /// The transport, for what is no longer FTP (a flood of unread commands, a TLS upgrade of
    /// the caller's own). Nothing may have been read past the last reply.
    pub fn into_inner(self) -> S {
        assert!(
            self.io.buffer().is_empty(),
            "bytes after the last reply: {:?}",
            String::from_utf8_lossy(self.io.buffer())
        );
        self.io.into_inner()
    }

    /// The next whole reply, or what came of it before the connection closed, a line took
    /// longer than the limit or was not UTF-8 (nothing at all, say, from a connection the
    /// gateway cut).
    pub async fn reply(&mut self) -> String {
        let mut all = String::new();
        let _ = self.read_reply(&mut all).await;
        all
    }

    /// The next whole reply; an error when the connection closes, or a line takes longer than
    /// the limit, before it is whole.
    pub async fn try_reply(&mut self) -> io::Result<String> {
        let mut all = String::new();
        self.read_reply(&mut all).await?;
        Ok(all)
    }

    /// Reads one reply into `all`: a line, or from `NNN-` to the line that starts `NNN `.
    async fn read_reply(&mut self, all: &mut String) -> io::Result<()> {
        let mut end: Option<String> = None;
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(self.limit, self.io.read_line(&mut line)).await;
            let n = read.map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no reply line within {:?}", self.limit),
                )
            })??;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "control connection closed",
                ));
            }
            all.push_str(&line);
            match &end {
                Some(end) if line.starts_with(end.as_str()) => return Ok(()),
                Some(_) => {}
                None => match (line.get(..3), line.as_bytes().get(3)) {
                    (Some(code), Some(b'-')) if code.bytes().all(|b| b.is_ascii_digit()) => {
                        end = Some(format!("{code} "));
                    }
                    _ => return Ok(()),
                },
            }
        }
    }

    /// Sends `line` and its CRLF, flushed.
    pub async fn try_send(&mut self, line: &str) -> io::Result<()> {
        let io = self.io.get_mut();
        io.write_all(format!("{line}\r\n").as_bytes()).await?;
        io.flush().await
    }

    pub async fn send(&mut self, line: &str) {
        self.try_send(line).await.expect("send");
    }

    /// Sends `line` and returns its whole reply (see [`Control::reply`]).
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(line).await;
        self.reply().await
    }

    /// The next reply if its code is `want`, else an error naming what came instead.
    pub async fn expect_reply(&mut self, want: u16) -> Result<String, BoxError> {
        let reply = self.try_reply().await?;
        if !reply.starts_with(&want.to_string()) {
            return Err(format!("wanted {want}, got {}", reply.trim_end()).into());
        }
        Ok(reply)
    }

    /// Sends `line`; its reply if its code is `want`, else an error naming what came instead.
    pub async fn expect(&mut self, line: &str, want: u16) -> Result<String, BoxError> {
        self.try_send(line).await?;
        self.expect_reply(want).await
    }

    /// EPSV: the port of the 229 reply, or the reply that came instead.
    pub async fn epsv(&mut self) -> Result<u16, String> {
        let reply = self.cmd("EPSV").await;
        epsv_port(&reply).ok_or(reply)
    }

    /// PASV: the address of the 227 reply, or the reply that came instead.
    pub async fn pasv(&mut self) -> Result<SocketAddr, String> {
        let reply = self.cmd("PASV").await;
        pasv_address(&reply).ok_or(reply)
    }

    /// `AUTH TLS` (234), then the handshake with `tls` for `name`: the same connection,
    /// secured, or an error naming the reply or the handshake's failure.
    pub async fn auth_tls(
        mut self,
        tls: &TlsConnector,
        name: ServerName<'static>,
    ) -> Result<Control<TlsStream<S>>, BoxError> {
        self.expect("AUTH TLS", 234).await?;
        // The server says nothing more before the client's hello; were it to, those bytes
        // would be lost to the handshake.
        if !self.io.buffer().is_empty() {
            return Err("bytes after 234, before the handshake".into());
        }
        let limit = self.limit;
        let tls = tls.connect(name, self.io.into_inner()).await?;
        Ok(Control::new(tls).with_limit(limit))
    }
}

/// The port of a 229 reply: `229 Entering Extended Passive Mode (|||port|)`.
pub fn epsv_port(reply: &str) -> Option<u16> {
    if !reply.starts_with("229") {
        return None;
    }
    reply.split('|').nth(3)?.parse().ok()
}

/// The address of a 227 reply: `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)`.
pub fn pasv_address(reply: &str) -> Option<SocketAddr> {
    if !reply.starts_with("227") {
        return None;
    }
    let inner = reply.get(reply.find('(')? + 1..reply.rfind(')')?)?;
    let n: Vec<u8> = inner
        .split(',')
        .map(|v| v.trim().parse().ok())
        .collect::<Option<_>>()?;
    let [a, b, c, d, hi, lo] = n[..] else {
        return None;
    };
    let ip = Ipv4Addr::new(a, b, c, d);
    Some(SocketAddr::new(ip.into(), u16::from_be_bytes([hi, lo])))
}

/// The name the tests' gateways have a certificate for.
pub fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("name")
}

/// 127.0.0.1 as a server name, for certificates made for the address.
pub fn loopback() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::from(Ipv4Addr::LOCALHOST).into())
}

/// A rustls client trusting `roots` (aws-lc-rs, the safe default versions, no client
/// certificate). Connections made with one config share its in-memory session store, so a
/// data connection made with the control connection's config resumes its TLS session (what
/// `data_session_reuse = "require"` wants), and one made with a fresh config offers none.
pub fn client_config(
    roots: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, BoxError> {
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        store.add(c.clone())?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// [`client_config`] trusting the certificates of the PEM file `ca` (a gateway's).
pub fn rustls_client(ca: &Path) -> Arc<rustls::ClientConfig> {
    client_config(&pem_certs(ca)).expect("client config")
}

/// A TLS connection to the gateway's data port `port` on 127.0.0.1, made with `config`.
pub async fn tls_data(
    config: &Arc<rustls::ClientConfig>,
    port: u16,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
    TlsConnector::from(Arc::clone(config))
        .connect(localhost(), tcp)
        .await
}
