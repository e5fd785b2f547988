//! Bad input and failures get the right reply, never a panic, and the gateway carries on.

// A test, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::thread;
use std::time::Duration;

use ftpsgate::config::ReuseMode;

use support::control::{rustls_client, tls_data};
use support::files::{random_file, sha256};
use support::ftps::Ftps;
use support::gateway::{suppaftp_session, BackendKind, TestGateway};
use support::net::free_port;
use support::process::py_scenario;
use support::scripted::ScriptedBackend;
use support::servers::{FtpServer, VsTls};
use support::MIB;

/// One refusal each, against the in-process backend; each scenario ends by checking the
/// gateway still serves a whole transfer.
fn refused(scenario: &str) {
    let gw = TestGateway::start(BackendKind::Unftp, |_| {});
    py_scenario(&gw, scenario, &[]);
}

#[test]
fn user_before_tls_is_refused_locally() {
    refused("user-before-tls");
}

#[test]
fn overlong_and_malformed_lines_get_500_and_the_session_carries_on() {
    refused("bad-lines");
}

#[test]
fn commands_the_proxy_does_not_carry_get_their_own_codes() {
    refused("unsupported-commands");
}

#[test]
fn garbage_handshakes_are_closed_without_a_plaintext_answer() {
    refused("bad-handshakes");
}

#[test]
fn plaintext_pipelined_after_auth_tls_is_refused() {
    refused("pipelined-after-auth");
}

/// A client that never resumes (plain ftplib) hears 522 within seconds (the scenario allows
/// 10), after the short grace a fresh handshake starts, not at the data connection deadline.
#[test]
fn data_connection_without_session_reuse_is_refused_with_522() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |s| {
        s.timeouts.data_connection_secs = 60;
    });
    py_scenario(&gw, "no-reuse-refused", &[]);
}

/// A neighbour behind the same NAT (the client's address) makes a full handshake that offers
/// no session on the client's data port before the client connects: what a client that never
/// resumes does. It is refused, and it does not end the wait: the client's own resuming
/// connection, half a second later, carries the whole download and gets 226.
#[test]
fn a_neighbours_fresh_handshake_does_not_end_the_clients_wait() {
    let gw = TestGateway::start(BackendKind::Unftp, |s| {
        s.timeouts.data_connection_secs = 60;
    });
    let size = 3 * MIB + 7;
    let want = random_file(&gw.root.join("neighbour.bin"), size);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut ftp = Ftps::login(gw.explicit, &gw.ca).await;
        let port = ftp.epsv().await;

        let fresh = rustls_client(&gw.ca);
        let mut neighbour = tls_data(&fresh, port)
            .await
            .expect("the neighbour's handshake completes");
        assert_eq!(
            neighbour.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        // Refused: closed without a byte (once the gateway has read its Finished).
        let mut buf = [0u8; 1024];
        let got = tokio::time::timeout(Duration::from_secs(30), neighbour.read(&mut buf))
            .await
            .expect("the neighbour is closed");
        assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");

        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut data = ftp.data(port).await;
        let first = ftp.cmd("RETR neighbour.bin").await;
        assert!(first.starts_with("150"), "{first}");
        let mut got = Vec::new();
        data.read_to_end(&mut got).await.expect("download");
        let done = ftp.reply().await;
        assert!(done.starts_with("226"), "{done}");
        assert_eq!(got.len(), size);
        assert_eq!(sha256(&got), want);
        assert!(ftp.cmd("NOOP").await.starts_with("200"));
    });
}

#[test]
fn data_connection_without_session_reuse_is_accepted_when_allowed() {
    let gw = TestGateway::start(BackendKind::Unftp, |s| {
        s.tls.data_session_reuse = ReuseMode::Allow
    });
    py_scenario(&gw, "no-reuse-allowed", &[]);
}

#[test]
fn data_connection_from_another_address_is_refused() {
    let gw = TestGateway::start(BackendKind::Unftp, |_| {});
    py_scenario(&gw, "foreign-data-peer", &[]);
}

