//! Real FTP servers from Debian (vsftpd, ProFTPD, pure-ftpd) on loopback, each with the test user and a root of its own.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use ftpsgate::config::Settings;
use tempfile::TempDir;

use crate::files::random_file;
use crate::gateway::BackendKind;
use crate::net::{free_port, in_netns, wait_for_port, wait_for_port_in};
use crate::process::{have, run_ok};
use crate::{PASSWORD, USER};

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
        let ip: std::net::IpAddr = if ipv6 {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            Ipv4Addr::LOCALHOST.into()
        };
        Self::vsftpd_at(tls, ip, None, extra)
    }

    /// vsftpd on `addr` inside the network namespace `netns` (the NAT test bed's internal
    /// server).
    pub fn vsftpd_in(
        netns: &str,
        addr: std::net::SocketAddrV4,
        tls: VsTls,
        extra: &str,
    ) -> Option<FtpServer> {
        Self::vsftpd_at(tls, (*addr.ip()).into(), Some((netns, addr.port())), extra)
    }

    fn vsftpd_at(
        tls: VsTls,
        ip: std::net::IpAddr,
        netns: Option<(&str, u16)>,
        extra: &str,
    ) -> Option<FtpServer> {
        if !Path::new("/usr/sbin/vsftpd").exists() {
            return missing_peer("vsftpd");
        }
        let listen = match ip {
            std::net::IpAddr::V6(ip) => {
                format!("listen=NO\nlisten_ipv6=YES\nlisten_address6={ip}\n")
            }
            std::net::IpAddr::V4(ip) => {
                format!("listen=YES\nlisten_ipv6=NO\nlisten_address={ip}\n")
            }
        };
        Self::spawn(tls, ip, netns, |port, root, dir, cert| {
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
        Self::spawn(
            tls,
            Ipv4Addr::LOCALHOST.into(),
            None,
            |port, root, dir, cert| {
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
                    cmd.args(["-Y", "3", "-2"]).arg(format!(
                        "{},{}",
                        cert.display(),
                        key.display()
                    ));
                }
                cmd
            },
        )
    }

    /// ProFTPD 1.3.8 with mod_tls at its defaults, which include comparing each data
    /// connection's TLS session with the control connection's.
    pub fn proftpd(tls: VsTls) -> Option<FtpServer> {
        let base = std::env::var("FTPSGATE_PROFTPD_ROOT").unwrap_or_else(|_| PROFTPD_ROOT.into());
        let binary = Path::new(&base).join("usr/sbin/proftpd");
        if !binary.exists() {
            return missing_peer("ProFTPD (unpacked under /opt/ftpsgate-peers/proftpd)");
        }
        Self::spawn(
            tls,
            Ipv4Addr::LOCALHOST.into(),
            None,
            |port, root, dir, cert| {
                let tls_conf = match cert {
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
                proftpd_on(&binary, &dir.join("proftpd.conf"), &conf)
            },
        )
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
            None,
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
                proftpd_on(&binary, &dir.join("mod_proxy.conf"), &conf)
            },
        )
    }

    /// The set-up every server shares: user, root, certificate, port, start, wait. Inside a
    /// network namespace (name and port) the server runs there.
    fn spawn(
        tls: VsTls,
        ip: std::net::IpAddr,
        netns: Option<(&str, u16)>,
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
        let port = netns.map_or_else(free_port, |(_, port)| port);
        let paths = pair.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        let mut cmd = command(port, &root, dir.path(), paths);
        if let Some((ns, _)) = netns {
            cmd = in_netns(ns, &cmd);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the FTP server");
        let addr = SocketAddr::new(ip, port);
        let up = match netns {
            None => wait_for_port(addr, Duration::from_secs(10)),
            Some((ns, _)) => wait_for_port_in(ns, addr, Duration::from_secs(10)),
        };
        assert!(up, "FTP server did not start");
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

    /// The server's process (for a forking server, the master that reaps its sessions).
    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// ProFTPD in the foreground, quiet, on `conf` written to `path`.
fn proftpd_on(binary: &Path, path: &Path, conf: &str) -> Command {
    std::fs::write(path, conf).expect("write conf");
    let mut cmd = Command::new(binary);
    cmd.args(["-n", "-q", "-c"]).arg(path);
    cmd
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

/// A plain vsftpd that logs every command it hears, for tests that show what never reached
/// it, and curl to drive the gateway in front of it; `None` (the test skips) without them.
pub fn vsftpd_logging_commands() -> Option<FtpServer> {
    if !have("curl") {
        return None;
    }
    FtpServer::vsftpd_on(
        VsTls::None,
        false,
        "xferlog_enable=YES\nlog_ftp_protocol=YES\n",
    )
}

/// The `USER` commands vsftpd heard, from its command log.
pub fn users_heard(vs: &FtpServer) -> Vec<String> {
    vs.log()
        .lines()
        .filter(|l| l.contains("FTP command") && l.to_uppercase().contains("\"USER "))
        .map(str::to_string)
        .collect()
}
