//! A minimal, fast FTP/FTPS client for the benchmarks and the soak: explicit TLS, EPSV or PASV,
//! RETR/STOR with large buffers, TLS session reuse on data connections (one rustls config, one
//! server name), and nothing else, on the tests' own [`Control`] connection. curl and Python
//! would be the bottleneck at the speeds measured here. Failures are returned, not panics: a
//! peer's failure is one of the benchmark's results.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::control::{epsv_port, loopback, pasv_address, BoxError, Control};

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

/// A control or data connection, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Session {
    control: Control<Box<dyn Io>>,
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
        let tcp = TcpStream::connect(target.addr).await?;
        tcp.set_nodelay(true)?;
        // No limit on a reply: a transfer takes what it takes, and the soak bounds its steps.
        let mut plain = Control::new(tcp).with_limit(Duration::MAX);
        plain.expect_reply(220).await?;
        let tls = target.tls.as_ref().map(|base| {
            let mut config = (**base).clone();
            config.resumption = rustls::client::Resumption::in_memory_sessions(8);
            TlsConnector::from(Arc::new(config))
        });
        let control: Box<dyn Io> = match &tls {
            None => Box::new(plain.into_inner()),
            Some(tls) => Box::new(plain.auth_tls(tls, loopback()).await?.into_inner()),
        };
        let mut s = Session {
            control: Control::new(control).with_limit(Duration::MAX),
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

    /// Sends a command and returns its reply, checking its code.
    pub async fn command(&mut self, line: &str, want: u16) -> Result<String, BoxError> {
        self.control.expect(line, want).await
    }

    async fn expect(&mut self, want: u16) -> Result<String, BoxError> {
        self.control.expect_reply(want).await
    }

    /// The passive command the next transfers use.
    pub fn set_passive(&mut self, passive: Passive) {
        self.passive = passive;
    }

    async fn data(&mut self) -> Result<Box<dyn Io>, BoxError> {
        let to = match self.passive {
            Passive::Extended => {
                let reply = self.command("EPSV", 229).await?;
                let port = epsv_port(&reply).ok_or_else(|| format!("bad 229: {reply}"))?;
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
        Some(tls) => Ok(Box::new(tls.connect(loopback(), tcp).await?)),
    }
}
