//! The front-door tests' harness: the real binary with a config of the test's making
//! ([`Gate`]), raw control connections ([`Ctl`]), logged-in TLS sessions ([`Session`]), and
//! the hostile peers' tools (flooding, connecting from a chosen source).

use super::*;

/// The ftpsgate binary with a config file of the test's making, its log in a file.
pub struct Gate {
    pub child: KillOnDrop,
    pub explicit: SocketAddr,
    pub implicit: SocketAddr,
    pub admin: SocketAddr,
    pub ca: PathBuf,
    pub log: PathBuf,
    pub _dir: tempfile::TempDir,
}

impl Gate {
    /// Starts the gateway in front of `backend` with a `pool`-port passive range; `tweak` sets
    /// the rest. `env` adds variables (FTPSGATE_LOG...) and `wrap` a command to run it under.
    pub fn start(
        backend: SocketAddr,
        pool: u16,
        tweak: impl FnOnce(&mut Settings),
        env: &[(&str, &str)],
        wrap: &[&str],
    ) -> Gate {
        let dir = tempfile::tempdir().expect("tempdir");
        let pair = ftpsgate::tls::self_signed(&["localhost".into(), "127.0.0.1".into()])
            .expect("certificate");
        let (cert, key) = pair.write_to(&dir.path().join("certs")).expect("write");
        let lo = free_low_range(pool);
        let (explicit, implicit, admin) = (
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            SocketAddr::from(([127, 0, 0, 1], free_port())),
        );
        let mut s = Settings::default();
        s.listen.explicit = vec![explicit];
        s.listen.implicit = vec![implicit];
        s.backend.addresses = vec![backend.into()];
        s.passive.ports = format!("{lo}-{}", lo + pool - 1).parse().expect("range");
        s.tls.cert = Some(cert.clone());
        s.tls.key = Some(key);
        s.admin.listen = Some(admin);
        tweak(&mut s);
        let config = dir.path().join("ftpsgate.toml");
        std::fs::write(&config, toml::to_string(&s).expect("toml")).expect("write config");
        let log = dir.path().join("ftpsgate.log");
        let program = env!("CARGO_BIN_EXE_ftpsgate");
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let child = KillOnDrop(cmd.spawn().expect("start ftpsgate"));
        let gate = Gate {
            child,
            explicit,
            implicit,
            admin,
            ca: cert,
            log,
            _dir: dir,
        };
        let up = eventually(Duration::from_secs(20), || {
            std::net::TcpStream::connect(gate.admin).is_ok()
        });
        assert!(up, "gateway did not start:\n{}", gate.log());
        gate
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The gateway's open descriptors.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        value(&scrape(self.admin), name, labels)
    }

    /// Runs `scenario` on a runtime of its own, then checks it left nothing behind
    /// ([`Gate::settles_to`] the descriptors open before it).
    pub fn run(&self, scenario: impl std::future::Future<Output = ()>) {
        let baseline = self.fds();
        runtime().block_on(scenario);
        self.settles_to(baseline);
    }

    /// Waits until no session is open, no port leased, and the descriptors are back to
    /// `baseline`: nothing a test did is left behind.
    pub fn settles_to(&self, baseline: usize) {
        let settled = eventually(Duration::from_secs(20), || {
            self.metric("ftpsgate_sessions_active", &[]) == 0.0
                && self.metric("ftpsgate_passive_leases_in_use", &[]) == 0.0
                && self.fds() <= baseline
        });
        assert!(
            settled,
            "left behind: {} sessions, {} leases, {} descriptors (baseline {baseline})",
            self.metric("ftpsgate_sessions_active", &[]),
            self.metric("ftpsgate_passive_leases_in_use", &[]),
            self.fds()
        );
    }

