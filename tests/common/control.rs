//! Speaking FTP by hand on a control connection, for tests that drive the protocol line by
//! line, and curl as every curl of the tests starts.

use super::*;

use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The next whole reply on `io` (multi-line ones too, RFC 959 §4.2), or what came before the
/// connection closed or `limit` passed on a line.
pub async fn read_reply<R: AsyncBufRead + Unpin>(io: &mut R, limit: Duration) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        match tokio::time::timeout(limit, io.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => all.push_str(&line),
            _ => return all,
        }
        let b = line.as_bytes();
        if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ' {
            return all;
        }
    }
}

/// curl trusting the gateway's certificate, each run bounded by `max_secs`.
pub fn curl(gw: &TestGateway, max_secs: u32) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", &max_secs.to_string(), "--cacert"])
        .arg(&gw.ca);
    cmd
}

/// A rustls client trusting the gateway's certificate `ca`. Connections made with one config
/// share its in-memory session store, so a data connection made with the control connection's
/// config resumes its TLS session (what `data_session_reuse = "require"` wants), and one made
/// with a fresh config offers none.
pub fn rustls_client(ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("cert")).expect("add");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS connection to the gateway's data port `port` on 127.0.0.1, made with `config`.
pub async fn tls_data(
    config: &Arc<rustls::ClientConfig>,
    port: u16,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(name, tcp)
        .await
}

/// An explicit FTPS session driven line by line with rustls: logged in as the test user, with
/// PROT P and TYPE I, for tests that must act between a command and its data connection.
pub struct HandFtps {
    ctl: tokio::io::BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    /// The control connection's config: data connections made with it resume its session.
    pub config: Arc<rustls::ClientConfig>,
}

impl HandFtps {
    /// Logs in to the gateway's explicit listener `addr`, whose certificate is `ca`.
    pub async fn login(addr: SocketAddr, ca: &Path) -> HandFtps {
        let mut ftp = HandFtps::secured(addr, ca).await;
        for (line, code) in [
            (format!("USER {USER}"), "331"),
            (format!("PASS {PASSWORD}"), "230"),
            ("PBSZ 0".into(), "200"),
            ("PROT P".into(), "200"),
            ("TYPE I".into(), "200"),
        ] {
            let reply = ftp.cmd(&line).await;
            assert!(reply.starts_with(code), "{line}: {reply}");
        }
        ftp
    }

    /// Connects to the gateway's explicit listener `addr`, whose certificate is `ca`, and
    /// secures the control connection (AUTH TLS), logging in as nobody yet.
    pub async fn secured(addr: SocketAddr, ca: &Path) -> HandFtps {
        let config = rustls_client(ca);
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut plain = tokio::io::BufReader::new(tcp);
        let hello = read_reply(&mut plain, Duration::from_secs(30)).await;
        assert!(hello.starts_with("220"), "{hello}");
        send_line(plain.get_mut(), "AUTH TLS").await;
        let auth = read_reply(&mut plain, Duration::from_secs(30)).await;
        assert!(auth.starts_with("234"), "{auth}");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&config))
            .connect(name, plain.into_inner())
            .await
            .expect("control TLS");
        HandFtps {
            ctl: tokio::io::BufReader::new(tls),
            config,
        }
    }

    /// Sends `line` and returns its whole reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        send_line(self.ctl.get_mut(), line).await;
        self.reply().await
    }

    /// The next reply (a transfer's end after its 150, say).
    pub async fn reply(&mut self) -> String {
        read_reply(&mut self.ctl, Duration::from_secs(90)).await
    }

    /// EPSV: the data port the gateway leased.
    pub async fn epsv(&mut self) -> u16 {
        let reply = self.cmd("EPSV").await;
        reply
            .split("|||")
            .nth(1)
            .and_then(|p| p.split('|').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{reply}"))
    }

    /// A data connection to `port` that resumes this session's TLS session.
    pub async fn data(&self, port: u16) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let data = tls_data(&self.config, port).await.expect("data connection");
        assert_eq!(
            data.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "the data connection resumes the control connection's session"
        );
        data
    }
}

async fn send_line<W: tokio::io::AsyncWrite + Unpin>(io: &mut W, line: &str) {
    use tokio::io::AsyncWriteExt;
    io.write_all(format!("{line}\r\n").as_bytes())
        .await
        .expect("send");
    io.flush().await.expect("flush");
}

/// curl from `source` listing the root as `user`:`password` over explicit FTPS, with its
/// trace (`-v`) on stderr.
pub fn curl_from(gw: &TestGateway, source: &str, login: &str, extra: &[&str]) -> Output {
    curl(gw, 30)
        .args(["-v", "--ssl-reqd", "--interface", source, "--user", login])
        .args(extra)
        .arg(format!("ftp://127.0.0.1:{}/", gw.explicit.port()))
        .output()
        .expect("curl")
}

/// What a command wrote on stderr (curl's `-v` trace).
pub fn trace(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
