//! ftpsgate benchmarks, all in one run so the ratios hold: data-plane throughput through the
//! gateway against going straight to the backend, and the CPU per GiB it costs against
//! ProFTPD mod_proxy and the machine's floor (a socat relay plus one core's AES-256-GCM), full
//! sessions per second, memory per idle TLS session, the latency the gateway adds to a control
//! command, and this machine's floor (loopback TCP, one core's AES-GCM).
//!
//! `cargo bench --bench gateway` runs it in full (1 GiB transfers, 1,000 and 10,000 sessions);
//! `-- --smoke` runs a small version to prove the harness works; `-- --only sessions,noop` runs
//! only the named parts (floor, throughput, sessions, idle, noop, handshakes), for profiling one
//! of them;
//! `-- --only throughput --rows ftpsgate_tls_to_plain` only the named throughput rows
//! (`ftpsgate_tls_to_plain_8_at_once` names the eight at once and the LIST cost). With
//! `FTPSGATE_BIN=path` the gateways are that build instead of this one: run the same rows with
//! two builds in turn to see what a change buys.
//! It needs root and vsftpd (the tests' harness starts it), and iperf3, openssl and socat for
//! the floor (skipped without them). `FTPSGATE_BENCH_LOG=1` shows the gateways' warnings.
//! Results: a Markdown table on stdout and in target/bench/results.md, and one
//! `bench <name> <value> <unit>` line per figure.

// A benchmark harness, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod handshakes;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use support::control::{client_config, BoxError};
use support::gateway::gateway_command;
use support::net::free_port;
use support::process::raise_fd_limit;
use support::servers::{FtpServer, VsTls};
use support::transfer::{Passive, Session, Target};
use support::{PASSWORD, USER};

struct Plan {
    transfer_bytes: u64,
    runs: usize,
    sessions: usize,
    idle_counts: Vec<usize>,
    noops: usize,
    handshakes: handshakes::Sizes,
    /// The parts to run (`--only a,b`); empty runs them all.
    only: Vec<String>,
    /// The throughput rows to run (`--rows ftpsgate_tls_to_plain,...`, names as printed);
    /// empty runs them all.
    rows: Vec<String>,
}

impl Plan {
    fn new(smoke: bool, only: Vec<String>, rows: Vec<String>) -> Plan {
        if smoke {
            Plan {
                transfer_bytes: 32 << 20,
                runs: 1,
                sessions: 8,
                idle_counts: vec![50],
                noops: 200,
                handshakes: handshakes::Sizes {
                    total: 400,
                    window: 100,
                    wait_grace: false,
                },
                only,
                rows,
            }
        } else {
            Plan {
                transfer_bytes: 1 << 30,
                runs: 3,
                sessions: 100,
                idle_counts: vec![1000, 10000],
                noops: 5000,
                handshakes: handshakes::Sizes {
                    total: 100_000,
                    window: 10_000,
                    wait_grace: true,
                },
                only,
                rows,
            }
        }
    }

    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }

    fn runs_row(&self, row: &str) -> bool {
        self.rows.is_empty() || self.rows.iter().any(|r| r == row)
    }
}

/// The release gateway as its own process, so its memory can be read apart from the client's.
struct Gateway {
    addr: SocketAddr,
    child: Child,
}

