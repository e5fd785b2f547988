//! curl as every curl of the tests starts: trusting the gateway's certificate, bounded in time.

use std::process::{Command, Output};

use crate::gateway::TestGateway;

/// curl trusting the gateway's certificate, each run bounded by `max_secs`.
pub fn curl(gw: &TestGateway, max_secs: u32) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", &max_secs.to_string(), "--cacert"])
        .arg(&gw.ca);
    cmd
}

/// curl from `source` listing the root as `user`:`password` over explicit FTPS, with its
/// trace (`-v`) on stderr.
pub fn curl_from(gw: &TestGateway, source: &str, login: &str, extra: &[&str]) -> Output {
    curl(gw, 30)
        .args(["-v", "--ssl-reqd", "--interface", source, "--user", login])
        .args(extra)
        .arg(format!("ftp://127.0.0.1:{}/", gw.explicit.port()))
        .output()
        .expect("curl")
}

/// What a command wrote on stderr (curl's `-v` trace).
pub fn trace(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
