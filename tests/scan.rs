//! Uploads scanned over ICAP before the backend sees them (`[scan]`), against the real thing:
//! clamd with a one-marker database behind c-icap's virus_scan (`support::icap::IcapBed`, all
//! offline), vsftpd as the backend with its command log as the witness of what it heard, and
//! the tests' own FTPS client. Every stored file is checked by hash; every flagged one is
//! looked for on vsftpd's disk under any name.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ftpsgate::config::{FailMode, Oversize, PolicySettings, ScanSettings, Settings};
use support::admin::{refusals, scrape, value};
use support::files::sha256;
use support::ftps::Ftps;
use support::gateway::{admin_on_loopback, TestGateway};
use support::icap::{IcapBed, THREAT};
use support::process::eventually;
use support::servers::{vsftpd_logging_commands, FtpServer};
use support::MIB;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "scan/peers.rs"]
mod peers;

/// Random bytes, with the bed's marker planted at `at` when given.
fn file(size: usize, marker: Option<(&[u8], usize)>) -> Vec<u8> {
    let mut data: Vec<u8> = (0..size).map(|_| fastrand::u8(..)).collect();
    if let Some((marker, at)) = marker {
        data[at..at + marker.len()].copy_from_slice(marker);
    }
    data
}

/// A gateway in front of `vs` scanning with `bed`, spooling in `spool` with 8 MiB of memory
/// (so a 64 MiB upload spills to disk), auditing to `audit`; `tweak` adjusts the rest.
fn gateway(
    vs: &FtpServer,
    bed: &IcapBed,
    spool: &Path,
    audit: &Path,
    tweak: impl FnOnce(&mut Settings) + Send + 'static,
) -> TestGateway {
    let url = bed.url.clone();
    let (spool, audit) = (spool.to_path_buf(), audit.to_path_buf());
    TestGateway::start(vs.backend(), move |s| {
        admin_on_loopback(s);
        s.audit.log = Some(audit);
        s.scan = ScanSettings {
            icap: Some(url),
            spool_dir: spool,
            spool_memory: 8 * MIB as u64,
            timeout_secs: 60,
            ..ScanSettings::default()
        };
        tweak(s);
    })
}

/// STOR `name` with `data` on a new data connection: the first reply and the final one.
async fn stor(ftps: &mut Ftps, name: &str, data: &[u8]) -> (String, String) {
    let tcp = ftps.open(&format!("STOR {name}")).await.expect("PASV");
    let first = ftps.reply().await;
    if !first.starts_with("150") {
        return (first, String::new());
    }
    let mut tls = ftps.secure_data(tcp).await;
    tls.write_all(data).await.expect("upload");
    tls.shutdown().await.expect("close_notify");
    // Read to the gateway's end: the TLS ticket it sends with its close_notify is the one the
    // next data connection resumes with (rustls uses each ticket once).
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;
    drop(tls);
    (first, ftps.reply().await)
}

/// STOR `name` with up to 4 MiB, sent until the gateway stops reading (it refuses past a
/// limit): the final reply.
async fn stor_until_refused(ftps: &mut Ftps, name: &str) -> String {
    let tcp = ftps.open(&format!("STOR {name}")).await.expect("PASV");
    assert!(ftps.reply().await.starts_with("150"));
    let mut tls = ftps.secure_data(tcp).await;
    let chunk = vec![7u8; 64 * 1024];
    for _ in 0..64 {
        if tls.write_all(&chunk).await.is_err() {
            break;
        }
    }
    drop(tls);
    ftps.reply().await
}

/// The STOR lines vsftpd heard, from its command log.
fn stored_names(vs: &FtpServer) -> Vec<String> {
    vs.log()
        .lines()
        .filter(|l| l.contains("FTP command") && l.to_uppercase().contains("\"STOR "))
        .map(str::to_string)
        .collect()
}