impl Gateway {
    /// `extra`: more flags (backend TLS, the audit log).
    fn start(backend: SocketAddr, cert: &Path, key: &Path, extra: &[String]) -> Gateway {
        let port = free_port();
        let lo = 42000 + (port % 50) * 40;
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
        let mut cmd = gateway_command(program, listen, backend, (lo, 40), cert, key);
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

    fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Median, min, max of a sample.
/// CPU seconds a process has used (utime + stime), or with `children` those of its children
/// it has reaped (cutime + cstime): a forking server's sessions. From /proc/PID/stat, in
/// USER_HZ ticks (100 a second on Linux).
fn cpu_secs(pid: u32, children: bool) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let at = |field: usize| fields.get(field - 3)?.parse::<f64>().ok();
    let (a, b) = if children { (16, 17) } else { (14, 15) };
    Some((at(a)? + at(b)?) / 100.0)
}

/// Context switches of a process's threads (voluntary and not): each is a thread going to
/// sleep for want of work and being woken, the cost a relay's batching and its task layout
/// move, with far less noise than CPU time.
fn switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|l| l.contains("voluntary_ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    (v[n / 2], v[0], v[n - 1])
}

/// One whole transfer in a fresh session; the seconds it took.
async fn transfer(t: &Target, dir: &str, bytes: u64) -> Result<f64, BoxError> {
    let mut s = Session::open(t).await?;
    let began = Instant::now();
    if dir == "download" {
        let got = s.download("big.bin").await?;
        if got != bytes {
            return Err(format!("{got} of {bytes} bytes arrived").into());
        }
    } else {
        s.upload("up.bin", bytes).await?;
    }
    let secs = began.elapsed().as_secs_f64();
    s.quit().await?;
    Ok(secs)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[derive(Default)]
struct Report {
    table: String,
    lines: Vec<String>,
}

impl Report {
    fn row(&mut self, what: &str, value: String) {
        let _ = writeln!(self.table, "| {what} | {value} |");
    }
    fn figure(&mut self, name: &str, value: f64, unit: &str) {
        let line = format!("bench {name} {value:.1} {unit}");
        println!("{line}");
        self.lines.push(line);
    }
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    // cargo bench passes --bench; the rest is ours.
    let list = |flag: &str| -> Vec<String> {
        std::env::args()
            .skip_while(|a| a != flag)
            .nth(1)
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    };
    let plan = Plan::new(smoke, list("--only"), list("--rows"));
    let fd_limit = raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = Report::default();
    let _ = writeln!(report.table, "| measure | result |\n|---|---|");
    let floor_cpu = if plan.runs("floor") || plan.runs("throughput") {
        floor(&plan, &mut report)
    } else {
        None
    };
    if let Err(e) = rt.block_on(measure(&plan, fd_limit, floor_cpu, &mut report)) {
        eprintln!("benchmark failed: {e}");
        std::process::exit(1);
    }
    let machine = machine();
    let md = format!(
        "# ftpsgate benchmark{}\n\n{machine}\n\n{}\n```\n{}\n```\n",
        if smoke {
            " (smoke run: small sizes, not figures to quote)"
        } else {
            ""
        },
        report.table,
        report.lines.join("\n")
    );
    println!("\n{md}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("results.md"), md);
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "Machine: {cores} cores ({cpu}), Linux {}; client, gateway and servers share it, all on loopback. \
         The test user's password is SHA-512 crypt at 1,000 rounds, so vsftpd's login costs ~5 ms \
         (yescrypt's ~50 ms would hide the proxies' own cost).",
        kernel.trim()
    )
}

/// The machine's floor: loopback TCP, one core's AES-GCM, and the CPU a plain relay plus
/// AES-256-GCM spend per GiB (returned: the ratios of the throughput part are against it).
fn floor(plan: &Plan, report: &mut Report) -> Option<f64> {
    let port = free_port().to_string();
    let server = Command::new("iperf3")
        .args(["-s", "-1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Ok(mut server) = server {
        std::thread::sleep(Duration::from_millis(300));
        let out = Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", &port, "-t", "3", "-f", "m"])
            .output();
        let _ = server.wait();
        // "... 2800 MBytes/sec ... receiver" is what we want; parse the receiver line.
        let mibs = out.ok().and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.contains("receiver"))
                .and_then(|l| {
                    let parts: Vec<&str> = l.split_whitespace().collect();
                    parts
                        .iter()
                        .position(|p| *p == "Mbits/sec")
                        .and_then(|i| parts.get(i - 1))
                        .and_then(|v| v.parse::<f64>().ok())
                })
        });
        if let Some(mbits) = mibs {
            let mib = mbits * 1e6 / 8.0 / 1048576.0;
            report.figure("floor_loopback_tcp", mib, "MiB/s");
            report.row(
                "floor: loopback TCP (iperf3, 1 stream)",
                format!("{mib:.0} MiB/s"),
            );
        }
    } else {
        report.row(
            "floor: loopback TCP",
            "skipped: iperf3 not installed".into(),
        );
    }
    // AES-256-GCM's rate is kept for the CPU floor below (each measure takes two seconds).
    let mut aes = None;
    for (cipher, label) in [
        ("aes-128-gcm", "AES-128-GCM"),
        ("aes-256-gcm", "AES-256-GCM"),
    ] {
        let rate = openssl_speed(cipher, label);
        if cipher == "aes-256-gcm" {
            aes = rate;
        }
        match rate {
            Some(mib) => {
                let name = format!("floor_{}_one_core", cipher.replace('-', ""));
                report.figure(&name, mib, "MiB/s");
                report.row(
                    &format!("floor: {label}, one core (openssl speed, 16 KiB)"),
                    format!("{mib:.0} MiB/s"),
                );
            }
            None => report.row(
                &format!("floor: {label}"),
                "skipped: openssl not available".into(),
            ),
        }
    }
    // The CPU floor of a TLS-terminating relay: a plain userspace relay's copies plus one
    // core's AES-256-GCM over the same bytes.
    match (relay_cpu(plan.transfer_bytes), aes) {
        (Some(relay), Some(aes)) => {
            let crypt = 1024.0 / aes;
            let floor = relay + crypt;
            report.figure("floor_cpu", floor, "s/GiB");
            report.row(
                "floor: CPU per GiB, socat relay (256 KiB buffers) + AES-256-GCM",
                format!("{relay:.2} + {crypt:.2} = {floor:.2} s/GiB"),
            );
            Some(floor)
        }
        _ => {
            report.row(
                "floor: CPU per GiB",
                "skipped: socat or openssl not installed (see .ci/run)".into(),
            );
            None
        }
    }
}

