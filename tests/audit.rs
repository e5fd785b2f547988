//! The audit log, with curl and ftplib in front of vsftpd and the real binary: what each record
//! carries (a transfer's SHA-256, logins), reopening on SIGHUP, write errors and a log that
//! stops taking lines (records dropped and counted, sessions never stalled), refusal records
//! beyond their rate, and the files refused at start.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use support::admin::{scrape, value};
use support::curl::{curl, curl_from, trace};
use support::files::{random_file, sha256_file};
use support::gateway::{admin_on_loopback, suppaftp_session, BackendKind, TestGateway};
use support::net::{free_low_range, free_port};
use support::process::{eventually, have, run_ok, KillOnDrop};
use support::servers::{FtpServer, VsTls};
use support::{MIB, PASSWORD, USER};

/// The audit log's lines, parsed.
fn audit_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect()
}

fn transfers<'a>(lines: &'a [serde_json::Value], command: &str) -> Vec<&'a serde_json::Value> {
    lines
        .iter()
        .filter(|l| l["event"] == "transfer" && l["command"] == command)
        .collect()
}

#[test]
fn the_audit_log_records_transfers_with_their_sha256_and_logins() {
    if !have("curl") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let want = vs.put("audited.bin", MIB);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("audit.jsonl");
    let audit = log.clone();
    let gw = TestGateway::start(vs.backend(), move |s| {
        admin_on_loopback(s);
        s.audit.log = Some(audit);
        s.audit.sha256 = true;
        s.access.failed_login_delay_secs = 0;
    });
    let base = format!("ftp://127.0.0.1:{}/", gw.explicit.port());
    let login = format!("{USER}:{PASSWORD}");
    let got = dir.path().join("got.bin");
    let up = dir.path().join("up.bin");
    let up_sha = random_file(&up, 300_001);
    for args in [
        vec![
            "-o".into(),
            got.display().to_string(),
            format!("{base}audited.bin"),
        ],
        vec![
            "-T".into(),
            up.display().to_string(),
            format!("{base}uploaded.bin"),
        ],
    ] {
        let out = curl(&gw, 30)
            .args(["--ssl-reqd", "--user", &login])
            .args(&args)
            .output()
            .expect("curl");
        assert!(out.status.success(), "{}", trace(&out));
    }
    assert_eq!(sha256_file(&got), want);
    let wrong = curl_from(&gw, "127.0.0.1", &format!("{USER}:wrong"), &[]);
    assert_eq!(wrong.status.code(), Some(67));

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log)
        .expect("audit log")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the owner only");
    let logins = |lines: &[serde_json::Value], outcome: &str| {
        lines
            .iter()
            .filter(|l| l["event"] == "login" && l["outcome"] == outcome && l["user"] == USER)
            .count()
    };
    // Records are written by the audit log's own thread, just after the replies.
    let mut lines = Vec::new();
    eventually(Duration::from_secs(10), || {
        lines = audit_lines(&log);
        logins(&lines, "failed") == 1
    });
    let retr = transfers(&lines, "RETR");
    let stor = transfers(&lines, "STOR");
    assert_eq!((retr.len(), stor.len()), (1, 1), "{lines:#?}");
    let (retr, stor) = (retr[0], stor[0]);
    assert_eq!(retr["sha256"], want.as_str(), "the file on disk");
    assert_eq!(retr["bytes"], MIB as u64);
    assert_eq!(retr["direction"], "download");
    assert_eq!(retr["path"], "audited.bin");
    assert_eq!(stor["sha256"], up_sha.as_str(), "the uploaded file");
    assert_eq!(sha256_file(&vs.root.join("uploaded.bin")), up_sha);
    assert_eq!(stor["direction"], "upload");
    for t in [retr, stor] {
        assert_eq!(t["outcome"], "ok");
        assert_eq!(t["user"], USER);
        assert_eq!(t["client"], "127.0.0.1");
        assert_eq!(t["route"], "default");
        assert_eq!(t["tls_version"], "TLSv1_3");
        assert!(t["session"].as_u64().is_some() && t["duration_ms"].as_u64().is_some());
        assert!(t["time"].as_str().is_some_and(|s| s.ends_with('Z')), "{t}");
    }
    assert_eq!(
        (logins(&lines, "ok"), logins(&lines, "failed")),
        (2, 1),
        "{lines:#?}"
    );
}

