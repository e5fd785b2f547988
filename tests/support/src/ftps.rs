//! An explicit FTPS session driven line by line with rustls ([`Ftps`]), for tests that must act
//! between a command and its data connection.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::control::{localhost, rustls_client, Control};
use crate::{PASSWORD, USER};

/// An explicit FTPS session: its [`Control`] connection, secured, and the rustls config whose
/// session store holds the control connection's TLS session, so data connections made with it
/// resume that session (what `data_session_reuse = "require"` wants).
pub struct Ftps {
    ctl: Control<TlsStream<TcpStream>>,
    /// The control connection's config: data connections made with it resume its session.
    pub config: Arc<rustls::ClientConfig>,
    /// The name the gateway's certificate is checked against, on control and data connections.
    name: ServerName<'static>,
}

impl Ftps {
    /// Logs in to the gateway's explicit listener `addr`, whose certificate is `ca` (see
    /// [`Ftps::log_in`]).
    pub async fn login(addr: SocketAddr, ca: &Path) -> Ftps {
        Ftps::secured(addr, ca).await.log_in().await
    }

    /// Connects to the gateway's explicit listener `addr`, whose certificate is `ca`, and
    /// secures the control connection (AUTH TLS), logging in as nobody yet. Once secured, a
    /// reply line may take 90 s (a transfer's end on a loaded machine).
    pub async fn secured(addr: SocketAddr, ca: &Path) -> Ftps {
        let mut plain = Control::connect(addr).await.expect("connect");
        let hello = plain.reply().await;
        assert!(hello.starts_with("220"), "{hello}");
        let Ftps { ctl, config, name } = Ftps::secure(plain, rustls_client(ca)).await;
        Ftps {
            ctl: ctl.with_limit(Duration::from_secs(90)),
            config,
            name,
        }
    }

    /// Secures `plain`, whose greeting has been read, with a TLS session made with `config`
    /// (its replies waited for as long as `plain`'s).
    pub async fn secure(plain: Control<TcpStream>, config: Arc<rustls::ClientConfig>) -> Ftps {
        Ftps::secure_as(plain, config, localhost()).await
    }

    /// [`Ftps::secure`] checking the gateway's certificate against `name` rather than
    /// `localhost` (a certificate an ACME server issued for a name of the test's).
    pub async fn secure_as(
        plain: Control<TcpStream>,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> Ftps {
        let tls = TlsConnector::from(Arc::clone(&config));
        let ctl = plain
            .auth_tls(&tls, name.clone())
            .await
            .expect("control TLS");
        Ftps { ctl, config, name }
    }

    /// Logs the session in as the test user, with PROT P and TYPE I.
    pub async fn log_in(mut self) -> Ftps {
        for (line, code) in [
            (format!("USER {USER}"), "331"),
            (format!("PASS {PASSWORD}"), "230"),
            ("PBSZ 0".into(), "200"),
            ("PROT P".into(), "200"),
            ("TYPE I".into(), "200"),
        ] {
            let reply = self.cmd(&line).await;
            assert!(reply.starts_with(code), "{line}: {reply}");
        }
        self
    }

    /// Sends `line` and returns its whole reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.ctl.cmd(line).await
    }

    /// Sends `line`, its reply left for [`Ftps::reply`].
    pub async fn send(&mut self, line: &str) {
        self.ctl.send(line).await;
    }

    /// The next reply (a transfer's end after its 150, say).
    pub async fn reply(&mut self) -> String {
        self.ctl.reply().await
    }

    /// EPSV: the data port the gateway leased.
    pub async fn epsv(&mut self) -> u16 {
        self.ctl
            .epsv()
            .await
            .unwrap_or_else(|reply| panic!("{reply}"))
    }

    /// PASV: the data port the gateway leased, or its refusal.
    pub async fn pasv(&mut self) -> Result<u16, String> {
        Ok(self.ctl.pasv().await?.port())
    }

    /// A data connection to `port` that resumes this session's TLS session.
    pub async fn data(&self, port: u16) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .expect("data connection");
        let data = self.secure_data(tcp).await;
        assert_eq!(
            data.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "the data connection resumes the control connection's session"
        );
        data
    }

    /// PASV, a TCP connection to its port (not yet secured) and then `command`.
    pub async fn open(&mut self, command: &str) -> Result<TcpStream, String> {
        let port = self.pasv().await?;
        let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .map_err(|e| e.to_string())?;
        self.send(command).await;
        Ok(tcp)
    }

    /// TLS on a data connection, with this session's config.
    pub async fn secure_data(&self, tcp: TcpStream) -> TlsStream<TcpStream> {
        TlsConnector::from(Arc::clone(&self.config))
            .connect(self.name.clone(), tcp)
            .await
            .expect("data TLS")
    }

    /// A whole RETR over PASV: its bytes, once 226 came.
    pub async fn retr(&mut self, name: &str) -> Vec<u8> {
        let tcp = self.open(&format!("RETR {name}")).await.expect("PASV");
        self.download(tcp, name).await
    }

    /// The rest of a RETR already sent, on its data connection `tcp`: TLS, 150, every byte,
    /// 226. `what` names the transfer in a failure.
    pub async fn download(&mut self, tcp: TcpStream, what: &str) -> Vec<u8> {
        let mut tls = self.secure_data(tcp).await;
        let first = self.reply().await;
        assert!(first.starts_with("150"), "{what}: {first}");
        let mut data = Vec::new();
        tls.read_to_end(&mut data).await.expect("read");
        let done = self.reply().await;
        assert!(done.starts_with("226"), "{what}: {done}");
        data
    }

    /// The secured control connection, for what is no longer FTP (a flood of unread commands).
    pub fn into_inner(self) -> TlsStream<TcpStream> {
        self.ctl.into_inner()
    }
}