/// The files in vsftpd's root.
fn on_disk(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .expect("root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn spool_is_empty(gw: &TestGateway, spool: &Path) -> bool {
    let admin = gw.admin.expect("admin");
    std::fs::read_dir(spool).expect("spool").count() == 0
        && value(&scrape(admin), "ftpsgate_spool_bytes", &[]) == 0.0
}

fn scans(gw: &TestGateway, verdict: &str) -> f64 {
    let admin = gw.admin.expect("admin");
    value(
        &scrape(admin),
        "ftpsgate_scans_total",
        &[("verdict", verdict)],
    )
}

fn audit_scans(audit: &Path) -> Vec<serde_json::Value> {
    audited(audit, "scan")
}

/// The audit records of `event`.
fn audited(audit: &Path, event: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

/// Whether the audit log comes to hold a transfer record of `path` ending in `outcome`.
fn transfer_audited(audit: &Path, path: &str, outcome: &str) -> bool {
    eventually(Duration::from_secs(10), || {
        audited(audit, "transfer")
            .iter()
            .any(|r| r["path"] == path && r["outcome"] == outcome && r["direction"] == "upload")
    })
}

struct Bed {
    vs: FtpServer,
    icap: IcapBed,
    dir: tempfile::TempDir,
}

impl Bed {
    fn start() -> Option<Bed> {
        let icap = IcapBed::start()?;
        let vs = vsftpd_logging_commands()?;
        let dir = tempfile::tempdir().expect("tempdir");
        Some(Bed { vs, icap, dir })
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    fn audit(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }
}

#[test]
fn a_clean_upload_arrives_whole_and_a_flagged_one_never_reaches_the_backend() {
    let Some(bed) = Bed::start() else { return };
    let gw = gateway(&bed.vs, &bed.icap, &bed.spool(), &bed.audit(), |_| {});
    let marker = bed.icap.marker.clone();
    let size = 64 * MIB;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut ftps = Ftps::login(gw.explicit, &gw.ca).await;
        let clean = file(size, None);
        let (first, last) = stor(&mut ftps, "clean.bin", &clean).await;
        assert!(first.starts_with("150"), "{first}");
        assert!(last.starts_with("226"), "{last}");
        assert_eq!(
            sha256(&std::fs::read(bed.vs.root.join("clean.bin")).expect("stored")),
            sha256(&clean)
        );
        // The marker at the very start, in the middle and in the last bytes of 64 MiB.
        for (name, at) in [
            ("start.bin", 0),
            ("middle.bin", size / 2),
            ("end.bin", size - marker.len()),
        ] {
            let infected = file(size, Some((&marker, at)));
            let (first, last) = stor(&mut ftps, name, &infected).await;
            assert!(first.starts_with("150"), "{name}: {first}");
            assert!(
                last.starts_with("550 Upload refused: the file failed the virus scan"),
                "{name}: {last}"
            );
            assert!(spool_is_empty(&gw, &bed.spool()), "{name}: spool left");
        }
        // The session carries on: a small clean file after the refusals.
        let small = file(1000, None);
        let (_, last) = stor(&mut ftps, "after.bin", &small).await;
        assert!(last.starts_with("226"), "{last}");
        assert_eq!(
            sha256(&std::fs::read(bed.vs.root.join("after.bin")).expect("stored")),
            sha256(&small)
        );
        // A file within the ICAP preview, flagged too.
        let tiny = file(100, Some((&marker, 10)));
        let (_, last) = stor(&mut ftps, "tiny.bin", &tiny).await;
        assert!(last.starts_with("550"), "{last}");
        assert!(ftps.cmd("QUIT").await.starts_with("221"));
    });
    assert_eq!(on_disk(&bed.vs.root), ["after.bin", "clean.bin"]);
    let heard = stored_names(&bed.vs);
    assert_eq!(
        heard.len(),
        2,
        "vsftpd heard only the clean STORs: {heard:?}"
    );
    assert!(heard
        .iter()
        .all(|l| !l.contains("start.bin") && !l.contains("end.bin")));
    assert_eq!(scans(&gw, "clean"), 2.0);
    assert_eq!(scans(&gw, "infected"), 4.0);
    assert_eq!(refusals(&gw, "scan_infected"), 4.0);
    assert!(spool_is_empty(&gw, &bed.spool()));
    let audited = audit_scans(&bed.audit());
    let flagged: Vec<_> = audited
        .iter()
        .filter(|r| r["verdict"] == "infected")
        .collect();
    assert_eq!(flagged.len(), 4, "{audited:?}");
    for r in &flagged {
        assert_eq!(r["threat"], THREAT);
        assert_eq!(r["passed"], false);
        assert_eq!(r["scanner"], bed.icap.url.as_str());
        assert!(r["scan_ms"].is_u64());
        assert!(
            r["istag"]
                .as_str()
                .is_some_and(|t| t.starts_with("\"CI0001-")),
            "{r}"
        );
    }
    assert!(audited
        .iter()
        .any(|r| r["verdict"] == "clean" && r["path"] == "clean.bin" && r["passed"] == true));
}

#[test]
fn a_stopped_scanner_refuses_when_closed_and_passes_when_open() {
    let Some(mut bed) = Bed::start() else { return };
    let closed = gateway(&bed.vs, &bed.icap, &bed.spool(), &bed.audit(), |_| {});
    let open_audit = bed.dir.path().join("open.jsonl");
    let open = gateway(&bed.vs, &bed.icap, &bed.spool(), &open_audit, |s| {
        s.scan.fail = FailMode::Open;
    });
    bed.icap.stop_icap();
    let data = file(2 * MIB, None);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut ftps = Ftps::login(closed.explicit, &closed.ca).await;
        let (_, last) = stor(&mut ftps, "closed.bin", &data).await;
        assert!(last.starts_with("451 Upload refused"), "{last}");
        let mut ftps = Ftps::login(open.explicit, &open.ca).await;
        let (_, last) = stor(&mut ftps, "open.bin", &data).await;
        assert!(last.starts_with("226"), "{last}");
    });
    assert_eq!(on_disk(&bed.vs.root), ["open.bin"]);
    assert_eq!(
        sha256(&std::fs::read(bed.vs.root.join("open.bin")).expect("stored")),
        sha256(&data)
    );
    assert_eq!(refusals(&closed, "scan_failed"), 1.0);
    assert_eq!(scans(&closed, "error"), 1.0);
    assert_eq!(scans(&open, "error"), 1.0);
    let passed = audit_scans(&open_audit);
    assert_eq!(passed.len(), 1, "{passed:?}");
    assert_eq!(passed[0]["verdict"], "error");
    assert_eq!(passed[0]["passed"], true);
    // Once the scanner is back, the closed gateway scans again (a new connection).
    bed.icap.start_icap();
    rt.block_on(async {
        let mut ftps = Ftps::login(closed.explicit, &closed.ca).await;
        let (_, last) = stor(&mut ftps, "back.bin", &data).await;
        assert!(last.starts_with("226"), "{last}");
    });
    assert_eq!(scans(&closed, "clean"), 1.0);
}

