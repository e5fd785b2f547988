//! The latency the gateway adds to a control command: NOOP round trips to the same backend,
//! straight and through the gateway (whose client leg is TLS, as it always is).

use support::control::BoxError;
use support::transfer::Session;

use crate::figures::percentile;
use crate::rig::Rig;
use crate::{Plan, Report};

pub(crate) async fn measure(plan: &Plan, rig: &Rig, report: &mut Report) -> Result<(), BoxError> {
    let mut p = Vec::new();
    for (name, t) in [
        ("direct_plain", &rig.direct_plain),
        ("ftpsgate", &rig.via_plain),
    ] {
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
    Ok(())
}