#[test]
fn audit_write_errors_are_counted_and_transfers_go_on() {
    if !have("curl") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let want = vs.put("still.bin", 100_000);
    // A FIFO whose reader is gone, as a collector that died leaves it: every write fails
    // (EPIPE), as every write to a full disk would.
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("audit.fifo");
    run_ok(Command::new("mkfifo").args(["-m", "0600"]).arg(&fifo));
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("open the FIFO");
    let audit = fifo.clone();
    let gw = TestGateway::start(vs.backend(), move |s| {
        admin_on_loopback(s);
        s.audit.log = Some(audit);
    });
    drop(reader);
    let got = dir.path().join("got.bin");
    let out = curl(&gw, 30)
        .args(["--ssl-reqd", "--user", &format!("{USER}:{PASSWORD}"), "-o"])
        .arg(&got)
        .arg(format!("ftp://127.0.0.1:{}/still.bin", gw.explicit.port()))
        .output()
        .expect("curl");
    assert!(out.status.success(), "{}", trace(&out));
    assert_eq!(sha256_file(&got), want);
    let errors = || {
        value(
            &scrape(gw.admin.expect("admin")),
            "ftpsgate_audit_write_errors_total",
            &[],
        )
    };
    // Written (and failed) by the audit log's own thread, just after the replies.
    assert!(
        eventually(Duration::from_secs(10), || errors() >= 2.0),
        "login and transfer: {}",
        errors()
    );
}

/// A gateway run from a config file of its own in a test's directory: listening on a free
/// loopback port in front of `backend`, with its own certificate, a passive range, the tables
/// in `extra`, and the audit log wherever [`ConfigFile::write`] puts it.
struct ConfigFile {
    path: std::path::PathBuf,
    /// Everything but `[audit]`.
    base: String,
    listen: SocketAddr,
    cert: std::path::PathBuf,
}

impl ConfigFile {
    fn new(dir: &std::path::Path, backend: &str, extra: &str) -> ConfigFile {
        let pair = ftpsgate::tls::self_signed(&["127.0.0.1".into()]).expect("cert");
        let (cert, key) = pair.write_to(dir).expect("write");
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let pool = free_low_range(4);
        let base = format!(
            "[listen]\nexplicit = [\"{listen}\"]\n[backend]\naddress = \"{backend}\"\n\
             [passive]\nports = \"{pool}-{}\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
            pool + 3,
            cert.display(),
            key.display(),
        );
        let path = dir.join("ftpsgate.toml");
        ConfigFile {
            path,
            base,
            listen,
            cert,
        }
    }

    /// Writes the config with the audit log at `audit`.
    fn write(&self, audit: &std::path::Path) {
        let text = format!("{}[audit]\nlog = \"{}\"\n", self.base, audit.display());
        std::fs::write(&self.path, text).expect("config");
    }

    /// `ftpsgate run` on the config.
    fn run(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ftpsgate"));
        cmd.args(["run", "--config"]).arg(&self.path);
        cmd
    }
}