#[test]
fn oversize_partial_and_too_large_uploads_get_their_replies() {
    let Some(bed) = Bed::start() else { return };
    let refuse = gateway(&bed.vs, &bed.icap, &bed.spool(), &bed.audit(), |s| {
        s.scan.max_size = MIB as u64;
    });
    let pass = gateway(&bed.vs, &bed.icap, &bed.spool(), &bed.audit(), |s| {
        s.scan.max_size = MIB as u64;
        s.scan.oversize = Oversize::Pass;
        // What `pass` spools is bounded by the upload limit (refused at start without one).
        s.policy.max_upload_bytes = Some(4 * MIB as u64);
    });
    let marker = bed.icap.marker.clone();
    let big = file(2 * MIB, Some((&marker, 0)));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut ftps = Ftps::login(refuse.explicit, &refuse.ca).await;
        let (_, last) = stor(&mut ftps, "big.bin", &big).await;
        assert!(last.starts_with("552"), "{last}");
        // APPE, and STOR after REST: the scanner would not see what the backend ends up with.
        let (first, _) = stor(&mut ftps, "small.bin", b"x").await;
        assert!(first.starts_with("150"), "{first}");
        let appe = ftps.open("APPE small.bin").await.expect("PASV");
        let reply = ftps.reply().await;
        assert!(
            reply.starts_with("504 APPE is not available here"),
            "{reply}"
        );
        drop(appe);
        assert!(ftps.cmd("REST 1").await.starts_with("350"));
        let (first, _) = stor(&mut ftps, "small.bin", b"yz").await;
        assert!(
            first.starts_with("504 STOR is not available here"),
            "{first}"
        );
        // A listing between REST and STOR does not take the offset (vsftpd keeps it).
        assert!(ftps.cmd("REST 2").await.starts_with("350"));
        let tcp = ftps.open("LIST").await.expect("PASV");
        ftps.download(tcp, "LIST").await;
        let (first, _) = stor(&mut ftps, "small.bin", b"yz").await;
        assert!(
            first.starts_with("504 STOR"),
            "after REST and LIST: {first}"
        );
        // Line ends converted by the backend (TYPE A) would store other bytes than scanned;
        // STOU's name comes in a 150 the client does not hear.
        assert!(ftps.cmd("TYPE A").await.starts_with("200"));
        let (first, _) = stor(&mut ftps, "small.bin", b"yz").await;
        assert!(first.starts_with("504 STOR"), "under TYPE A: {first}");
        assert!(ftps.cmd("TYPE I").await.starts_with("200"));
        let stou = ftps.open("STOU").await.expect("PASV");
        let reply = ftps.reply().await;
        assert!(reply.starts_with("504 STOU"), "{reply}");
        drop(stou);
        // The backend's REST offset was cleared: the next STOR writes from the start.
        let (_, last) = stor(&mut ftps, "small.bin", b"whole").await;
        assert!(last.starts_with("226"), "{last}");
        // ABOR halfway through: 426 then 226, nothing stored, the session goes on.
        let tcp = ftps.open("STOR aborted.bin").await.expect("PASV");
        assert!(ftps.reply().await.starts_with("150"));
        let mut tls = ftps.secure_data(tcp).await;
        tls.write_all(&[3u8; 100_000]).await.expect("half");
        tls.flush().await.expect("flush");
        ftps.send("ABOR").await;
        let cut = ftps.reply().await;
        assert!(cut.starts_with("426"), "{cut}");
        let abor = ftps.reply().await;
        assert!(abor.starts_with("226"), "{abor}");
        drop(tls);
        assert!(ftps.cmd("NOOP").await.starts_with("200"));
        // Past max_size with oversize = pass: stored unscanned, marker and all.
        let mut ftps = Ftps::login(pass.explicit, &pass.ca).await;
        let (_, last) = stor(&mut ftps, "passed.bin", &big).await;
        assert!(last.starts_with("226"), "{last}");
    });
    assert_eq!(
        std::fs::read(bed.vs.root.join("small.bin")).expect("small"),
        b"whole"
    );
    assert_eq!(
        sha256(&std::fs::read(bed.vs.root.join("passed.bin")).expect("passed")),
        sha256(&big)
    );
    assert!(!bed.vs.root.join("big.bin").exists());
    assert!(!bed.vs.root.join("aborted.bin").exists());
    assert!(
        transfer_audited(&bed.audit(), "aborted.bin", "aborted"),
        "the ABOR before the scan is audited"
    );
    assert_eq!(refusals(&refuse, "scan_oversize"), 1.0);
    assert_eq!(refusals(&refuse, "scan_partial"), 5.0);
    assert_eq!(scans(&pass, "oversize"), 1.0);
    assert!(spool_is_empty(&refuse, &bed.spool()));
}

