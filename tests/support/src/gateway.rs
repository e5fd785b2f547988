//! A gateway in-process on its own runtime, in front of the test's backend, and an FTPS client session through it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ftpsgate::config::{Overrides, Settings};
use ftpsgate::server::Gateway;
use ftpsgate::session::Mode;
use tempfile::TempDir;

use crate::{PASSWORD, USER};

/// Where the gateway sends its sessions.
pub enum BackendKind {
    /// libunftp in the gateway's runtime, serving a fresh temporary directory.
    #[cfg(feature = "demo")]
    Unftp,
    /// A server already listening (vsftpd), serving `root`.
    At(SocketAddr, PathBuf),
}

/// A running gateway. Dropping it stops the gateway (and an in-process backend).
pub struct TestGateway {
    pub explicit: SocketAddr,
    /// The explicit listener on [::1].
    pub explicit6: SocketAddr,
    pub implicit: SocketAddr,
    /// The admin listener, when the test's settings enable one.
    pub admin: Option<SocketAddr>,
    /// The gateway's certificate, for clients to trust.
    pub ca: PathBuf,
    /// The backend's file root, to put fixtures in and check uploads.
    pub root: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
    _dir: TempDir,
}

impl TestGateway {
    pub fn start(backend: BackendKind, tweak: impl FnOnce(&mut Settings) + Send + 'static) -> Self {
        // FTPSGATE_LOG=debug shows the gateway's log in failing tests.
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("FTPSGATE_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let pair =
            ftpsgate::tls::self_signed(&["localhost".into(), "127.0.0.1".into(), "::1".into()])
                .expect("certificate");
        let (cert, key) = pair
            .write_to(&dir.path().join("certs"))
            .expect("write cert");
        let root = match &backend {
            #[cfg(feature = "demo")]
            BackendKind::Unftp => {
                let root = dir.path().join("root");
                std::fs::create_dir_all(&root).expect("root");
                root
            }
            BackendKind::At(_, root) => root.clone(),
        };
        let local = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let local6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
        let overrides = Overrides {
            listen: vec![local, local6],
            implicit_listen: vec![local],
            // One data port of its own, as the README recommends (a tweak may set a range).
            passive_ports: Some(crate::net::free_port().to_string().parse().expect("port")),
            cert: Some(cert.clone()),
            key: Some(key),
            ..Default::default()
        };
        let mut settings = Settings::load(None, &overrides).expect("settings");
        tweak(&mut settings);
        // A tweak that leaves the backend alone gets the test's own.
        let ours = settings.backend.addresses == Settings::default().backend.addresses;
        let (addrs_tx, addrs_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        #[cfg(feature = "demo")]
        let unftp_root = root.clone();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let addr = match backend {
                    BackendKind::At(addr, _) => addr,
                    #[cfg(feature = "demo")]
                    BackendKind::Unftp => {
                        ftpsgate::demo::start_backend(&unftp_root, USER, PASSWORD)
                            .await
                            .expect("libunftp backend")
                    }
                };
                if ours {
                    settings.backend.addresses = vec![addr.into()];
                }
                let gateway = bind(settings).await;
                let explicit = gateway.local_addrs(Mode::Explicit);
                let implicit = gateway.local_addrs(Mode::Implicit)[0];
                addrs_tx
                    .send((explicit[0], explicit[1], implicit, gateway.admin_addr()))
                    .expect("report addresses");
                tokio::select! {
                    // No drain: a test that is over has nothing in flight worth waiting for.
                    () = gateway.serve(std::future::pending()) => {}
                    _ = stop_rx => {}
                }
            });
        });
        let (explicit, explicit6, implicit, admin) = addrs_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("gateway started");
        TestGateway {
            explicit,
            explicit6,
            implicit,
            admin,
            ca: cert,
            root,
            stop: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Arguments for tests/py/scenarios.py.
    pub fn py_args(&self) -> Vec<String> {
        vec![
            "--port".into(),
            self.explicit.port().to_string(),
            "--port6".into(),
            self.explicit6.port().to_string(),
            "--implicit-port".into(),
            self.implicit.port().to_string(),
            "--ca".into(),
            self.ca.display().to_string(),
            "--user".into(),
            USER.into(),
            "--password".into(),
            PASSWORD.into(),
            "--root".into(),
            self.root.display().to_string(),
        ]
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds the gateway. Its passive port was free when picked, but another test may bind it
/// first: then the gateway gets another (a tweak's own range is kept as it is).
async fn bind(mut settings: Settings) -> Gateway {
    let ours = settings.passive.ports.0.start() == settings.passive.ports.0.end();
    for _ in 0..20 {
        match Gateway::bind(settings.clone()).await {
            Ok(gateway) => return gateway,
            Err(ftpsgate::server::StartError::Passive(e)) if ours => {
                eprintln!("passive port taken meanwhile ({e}); picking another");
                let port = crate::net::free_port();
                settings.passive.ports.0 = port..=port;
            }
            Err(e) => panic!("gateway binds: {e}"),
        }
    }
    panic!("no free passive port for the gateway after 20 tries");
}

/// A suppaftp (rustls) FTPS session to the gateway at `addr`, logged in as the test user, in
/// binary mode.
#[cfg(feature = "demo")]
pub async fn suppaftp_session(
    addr: SocketAddr,
    ca: &Path,
) -> suppaftp::tokio::AsyncRustlsFtpStream {
    let mut ftp = ftpsgate::demo::connect(addr, ca).await.expect("connect");
    ftp.login(USER, PASSWORD).await.expect("login");
    ftp.transfer_type(suppaftp::types::FileType::Binary)
        .await
        .expect("TYPE I");
    ftp
}

/// RETR `name` whole over a suppaftp session: its bytes, once the transfer's 226 came.
#[cfg(feature = "demo")]
pub async fn suppaftp_retr(ftp: &mut suppaftp::tokio::AsyncRustlsFtpStream, name: &str) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut down = ftp.retr_as_stream(name).await.expect("RETR");
    let mut data = Vec::new();
    down.read_to_end(&mut data).await.expect("read");
    down.finish().await.expect("226");
    data
}

/// Settings tweak: the admin listener (`/metrics`, `/bans`, ...) on a free loopback port.
pub fn admin_on_loopback(s: &mut ftpsgate::config::Settings) {
    s.admin.listen = Some("127.0.0.1:0".parse().expect("addr"));
}

/// The ftpsgate binary `program` (a test's `env!("CARGO_BIN_EXE_ftpsgate")`: only the
/// package's own targets know it), as an operator runs it: `run` on `listen` in front of
/// `backend`, with a passive range starting at `pool` (`len` ports) and the given certificate.
/// Callers add their own flags, environment and output. `FTPSGATE_BIN` names another build to
/// run instead (the benchmark compares two builds that way; the tests never set it).
pub fn gateway_command(
    program: &str,
    listen: SocketAddr,
    backend: SocketAddr,
    pool: (u16, u16),
    cert: &Path,
    key: &Path,
) -> Command {
    let program = std::env::var_os("FTPSGATE_BIN").unwrap_or_else(|| program.into());
    let mut cmd = Command::new(program);
    cmd.arg("run")
        .args(["--listen", &listen.to_string()])
        .args(["--backend", &backend.to_string()])
        .args(["--passive-ports", &passive_ports(pool)])
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key);
    cmd
}

/// `--passive-ports` for `len` ports from `first`: one port is written `P`, as the README's
/// set-up does, so the flag's one-port form is what most tests run.
fn passive_ports((first, len): (u16, u16)) -> String {
    match len {
        1 => first.to_string(),
        _ => format!("{first}-{}", first + len - 1),
    }
}
