//! Bad input and failures get the right reply, never a panic, and the gateway carries on.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::thread;

use ftpsgate::config::ReuseMode;

use common::*;

#[test]
fn malformed_lines_user_before_tls_and_unsupported_commands_are_refused() {
    let gw = TestGateway::start(BackendKind::Unftp, |_| {});
    py_scenario(&gw, "refusals", &[]);
}

#[test]
fn data_connection_without_session_reuse_is_refused_with_522() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    py_scenario(&gw, "no-reuse-refused", &[]);
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
fn exhausted_pool_answers_425_at_once_and_recovers() {
    let port = free_low_port();
    let gw = TestGateway::start(BackendKind::Unftp, move |s| {
        s.passive.ports = format!("{port}-{port}").parse().expect("range")
    });
    py_scenario(&gw, "pool-exhausted", &[]);
}

#[test]
fn client_vanishing_mid_transfer_leaves_the_gateway_serving() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    py_scenario(&gw, "client-vanishes", &[]);
}

#[test]
fn unreachable_backend_gets_421() {
    let dead = free_port();
    let gw = TestGateway::start(BackendKind::Unftp, move |s| {
        s.backend.address = format!("127.0.0.1:{dead}");
        s.timeouts.backend_connect_secs = 5;
    });
    py_scenario(&gw, "backend-down", &[]);
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
        s.backend.address = addr.to_string()
    });
    py_scenario(&gw, "backend-drops", &[]);
}

#[test]
fn data_connection_offering_another_sessions_tls_session_is_refused() {
    let gw = TestGateway::start(BackendKind::Unftp, |_| {});
    py_scenario(&gw, "cross-session", &[]);
}