    pub fn tls(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca).expect("ca") {
            roots.add(c.expect("cert")).expect("add");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    /// A control connection from `source`, after AUTH TLS.
    pub async fn secured(&self, source: [u8; 4]) -> Session {
        let tcp = connect_from(source, self.explicit, None).await;
        let mut plain = Ctl::new(tcp);
        assert!(plain.reply().await.starts_with("220"));
        self.secure(plain).await
    }

    /// AUTH TLS on a connection whose greeting has been read.
    pub async fn secure(&self, mut plain: Ctl<TcpStream>) -> Session {
        assert!(plain.cmd("AUTH TLS").await.starts_with("234"));
        let name = ServerName::try_from("localhost").expect("name");
        let tls = self.tls();
        let stream = tls.connect(name, plain.into_inner()).await.expect("TLS");
        Session {
            ctl: Ctl::new(stream),
            tls,
        }
    }

    /// A secured session from `source` logged in as the test user, in binary mode.
    pub async fn logged_in(&self, source: [u8; 4]) -> Session {
        self.log_in(self.secured(source).await).await
    }

    /// Logs a secured session in as the test user, in binary mode.
    pub async fn log_in(&self, mut s: Session) -> Session {
        assert!(s.ctl.cmd(&format!("USER {USER}")).await.starts_with("331"));
        let r = s.ctl.cmd(&format!("PASS {PASSWORD}")).await;
        assert!(r.starts_with("230"), "{r}");
        for cmd in ["PBSZ 0", "PROT P", "TYPE I"] {
            assert!(s.ctl.cmd(cmd).await.starts_with("200"), "{cmd}");
        }
        s
    }
}

/// A TCP connection from `source` (127.0.0.x) to `to`, with a small receive buffer if asked:
/// a client that stops reading fills it at once.
pub async fn connect_from(source: [u8; 4], to: SocketAddr, rcvbuf: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind source");
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    socket.connect(to).await.expect("connect")
}

/// A raw FTP control connection: one command, one reply.
pub struct Ctl<S> {
    pub io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Ctl<S> {
    pub fn new(io: S) -> Self {
        Ctl {
            io: BufReader::new(io),
        }
    }

    pub fn into_inner(self) -> S {
        self.io.into_inner()
    }

    /// The next whole reply (multi-line ones too), or what came before the connection closed.
    pub async fn reply(&mut self) -> String {
        read_reply(&mut self.io, Duration::from_secs(30)).await
    }

    pub async fn send(&mut self, line: &str) {
        let io = self.io.get_mut();
        io.write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("send");
        io.flush().await.expect("flush");
    }

    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(line).await;
        self.reply().await
    }

    /// PASV, and the port it names.
    pub async fn pasv(&mut self) -> Result<u16, String> {
        let r = self.cmd("PASV").await;
        if !r.starts_with("227") {
            return Err(r);
        }
        let inside = r
            .split(['(', ')'])
            .nth(1)
            .ok_or_else(|| r.clone())?
            .split(',')
            .map(|n| n.trim().parse::<u16>().unwrap_or(0))
            .collect::<Vec<_>>();
        Ok(inside[4] * 256 + inside[5])
    }
}

/// A logged-in TLS session: its control connection and the connector whose session cache holds
/// the control session, so its data connections resume it, as `require` wants.
pub struct Session {
    pub ctl: Ctl<tokio_rustls::client::TlsStream<TcpStream>>,
    pub tls: TlsConnector,
}

impl Session {
    /// Opens a passive data connection (not yet secured) and sends `command`.
    pub async fn open(&mut self, command: &str) -> Result<TcpStream, String> {
        let port = self.ctl.pasv().await?;
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        self.ctl.send(command).await;
        Ok(tcp)
    }

    pub async fn secure(&self, tcp: TcpStream) -> tokio_rustls::client::TlsStream<TcpStream> {
        let name = ServerName::try_from("localhost").expect("name");
        self.tls.connect(name, tcp).await.expect("data TLS")
    }

    /// The end of a transfer `what` that stalled at `since`: 426 within 20 s (a 2 s stall limit,
    /// with room for buffers to fill on a loaded machine), and the session carries on. Returns
    /// how long the 426 took.
    pub async fn ends_stalled(&mut self, since: Instant, what: &str) -> Duration {
        let end = self.ctl.reply().await;
        let took = since.elapsed();
        assert!(end.starts_with("426"), "{end}");
        assert!(took < Duration::from_secs(20), "426 after {took:?}");
        println!("stalled {what}: {} after {took:?}", end.trim());
        assert!(self.ctl.cmd("NOOP").await.starts_with("200"));
        took
    }

    /// A whole RETR: its bytes, once 226 came.
    pub async fn retr(&mut self, name: &str) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let tcp = self.open(&format!("RETR {name}")).await.expect("PASV");
        let mut tls = self.secure(tcp).await;
        let first = self.ctl.reply().await;
        assert!(first.starts_with("150"), "{first}");
        let mut data = Vec::new();
        tls.read_to_end(&mut data).await.expect("read");
        let done = self.ctl.reply().await;
        assert!(done.starts_with("226"), "{done}");
        data
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// Floods `count` lines at the gateway without ever reading a reply, then holds the connection
/// (still unread), writing a line now and then; the task ends when a write fails because the
/// gateway hung up, or after a minute.
pub fn flood<S: AsyncWrite + Unpin + Send + 'static>(
    mut io: S,
    line: &'static str,
    count: usize,
) -> tokio::task::JoinHandle<bool> {
    tokio::spawn(async move {
        let lines = line.repeat(count);
        let until = Instant::now() + Duration::from_secs(60);
        let write = tokio::time::timeout(Duration::from_secs(60), io.write_all(lines.as_bytes()));
        if !matches!(write.await, Ok(Ok(()))) {
            return true;
        }
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let more = async {
                io.write_all(line.as_bytes()).await?;
                io.flush().await
            };
            if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), more).await {
                return true;
            }
        }
        false
    })
}

/// Polls an async condition until it holds or `limit` passes.
pub async fn eventually_async<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
