//! A hostile backend (the tests' scripted server, `support::scripted`, misbehaving by user name) behind one
//! gateway: each misbehaviour gets the right reply within its timeout, and a well-behaved
//! session held open meanwhile on the same gateway carries on.

// A test, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use support::control::Control;
use support::files::sha256;
use support::gateway::{suppaftp_retr, BackendKind, TestGateway};
use support::scripted::{Hostile, ScriptedBackend, STAT_WITH_227};
use support::MIB;

const REPLY_TIMEOUT_SECS: u64 = 2;

/// Logs in as `user` (password anything); the error text carries the gateway's reply.
async fn session_as(
    gw: &TestGateway,
    user: &str,
) -> Result<suppaftp::tokio::AsyncRustlsFtpStream, String> {
    let mut ftp = ftpsgate::demo::connect(gw.explicit, &gw.ca)
        .await
        .map_err(|e| e.to_string())?;
    ftp.login(user, "pw").await.map_err(|e| e.to_string())?;
    Ok(ftp)
}

/// A download through the gateway, hash-checked against the backend's blob.
async fn download_checks(ftp: &mut suppaftp::tokio::AsyncRustlsFtpStream, want: &str) {
    ftp.transfer_type(suppaftp::types::FileType::Binary)
        .await
        .expect("TYPE I");
    assert_eq!(sha256(&suppaftp_retr(ftp, "blob").await), want);
}

#[test]
fn hostile_backend_behaviours_get_clear_replies_and_spare_other_sessions() {
    let blob: Vec<u8> = (0..4 * MIB as u32).map(|i| (i % 251) as u8).collect();
    let want = sha256(&blob);
    let backend = ScriptedBackend::start(blob);
    let addr = backend.addr;
    let gw = TestGateway::start(BackendKind::At(addr, std::env::temp_dir()), |s| {
        s.timeouts.backend_reply_secs = REPLY_TIMEOUT_SECS;
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        // Held open through everything below.
        let mut bystander = session_as(&gw, "normal").await.expect("normal session");
        download_checks(&mut bystander, &want).await;

        // Replies split into one-byte segments are reassembled: login, a 4 MiB download and a
        // multi-line reply all arrive whole.
        let mut slow = session_as(&gw, Hostile::BYTEWISE)
            .await
            .expect("bytewise login");
        download_checks(&mut slow, &want).await;
        slow.quit().await.expect("QUIT");

        // A "227" inside a multi-line reply and inside a listing is text: relayed as sent,
        // and the next PASV still works.
        let mut tricky = session_as(&gw, "normal").await.expect("login");
        let listing = tricky.list(None).await.expect("LIST");
        assert!(
            listing
                .iter()
                .any(|l| l.starts_with("227 Entering Passive Mode (6,6,6,6")),
            "{listing:?}"
        );
        download_checks(&mut tricky, &want).await;
        tricky.quit().await.expect("QUIT");

        // A 1 MiB reply line, a reply cut off by a hang-up, and a silent backend: 421, the
        // silent one within the reply timeout.
        for (user, limit) in [
            (Hostile::HUGE_LINE, Duration::from_secs(5)),
            (Hostile::HANGUP, Duration::from_secs(5)),
            (Hostile::SILENT, Duration::from_secs(REPLY_TIMEOUT_SECS + 3)),
        ] {
            let began = Instant::now();
            let err = session_as(&gw, user).await.err().unwrap_or_default();
            assert!(err.contains("421"), "{user}: wanted 421, got {err:?}");
            assert!(
                began.elapsed() < limit,
                "{user}: took {:?}",
                began.elapsed()
            );
        }

        // The data connection reset mid-download: 426, promptly, and the session goes on.
        let mut cut = session_as(&gw, Hostile::RESET).await.expect("login");
        cut.transfer_type(suppaftp::types::FileType::Binary)
            .await
            .expect("TYPE I");
        let began = Instant::now();
        let mut down = cut.retr_as_stream("blob").await.expect("RETR starts");
        let mut data = Vec::new();
        let _ = down.read_to_end(&mut data).await;
        let end = down
            .finish()
            .await
            .expect_err("a cut download is no success");
        assert!(end.to_string().contains("426"), "{end}");
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "{:?}",
            began.elapsed()
        );
        assert!(data.len() < 4 * MIB, "short, and reported as such");
        cut.noop()
            .await
            .expect("the session survives a failed transfer");
        cut.quit().await.expect("QUIT");

        // The session opened before all this still works.
        download_checks(&mut bystander, &want).await;
        bystander.quit().await.expect("QUIT");
    });
}

/// STAT's multi-line reply with a "227" line inside reaches the client whole, as one reply,
/// even when the backend writes it one byte at a time.
#[test]
fn a_227_inside_a_multi_line_reply_is_relayed_as_text() {
    let backend = ScriptedBackend::start(Vec::new());
    let gw = TestGateway::start(BackendKind::At(backend.addr, std::env::temp_dir()), |s| {
        s.tls.required = false;
        // The backend's own STAT, which the gateway answers itself by default.
        s.backend.relay_stat = true;
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for user in ["normal", Hostile::BYTEWISE] {
        let rest = rt.block_on(async {
            let mut ctl = Control::connect(gw.explicit)
                .await
                .expect("connect")
                .with_limit(Duration::from_secs(10));
            assert!(ctl.reply().await.starts_with("220"));
            for cmd in [format!("USER {user}"), "PASS pw".into()] {
                ctl.cmd(&cmd).await;
            }
            // The whole reply, to its `211 End` line, whatever lines inside it start with.
            ctl.cmd("STAT").await
        });
        assert_eq!(rest, STAT_WITH_227, "{user}");
    }
}
