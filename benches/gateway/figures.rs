//! What the parts read from /proc (memory, CPU time, context switches) and the statistics of a
//! sample.

use std::time::Duration;

/// A process's resident memory, in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU seconds a process has used (utime + stime), or with `children` those of its children
/// it has reaped (cutime + cstime): a forking server's sessions. From /proc/PID/stat, in
/// USER_HZ ticks (100 a second on Linux).
pub(crate) fn cpu_secs(pid: u32, children: bool) -> Option<f64> {
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
pub(crate) fn switches(pid: u32) -> Option<u64> {
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

/// Median, min, max of a sample.
pub(crate) fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    (v[n / 2], v[0], v[n - 1])
}

/// The `p` quantile (0 to 1) of a sorted sample.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