#[test]
fn the_audit_log_reopens_on_sighup_and_an_unwritable_one_refuses_the_start() {
    if !have("curl") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    vs.put("one.bin", 1000);
    let dir = tempfile::tempdir().expect("tempdir");
    let gw_file = ConfigFile::new(dir.path(), &vs.addr.to_string(), "");
    let (listen, cert) = (gw_file.listen, gw_file.cert.clone());
    let configure = |audit: &std::path::Path| gw_file.write(audit);
    let run = || gw_file.run();

    // A log it cannot open: no start, and the message names the key.
    configure(&dir.path().join("missing-dir/audit.jsonl"));
    let out = run().output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("audit.log"), "{err}");

    let log = dir.path().join("audit.jsonl");
    configure(&log);
    let gw = KillOnDrop(
        run()
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start"),
    );
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect(
            listen
        )
        .is_ok()),
        "gateway did not start"
    );
    let download = || {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "--ssl-reqd", "--cacert"])
            .arg(&cert)
            .args(["--user", &format!("{USER}:{PASSWORD}"), "-o", "/dev/null"])
            .arg(format!("ftp://{listen}/one.bin"))
            .output()
            .expect("curl");
        assert!(out.status.success(), "{}", trace(&out));
    };
    download();
    let retrs = |log: &std::path::Path| transfers(&audit_lines(log), "RETR").len();
    // Written by the audit log's own thread, just after the reply.
    assert!(eventually(Duration::from_secs(10), || retrs(&log) == 1));
    // logrotate: the file is moved away, then the gateway told to reopen.
    let rotated = dir.path().join("audit.jsonl.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    run_ok(Command::new("kill").args(["-HUP", &gw.0.id().to_string()]));
    assert!(
        eventually(Duration::from_secs(10), || log.exists()),
        "not reopened on SIGHUP"
    );
    download();
    eventually(Duration::from_secs(10), || retrs(&log) == 1);
    let (old, new) = (audit_lines(&rotated), audit_lines(&log));
    assert_eq!(transfers(&old, "RETR").len(), 1, "{old:#?}");
    assert_eq!(transfers(&new, "RETR").len(), 1, "{new:#?}");
}

/// Connects to `to` `n` times from 127.0.0.1 and hangs up at once: with 127.0.0.0/8 denied,
/// each is a refusal at accept, and a refusal record. Returns how many connected, up to the
/// first that did not. Each connect may take 10 s: under load the listener's queue drops a
/// SYN and the kernel sends it again a second later, when the gateway still refuses it, so a
/// shorter wait counted one refusal fewer than the gateway made.
fn refused_connections(to: SocketAddr, n: usize) -> usize {
    (0..n)
        .take_while(|_| std::net::TcpStream::connect_timeout(&to, Duration::from_secs(10)).is_ok())
        .count()
}

/// The audit log's lines as read from a pipe: every line read within `limit`, until `done`
/// says enough.
fn read_pipe_until(
    pipe: std::fs::File,
    limit: Duration,
    done: impl Fn(&serde_json::Value) -> bool + Send + 'static,
) -> Vec<serde_json::Value> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    // Blocks when the pipe is empty (the test holds a write end too): the channel bounds it.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object a line");
            let enough = done(&v);
            if tx.send(v).is_err() || enough {
                return;
            }
        }
    });
    let end = std::time::Instant::now() + limit;
    let mut lines = Vec::new();
    while let Ok(v) = rx.recv_timeout(end.saturating_duration_since(std::time::Instant::now())) {
        lines.push(v);
    }
    lines
}

