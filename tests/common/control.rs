//! Speaking FTP by hand on a control connection, for tests that drive the protocol line by
//! line, and curl as every curl of the tests starts.

use super::*;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The next whole reply on `io` (multi-line ones too, RFC 959 §4.2), or what came before the
/// connection closed or `limit` passed on a line.
pub async fn read_reply<R: AsyncBufRead + Unpin>(io: &mut R, limit: Duration) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        match tokio::time::timeout(limit, io.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => all.push_str(&line),
            _ => return all,
        }
        let b = line.as_bytes();
        if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ' {
            return all;
        }
    }
}

/// curl trusting the gateway's certificate, each run bounded by `max_secs`.
pub fn curl(gw: &TestGateway, max_secs: u32) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", &max_secs.to_string(), "--cacert"])
        .arg(&gw.ca);
    cmd
}
