//! Running peers: processes killed on drop, a tool's presence (a skip on a laptop, a failure in CI), commands that must succeed, bounded waits, the Python scenarios.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::gateway::TestGateway;

/// A child process killed and reaped when the guard drops, even when a test panics first.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Raises this process's soft limit on open files to the hard one (children inherit it) and
/// returns it, for tests and benchmarks that hold thousands of connections.
pub fn raise_fd_limit() -> usize {
    let hard = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024usize);
    let pid = std::process::id().to_string();
    let _ = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status();
    hard
}

/// Polls `f` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Returns false (after a loud message) when `tool` is missing on a developer machine;
/// panics when it is missing in CI.
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{tool} is required in CI (.ci/run installs it)");
        }
        eprintln!("\n!!!!! SKIPPED: {tool} is not installed; install it to run this test !!!!!\n");
    }
    found
}

/// Fails the test unless each of `lines` appears in `report` (a command's output: a doctor or
/// probe report), naming the first one missing.
pub fn has_lines(report: &str, lines: &[&str]) {
    for line in lines {
        assert!(report.contains(line), "{line:?} missing in\n{report}");
    }
}

/// Runs a command, failing the test with its output when it does not succeed.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs one scenario of tests/py/scenarios.py (Python's ftplib) against `gw`.
pub fn py_scenario(gw: &TestGateway, scenario: &str, extra: &[&str]) -> Option<String> {
    if !have("python3") {
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../py/scenarios.py");
    let out = run_ok(
        Command::new("python3")
            .arg(script)
            .arg(scenario)
            .args(gw.py_args())
            .args(extra),
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}