/// An audit log that stops taking lines (a FIFO whose reader stopped reading; a slow disk or
/// a full pipe does the same) costs records, never service: while it is stuck new sessions get
/// their 220 and log in, a session already open answers NOOP, and the records that did not
/// fit are counted; once it is read again, the log says how many it is missing.
#[test]
fn an_audit_log_that_stops_taking_lines_drops_records_and_never_stalls_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("audit.fifo");
    run_ok(Command::new("mkfifo").args(["-m", "0600"]).arg(&fifo));
    // Read and write: the open does not wait for a writer, and the gateway's open (write only)
    // finds a reader. The test then reads nothing until the end.
    let pipe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("open the FIFO");
    let audit = fifo.clone();
    let gw = TestGateway::start(BackendKind::Unftp, move |s| {
        admin_on_loopback(s);
        s.audit.log = Some(audit);
        // Every refusal gets its record (the rate limit has a test of its own), to fill the pipe.
        s.audit.refusals_per_sec = u32::MAX;
        // Refused at accept with a record each: the flood. The sessions come over [::1].
        s.access.deny = ftpsgate::config::Networks::new(vec!["127.0.0.0/8".parse().unwrap()]);
    });
    let admin = gw.admin.expect("admin");
    let dropped = || {
        value(
            &scrape(admin),
            "ftpsgate_audit_dropped_total",
            &[("reason", "queue_full")],
        )
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut open = rt.block_on(suppaftp_session(gw.explicit6, &gw.ca));

    // The pipe holds 64 KiB and the queue 4096 records: a few thousand refusals fill both.
    let (mut flooded, flooding) = (0, std::time::Instant::now());
    while dropped() == 0.0 {
        assert!(
            flooded < 40_000 && flooding.elapsed() < Duration::from_secs(120),
            "no record dropped after {flooded} refusals"
        );
        flooded += refused_connections(gw.explicit, 500);
    }
    let before = dropped();

    // A new session: its 220 at once, and a login (whose record is dropped too).
    let started = std::time::Instant::now();
    let mut greeted = std::net::TcpStream::connect(gw.explicit6).expect("connect");
    greeted
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut greeting = [0u8; 4];
    std::io::Read::read_exact(&mut greeted, &mut greeting).expect("a 220 within 5 s");
    assert_eq!(&greeting, b"220 ");
    assert!(started.elapsed() < Duration::from_secs(5));
    rt.block_on(async {
        let five = Duration::from_secs(5);
        let mut fresh = tokio::time::timeout(five, suppaftp_session(gw.explicit6, &gw.ca))
            .await
            .expect("a login within 5 s");
        let noop = tokio::time::timeout(five, fresh.noop()).await;
        noop.expect("within 5 s").expect("NOOP on the new session");
        // The session opened before the log stalled.
        let noop = tokio::time::timeout(five, open.noop()).await;
        noop.expect("within 5 s").expect("NOOP on the open session");
    });
    assert!(
        dropped() > before,
        "the login's record was dropped and counted"
    );

    // Read again: the writer catches up, and says what it dropped.
    let lines = read_pipe_until(pipe, Duration::from_secs(20), |v| v["event"] == "dropped");
    let summary = lines.last().expect("lines");
    assert_eq!(summary["event"], "dropped", "{summary}");
    assert_eq!(summary["reason"], "queue_full");
    assert!(summary["records"].as_u64().expect("records") as f64 >= before);
    // Before it, the records the pipe held, whole and in the order of events.
    let sessions: Vec<u64> = lines
        .iter()
        .filter(|l| l["event"] == "refusal")
        .map(|l| l["session"].as_u64().expect("session"))
        .collect();
    assert!(sessions.len() > 100, "{}", sessions.len());
    assert!(sessions.windows(2).all(|w| w[0] < w[1]), "in order");
}

/// A flood of refused connections costs at most `audit.refusals_per_sec` records a second; the
/// rest are counted, and summed up in the log: records written plus records dropped make the
/// refusals.
#[test]
fn refusal_records_beyond_the_rate_are_summed_up_not_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("audit.jsonl");
    let audit = log.clone();
    let gw = TestGateway::start(BackendKind::Unftp, move |s| {
        admin_on_loopback(s);
        s.audit.log = Some(audit);
        s.audit.refusals_per_sec = 5;
        s.access.deny = ftpsgate::config::Networks::new(vec!["127.0.0.0/8".parse().unwrap()]);
    });
    let started = std::time::Instant::now();
    let connected = refused_connections(gw.explicit, 300) as f64;
    let lines = |kind: &str| {
        audit_lines(&log)
            .into_iter()
            .filter(|l| l["event"] == kind)
            .collect::<Vec<_>>()
    };
    // Every connection refused, each refusal either written or dropped, and those dropped
    // summed up in the log (within a second of them).
    let (mut refused, mut limited, mut written) = (0.0, 0.0, 0.0);
    let settled = eventually(Duration::from_secs(10), || {
        let metrics = scrape(gw.admin.expect("admin"));
        refused = value(
            &metrics,
            "ftpsgate_refusals_total",
            &[("reason", "access_denied")],
        );
        limited = value(
            &metrics,
            "ftpsgate_audit_dropped_total",
            &[("reason", "rate_limited")],
        );
        let summed: u64 = lines("dropped")
            .iter()
            .map(|l| l["records"].as_u64().unwrap())
            .sum();
        written = lines("refusal").len() as f64;
        refused == connected && summed as f64 == limited && written + limited == refused
    });
    assert!(
        settled,
        "{refused} refused of {connected}, {written} written, {limited} dropped: {:#?}",
        lines("dropped")
    );
    // A burst of 5, then 5 a second.
    let took = started.elapsed().as_secs_f64();
    assert!(written <= 5.0 + 5.0 * took, "{written} in {took} s");
    assert!(limited > 0.0);
    assert!(lines("dropped")
        .iter()
        .all(|l| l["reason"] == "rate_limited"));
}

