//! A minimal, fast FTP/FTPS client for the benchmarks and the soak: explicit TLS, EPSV or PASV,
//! RETR/STOR with large buffers, TLS session reuse on data connections (one rustls config, one
//! server name), and nothing else. curl and Python would be the bottleneck at the speeds
//! measured here.
//!
//! Every command is flushed before its reply is awaited. A client that only writes (suppaftp
//! does) leaves the command in rustls' buffer whenever the socket is momentarily full, and the
//! session waits forever for a reply to a command nobody sent.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connection parameters.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub user: String,
    pub password: String,
    /// `Some`: explicit FTPS with PROT P. Each session clones it with a session store of its
    /// own: a store shared by concurrent sessions would offer one session's ticket on another's
    /// data connection, which a strict server (and ftpsgate) rightly refuses.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

pub fn client_config(
    ca: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c.clone())?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Session {
    control: BufReader<Box<dyn Io>>,
    target: Target,
    tls: Option<TlsConnector>,
    passive: Passive,
}

/// How the data connection is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passive {
    /// `EPSV`: a port; the host is the control connection's.
    Extended,
    /// `PASV`: the address and port from the 227 reply.
    Classic,
}

const DATA_BUF: usize = 256 * 1024;

impl Session {
    /// Connects, secures (if TLS) and logs in.
    pub async fn open(target: &Target) -> Result<Session, BoxError> {
        let mut tcp = TcpStream::connect(target.addr).await?;
        tcp.set_nodelay(true)?;
        raw_reply(&mut tcp, 220).await?;
        let tls = target.tls.as_ref().map(|base| {
            let mut config = (**base).clone();
            config.resumption = rustls::client::Resumption::in_memory_sessions(8);
            TlsConnector::from(Arc::new(config))
        });
        let control: Box<dyn Io> = match &tls {
            None => Box::new(tcp),
            Some(tls) => {
                tcp.write_all(b"AUTH TLS\r\n").await?;
                raw_reply(&mut tcp, 234).await?;
                Box::new(tls.connect(server_name(), tcp).await?)
            }
        };
        let mut s = Session {
            control: BufReader::new(control),
            target: target.clone(),
            tls,
            passive: Passive::Extended,
        };
        s.command(&format!("USER {}", target.user), 331).await?;
        s.command(&format!("PASS {}", target.password), 230).await?;
        if target.tls.is_some() {
            s.command("PBSZ 0", 200).await?;
            s.command("PROT P", 200).await?;
        }
        s.command("TYPE I", 200).await?;
        Ok(s)
    }

    /// Sends a command and returns the reply's first line, checking its code.
    pub async fn command(&mut self, line: &str, want: u16) -> Result<String, BoxError> {
        let inner = self.control.get_mut();
        inner.write_all(line.as_bytes()).await?;
        inner.write_all(b"\r\n").await?;
        inner.flush().await?;
        self.expect(want).await
    }

    async fn expect(&mut self, want: u16) -> Result<String, BoxError> {
        let reply = self.reply().await?;
        if !reply.starts_with(&want.to_string()) {
            return Err(format!("wanted {want}, got {reply}").into());
        }
        Ok(reply)
    }

    /// One whole reply (multi-line replies are read to their end); returns the last line.
    async fn reply(&mut self) -> Result<String, BoxError> {
        let mut line = String::new();
        if self.control.read_line(&mut line).await? == 0 {
            return Err("control connection closed".into());
        }
        if line.as_bytes().get(3) == Some(&b'-') {
            let end = format!("{} ", &line[..3]);
            loop {
                let mut next = String::new();
                if self.control.read_line(&mut next).await? == 0 {
                    return Err("control connection closed".into());
                }
                if next.starts_with(&end) {
                    return Ok(next);
                }
            }
        }
        Ok(line)
    }

    /// The passive command the next transfers use.
    pub fn set_passive(&mut self, passive: Passive) {
        self.passive = passive;
    }

