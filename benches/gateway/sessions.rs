//! Full sessions per second, one to 32 at once: connect, AUTH TLS, login, PBSZ/PROT P, PASV,
//! LIST, QUIT.

use std::time::Instant;

use support::control::BoxError;
use support::transfer::{Passive, Session};

use crate::rig::Rig;
use crate::{Plan, Report};

pub(crate) async fn measure(plan: &Plan, rig: &Rig, report: &mut Report) -> Result<(), BoxError> {
    let mut rate_targets = vec![
        ("direct_ftps", &rig.direct_ftps),
        ("ftpsgate_tls_to_plain", &rig.via_plain),
    ];
    if let Some(mp) = &rig.mod_proxy {
        rate_targets.push(("mod_proxy_tls_to_plain", &mp.via_plain));
    }
    for (name, t) in rate_targets {
        for concurrency in [1usize, 2, 8, 32] {
            let total = plan.sessions.max(concurrency);
            let began = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for worker in 0..concurrency {
                let t = t.clone();
                let n = total / concurrency + usize::from(worker < total % concurrency);
                tasks.spawn(async move {
                    for _ in 0..n {
                        // The session: connect, AUTH TLS, login, PBSZ/PROT P, PASV,
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
    Ok(())
}