#[test]
fn max_upload_bytes_refuses_with_552_with_and_without_scanning() {
    let Some(bed) = Bed::start() else { return };
    let policy = PolicySettings {
        max_upload_bytes: Some(MIB as u64),
        ..PolicySettings::default()
    };
    let scanned_policy = policy.clone();
    let url = bed.icap.url.clone();
    let spool = bed.spool();
    let scanned = TestGateway::start(bed.vs.backend(), move |s| {
        admin_on_loopback(s);
        s.policy = scanned_policy;
        s.scan.icap = Some(url);
        s.scan.spool_dir = spool;
    });
    let plain = TestGateway::start(bed.vs.backend(), move |s| {
        admin_on_loopback(s);
        s.policy = policy;
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        for (gw, name) in [(&scanned, "scanned.bin"), (&plain, "plain.bin")] {
            let mut ftps = Ftps::login(gw.explicit, &gw.ca).await;
            // The gateway refuses past 1 MiB.
            let last = stor_until_refused(&mut ftps, name).await;
            assert!(last.starts_with("552"), "{name}: {last}");
            let (_, last) = stor(&mut ftps, "fits.bin", &[1u8; 1000]).await;
            assert!(last.starts_with("226"), "{name}: then {last}");
        }
    });
    // Scanned, the backend never heard of it; relayed, it has what came before the limit.
    assert!(!bed.vs.root.join("scanned.bin").exists());
    assert!(stored_names(&bed.vs)
        .iter()
        .all(|l| !l.contains("scanned.bin")));
    assert_eq!(refusals(&scanned, "upload_too_large"), 1.0);
    assert_eq!(refusals(&plain, "upload_too_large"), 1.0);
}

