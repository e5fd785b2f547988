//! Client programs run as peers: each run bounded in time, and the clients that need a program
//! of the tests' own (Apache Commons Net: tests/java, Node's basic-ftp: tests/node) found, or
//! skipped loudly on a laptop and failed in CI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::{have, run_ok};

/// Where .ci/run's `apt-get install libcommons-net-java` puts Commons Net.
const COMMONS_NET_JAR: &str = "/usr/share/java/commons-net.jar";

/// `cmd` under coreutils' `timeout`: killed after `limit` (and KILLed 5 s later if it ignores
/// the TERM), environment and all, so no peer can hang a test.
pub fn bounded(limit: Duration, cmd: &Command) -> Command {
    let mut wrapped = Command::new("timeout");
    wrapped
        .args(["--kill-after=5", &format!("{}s", limit.as_secs().max(1))])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    wrapped
}

/// Fails the test in CI, and says loudly on a laptop (where the caller then skips), that
/// `what` is missing (`how` installs it).
fn missing(what: &str, how: &str) {
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{what} is required in CI ({how})"
    );
    eprintln!("\n!!!!! SKIPPED: {what} is missing ({how}) !!!!!\n");
}

/// The classpath of tests/java/CommonsNet.java compiled once per test process against
/// Debian's commons-net.jar (run it as `java -cp CLASSPATH CommonsNet ...`); `None` (skip)
/// without a JDK or the jar.
pub fn commons_net() -> Option<String> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    if !have("javac") || !have("java") {
        return None;
    }
    if !Path::new(COMMONS_NET_JAR).exists() {
        missing(COMMONS_NET_JAR, "apt-get install libcommons-net-java");
        return None;
    }
    let classes = BUILT.get_or_init(|| {
        let out = std::env::temp_dir().join(format!("ftpsgate-java-{}", std::process::id()));
        std::fs::create_dir_all(&out).expect("class dir");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../java/CommonsNet.java");
        run_ok(&mut bounded(
            Duration::from_secs(120),
            Command::new("javac")
                .args(["-cp", COMMONS_NET_JAR, "-d"])
                .arg(&out)
                .arg(source),
        ));
        out
    });
    Some(format!("{}:{COMMONS_NET_JAR}", classes.display()))
}

/// tests/node/basic_ftp.js, when node and basic-ftp (`npm ci --prefix tests/node`) are there.
pub fn basic_ftp() -> Option<PathBuf> {
    if !have("node") {
        return None;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../node");
    if !dir.join("node_modules/basic-ftp").exists() {
        missing("basic-ftp", "npm ci --prefix tests/node");
        return None;
    }
    Some(dir.join("basic_ftp.js"))
}