/// The audit log is opened without following a symbolic link and must be the gateway's own,
/// closed to others (0600 or 0640): a symlink or a file others may write refuses the start
/// with the reason; the normal case creates it 0600; and a SIGHUP that would reopen onto a
/// symlink keeps writing the old file and says why.
#[test]
fn an_audit_log_that_is_a_symlink_or_open_to_others_is_refused_at_start_and_on_sighup() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    // Every connection is refused at accept, with a refusal record: no backend needed.
    let deny = "[access]\ndeny = [\"127.0.0.0/8\"]\n";
    let gw_file = ConfigFile::new(dir.path(), "127.0.0.1:9", deny);
    let listen = gw_file.listen;
    let configure = |audit: &std::path::Path| gw_file.write(audit);
    let run = || gw_file.run();
    // Exits at once, non-zero, naming the key and `why`.
    let refused = |why: &str| {
        let err_file = dir.path().join("refused.log");
        let mut gw = KillOnDrop(
            run()
                .stderr(std::fs::File::create(&err_file).expect("stderr"))
                .spawn()
                .expect("run"),
        );
        let mut status = None;
        eventually(Duration::from_secs(10), || {
            status = gw.0.try_wait().expect("wait");
            status.is_some()
        });
        let err = std::fs::read_to_string(&err_file).unwrap_or_default();
        assert!(status.is_some_and(|s| !s.success()), "started: {err}");
        assert!(err.contains("audit.log") && err.contains(why), "{err}");
    };
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };

    // A symlink, even to a file fit to be the log: refused, and nothing written through it.
    let target = dir.path().join("elsewhere.jsonl");
    std::fs::write(&target, b"").expect("write");
    chmod(&target, 0o600);
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    configure(&link);
    refused("symbolic link");
    // A file everyone may write: refused, its mode named.
    let open = dir.path().join("open.jsonl");
    std::fs::write(&open, b"").expect("write");
    chmod(&open, 0o666);
    configure(&open);
    refused("mode 0666");

    // The normal case: created 0600, and written.
    let log = dir.path().join("audit.jsonl");
    configure(&log);
    let stderr = dir.path().join("stderr.log");
    let gw = KillOnDrop(
        run()
            .stderr(std::fs::File::create(&stderr).expect("stderr"))
            .spawn()
            .expect("start"),
    );
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect(
            listen
        )
        .is_ok()),
        "gateway did not start"
    );
    let mode = std::fs::metadata(&log)
        .expect("created")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let refusals = |log: &std::path::Path| {
        audit_lines(log)
            .iter()
            .filter(|l| l["event"] == "refusal")
            .count()
    };
    assert!(eventually(Duration::from_secs(10), || refusals(&log) >= 1));

    // logrotate's move, then a symlink where the log was, then SIGHUP: the old file stays.
    let rotated = dir.path().join("audit.jsonl.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    std::os::unix::fs::symlink(&target, &log).expect("symlink");
    run_ok(Command::new("kill").args(["-HUP", &gw.0.id().to_string()]));
    let said = || std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(10), || said()
            .contains("cannot reopen the audit log")),
        "{}",
        said()
    );
    assert!(said().contains("symbolic link"), "{}", said());
    let before = refusals(&rotated);
    let _ = std::net::TcpStream::connect(listen).expect("connect");
    assert!(
        eventually(Duration::from_secs(10), || refusals(&rotated) > before),
        "records go on to the old file"
    );
    assert_eq!(
        std::fs::read(&target).expect("target"),
        b"",
        "nothing through the link"
    );
}