/// One core's rate for `cipher` on 16 KiB blocks, in MiB/s (`openssl speed`'s last column).
fn openssl_speed(cipher: &str, label: &str) -> Option<f64> {
    let out = Command::new("openssl")
        .args(["speed", "-evp", cipher, "-bytes", "16384", "-seconds", "2"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let kbs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| l.starts_with(label))?
        .split_whitespace()
        .last()?
        .trim_end_matches('k')
        .parse::<f64>()
        .ok()?;
    Some(kbs * 1000.0 / 1048576.0)
}

/// CPU seconds per GiB that socat spends relaying a TCP stream on loopback with 256 KiB
/// buffers: the copies any userspace relay makes, and nothing else.
fn relay_cpu(bytes: u64) -> Option<f64> {
    use std::io::{Read, Write};
    let sink = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
    let sink_port = sink.local_addr().ok()?.port();
    let port = free_port();
    let mut socat = Command::new("socat")
        .args([
            "-b",
            "262144",
            &format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr"),
            &format!("TCP:127.0.0.1:{sink_port}"),
        ])
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pid = socat.id();
    let mut sender = None;
    for _ in 0..100 {
        if let Ok(c) = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            sender = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(mut sender) = sender else {
        let _ = socat.kill();
        let _ = socat.wait();
        return None;
    };
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = sink.accept().ok()?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < bytes {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
        Some(got)
    });
    let chunk = vec![0u8; 256 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        if sender.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len() as u64;
    }
    let got = reader.join().ok().flatten();
    // Read while socat is still alive: the sender has not closed yet.
    let cpu = cpu_secs(pid, false);
    drop(sender);
    let _ = socat.kill();
    let _ = socat.wait();
    let gib = bytes as f64 / f64::from(1u32 << 30);
    got.filter(|&g| g >= bytes).and(cpu).map(|c| c / gib)
}

/// Eight downloads at once through the gateway (aggregate MiB/s and CPU s/GiB), and what a
/// small transfer costs it: gateway CPU per LIST of five names (PASV, a resumed TLS handshake
/// on the data connection, a few hundred bytes).
async fn concurrent_and_small(
    plan: &Plan,
    t: &Target,
    gw: &Gateway,
    server: &FtpServer,
    report: &mut Report,
) -> Result<(), BoxError> {
    let pid = gw.child.id();
    let at_once = 8u64;
    let before = cpu_secs(pid, false);
    let began = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..at_once {
        let t = t.clone();
        tasks.spawn(async move {
            let mut s = Session::open(&t).await?;
            let got = s.download("big.bin").await?;
            s.quit().await?;
            Ok::<u64, BoxError>(got)
        });
    }
    while let Some(r) = tasks.join_next().await {
        let got = r??;
        if got != plan.transfer_bytes {
            return Err(
                format!("8 at once: {got} of {} bytes arrived", plan.transfer_bytes).into(),
            );
        }
    }
    let secs = began.elapsed().as_secs_f64();
    let gib = (at_once * plan.transfer_bytes) as f64 / f64::from(1u32 << 30);
    let rate = gib * 1024.0 / secs;
    report.figure("download_ftpsgate_tls_to_plain_8_at_once", rate, "MiB/s");
    report.row(
        "download, ftpsgate TLS to plain, 8 at once",
        format!("{rate:.0} MiB/s in all"),
    );
    if let (Some(b), Some(a)) = (before, cpu_secs(pid, false)) {
        let cost = (a - b) / gib;
        report.figure(
            "cpu_download_ftpsgate_tls_to_plain_8_at_once",
            cost,
            "s/GiB",
        );
        report.row(
            "CPU per GiB, download, ftpsgate TLS to plain, 8 at once",
            format!("{cost:.2} s/GiB"),
        );
    }

    let dir = server.root.join("list5");
    std::fs::create_dir_all(&dir)?;
    for i in 0..5 {
        std::fs::write(dir.join(format!("name-{i}.txt")), b"x")?;
    }
    let _ = Command::new("chown").arg("-R").arg(USER).arg(&dir).status();
    let lists = if plan.transfer_bytes < 1 << 30 {
        20
    } else {
        500
    };
    let mut s = Session::open(t).await?;
    s.command("CWD list5", 250).await?;
    let before = cpu_secs(pid, false);
    for _ in 0..lists {
        s.list().await?;
    }
    let after = cpu_secs(pid, false);
    s.quit().await?;
    if let (Some(b), Some(a)) = (before, after) {
        let us = (a - b) / f64::from(lists) * 1e6;
        report.figure("cpu_per_list_of_5_names", us, "us");
        report.row(
            "gateway CPU per LIST of 5 names (PASV, resumed data TLS, listing)",
            format!("{us:.0} us"),
        );
    }
    Ok(())
}

async fn measure(
    plan: &Plan,
    fd_limit: usize,
    floor_cpu: Option<f64>,
    report: &mut Report,
) -> Result<(), BoxError> {
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
    let target = |addr, tls: Option<&Vec<CertificateDer<'static>>>| -> Result<Target, BoxError> {
        Ok(Target {
            addr,
            user: USER.into(),
            password: PASSWORD.into(),
            tls: tls.map(|ca| client_config(ca)).transpose()?,
        })
    };
    // ProFTPD mod_proxy, the reverse FTPS proxy users would pick instead, to the same backends.
    let mod_proxy = FtpServer::proftpd_mod_proxy(plain.addr, false)
        .zip(FtpServer::proftpd_mod_proxy(ftps.addr, true));
    let mp_targets = match &mod_proxy {
        Some((mp_plain, mp_tls)) => {
            let ca = |server: &FtpServer| -> Result<Vec<CertificateDer<'static>>, BoxError> {
                let cert = server.cert.clone().ok_or("mod_proxy certificate")?;
                Ok(CertificateDer::pem_file_iter(cert)?.collect::<Result<_, _>>()?)
            };
            Some((
                target(mp_plain.addr, Some(&ca(mp_plain)?))?,
                target(mp_tls.addr, Some(&ca(mp_tls)?))?,
            ))
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

    // a. Throughput, and what each proxy's process spends on it: CPU seconds per GiB relayed
    //    (ftpsgate's own utime + stime; for ProFTPD, which forks a process per session, the
    //    master's cutime + cstime once the session is reaped).
    let mib = plan.transfer_bytes as f64 / 1048576.0;
    let gib = mib / 1024.0;
    let gw_cpu = |g: &Gateway| Some((g.child.id(), false));
    let mut targets = vec![
        ("direct_plain", &direct_plain, None),
        ("direct_ftps", &direct_ftps, None),
        ("ftpsgate_tls_to_plain", &via_plain, gw_cpu(&gw_plain)),
        ("ftpsgate_tls_to_tls", &via_tls, gw_cpu(&gw_tls)),
        (
            "ftpsgate_tls_to_plain_audit_sha256",
            &via_audit,
            gw_cpu(&gw_audit),
        ),
    ];
    if let (Some((mp_plain, mp_tls)), Some((mp_plain_server, mp_tls_server))) =
        (&mp_targets, &mod_proxy)
    {
        targets.push((
            "mod_proxy_tls_to_plain",
            mp_plain,
            Some((mp_plain_server.pid(), true)),
        ));
        targets.push((
            "mod_proxy_tls_to_tls",
            mp_tls,
            Some((mp_tls_server.pid(), true)),
        ));
    }
    let mut cpu_medians = std::collections::HashMap::new();
    for (name, t, cpu) in targets {
        if !plan.runs("throughput") {
            break;
        }
        if !plan.runs_row(name) {
            continue;
        }
        // Counted for ftpsgate only: a forking server's sessions take theirs with them.
        let counted = cpu.filter(|&(_, children)| !children).map(|(pid, _)| pid);
        for dir in ["download", "upload"] {
            let mut rates = Vec::new();
            let mut costs = Vec::new();
            let mut woken = Vec::new();
            let mut failures = Vec::new();
            for _ in 0..plan.runs {
                let before = cpu.and_then(|(pid, children)| cpu_secs(pid, children));
                let switched = counted.and_then(switches);
                let result = transfer(t, dir, plan.transfer_bytes).await;
                if let (Ok(_), Some(a), Some(b)) = (&result, switched, counted.and_then(switches)) {
                    woken.push((b - a) as f64 / gib);
                }
                if cpu.is_some_and(|(_, children)| children) {
                    // The session process must have exited and been reaped.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                let after = cpu.and_then(|(pid, children)| cpu_secs(pid, children));
                if let (Ok(_), Some(b), Some(a)) = (&result, before, after) {
                    costs.push((a - b) / gib);
                }
                match result {
                    Ok(secs) => rates.push(mib / secs),
                    // The peer's failures are results; ftpsgate's (or vsftpd's) are bugs.
                    Err(e) if name.starts_with("mod_proxy") => failures.push(e.to_string()),
                    Err(e) => return Err(format!("{dir} {name}: {e}").into()),
                }
            }
            let label = format!("{dir} {mib:.0} MiB, {}", name.replace('_', " "));
            let failed = match failures.first() {
                None => String::new(),
                Some(e) => format!(
                    "; {} of {} runs failed: {}",
                    failures.len(),
                    plan.runs,
                    e.trim()
                ),
            };
            if rates.is_empty() {
                report.row(&label, format!("no run completed{failed}"));
                continue;
            }
            let (med, min, max) = stats(rates);
            report.figure(&format!("{dir}_{name}"), med, "MiB/s");
            report.row(
                &label,
                format!("{med:.0} MiB/s (min {min:.0}, max {max:.0}){failed}"),
            );
            if !costs.is_empty() {
                let (med, min, max) = stats(costs);
                cpu_medians.insert(format!("{dir}_{name}"), med);
                report.figure(&format!("cpu_{dir}_{name}"), med, "s/GiB");
                report.row(
                    &format!("CPU per GiB, {dir}, {}", name.replace('_', " ")),
                    format!("{med:.2} s/GiB (min {min:.2}, max {max:.2})"),
                );
            }
            if !woken.is_empty() {
                let (med, min, max) = stats(woken);
                report.figure(&format!("switches_{dir}_{name}"), med, "per GiB");
                report.row(
                    &format!(
                        "context switches per GiB, {dir}, {}",
                        name.replace('_', " ")
                    ),
                    format!("{med:.0} (min {min:.0}, max {max:.0})"),
                );
            }
        }
    }
    // The ratios the data plane is judged by: against the floor and against mod_proxy.
    for dir in ["download", "upload"] {
        for backend in ["plain", "tls"] {
            let ours = cpu_medians.get(&format!("{dir}_ftpsgate_tls_to_{backend}"));
            let theirs = cpu_medians.get(&format!("{dir}_mod_proxy_tls_to_{backend}"));
            if let (Some(o), Some(t)) = (ours, theirs) {
                report.row(
                    &format!("CPU ratio, {dir}, TLS to {backend}: ftpsgate / mod_proxy"),
                    format!("{:.2}", o / t),
                );
            }
            if let (Some(o), Some(f), "plain") = (ours, floor_cpu, backend) {
                report.row(
                    &format!("CPU ratio, {dir}, TLS to plain: ftpsgate / floor"),
                    format!("{:.2}", o / f),
                );
            }
        }
    }
    if plan.runs("throughput") && plan.runs_row("ftpsgate_tls_to_plain_8_at_once") {
        concurrent_and_small(plan, &via_plain, &gw_plain, &plain, report).await?;
    }

    // b. Full sessions per second: connect, AUTH TLS, login, PBSZ/PROT P, PASV, LIST, QUIT.
    let mut rate_targets = vec![
        ("direct_ftps", &direct_ftps),
        ("ftpsgate_tls_to_plain", &via_plain),
    ];
    if let Some((mp_plain, _)) = &mp_targets {
        rate_targets.push(("mod_proxy_tls_to_plain", mp_plain));
    }
    for (name, t) in rate_targets {
        if !plan.runs("sessions") {
            break;
        }
        for concurrency in [1usize, 2, 8, 32] {
            let total = plan.sessions.max(concurrency);
            let began = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for worker in 0..concurrency {
                let t = t.clone();
                let n = total / concurrency + usize::from(worker < total % concurrency);
                tasks.spawn(async move {
                    for _ in 0..n {
                        // The issue's session: connect, AUTH TLS, login, PBSZ/PROT P, PASV,
                        // LIST, QUIT.
                        let mut s = Session::open(&t).await?;
                        s.set_passive(Passive::Classic);
                        s.list().await?;
                        s.quit().await?;
                    }
                    Ok::<(), BoxError>(())
                });
            }
            let mut failed = None;
            while let Some(r) = tasks.join_next().await {
                match r? {
                    Ok(()) => {}
                    Err(e) if name.starts_with("mod_proxy") => failed = Some(e.to_string()),
                    Err(e) => return Err(format!("sessions {name}: {e}").into()),
                }
            }
            if let Some(e) = failed {
                report.row(
                    &format!(
                        "full sessions/s, {}, {concurrency} at once",
                        name.replace('_', " ")
                    ),
                    format!("a session failed: {}", e.trim()),
                );
                continue;
            }
            let rate = total as f64 / began.elapsed().as_secs_f64();
            report.figure(
                &format!("sessions_per_s_{name}_c{concurrency}"),
                rate,
                "sessions/s",
            );
            report.row(
                &format!(
                    "full sessions/s, {}, {concurrency} at once",
                    name.replace('_', " ")
                ),
                format!("{rate:.1}"),
            );
        }
    }

    // c. Memory per idle, logged-in TLS session (in-process libunftp backend: vsftpd would
    //    need a process per session).
    let root = work.path().join("unftp");
    std::fs::create_dir_all(&root)?;
    let unftp = ftpsgate::demo::start_backend(&root, USER, PASSWORD).await?;
    let gw_idle = Gateway::start(unftp, &cert, &key, &[]);
    let idle_target = target(gw_idle.addr, Some(&gw_ca))?;
    let mut open = Vec::new();
    // Three descriptors per session here (the client's socket, the in-process backend's socket
    // and the backend's handle on its root directory) and two in the gateway; keep a margin
    // for the backend's listeners and everything else.
    let most = fd_limit.saturating_sub(500) / 3;
    let idle_counts = if plan.runs("idle") {
        &plan.idle_counts[..]
    } else {
        &[]
    };
    for &wanted in idle_counts {
        let count = wanted.min(most);
        if count < wanted {
            report.row(
                &format!("gateway memory per idle TLS session, {wanted} open"),
                format!(
                    "not possible here: the hard limit of {fd_limit} open files allows {count}"
                ),
            );
        }
        if count <= open.len() {
            continue;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = gw_idle.rss_kib();
        let base = open.len();
        let mut stopped = None;
        while open.len() < count {
            match Session::open(&idle_target).await {
                Ok(s) => open.push(s),
                Err(e) => {
                    stopped = Some(e.to_string().trim().to_string());
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = gw_idle.rss_kib();
        let opened = open.len() - base;
        let per = (after.saturating_sub(before)) as f64 / opened.max(1) as f64;
        report.figure(&format!("rss_per_idle_session_{}", open.len()), per, "KiB");
        let note = match stopped {
            None => String::new(),
            Some(e) => format!("; stopped at {} sessions: {e}", open.len()),
        };
        report.row(
            &format!("gateway memory per idle TLS session, {} open", open.len()),
            format!("{per:.1} KiB (RSS {before} → {after} KiB){note}"),
        );
        if open.len() < count {
            break;
        }
    }
    drop(open);

    // d. The latency the gateway adds to a control command: the same backend, straight and
    //    through the gateway (whose client leg is TLS, as it always is).
    let mut p = Vec::new();
    for (name, t) in [("direct_plain", &direct_plain), ("ftpsgate", &via_plain)] {
        if !plan.runs("noop") {
            break;
        }
        let mut s = Session::open(t).await?;
        let mut rtts = Vec::with_capacity(plan.noops);
        for _ in 0..plan.noops {
            rtts.push(s.noop().await?);
        }
        s.quit().await?;
        rtts.sort();
        p.push((name, percentile(&rtts, 0.5), percentile(&rtts, 0.99)));
    }
    if let [(_, d50, d99), (_, g50, g99)] = p[..] {
        let add50 = g50.as_secs_f64() * 1e6 - d50.as_secs_f64() * 1e6;
        let add99 = g99.as_secs_f64() * 1e6 - d99.as_secs_f64() * 1e6;
        report.figure("noop_added_p50", add50, "us");
        report.figure("noop_added_p99", add99, "us");
        report.row(
            "NOOP round trip, straight to vsftpd vs through ftpsgate (p50 / p99)",
            format!(
                "{:.0} / {:.0} us vs {:.0} / {:.0} us: adds {add50:.0} / {add99:.0} us",
                d50.as_secs_f64() * 1e6,
                d99.as_secs_f64() * 1e6,
                g50.as_secs_f64() * 1e6,
                g99.as_secs_f64() * 1e6
            ),
        );
    }
    drop(mod_proxy);

    // e. CPU per full TLS handshake over 100,000 sessions from one address, first and last
    //    10,000, beside HAProxy; and the memory they leave once the binding's grace is over.
    if plan.runs("handshakes") {
        handshakes::measure(&plan.handshakes, plain.addr, (&cert, &key, &gw_ca), report).await?;
    }
    Ok(())
}
