//! Throughput, straight to vsftpd, through ftpsgate and through mod_proxy, and what each
//! proxy's process spends on it; eight downloads at once; the cost of a small LIST.

use std::process::Command;
use std::time::{Duration, Instant};

use support::control::BoxError;
use support::servers::FtpServer;
use support::transfer::{Session, Target};
use support::USER;

use crate::figures::{cpu_secs, stats, switches};
use crate::rig::{Gateway, Rig};
use crate::{Plan, Report};

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

/// The throughput rows, in each direction, and the CPU ratios against mod_proxy and the floor
/// (`floor_cpu`, s/GiB).
pub(crate) async fn measure(
    plan: &Plan,
    rig: &Rig,
    floor_cpu: Option<f64>,
    report: &mut Report,
) -> Result<(), BoxError> {
    // What each proxy's process spends: CPU seconds per GiB relayed (ftpsgate's own utime +
    // stime; for ProFTPD, which forks a process per session, the master's cutime + cstime once
    // the session is reaped).
    let mib = plan.transfer_bytes as f64 / 1048576.0;
    let gib = mib / 1024.0;
    let gw_cpu = |g: &Gateway| Some((g.child.id(), false));
    let mut targets = vec![
        ("direct_plain", &rig.direct_plain, None),
        ("direct_ftps", &rig.direct_ftps, None),
        (
            "ftpsgate_tls_to_plain",
            &rig.via_plain,
            gw_cpu(&rig.gw_plain),
        ),
        ("ftpsgate_tls_to_tls", &rig.via_tls, gw_cpu(&rig.gw_tls)),
        (
            "ftpsgate_tls_to_plain_audit_sha256",
            &rig.via_audit,
            gw_cpu(&rig.gw_audit),
        ),
    ];
    if let Some(mp) = &rig.mod_proxy {
        targets.push((
            "mod_proxy_tls_to_plain",
            &mp.via_plain,
            Some((mp.plain.pid(), true)),
        ));
        targets.push((
            "mod_proxy_tls_to_tls",
            &mp.via_tls,
            Some((mp.tls.pid(), true)),
        ));
    }
    let mut cpu_medians = std::collections::HashMap::new();
    for (name, t, cpu) in targets {
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
    if plan.runs_row("ftpsgate_tls_to_plain_8_at_once") {
        concurrent_and_small(plan, &rig.via_plain, &rig.gw_plain, &rig.plain, report).await?;
    }
    Ok(())
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