#[test]
fn twenty_uploads_at_once_and_a_client_that_vanishes_leave_the_spool_empty() {
    let Some(bed) = Bed::start() else { return };
    let gw = gateway(&bed.vs, &bed.icap, &bed.spool(), &bed.audit(), |_| {});
    let marker = bed.icap.marker.clone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let wants = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..20 {
            let (addr, ca) = (gw.explicit, gw.ca.clone());
            let infected = i % 4 == 3;
            let data = file(4 * MIB, infected.then(|| (&marker[..], 2 * MIB)));
            set.spawn(async move {
                let mut ftps = Ftps::login(addr, &ca).await;
                let name = format!("f{i}.bin");
                let (_, last) = stor(&mut ftps, &name, &data).await;
                let want = if infected { "550" } else { "226" };
                assert!(last.starts_with(want), "{name}: {last}");
                (name, (!infected).then(|| sha256(&data)))
            });
        }
        let mut wants = Vec::new();
        while let Some(done) = set.join_next().await {
            wants.push(done.expect("upload"));
        }
        // A client that vanishes mid-upload: half the file, then control and data gone.
        let mut ftps = Ftps::login(gw.explicit, &gw.ca).await;
        let tcp = ftps.open("STOR vanished.bin").await.expect("PASV");
        assert!(ftps.reply().await.starts_with("150"));
        let mut tls = ftps.secure_data(tcp).await;
        tls.write_all(&file(2 * MIB, None)).await.expect("half");
        drop(tls);
        drop(ftps);
        wants
    });
    for (name, want) in &wants {
        let path = bed.vs.root.join(name);
        match want {
            Some(hash) => assert_eq!(&sha256(&std::fs::read(&path).expect(name)), hash),
            None => assert!(!path.exists(), "{name} reached the backend"),
        }
    }
    assert!(!bed.vs.root.join("vanished.bin").exists());
    assert!(
        eventually(Duration::from_secs(10), || spool_is_empty(
            &gw,
            &bed.spool()
        )),
        "the spool holds nothing once every upload has ended"
    );
    assert!(
        transfer_audited(&bed.audit(), "vanished.bin", "failed"),
        "the upload cut before the scan is audited"
    );
    assert_eq!(scans(&gw, "clean"), 15.0);
    assert_eq!(scans(&gw, "infected"), 5.0);
}

#[test]
fn doctor_checks_the_spool_and_asks_each_scanner() {
    let Some(mut bed) = Bed::start() else { return };
    let mut settings = ftpsgate::config::Settings::default();
    settings.backend.addresses = vec![];
    settings.scan.icap = Some(bed.icap.url.clone());
    settings.scan.spool_dir = bed.spool();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let scan_lines = |rt: &tokio::runtime::Runtime, settings: &ftpsgate::config::Settings| {
        rt.block_on(ftpsgate::doctor::run(settings, None))
            .into_iter()
            .filter(|c| c.what == "scan")
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
    };
    let lines = scan_lines(&rt, &settings);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("is created (0700) at start"), "{lines:?}");
    assert!(
        lines[1].starts_with("[ ok ]") && lines[1].contains("ISTag \"CI0001-"),
        "{lines:?}"
    );
    // A route whose own scan table forgets icap goes unscanned: said, as a warning.
    let mut forgot = settings.clone();
    let unscanned = ftpsgate::config::BackendSettings {
        scan: Some(ScanSettings::default()),
        ..settings.backend.clone()
    };
    forgot.routes.insert("drop".into(), unscanned);
    let lines = scan_lines(&rt, &forgot);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0].starts_with("[warn]") && lines[0].contains("routes.drop.scan sets no icap"),
        "{lines:?}"
    );
    bed.icap.stop_icap();
    let lines = scan_lines(&rt, &settings);
    assert!(lines[1].starts_with("[FAIL]"), "{lines:?}");
    assert!(lines[1].contains("scan.fail"), "{lines:?}");
}
