//! What the parts share: vsftpd plain and FTPS with a large file on each, the release gateway
//! as its own process in front of them (and one writing the audit log), ProFTPD mod_proxy where
//! it is installed, and a client's target for each.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use support::control::{client_config, BoxError};
use support::gateway::gateway_command;
use support::net::{free_low_range, free_port};
use support::servers::{FtpServer, VsTls};
use support::transfer::Target;
use support::{PASSWORD, USER};
use tempfile::TempDir;

use crate::figures::rss_kib;
use crate::{Plan, Report};

/// The release gateway as its own process, so its memory can be read apart from the client's.
pub(crate) struct Gateway {
    pub addr: SocketAddr,
    pub child: Child,
}

impl Gateway {
    /// `extra`: more flags (backend TLS, the audit log). Passive ports: 40 found free, since a
    /// gateway binds every one at start (one picked at random among fixed slots met another
    /// gateway's pool now and then, and that gateway did not start).
    pub(crate) fn start(backend: SocketAddr, cert: &Path, key: &Path, extra: &[String]) -> Gateway {
        let lo = free_low_range(40);
        Gateway::with_pool(backend, cert, key, (lo, 40), extra)
    }

    /// [`Gateway::start`] with the passive ports `pool` (first, how many).
    pub(crate) fn with_pool(
        backend: SocketAddr,
        cert: &Path,
        key: &Path,
        pool: (u16, u16),
        extra: &[String],
    ) -> Gateway {
        // Not one of the pool's own ports, free too until the gateway binds them.
        let port = loop {
            let p = free_port();
            if !(pool.0..pool.0 + pool.1).contains(&p) {
                break p;
            }
        };
        // The idle-session measure opens thousands of sessions from one address, and the
        // session-rate one holds up to 32 passive leases from it at once.
        let config = cert.with_file_name(format!("bench-{port}.toml"));
        std::fs::write(
            &config,
            "[limits]\nmax_sessions = 1000000\nmax_sessions_per_ip = 1000000\n\
             max_passive_per_ip = 1000000\n",
        )
        .expect("bench config");
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let program = env!("CARGO_BIN_EXE_ftpsgate");
        let mut cmd = gateway_command(program, listen, backend, pool, cert, key);
        cmd.arg("--config")
            .arg(&config)
            .env("FTPSGATE_LOG", "warn")
            .stdout(Stdio::null());
        // The gateway's warnings explain a failed measure; they are noise otherwise.
        if std::env::var_os("FTPSGATE_BENCH_LOG").is_none() {
            cmd.stderr(Stdio::null());
        }
        cmd.args(extra);
        let child = cmd.spawn().expect("start ftpsgate");
        // From here on, Drop kills and reaps the child whatever happens.
        let gateway = Gateway {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            child,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(gateway.addr).is_ok() {
                return gateway;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("ftpsgate did not start");
    }

    pub(crate) fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ProFTPD mod_proxy, the reverse FTPS proxy users would pick instead, in front of the same
/// backends, and the targets through it.
pub(crate) struct ModProxy {
    pub via_plain: Target,
    pub via_tls: Target,
    pub plain: FtpServer,
    pub tls: FtpServer,
}

/// The servers, gateways and targets. Fields drop in order: the proxies before the directory
/// holding their certificate, the backends last.
pub(crate) struct Rig {
    pub direct_plain: Target,
    pub direct_ftps: Target,
    pub via_plain: Target,
    pub via_tls: Target,
    pub via_audit: Target,
    pub mod_proxy: Option<ModProxy>,
    pub gw_audit: Gateway,
    pub gw_tls: Gateway,
    pub gw_plain: Gateway,
    /// The gateways' certificate and key, and the certificate as a client's roots.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub gw_ca: Vec<CertificateDer<'static>>,
    /// The certificate, the audit log, the idle part's libunftp root.
    pub work: TempDir,
    /// vsftpd with FTPS, behind `direct_ftps` and `gw_tls`.
    pub ftps: FtpServer,
    pub plain: FtpServer,
}

impl Rig {
    pub(crate) fn start(plan: &Plan, report: &mut Report) -> Result<Rig, BoxError> {
        let plain = FtpServer::vsftpd(VsTls::None).ok_or("vsftpd is needed")?;
        let ftps = FtpServer::vsftpd(VsTls::Explicit).ok_or("vsftpd is needed")?;
        let work = tempfile::tempdir()?;
        let pair = ftpsgate::tls::self_signed(&["127.0.0.1".into()])?;
        let (cert, key) = pair.write_to(work.path())?;
        let gw_ca: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&cert)?.collect::<Result<_, _>>()?;
        let vs_cert = ftps.cert.clone().ok_or("vsftpd certificate")?;
        let vs_ca: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&vs_cert)?.collect::<Result<_, _>>()?;
        for server in [&plain, &ftps] {
            let f = std::fs::File::create(server.root.join("big.bin"))?;
            f.set_len(plan.transfer_bytes)?;
            let _ = Command::new("chown")
                .arg(USER)
                .arg(server.root.join("big.bin"))
                .status();
        }
        let gw_plain = Gateway::start(plain.addr, &cert, &key, &[]);
        let backend_tls = ["--backend-tls", "explicit", "--backend-ca"].map(String::from);
        let backend_tls = [&backend_tls[..], &[vs_cert.display().to_string()]].concat();
        let gw_tls = Gateway::start(ftps.addr, &cert, &key, &backend_tls);
        // The audit log with each transfer's SHA-256: what hashing the relayed bytes costs.
        let audit = [
            "--audit-log".to_string(),
            work.path().join("audit.jsonl").display().to_string(),
            "--audit-sha256".to_string(),
        ];
        let gw_audit = Gateway::start(plain.addr, &cert, &key, &audit);
        // ProFTPD mod_proxy, the reverse FTPS proxy users would pick instead, to the same backends.
        let mod_proxy = match FtpServer::proftpd_mod_proxy(plain.addr, false)
            .zip(FtpServer::proftpd_mod_proxy(ftps.addr, true))
        {
            Some((mp_plain, mp_tls)) => {
                let ca = |server: &FtpServer| -> Result<Vec<CertificateDer<'static>>, BoxError> {
                    let cert = server.cert.clone().ok_or("mod_proxy certificate")?;
                    Ok(CertificateDer::pem_file_iter(cert)?.collect::<Result<_, _>>()?)
                };
                Some(ModProxy {
                    via_plain: target(mp_plain.addr, Some(&ca(&mp_plain)?))?,
                    via_tls: target(mp_tls.addr, Some(&ca(&mp_tls)?))?,
                    plain: mp_plain,
                    tls: mp_tls,
                })
            }
            None => {
                report.row(
                    "ProFTPD mod_proxy",
                    "skipped: not installed (see .ci/run)".into(),
                );
                None
            }
        };
        let direct_plain = target(plain.addr, None)?;
        let direct_ftps = target(ftps.addr, Some(&vs_ca))?;
        let via_plain = target(gw_plain.addr, Some(&gw_ca))?;
        let via_tls = target(gw_tls.addr, Some(&gw_ca))?;
        let via_audit = target(gw_audit.addr, Some(&gw_ca))?;
        Ok(Rig {
            direct_plain,
            direct_ftps,
            via_plain,
            via_tls,
            via_audit,
            mod_proxy,
            gw_audit,
            gw_tls,
            gw_plain,
            cert,
            key,
            gw_ca,
            work,
            ftps,
            plain,
        })
    }
}

/// A client's target at `addr`: explicit FTPS trusting `ca` when given, plain FTP otherwise.
pub(crate) fn target(
    addr: SocketAddr,
    ca: Option<&[CertificateDer<'static>]>,
) -> Result<Target, BoxError> {
    Ok(Target {
        addr,
        user: USER.into(),
        password: PASSWORD.into(),
        tls: ca.map(client_config).transpose()?,
    })
}