#[test]
fn exhausted_pool_answers_425_after_the_wait_and_recovers() {
    let gw = TestGateway::start(BackendKind::Unftp, |s| s.timeouts.passive_wait_secs = 2);
    py_scenario(&gw, "pool-exhausted", &[]);
}

#[test]
fn client_vanishing_mid_transfer_leaves_the_gateway_serving() {
    // vsftpd's transfer log shows how the backend saw the cut upload.
    let Some(vs) = FtpServer::vsftpd_on(VsTls::None, false, "xferlog_enable=YES\n") else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    py_scenario(&gw, "client-vanishes", &[]);
    // The client's upload ended with FIN but no close_notify: the gateway reset the backend's
    // data connection, so vsftpd logged a failed upload, never a complete one.
    let log = vs.log();
    let upload: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("vanish-up.bin"))
        .collect();
    assert!(
        upload.iter().any(|l| l.contains("FAIL UPLOAD")),
        "vsftpd must see the cut upload fail:\n{log}"
    );
    assert!(
        !upload.iter().any(|l| l.contains("OK UPLOAD")),
        "a cut upload stored as complete:\n{log}"
    );
}

#[test]
fn backend_killed_during_a_download_gets_426_at_once() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let want = vs.put("big.bin", 64 * MIB);
    let gw = TestGateway::start(vs.backend(), |_| {});
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut ftp = suppaftp_session(gw.explicit, &gw.ca).await;
        let mut down = ftp.retr_as_stream("big.bin").await.expect("RETR");
        let mut first = vec![0u8; MIB];
        down.read_exact(&mut first).await.expect("first MiB");
        let killed = std::time::Instant::now();
        vs.kill_all();
        let mut rest = Vec::new();
        let _ = down.read_to_end(&mut rest).await;
        let end = down
            .finish()
            .await
            .expect_err("a download from a dead server failed");
        let took = killed.elapsed();
        println!("426 arrived {took:?} after the kill");
        assert!(end.to_string().contains("426"), "{end}");
        // The brief asks for 1 s; the bound here leaves room for a loaded CI machine.
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
        assert_ne!(sha256(&[first, rest].concat()), want, "cannot be whole");
    });
}

#[test]
fn unreachable_backend_gets_421() {
    let dead = free_port();
    let gw = TestGateway::start(BackendKind::Unftp, move |s| {
        s.backend.addresses = vec![format!("127.0.0.1:{dead}").parse().expect("address")];
        s.timeouts.backend_connect_secs = 5;
    });
    py_scenario(&gw, "backend-down", &[]);
    // With `relay_greeting` the gateway connects at once, so the 421 is the first line.
    let relayed = TestGateway::start(BackendKind::Unftp, move |s| {
        s.backend.addresses = vec![format!("127.0.0.1:{dead}").parse().expect("address")];
        s.backend.relay_greeting = true;
    });
    let tcp = std::net::TcpStream::connect(relayed.explicit).expect("connect");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    let mut line = String::new();
    BufReader::new(tcp).read_line(&mut line).expect("line");
    assert!(line.starts_with("421 "), "{line}");
}

#[test]
fn backend_dropping_the_connection_gets_421() {
    // A backend that greets, reads one command and hangs up.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut s) = stream else { continue };
            let _ = s.write_all(b"220 flaky server\r\n");
            let mut line = String::new();
            let _ = BufReader::new(&s).read_line(&mut line);
        }
    });
    let gw = TestGateway::start(BackendKind::Unftp, move |s| {
        s.backend.addresses = vec![addr.into()]
    });
    py_scenario(&gw, "backend-drops", &[]);
}

/// A sibling session's TLS session is good on a data connection; a neighbour's (same address,
/// another user) is refused and the client's own connection still carries the transfer.
#[test]
fn neighbour_offering_another_users_tls_session_is_refused_and_the_client_still_served() {
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let want = sha256(&blob);
    let backend = ScriptedBackend::start(blob);
    let gw = TestGateway::start(BackendKind::At(backend.addr, std::env::temp_dir()), |s| {
        s.timeouts.data_connection_secs = 3;
    });
    py_scenario(
        &gw,
        "cross-session",
        &["--deadline", "3", "--expect", &want],
    );
}
