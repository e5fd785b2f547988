//! Shared test harness: a gateway in-process on its own runtime, real backends (libunftp
//! in-process, vsftpd from Debian), and helpers to run real clients.
//!
//! A peer that is missing makes a test skip with a loud message on a laptop, and fail when
//! `CI=true`, since CI installs every peer.

#![allow(dead_code)]
// Helpers of the tests, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // each test binary uses a different part of the harness

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use ftpsgate::config::{Overrides, Settings};
use ftpsgate::server::Gateway;
use ftpsgate::session::Mode;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

pub const USER: &str = "ftpsgate-test";
pub const PASSWORD: &str = "gate-Test-pw1";

pub const MIB: usize = 1024 * 1024;

/// Where the gateway sends its sessions.
pub enum BackendKind {
    /// libunftp in the gateway's runtime, serving a fresh temporary directory.
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
        let (root, backend_addr) = match backend {
            BackendKind::Unftp => {
                let root = dir.path().join("root");
                std::fs::create_dir_all(&root).expect("root");
                (root, None)
            }
            BackendKind::At(addr, root) => (root, Some(addr)),
        };
        let local = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let local6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
        let overrides = Overrides {
            listen: vec![local, local6],
            implicit_listen: vec![local],
            passive_ports: Some("41000-41999".parse().expect("range")),
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
        let unftp_root = root.clone();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let addr = match backend_addr {
                    Some(addr) => addr,
                    None => ftpsgate::demo::start_backend(&unftp_root, USER, PASSWORD)
                        .await
                        .expect("libunftp backend"),
                };
                if ours {
                    settings.backend.addresses = vec![addr.into()];
                }
                let gateway = Gateway::bind(settings).await.expect("gateway binds");
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

/// A suppaftp (rustls) FTPS session to the gateway at `addr`, logged in as the test user, in
/// binary mode.
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
pub async fn suppaftp_retr(ftp: &mut suppaftp::tokio::AsyncRustlsFtpStream, name: &str) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut down = ftp.retr_as_stream(name).await.expect("RETR");
    let mut data = Vec::new();
    down.read_to_end(&mut data).await.expect("read");
    down.finish().await.expect("226");
    data
}

/// A child process killed and reaped when the guard drops, even when a test panics first.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The ftpsgate binary, as an operator runs it: `run` on `listen` in front of `backend`, with
/// a passive range starting at `pool` (`len` ports) and the given certificate. Callers add
/// their own flags, environment and output.
pub fn gateway_command(
    listen: SocketAddr,
    backend: SocketAddr,
    pool: (u16, u16),
    cert: &Path,
    key: &Path,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ftpsgate"));
    cmd.arg("run")
        .args(["--listen", &listen.to_string()])
        .args(["--backend", &backend.to_string()])
        .args([
            "--passive-ports",
            &format!("{}-{}", pool.0, pool.0 + pool.1 - 1),
        ])
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key);
    cmd
}

/// Raises this process's soft limit on open files to the hard one (children inherit it) and
/// returns it, for tests and benchmarks that hold thousands of connections.
pub fn raise_fd_limit() -> usize {
    let hard = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024usize);
    let pid = std::process::id().to_string();
    let _ = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status();
    hard
}

/// Polls `f` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Returns false (after a loud message) when `tool` is missing on a developer machine;
/// panics when it is missing in CI.
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{tool} is required in CI (.ci/run installs it)");
        }
        eprintln!("\n!!!!! SKIPPED: {tool} is not installed; install it to run this test !!!!!\n");
    }
    found
}