    async fn data(&mut self) -> Result<Box<dyn Io>, BoxError> {
        let to = match self.passive {
            Passive::Extended => {
                let reply = self.command("EPSV", 229).await?;
                let port = reply
                    .split('|')
                    .nth(3)
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("bad 229: {reply}"))?;
                SocketAddr::new(self.target.addr.ip(), port)
            }
            Passive::Classic => {
                let reply = self.command("PASV", 227).await?;
                pasv_address(&reply).ok_or_else(|| format!("bad 227: {reply}"))?
            }
        };
        let tcp = TcpStream::connect(to).await?;
        // As curl does: no Nagle, so the last flight of a TLS handshake never waits for the
        // server's delayed ACK of the one before.
        tcp.set_nodelay(true)?;
        // rustls reads 4 KiB per call on its own; a large buffer under it saves the syscalls.
        Ok(Box::new(BufReader::with_capacity(DATA_BUF, tcp)))
    }

    /// Downloads `name`, discarding the bytes; returns how many arrived.
    pub async fn download(&mut self, name: &str) -> Result<u64, BoxError> {
        self.download_with(name, |_| {}).await
    }

    /// Downloads `name` whole.
    #[allow(dead_code)] // the soak's; the benchmark discards what it downloads
    pub async fn download_bytes(&mut self, name: &str) -> Result<Vec<u8>, BoxError> {
        let mut all = Vec::new();
        self.download_with(name, |b| all.extend_from_slice(b))
            .await?;
        Ok(all)
    }

    /// Downloads `name`, handing each chunk to `sink`; returns how many bytes arrived.
    async fn download_with(
        &mut self,
        name: &str,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<u64, BoxError> {
        let tcp = self.data().await?;
        self.command(&format!("RETR {name}"), 150).await?;
        let mut data = secure(self.tls.clone(), tcp).await?;
        let mut buf = vec![0u8; DATA_BUF];
        let mut total = 0u64;
        loop {
            match data.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    sink(&buf[..n]);
                    total += n as u64;
                }
                // Servers that close without close_notify after a download.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e.into()),
            }
        }
        drop(data);
        self.expect(226).await?;
        Ok(total)
    }

    /// Uploads `size` bytes (a fixed pattern) as `name`.
    pub async fn upload(&mut self, name: &str, size: u64) -> Result<(), BoxError> {
        let buf = vec![0x5au8; DATA_BUF];
        let whole = usize::try_from(size / DATA_BUF as u64)?;
        let rest = (size % DATA_BUF as u64) as usize;
        let chunks = std::iter::repeat_n(&buf[..], whole).chain([&buf[..rest]]);
        self.upload_from(name, chunks).await
    }

    /// Uploads `data` as `name`.
    #[allow(dead_code)] // the soak's; the benchmark uploads a pattern
    pub async fn upload_bytes(&mut self, name: &str, data: &[u8]) -> Result<(), BoxError> {
        self.upload_from(name, data.chunks(DATA_BUF)).await
    }

    /// Uploads the chunks, in order, as `name`.
    async fn upload_from<'a>(
        &mut self,
        name: &str,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), BoxError> {
        let tcp = self.data().await?;
        self.command(&format!("STOR {name}"), 150).await?;
        let mut data = secure(self.tls.clone(), tcp).await?;
        for chunk in chunks {
            data.write_all(chunk).await?;
        }
        data.shutdown().await?;
        // Read to the server's end: its late TLS tickets, and proof it has every byte.
        let mut sink = [0u8; 4096];
        while let Ok(n) = data.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
        drop(data);
        self.expect(226).await?;
        Ok(())
    }

    /// LIST into nothing (the session-rate benchmark's transfer).
    pub async fn list(&mut self) -> Result<(), BoxError> {
        let tcp = self.data().await?;
        self.command("LIST", 150).await?;
        let mut data = secure(self.tls.clone(), tcp).await?;
        let mut sink = Vec::new();
        let _ = data.read_to_end(&mut sink).await;
        drop(data);
        self.expect(226).await?;
        Ok(())
    }

    /// Round-trip time of one NOOP.
    pub async fn noop(&mut self) -> Result<Duration, BoxError> {
        let t = Instant::now();
        self.command("NOOP", 200).await?;
        Ok(t.elapsed())
    }

    pub async fn quit(mut self) -> Result<(), BoxError> {
        self.command("QUIT", 221).await?;
        Ok(())
    }
}

/// TLS on a data connection (same connector and name as the control connection: resumption).
async fn secure(tls: Option<TlsConnector>, tcp: Box<dyn Io>) -> Result<Box<dyn Io>, BoxError> {
    match tls {
        None => Ok(tcp),
        Some(tls) => Ok(Box::new(tls.connect(server_name(), tcp).await?)),
    }
}

/// The address in a 227 reply: `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)`.
fn pasv_address(reply: &str) -> Option<SocketAddr> {
    let inner = reply.get(reply.find('(')? + 1..reply.rfind(')')?)?;
    let n: Vec<u8> = inner
        .split(',')
        .map(|v| v.trim().parse().ok())
        .collect::<Option<_>>()?;
    let [a, b, c, d, hi, lo] = n[..] else {
        return None;
    };
    let ip = std::net::Ipv4Addr::new(a, b, c, d);
    Some(SocketAddr::new(ip.into(), u16::from_be_bytes([hi, lo])))
}

fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
}

/// Reads one reply byte by byte, so nothing after it is consumed before the TLS upgrade.
async fn raw_reply(tcp: &mut TcpStream, want: u16) -> Result<(), BoxError> {
    loop {
        let mut line = Vec::new();
        while !line.ends_with(b"\n") {
            let mut byte = [0u8; 1];
            if tcp.read(&mut byte).await? == 0 {
                return Err("control connection closed".into());
            }
            line.push(byte[0]);
        }
        if line.get(3) == Some(&b'-') {
            continue;
        }
        let code = String::from_utf8_lossy(&line[..3.min(line.len())]).into_owned();
        if code != want.to_string() {
            return Err(format!("wanted {want}, got {}", String::from_utf8_lossy(&line)).into());
        }
        return Ok(());
    }
}
