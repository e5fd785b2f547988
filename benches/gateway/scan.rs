//! Upload scanning (`[scan]`): uploads through a gateway that scans with c-icap and clamd (the
//! tests' ICAP bed) against the same gateway build that does not, both in front of the same
//! vsftpd. One upload at a time: wall time and the gateway's CPU per GiB, and apart from them
//! the time the scanner took (the gateway's own `ftpsgate_scan_seconds`). Then [`AT_ONCE`]
//! uploads at once, the same bytes in all: the wall time until the last 226, where the
//! scanner's queue shows.

use std::net::SocketAddr;
use std::time::Instant;

use support::control::BoxError;
use support::icap::{IcapBed, IcapOptions};
use support::net::free_port;
use support::transfer::{Session, Target};

use crate::figures::{cpu_secs, stats};
use crate::rig::{target, Gateway, Rig};
use crate::{Plan, Report};

/// Uploads at once in the concurrent rows.
const AT_ONCE: usize = 8;

/// `n` uploads of `bytes` each at once, each in its own session; the seconds from the first
/// STOR to the last 226.
async fn uploads_at_once(t: &Target, n: usize, bytes: u64) -> Result<f64, BoxError> {
    let mut sessions = Vec::with_capacity(n);
    for _ in 0..n {
        sessions.push(Session::open(t).await?);
    }
    let began = Instant::now();
    // On this thread: `Session::upload`'s future is not `Send` to the compiler (its chunk
    // iterator borrows), and the gateway, not this client, is what is measured.
    let local = tokio::task::LocalSet::new();
    let done = local
        .run_until(async {
            let mut set = tokio::task::JoinSet::new();
            for (i, mut s) in sessions.into_iter().enumerate() {
                set.spawn_local(async move {
                    s.upload(&format!("at-once-{i}.bin"), bytes).await?;
                    Ok::<_, BoxError>(s)
                });
            }
            let mut done = Vec::with_capacity(n);
            while let Some(ended) = set.join_next().await {
                done.push(ended??);
            }
            Ok::<_, BoxError>(done)
        })
        .await?;
    let secs = began.elapsed().as_secs_f64();
    for s in done {
        s.quit().await?;
    }
    Ok(secs)
}

/// One upload in a fresh session; the seconds it took, from STOR to 226.
async fn upload(t: &Target, bytes: u64) -> Result<f64, BoxError> {
    let mut s = Session::open(t).await?;
    let began = Instant::now();
    s.upload("scanned.bin", bytes).await?;
    let secs = began.elapsed().as_secs_f64();
    s.quit().await?;
    Ok(secs)
}

/// `ftpsgate_scan_seconds_sum` on the admin listener at `admin`.
fn scanner_secs(admin: SocketAddr) -> f64 {
    let (_, body) = support::admin::http_get(admin, "/metrics");
    body.lines()
        .find_map(|l| {
            l.strip_prefix("ftpsgate_scan_seconds_sum ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

pub(crate) async fn measure(plan: &Plan, rig: &Rig, report: &mut Report) -> Result<(), BoxError> {
    let options = IcapOptions {
        max_object_size: plan
            .transfer_bytes
            .max(IcapOptions::default().max_object_size),
    };
    let Some(bed) = IcapBed::start_with(options) else {
        report.row(
            "upload scanning",
            "skipped: clamd or c-icap missing (see .ci/run)".into(),
        );
        return Ok(());
    };
    let spool = rig.work.path().join("spool");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let extra = [
        "--scan-icap".to_string(),
        bed.url.clone(),
        "--scan-spool-dir".to_string(),
        spool.display().to_string(),
        "--admin-listen".to_string(),
        admin.to_string(),
    ];
    let scanning = Gateway::start(rig.plain.addr, &rig.cert, &rig.key, &extra);
    let via_scan = target(scanning.addr, Some(&rig.gw_ca))?;
    let mib = plan.transfer_bytes as f64 / 1048576.0;
    let gib = mib / 1024.0;
    let rows = [
        ("off", &rig.via_plain, &rig.gw_plain),
        ("on", &via_scan, &scanning),
    ];
    let mut walls = Vec::new();
    for (scan, t, gw) in rows {
        let (mut wall, mut cpu, mut scanner) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..plan.runs {
            let pid = gw.child.id();
            let before = (
                cpu_secs(pid, false),
                (scan == "on").then(|| scanner_secs(admin)),
            );
            let secs = upload(t, plan.transfer_bytes).await?;
            wall.push(secs);
            if let (Some(b), Some(a)) = (before.0, cpu_secs(pid, false)) {
                cpu.push((a - b) / gib);
            }
            if let Some(b) = before.1 {
                scanner.push(scanner_secs(admin) - b);
            }
        }
        let (med, min, max) = stats(wall);
        walls.push(med);
        report.figure(&format!("upload_scan_{scan}_wall"), med, "s");
        report.row(
            &format!("upload {mib:.0} MiB, TLS to plain, scanning {scan}: wall time"),
            format!("{med:.2} s (min {min:.2}, max {max:.2})"),
        );
        if !cpu.is_empty() {
            let (med, min, max) = stats(cpu);
            report.figure(&format!("upload_scan_{scan}_cpu"), med, "s/GiB");
            report.row(
                &format!("CPU per GiB, upload, scanning {scan} (the gateway's)"),
                format!("{med:.2} s/GiB (min {min:.2}, max {max:.2})"),
            );
        }
        if !scanner.is_empty() {
            let (med, min, max) = stats(scanner);
            report.figure("upload_scan_scanner", med, "s");
            report.row(
                "  of which waiting for the scanner (c-icap + clamd)",
                format!("{med:.2} s (min {min:.2}, max {max:.2})"),
            );
        }
    }
    if let [off, on] = walls[..] {
        report.row(
            "wall time ratio, scanning on / off",
            format!("{:.2}", on / off),
        );
    }
    let each = plan.transfer_bytes / AT_ONCE as u64;
    let mut walls = Vec::new();
    for (scan, t) in [("off", &rig.via_plain), ("on", &via_scan)] {
        let (mut wall, mut scanner) = (Vec::new(), Vec::new());
        for _ in 0..plan.runs {
            let before = scanner_secs(admin);
            wall.push(uploads_at_once(t, AT_ONCE, each).await?);
            scanner.push(scanner_secs(admin) - before);
        }
        let (med, min, max) = stats(wall);
        walls.push(med);
        report.figure(&format!("upload_scan_{scan}_at_once_wall"), med, "s");
        report.row(
            &format!(
                "{AT_ONCE} uploads of {:.0} MiB at once, scanning {scan}: wall time to the last 226",
                each as f64 / 1048576.0
            ),
            format!("{med:.2} s (min {min:.2}, max {max:.2})"),
        );
        if scan == "on" {
            let (med, min, max) = stats(scanner);
            report.row(
                &format!("  the {AT_ONCE} uploads' waits for the scanner, summed"),
                format!("{med:.2} s (min {min:.2}, max {max:.2})"),
            );
        }
    }
    if let [off, on] = walls[..] {
        report.row(
            &format!("wall time ratio, {AT_ONCE} at once, scanning on / off"),
            format!("{:.2}", on / off),
        );
    }
    Ok(())
}
