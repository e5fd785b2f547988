//! Memory per idle, logged-in TLS session, with an in-process libunftp backend (vsftpd would
//! need a process per session).

use std::time::Duration;

use support::control::BoxError;
use support::transfer::Session;
use support::{PASSWORD, USER};

use crate::rig::{target, Gateway, Rig};
use crate::{Plan, Report};

/// The gateway's memory as the idle sessions reach each of the plan's counts; `fd_limit`
/// (this process's open files) caps them.
pub(crate) async fn measure(
    plan: &Plan,
    rig: &Rig,
    fd_limit: usize,
    report: &mut Report,
) -> Result<(), BoxError> {
    let root = rig.work.path().join("unftp");
    std::fs::create_dir_all(&root)?;
    let unftp = ftpsgate::demo::start_backend(&root, USER, PASSWORD).await?;
    let gw_idle = Gateway::start(unftp, &rig.cert, &rig.key, &[]);
    let idle_target = target(gw_idle.addr, Some(&rig.gw_ca))?;
    let mut open = Vec::new();
    // Three descriptors per session here (the client's socket, the in-process backend's socket
    // and the backend's handle on its root directory) and two in the gateway; keep a margin
    // for the backend's listeners and everything else.
    let most = fd_limit.saturating_sub(500) / 3;
    for &wanted in &plan.idle_counts {
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
    Ok(())
}
