//! Scanned uploads in front of other servers than the command-logging vsftpd (ProFTPD and
//! pure-ftpd, plain and FTPS; a vsftpd whose idle timer is shorter than the upload), and with
//! a spool out of room (a tmpfs, so root: a loud skip on a laptop without it).

use std::time::Duration;

use ftpsgate::config::{ScanSettings, TlsVersion};
use support::admin::{scrape, value};
use support::files::sha256;
use support::ftps::Ftps;
use support::gateway::{admin_on_loopback, TestGateway};
use support::icap::IcapBed;
use support::servers::{FtpServer, VsTls};
use support::MIB;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{file, on_disk, stor};

/// A gateway scanning with `bed` in front of `server` (spoken to with `tls`, TLS at most
/// `version`), spooling in `spool`.
fn gateway(
    server: &FtpServer,
    (tls, version): (VsTls, TlsVersion),
    bed: &IcapBed,
    spool: &std::path::Path,
    noop_secs: u64,
) -> TestGateway {
    let (url, spool) = (bed.url.clone(), spool.to_path_buf());
    let backend_tls = server.gateway_tls(tls);
    TestGateway::start(server.backend(), move |s| {
        backend_tls(s);
        s.backend.max_tls_version = version;
        admin_on_loopback(s);
        s.scan = ScanSettings {
            icap: Some(url),
            spool_dir: spool,
            spool_memory: 4 * MIB as u64,
            backend_noop_secs: noop_secs,
            ..ScanSettings::default()
        };
    })
}

/// STOR `name` with `data` sent in `pieces`, a second apart: the final reply.
async fn trickle(ftps: &mut Ftps, name: &str, data: &[u8], pieces: usize) -> String {
    let tcp = ftps.open(&format!("STOR {name}")).await.expect("PASV");
    let first = ftps.reply().await;
    assert!(first.starts_with("150"), "{name}: {first}");
    let mut tls = ftps.secure_data(tcp).await;
    for chunk in data.chunks(data.len().div_ceil(pieces)) {
        tls.write_all(chunk).await.expect("chunk");
        tls.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tls.shutdown().await.expect("close_notify");
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;
    drop(tls);
    ftps.reply().await
}

/// ProFTPD and pure-ftpd, plain and over FTPS (ProFTPD checking that each data connection
/// resumes the control connection's TLS session, vsftpd with `require_ssl_reuse`), each a
/// backend of scanned uploads: a clean 16 MiB file (spilled to disk) arrives whole, a flagged
/// one gets 550 and is on no server's disk under any name, and the session stores a clean
/// file after it. Each hears `REST 0` and `TYPE I` before each STOR (docs/ARCHITECTURE.md,
/// "Scanned uploads"), which none refuses; toward a TLS backend the data handshake comes
/// after the scan, long after the data connection was opened at PASV. A last upload trickled
/// over 3 s with `backend_noop_secs = 1` puts NOOPs between each server's PASV and its STOR.
#[test]
fn proftpd_pure_ftpd_and_tls_backends_store_only_what_was_scanned_clean() {
    let Some(bed) = IcapBed::start() else { return };
    // ProFTPD with TLS 1.3 resumes only a few data connections a session (rustls uses each
    // ticket once): the TLS 1.2 cap docs/configuration.md gives for it.
    let (v13, v12) = (TlsVersion::V1_3, TlsVersion::V1_2);
    let servers = [
        (
            "proftpd",
            (VsTls::None, v13),
            FtpServer::proftpd(VsTls::None),
        ),
        (
            "pure-ftpd",
            (VsTls::None, v13),
            FtpServer::pure_ftpd(VsTls::None),
        ),
        (
            "proftpd-tls",
            (VsTls::Explicit, v12),
            FtpServer::proftpd(VsTls::Explicit),
        ),
        (
            "pure-ftpd-tls",
            (VsTls::Explicit, v13),
            FtpServer::pure_ftpd(VsTls::Explicit),
        ),
        (
            "vsftpd-tls",
            (VsTls::Explicit, v13),
            FtpServer::vsftpd(VsTls::Explicit),
        ),
    ];
    let spool = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for (name, tls, server) in servers {
        let Some(server) = server else { continue };
        let gw = gateway(&server, tls, &bed, &spool.path().join(name), 1);
        let clean = file(16 * MIB, None);
        let flagged = file(16 * MIB, Some((&bed.marker, 9 * MIB)));
        let after = file(1000, None);
        rt.block_on(async {
            let mut ftps = Ftps::login(gw.explicit, &gw.ca).await;
            let (first, last) = stor(&mut ftps, "clean.bin", &clean).await;
            assert!(first.starts_with("150"), "{name}: {first}");
            assert!(last.starts_with("226"), "{name}: {last}");
            let (_, last) = stor(&mut ftps, "flagged.bin", &flagged).await;
            assert!(last.starts_with("550"), "{name}: {last}");
            let (_, last) = stor(&mut ftps, "after.bin", &after).await;
            assert!(last.starts_with("226"), "{name}: {last}");
            // NOOPs between the backend's PASV and its STOR do not cost the data connection.
            let last = trickle(&mut ftps, "slow.bin", &after, 3).await;
            assert!(last.starts_with("226"), "{name}: {last}");
            assert!(ftps.cmd("QUIT").await.starts_with("221"));
        });
        let stored = ["after.bin", "clean.bin", "slow.bin"];
        assert_eq!(on_disk(&server.root), stored, "{name}");
        let files = [
            ("clean.bin", &clean),
            ("after.bin", &after),
            ("slow.bin", &after),
        ];
        for (file, data) in files {
            let stored = std::fs::read(server.root.join(file)).expect(file);
            assert_eq!(sha256(&stored), sha256(data), "{name}: {file}");
        }
    }
}

/// The backend's idle timer runs while the gateway receives and scans an upload the backend
/// has not heard of: vsftpd with `idle_session_timeout=3` and a client trickling its file
/// over 8 s. With `scan.backend_noop_secs = 1` vsftpd hears NOOPs, keeps the session and
/// stores the file whole; with 60, it ends the session before the STOR can reach it, and the
/// client gets 426 for the transfer (counted as failed) and 421 for the session.
#[test]
fn the_backend_hears_noops_while_a_slow_upload_is_received() {
    let Some(bed) = IcapBed::start() else { return };
    let extra = "idle_session_timeout=3\nxferlog_enable=YES\nlog_ftp_protocol=YES\n";
    let Some(vs) = FtpServer::vsftpd_on(VsTls::None, false, extra) else {
        return;
    };
    let spool = tempfile::tempdir().expect("tempdir");
    let plain = (VsTls::None, TlsVersion::V1_3);
    let kept = gateway(&vs, plain, &bed, &spool.path().join("kept"), 1);
    let idle = gateway(&vs, plain, &bed, &spool.path().join("idle"), 60);
    let data = file(8 * 256 * 1024, None);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let slow = |gw: &TestGateway, name: &'static str| {
        let (addr, ca, data) = (gw.explicit, gw.ca.clone(), data.clone());
        async move {
            let mut ftps = Ftps::login(addr, &ca).await;
            let last = trickle(&mut ftps, name, &data, 8).await;
            // A transfer cut by a lost backend: 426, then the session's 421.
            let then = if last.starts_with("426") {
                ftps.reply().await
            } else {
                String::new()
            };
            (last, then)
        }
    };
    let (kept_reply, idle_reply) =
        rt.block_on(async { tokio::join!(slow(&kept, "kept.bin"), slow(&idle, "idle.bin")) });
    let ((kept_reply, _), (idle_reply, idle_then)) = (kept_reply, idle_reply);
    assert!(kept_reply.starts_with("226"), "{kept_reply}");
    let stored = std::fs::read(vs.root.join("kept.bin")).expect("kept.bin");
    assert_eq!(sha256(&stored), sha256(&data));
    assert!(
        vs.log().matches("\"NOOP\"").count() >= 4,
        "vsftpd heard the NOOPs:\n{}",
        vs.log()
    );
    // vsftpd's "421 Timeout." went unread; the gateway finds the backend gone when it sends
    // the STOR's preamble after the scan: the transfer failed (426, counted), then the session
    // is over (421).
    assert!(idle_reply.starts_with("426"), "{idle_reply}");
    assert!(idle_then.starts_with("421"), "{idle_then}");
    assert!(!vs.root.join("idle.bin").exists());
    let failed = [("direction", "upload"), ("outcome", "failed")];
    let admin = idle.admin.expect("admin");
    assert_eq!(
        value(&scrape(admin), "ftpsgate_transfers_total", &failed),
        1.0
    );
}

