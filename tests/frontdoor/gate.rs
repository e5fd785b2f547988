//! The front-door tests' harness: the real binary with a config of the test's making
//! ([`Gate`]), its sessions (the shared [`Ftps`] from a chosen source), and the hostile peers'
//! tools (flooding, connecting from a chosen source).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ftpsgate::config::Settings;
use support::admin::{scrape, value};
use support::control::{rustls_client, Control};
use support::ftps::Ftps;
use support::net::{free_low_range, free_port};
use support::process::{eventually, KillOnDrop};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

/// The ftpsgate binary with a config file of the test's making, its log in a file.
pub(crate) struct Gate {
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
    pub(crate) fn start(
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

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The gateway's open descriptors.
    pub(crate) fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub(crate) fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        value(&scrape(self.admin), name, labels)
    }

    /// Runs `scenario` on a runtime of its own, then checks it left nothing behind
    /// ([`Gate::settles_to`] the descriptors open before it).
    pub(crate) fn run(&self, scenario: impl std::future::Future<Output = ()>) {
        let baseline = self.fds();
        runtime().block_on(scenario);
        self.settles_to(baseline);
    }

    /// Waits until no session is open, no port leased, and the descriptors are back to
    /// `baseline`: nothing a test did is left behind.
    pub(crate) fn settles_to(&self, baseline: usize) {
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

    /// A TLS connector trusting the gateway's certificate, with a session store of its own.
    pub(crate) fn tls(&self) -> TlsConnector {
        TlsConnector::from(rustls_client(&self.ca))
    }

    /// A control connection from `source`, after AUTH TLS.
    pub(crate) async fn secured(&self, source: [u8; 4]) -> Ftps {
        let tcp = connect_from(source, self.explicit, None).await;
        let mut plain = Control::new(tcp);
        assert!(plain.reply().await.starts_with("220"));
        self.secure(plain).await
    }

    /// AUTH TLS on a connection whose greeting has been read.
    pub(crate) async fn secure(&self, plain: Control<TcpStream>) -> Ftps {
        Ftps::secure(plain, rustls_client(&self.ca)).await
    }

    /// A secured session from `source` logged in as the test user, in binary mode.
    pub(crate) async fn logged_in(&self, source: [u8; 4]) -> Ftps {
        self.secured(source).await.log_in().await
    }
}

/// A TCP connection from `source` (127.0.0.x) to `to`, with a small receive buffer if asked:
/// a client that stops reading fills it at once.
pub(crate) async fn connect_from(
    source: [u8; 4],
    to: SocketAddr,
    rcvbuf: Option<u32>,
) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind source");
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    socket.connect(to).await.expect("connect")
}

/// The end of a transfer `what` that stalled at `since`: 426 within 20 s (a 2 s stall limit,
/// with room for buffers to fill on a loaded machine), and the session carries on. Returns how
/// long the 426 took.
pub(crate) async fn ends_stalled(s: &mut Ftps, since: Instant, what: &str) -> Duration {
    let end = s.reply().await;
    let took = since.elapsed();
    assert!(end.starts_with("426"), "{end}");
    assert!(took < Duration::from_secs(20), "426 after {took:?}");
    println!("stalled {what}: {} after {took:?}", end.trim());
    assert!(s.cmd("NOOP").await.starts_with("200"));
    took
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// Floods `count` lines at the gateway without ever reading a reply, then holds the connection
/// (still unread), writing a line now and then; the task ends when a write fails because the
/// gateway hung up, or after a minute.
pub(crate) fn flood<S: AsyncWrite + Unpin + Send + 'static>(
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
pub(crate) async fn eventually_async<F, Fut>(limit: Duration, mut f: F) -> bool
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
