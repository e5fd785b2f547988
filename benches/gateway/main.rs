//! ftpsgate benchmarks, all in one run so the ratios hold: data-plane throughput through the
//! gateway against going straight to the backend, and the CPU per GiB it costs against
//! ProFTPD mod_proxy and the machine's floor (a socat relay plus one core's AES-256-GCM), full
//! sessions per second, memory per idle TLS session, the latency the gateway adds to a control
//! command, a single passive port against 100 (small files, parallel downloads, many client
//! addresses), and this machine's floor (loopback TCP, one core's AES-GCM).
//!
//! `cargo bench --bench gateway` runs it in full (1 GiB transfers, 1,000 and 10,000 sessions);
//! `-- --smoke` runs a small version to prove the harness works; `-- --only sessions,noop` runs
//! only the named parts (floor, throughput, sessions, idle, noop, ports, scan, handshakes), for
//! profiling one of them;
//! `-- --only throughput --rows ftpsgate_tls_to_plain` only the named throughput rows
//! (`ftpsgate_tls_to_plain_8_at_once` names the eight at once and the LIST cost). With
//! `FTPSGATE_BIN=path` the gateways are that build instead of this one: run the same rows with
//! two builds in turn to see what a change buys.
//! It needs root and vsftpd (the tests' harness starts it), and iperf3, openssl and socat for
//! the floor (skipped without them). `FTPSGATE_BENCH_LOG=1` shows the gateways' warnings.
//! Results: a Markdown table on stdout and in target/bench/results.md, and one
//! `bench <name> <value> <unit>` line per figure.
//!
//! Here: the plan (the command line), the run loop and the report. Each part is a module of its
//! own, on what they share (`rig`: servers, gateways, targets; `figures`: /proc and statistics).

// A benchmark harness, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod figures;
mod floor;
mod handshakes;
mod idle;
mod noop;
mod ports;
mod rig;
mod scan;
mod sessions;
mod throughput;

use std::fmt::Write as _;
use std::path::PathBuf;

use support::control::BoxError;
use support::process::raise_fd_limit;

use rig::Rig;

struct Plan {
    transfer_bytes: u64,
    runs: usize,
    sessions: usize,
    idle_counts: Vec<usize>,
    noops: usize,
    handshakes: handshakes::Sizes,
    ports: ports::Sizes,
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
                ports: ports::Sizes {
                    small_files: 20,
                    at_once_bytes: 1 << 20,
                    sources: 10,
                    rounds: 1,
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
                ports: ports::Sizes {
                    small_files: 200,
                    at_once_bytes: 4 << 20,
                    sources: 100,
                    rounds: 9,
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
        floor::measure(&plan, &mut report)
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

/// The run loop: the servers and gateways the parts share, then each part the plan names, in
/// the order of the table.
async fn measure(
    plan: &Plan,
    fd_limit: usize,
    floor_cpu: Option<f64>,
    report: &mut Report,
) -> Result<(), BoxError> {
    let mut rig = Rig::start(plan, report)?;
    if plan.runs("throughput") {
        throughput::measure(plan, &rig, floor_cpu, report).await?;
    }
    if plan.runs("sessions") {
        sessions::measure(plan, &rig, report).await?;
    }
    if plan.runs("idle") {
        idle::measure(plan, &rig, fd_limit, report).await?;
    }
    if plan.runs("noop") {
        noop::measure(plan, &rig, report).await?;
    }
    if plan.runs("ports") {
        ports::measure(plan, &rig, report).await?;
    }
    if plan.runs("scan") {
        scan::measure(plan, &rig, report).await?;
    }
    // mod_proxy's processes are gone before the handshakes' CPU is counted.
    drop(rig.mod_proxy.take());
    // CPU per full TLS handshake over 100,000 sessions from one address, first and last
    // 10,000, beside HAProxy; and the memory they leave once the binding's grace is over.
    if plan.runs("handshakes") {
        let pki = (rig.cert.as_path(), rig.key.as_path(), &rig.gw_ca[..]);
        handshakes::measure(&plan.handshakes, rig.plain.addr, pki, report).await?;
    }
    Ok(())
}