/// A tmpfs of `mib` MiB mounted 0700 at `dir` for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// `None` (a loud skip) without root on a laptop; a failure in CI.
    fn mount(dir: &std::path::Path, mib: u32) -> Option<Tmpfs> {
        if !is_root() {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "the spool-full test needs root (a tmpfs) in CI"
            );
            eprintln!("\n!!!!! SKIPPED: the spool-full test needs root (a tmpfs) !!!!!\n");
            return None;
        }
        std::fs::create_dir_all(dir).expect("mount point");
        support::process::run_ok(
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={mib}m,mode=0700"))
                .arg("tmpfs")
                .arg(dir),
        );
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn is_root() -> bool {
    support::process::run_ok(std::process::Command::new("id").arg("-u")).stdout == b"0\n"
}

/// A spool with no room left: the spool directory on a 72 MiB tmpfs, of which the spool
/// keeps 64 MiB free and promises disk 16 MiB at a time, so an upload that spills past its
/// 1 MiB of memory finds no room. It gets 452 before any scan, the backend hears no STOR, a
/// transfer audit record says `failed`, the spool is empty after, and an upload that fits in
/// memory is scanned and stored on the same session.
#[test]
fn a_spool_without_room_refuses_with_452_and_the_session_goes_on() {
    let Some(bed) = IcapBed::start() else { return };
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let Some(_tmpfs) = Tmpfs::mount(&spool, 72) else {
        return;
    };
    let audit = dir.path().join("audit.jsonl");
    let (url, spool_dir, log) = (bed.url.clone(), spool.clone(), audit.clone());
    let gw = TestGateway::start(vs.backend(), move |s| {
        admin_on_loopback(s);
        s.audit.log = Some(log);
        s.scan = ScanSettings {
            icap: Some(url),
            spool_dir,
            spool_memory: MIB as u64,
            ..ScanSettings::default()
        };
    });
    let small = file(300 * 1024, None);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut ftps = Ftps::login(gw.explicit, &gw.ca).await;
        // The gateway refuses at the spill.
        let last = super::stor_until_refused(&mut ftps, "big.bin").await;
        assert!(last.starts_with("452"), "{last}");
        let (_, last) = stor(&mut ftps, "small.bin", &small).await;
        assert!(last.starts_with("226"), "{last}");
    });
    assert_eq!(on_disk(&vs.root), ["small.bin"]);
    let stored = std::fs::read(vs.root.join("small.bin")).expect("small.bin");
    assert_eq!(sha256(&stored), sha256(&small));
    assert!(super::transfer_audited(&audit, "big.bin", "failed"));
    assert!(super::spool_is_empty(&gw, &spool));
}