pub fn sha256(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_file(path: &Path) -> String {
    sha256(&std::fs::read(path).expect("read file to hash"))
}

/// Writes `size` pseudo-random bytes to `path`; returns their SHA-256.
pub fn random_file(path: &Path, size: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(size as u64 ^ 0x5eed);
    let mut data = vec![0u8; size];
    rng.fill(&mut data);
    std::fs::write(path, &data).expect("write fixture");
    sha256(&data)
}

/// Runs a command, failing the test with its output when it does not succeed.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs one scenario of tests/py/scenarios.py (Python's ftplib) against `gw`.
pub fn py_scenario(gw: &TestGateway, scenario: &str, extra: &[&str]) -> Option<String> {
    if !have("python3") {
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/scenarios.py");
    let out = run_ok(
        Command::new("python3")
            .arg(script)
            .arg(scenario)
            .args(gw.py_args())
            .args(extra),
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A free port below Linux's ephemeral range (32768 and up), for a port that must stay free
/// until something binds it later: no outgoing connection can take it meanwhile.
pub fn free_low_port() -> u16 {
    free_low_range(1)
}

/// The first of `n` consecutive free ports below the ephemeral range (see [`free_low_port`]).
pub fn free_low_range(n: u16) -> u16 {
    for _ in 0..1000 {
        let lo = 11000 + fastrand::u16(0..8000);
        if (lo..lo + n).all(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok()) {
            return lo;
        }
    }
    panic!("no {n} free ports in 11000-18999");
}

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn wait_for_port(addr: SocketAddr, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// How the Debian FTP server speaks to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VsTls {
    None,
    /// `AUTH TLS`, with `require_ssl_reuse=YES` and TLS forced for logins and data.
    Explicit,
    /// `implicit_ssl=YES`, same rules.
    Implicit,
}

/// A Debian FTP server (vsftpd or ProFTPD) on a free loopback port, serving a fresh directory
/// as a local user, run by the tests with their own config.
pub struct FtpServer {
    pub addr: SocketAddr,
    pub root: PathBuf,
    /// The server's certificate, when it speaks TLS.
    pub cert: Option<PathBuf>,
    child: Child,
    _dir: TempDir,
}

/// Where .ci/run unpacks ProFTPD (it conflicts with vsftpd as a package, so it is not
/// installed, only unpacked): `FTPSGATE_PROFTPD_ROOT` or this default.
const PROFTPD_ROOT: &str = "/opt/ftpsgate-peers/proftpd";
/// Where .ci/run unpacks pure-ftpd (it conflicts with vsftpd too).
const PURE_FTPD_ROOT: &str = "/opt/ftpsgate-peers/pure-ftpd";

fn missing_peer(what: &str) -> Option<FtpServer> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is required in CI (.ci/run installs it)");
    }
    eprintln!("\n!!!!! SKIPPED: {what} is not installed (see .ci/run) !!!!!\n");
    None
}

impl FtpServer {
    /// vsftpd; `None` (skip) on a laptop without it, a panic in CI.
    pub fn vsftpd(tls: VsTls) -> Option<FtpServer> {
        Self::vsftpd_on(tls, false, "")
    }

    /// vsftpd listening on [::1] only when `ipv6`, with `extra` config lines (they win).
    pub fn vsftpd_on(tls: VsTls, ipv6: bool, extra: &str) -> Option<FtpServer> {
        if !Path::new("/usr/sbin/vsftpd").exists() {
            return missing_peer("vsftpd");
        }
        let listen = if ipv6 {
            "listen=NO\nlisten_ipv6=YES\nlisten_address6=::1\n"
        } else {
            "listen=YES\nlisten_ipv6=NO\nlisten_address=127.0.0.1\n"
        };
        let ip: std::net::IpAddr = if ipv6 {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            Ipv4Addr::LOCALHOST.into()
        };
        Self::spawn(tls, ip, |port, root, dir, cert| {
            let ssl = match cert {
                None => "ssl_enable=NO\n".to_string(),
                Some((cert, key)) => format!(
                    "ssl_enable=YES\nrsa_cert_file={}\nrsa_private_key_file={}\n\
                     ssl_ciphers=HIGH\nrequire_ssl_reuse=YES\nforce_local_logins_ssl=YES\n\
                     force_local_data_ssl=YES\nimplicit_ssl={}\n",
                    cert.display(),
                    key.display(),
                    if tls == VsTls::Implicit { "YES" } else { "NO" }
                ),
            };
            std::fs::create_dir_all("/var/run/vsftpd/empty").expect("secure_chroot_dir");
            let conf = format!(
                "{listen}background=NO\nlisten_port={port}\n\
                 anonymous_enable=NO\nlocal_enable=YES\nwrite_enable=YES\nlocal_umask=022\n\
                 local_root={root}\npasv_enable=YES\npasv_min_port=20000\npasv_max_port=29999\n\
                 seccomp_sandbox=NO\nsecure_chroot_dir=/var/run/vsftpd/empty\n\
                 pam_service_name=vsftpd\nuserlist_enable=NO\nxferlog_enable=NO\n\
                 vsftpd_log_file={log}\nmax_per_ip=0\nmax_clients=0\n{ssl}{extra}",
                root = root.display(),
                log = dir.join("vsftpd.log").display(),
            );
            let path = dir.join("vsftpd.conf");
            std::fs::write(&path, conf).expect("write conf");
            let mut cmd = Command::new("/usr/sbin/vsftpd");
            cmd.arg(path);
            cmd
        })
    }

    /// ProFTPD 1.3.8 with mod_tls at its defaults, which include comparing each data
    /// connection's TLS session with the control connection's.
    /// pure-ftpd 1.0.50 (unpacked from Debian's package, since it conflicts with vsftpd),
    /// logging in the test user as a virtual user of its own PureDB whose home is the root.
    /// With TLS: explicit only (`-Y 3`: TLS required on control and data).
    pub fn pure_ftpd(tls: VsTls) -> Option<FtpServer> {
        let base =
            std::env::var("FTPSGATE_PURE_FTPD_ROOT").unwrap_or_else(|_| PURE_FTPD_ROOT.into());
        let binary = Path::new(&base).join("usr/sbin/pure-ftpd");
        if !binary.exists() {
            return missing_peer("pure-ftpd (unpacked under /opt/ftpsgate-peers/pure-ftpd)");
        }
        assert_ne!(
            tls,
            VsTls::Implicit,
            "Debian's pure-ftpd has no implicit TLS"
        );
        Self::spawn(tls, Ipv4Addr::LOCALHOST.into(), |port, root, dir, cert| {
            let db = dir.join("pureftpd.pdb");
            let mut pw = Command::new(Path::new(&base).join("usr/bin/pure-pw"))
                .args(["useradd", USER, "-u", USER, "-d"])
                .arg(root)
                .arg("-f")
                .arg(dir.join("pureftpd.passwd"))
                .arg("-m")
                .arg("-F")
                .arg(&db)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .expect("pure-pw");
            if let Some(mut stdin) = pw.stdin.take() {
                let _ = writeln!(stdin, "{PASSWORD}\n{PASSWORD}");
            }
            assert!(pw.wait().is_ok_and(|s| s.success()), "pure-pw useradd");
            let mut cmd = Command::new(&binary);
            cmd.arg("-S")
                .arg(format!("127.0.0.1,{port}"))
                .args(["-p", "20000:24999", "-E", "-H", "-A", "-f", "none"])
                .arg("-l")
                .arg(format!("puredb:{}", db.display()));
            if let Some((cert, key)) = cert {
                cmd.args(["-Y", "3", "-2"])
                    .arg(format!("{},{}", cert.display(), key.display()));
            }
            cmd
        })
    }

    pub fn proftpd(tls: VsTls) -> Option<FtpServer> {
        let base = std::env::var("FTPSGATE_PROFTPD_ROOT").unwrap_or_else(|_| PROFTPD_ROOT.into());
        let binary = Path::new(&base).join("usr/sbin/proftpd");
        if !binary.exists() {
            return missing_peer("ProFTPD (unpacked under /opt/ftpsgate-peers/proftpd)");
        }
        Self::spawn(tls, Ipv4Addr::LOCALHOST.into(), |port, root, dir, cert| {
            let tls_conf =
                match cert {
                    None => String::new(),
                    Some((cert, key)) => format!(
                    "LoadModule mod_tls.c\n<IfModule mod_tls.c>\nTLSEngine on\nTLSRequired on\n\
                     TLSProtocol TLSv1.2 TLSv1.3\nTLSECCertificateFile {}\n\
                     TLSECCertificateKeyFile {}\nTLSLog {}\nTLSVerifyClient off\n{}</IfModule>\n",
                    cert.display(),
                    key.display(),
                    dir.join("tls.log").display(),
                    if tls == VsTls::Implicit { "TLSOptions UseImplicitSSL\n" } else { "" }
                ),
                };
            let conf = format!(
                "ServerType standalone\nDefaultServer on\nPort {port}\nDefaultAddress 127.0.0.1\n\
                 SocketBindTight on\nUseIPv6 off\nUser nobody\nGroup nogroup\n\
                 ModulePath {modules}\nScoreboardFile {dir}/scoreboard\nPidFile {dir}/pid\n\
                 WtmpLog off\nSystemLog {dir}/system.log\nTransferLog none\nRequireValidShell off\n\
                 UseReverseDNS off\nAuthOrder mod_auth_unix.c\nDefaultRoot {root}\n\
                 PassivePorts 45000 49999\nAllowOverwrite on\nMaxInstances 100\n{tls_conf}",
                modules = Path::new(&base).join("usr/lib/proftpd").display(),
                dir = dir.display(),
                root = root.display(),
            );
            let path = dir.join("proftpd.conf");
            std::fs::write(&path, conf).expect("write conf");
            let mut cmd = Command::new(&binary);
            cmd.args(["-n", "-q", "-c"]).arg(path);
            cmd
        })
    }

    /// ProFTPD with mod_proxy as a reverse FTPS proxy in front of `backend` (what users would
    /// pick instead of ftpsgate), for the benchmarks. TLS toward the backend when `backend_tls`.
    pub fn proftpd_mod_proxy(backend: SocketAddr, backend_tls: bool) -> Option<FtpServer> {
        let base = std::env::var("FTPSGATE_PROFTPD_ROOT").unwrap_or_else(|_| PROFTPD_ROOT.into());
        let binary = Path::new(&base).join("usr/sbin/proftpd");
        let module = Path::new(&base).join("usr/lib/proftpd/mod_proxy.so");
        if !binary.exists() || !module.exists() {
            return missing_peer("ProFTPD mod_proxy (unpacked under /opt/ftpsgate-peers/proftpd)");
        }
        Self::spawn(
            VsTls::Explicit,
            Ipv4Addr::LOCALHOST.into(),
            |port, _root, dir, cert| {
                let (cert, key) = cert.expect("front certificate");
                // ProFTPD refuses a world-writable scoreboard directory; the proxy's tables must
                // be writable by the unprivileged user it runs sessions as.
                let tables = dir.join("tables");
                std::fs::create_dir_all(&tables).expect("tables");
                let _ = Command::new("chmod").arg("755").arg(dir).status();
                let _ = Command::new("chown").arg("nobody").arg(&tables).status();
                let backend_tls = if backend_tls {
                    "ProxyTLSEngine on\nProxyTLSVerifyServer off\n"
                } else {
                    "ProxyTLSEngine off\n"
                };
                let conf = format!(
                "ServerType standalone\nDefaultServer on\nPort {port}\nDefaultAddress 127.0.0.1\n\
                 SocketBindTight on\nUseIPv6 off\nUser nobody\nGroup nogroup\n\
                 ModulePath {modules}\nLoadModule mod_tls.c\nLoadModule mod_proxy.c\n\
                 ScoreboardFile {dir}/scoreboard\nPidFile {dir}/pid\nWtmpLog off\n\
                 SystemLog {dir}/system.log\nTransferLog none\nUseReverseDNS off\n\
                 RequireValidShell off\nPassivePorts 46000 46999\nMasqueradeAddress 127.0.0.1\n\
                 MaxInstances 200\n<IfModule mod_proxy.c>\nProxyEngine on\nProxyRole reverse\n\
                 ProxyTables {tables}\nProxyLog {dir}/proxy.log\n\
                 ProxyReverseServers ftp://{backend}\n{backend_tls}</IfModule>\n\
                 <IfModule mod_tls.c>\nTLSEngine on\nTLSRequired on\nTLSProtocol TLSv1.2 TLSv1.3\n\
                 TLSECCertificateFile {cert}\nTLSECCertificateKeyFile {key}\n\
                 TLSLog {dir}/tls.log\nTLSVerifyClient off\n</IfModule>\n",
                modules = Path::new(&base).join("usr/lib/proftpd").display(),
                dir = dir.display(),
                tables = tables.display(),
                cert = cert.display(),
                key = key.display(),
            );
                let path = dir.join("mod_proxy.conf");
                std::fs::write(&path, conf).expect("write conf");
                let mut cmd = Command::new(&binary);
                cmd.args(["-n", "-q", "-c"]).arg(path);
                cmd
            },
        )
    }

    /// The set-up both servers share: user, root, certificate, port, start, wait.
    fn spawn(
        tls: VsTls,
        ip: std::net::IpAddr,
        command: impl FnOnce(u16, &Path, &Path, Option<(&Path, &Path)>) -> Command,
    ) -> Option<FtpServer> {
        ensure_test_user();
        let dir = tempfile::Builder::new()
            .prefix("ftpsgate-ftpd-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).expect("root");
        run_ok(Command::new("chown").arg(USER).arg(&root));
        let pair = match tls {
            VsTls::None => None,
            VsTls::Explicit | VsTls::Implicit => {
                let pair = ftpsgate::tls::self_signed(&["localhost".into(), "127.0.0.1".into()])
                    .expect("certificate");
                Some(pair.write_to(&dir.path().join("tls")).expect("write cert"))
            }
        };
        let port = free_port();
        let paths = pair.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        let child = command(port, &root, dir.path(), paths)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the FTP server");
        let addr = SocketAddr::new(ip, port);
        assert!(
            wait_for_port(addr, Duration::from_secs(10)),
            "FTP server did not start"
        );
        Some(FtpServer {
            addr,
            root,
            cert: pair.map(|(c, _)| c),
            child,
            _dir: dir,
        })
    }

    pub fn backend(&self) -> BackendKind {
        BackendKind::At(self.addr, self.root.clone())
    }

    /// A settings tweak that points the gateway's backend TLS at this server: the mode, and
    /// the server's certificate as the CA.
    pub fn gateway_tls(&self, mode: VsTls) -> impl FnOnce(&mut Settings) + Send + 'static {
        use ftpsgate::config::BackendTlsMode;
        let ca = self.cert.clone();
        move |settings: &mut Settings| {
            settings.backend.tls = match mode {
                VsTls::None => BackendTlsMode::None,
                VsTls::Explicit => BackendTlsMode::Explicit,
                VsTls::Implicit => BackendTlsMode::Implicit,
            };
            settings.backend.ca = ca;
        }
    }

    /// The server's own log (vsftpd: `vsftpd_log_file`; with `xferlog_enable=YES` it has one
    /// `OK UPLOAD` or `FAIL UPLOAD` line per transfer).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("vsftpd.log")).unwrap_or_default()
    }

    /// Kills the server and every session process it forked, as a crash would: each of them
    /// has this instance's private directory on its command line.
    pub fn kill_all(&self) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-f"])
            .arg(self._dir.path())
            .status();
    }

    /// Puts a fixture where the FTP user can read and replace it.
    pub fn put(&self, name: &str, size: usize) -> String {
        let path = self.root.join(name);
        let hash = random_file(&path, size);
        run_ok(Command::new("chown").arg(USER).arg(&path));
        hash
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The local user vsftpd logs in: created once per machine, password reset once per test run.
fn ensure_test_user() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let exists = Command::new("id")
            .arg(USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !exists {
            // Another test binary may win the race; `id` below settles it.
            let _ = Command::new("useradd")
                .args(["-M", "-d", "/", "-s", "/bin/sh", USER])
                .status();
        }
        // vsftpd enters the home directory before local_root: it must exist.
        let _ = Command::new("usermod").args(["-d", "/", USER]).status();
        // SHA-512 crypt at its fewest rounds, not Debian's default yescrypt: yescrypt costs
        // vsftpd ~50 ms of CPU per login, which would swamp what the session-rate benchmark
        // measures (the proxies) and slow every test. A throwaway test account loses nothing.
        let mut chpasswd = Command::new("chpasswd")
            .args(["-c", "SHA512", "-s", "1000"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("chpasswd (tests with vsftpd run as root)");
        chpasswd
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{USER}:{PASSWORD}\n").as_bytes())
            .expect("password");
        assert!(
            chpasswd.wait().expect("chpasswd").success(),
            "chpasswd failed"
        );
    });
}

/// A scripted FTP server for what real servers will not do on demand. It has no EPSV (500), and
/// its 227 names a foreign address (10.9.9.9) while it listens on loopback, so a gateway that
/// trusted the reply would fail. It serves `RETR` of one blob, `STOR`, `LIST` and `STAT`.
///
/// The user name chooses how it misbehaves from `PASS` on, so one server (and one gateway in
/// front of it) carries well-behaved and hostile sessions side by side: see [`Hostile`].
pub struct ScriptedBackend {
    pub addr: SocketAddr,
    pub blob: Vec<u8>,
    pub stored: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

/// The misbehaviours of [`ScriptedBackend`], by user name.
pub struct Hostile;

impl Hostile {
    /// Writes every reply one byte at a time.
    pub const BYTEWISE: &'static str = "bytewise";
    /// Answers `PASS` with a 1 MiB reply line.
    pub const HUGE_LINE: &'static str = "hugeline";
    /// Never answers `PASS`.
    pub const SILENT: &'static str = "silent";
    /// Resets the data connection in the middle of a `RETR`, then says 426.
    pub const RESET: &'static str = "reset";
    /// Closes the control connection in the middle of its reply to `PASS`.
    pub const HANGUP: &'static str = "hangup";
}

/// The `STAT` reply and `LIST` lines: a "227" inside a multi-line reply and in a listing, which
/// must be relayed as text, never read as a passive-mode answer.
pub const STAT_WITH_227: &str =
    "211-Status\r\n227 Entering Passive Mode (6,6,6,6,1,1)\r\n 227 indented\r\n211 End\r\n";
pub const LISTING_WITH_227: &str =
    "-rw-r--r-- 1 ftp ftp 3 Jan 1 00:00 a.txt\r\n227 Entering Passive Mode (6,6,6,6,1,1)\r\n";

impl ScriptedBackend {
    pub fn start(blob: Vec<u8>) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stored = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (served, store) = (blob.clone(), stored.clone());
        thread::spawn(move || {
            for control in listener.incoming().take(64) {
                let Ok(control) = control else { continue };
                let (served, store) = (served.clone(), store.clone());
                thread::spawn(move || scripted_session(control, &served, &store));
            }
        });
        ScriptedBackend { addr, blob, stored }
    }
}

fn scripted_session(mut control: TcpStream, served: &[u8], store: &std::sync::Mutex<Vec<u8>>) {
    use std::io::{BufRead, BufReader, Read};
    let _ = control.set_nodelay(true);
    let mut reader = BufReader::new(control.try_clone().expect("clone"));
    let mut user = String::new();
    send(&mut control, &user, b"220 scripted test server\r\n");
    let mut data_listener: Option<TcpListener> = None;
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        let mut words = line.split_whitespace();
        let verb = words.next().unwrap_or("").to_uppercase();
        let arg = words.next().unwrap_or("").to_string();
        line.clear();
        let reply: Vec<u8> = match verb.as_str() {
            "USER" => {
                user = arg;
                b"331 password please\r\n".to_vec()
            }
            "PASS" => match user.as_str() {
                Hostile::HUGE_LINE => format!("230 {}\r\n", "x".repeat(1 << 20)).into_bytes(),
                Hostile::SILENT => {
                    // Read on (so the gateway's writes succeed) and never answer.
                    let mut sink = Vec::new();
                    let _ = reader.read_to_end(&mut sink);
                    return;
                }
                Hostile::HANGUP => {
                    let _ = control.write_all(b"230-Welcome, and here is a long messa");
                    return;
                }
                _ => b"230 logged in\r\n".to_vec(),
            },
            "TYPE" | "NOOP" => b"200 ok\r\n".to_vec(),
            "PWD" => b"257 \"/\" is the directory\r\n".to_vec(),
            "STAT" => STAT_WITH_227.as_bytes().to_vec(),
            "EPSV" => b"500 EPSV not understood\r\n".to_vec(),
            "PASV" => {
                let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("pasv");
                let port = l.local_addr().expect("addr").port();
                data_listener = Some(l);
                format!(
                    "227 Entering Passive Mode (10,9,9,9,{},{})\r\n",
                    port >> 8,
                    port & 0xff
                )
                .into_bytes()
            }
            "RETR" | "STOR" | "LIST" => {
                let Some(l) = data_listener.take() else {
                    send(&mut control, &user, b"425 no PASV\r\n");
                    continue;
                };
                let (mut data, _) = l.accept().expect("data");
                send(&mut control, &user, b"150 here it comes\r\n");
                match verb.as_str() {
                    "RETR" if user == Hostile::RESET => {
                        let _ = data.write_all(&served[..served.len() / 2]);
                        reset(data);
                        send(
                            &mut control,
                            &user,
                            b"426 Connection reset; transfer aborted\r\n",
                        );
                        continue;
                    }
                    "RETR" => {
                        let _ = data.write_all(served);
                    }
                    "LIST" => {
                        let _ = data.write_all(LISTING_WITH_227.as_bytes());
                    }
                    _ => {
                        let mut got = Vec::new();
                        let _ = data.read_to_end(&mut got);
                        *store.lock().expect("lock") = got;
                    }
                }
                drop(data);
                b"226 done\r\n".to_vec()
            }
            "QUIT" => {
                send(&mut control, &user, b"221 bye\r\n");
                return;
            }
            _ => b"502 not here\r\n".to_vec(),
        };
        send(&mut control, &user, &reply);
    }
}

/// Writes a reply as the session's user wants it: whole, or one byte per write.
fn send(control: &mut TcpStream, user: &str, reply: &[u8]) {
    if user == Hostile::BYTEWISE {
        for b in reply {
            let _ = control.write_all(std::slice::from_ref(b));
        }
    } else {
        let _ = control.write_all(reply);
    }
}

/// Closes a connection with RST (zero linger), as a crashing server's kernel would.
fn reset(stream: TcpStream) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let _ = stream.set_nonblocking(true);
        if let Ok(tcp) = tokio::net::TcpStream::from_std(stream) {
            let _ = tcp.set_zero_linger();
        }
    });
}

/// GET over HTTP with curl (a real client); returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let out = run_ok(Command::new("curl").args([
        "-sS",
        "--max-time",
        "20",
        "-w",
        "\n%{http_code}",
        &format!("http://{addr}{path}"),
    ]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status code"), body.to_string())
}

/// Scrapes /metrics and parses it with a Prometheus text parser.
pub fn scrape(admin: SocketAddr) -> prometheus_parse::Scrape {
    let (code, body) = http_get(admin, "/metrics");
    assert_eq!(code, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("valid exposition")
}

/// The value of the sample `name` whose labels include all of `labels` (0 when absent).
pub fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}
