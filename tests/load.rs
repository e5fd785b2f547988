//! Load at the front door: thousands of connections that never finish TLS are cut by the
//! handshake timeout while real sessions go on, and the per-address limit answers 421.

// A test, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::admin::{scrape, value};
use support::files::{random_file, sha256};
use support::ftps::Ftps;
use support::gateway::{
    admin_on_loopback, suppaftp_retr, suppaftp_session, BackendKind, TestGateway,
};
use support::process::{eventually, raise_fd_limit};
use support::MIB;

const HANDSHAKE_SECS: u64 = 2;

/// Reads one line (a reply) from a plain control connection.
fn read_line(tcp: &TcpStream) -> String {
    let mut line = String::new();
    let _ = BufReader::new(tcp).read_line(&mut line);
    line
}

#[test]
fn connections_that_never_finish_tls_are_cut_while_real_sessions_work() {
    let fds = raise_fd_limit();
    // Each stalled connection costs a descriptor here and one in the gateway (same process);
    // an explicit one also a backend connection and the backend's own two.
    let (implicit, explicit) = if fds >= 12_000 {
        (1500, 500)
    } else {
        eprintln!("\n!!!!! only {fds} open files allowed: a smaller slowloris !!!!!\n");
        (fds / 8, fds / 16)
    };
    let gw = TestGateway::start(BackendKind::Unftp, |s| {
        s.timeouts.tls_handshake_secs = HANDSHAKE_SECS;
        s.limits.max_sessions = 10_000;
        s.limits.max_sessions_per_ip = 10_000;
    });
    let want = random_file(&gw.root.join("real.bin"), MIB);

    // Implicit FTPS: connect and never send a ClientHello.
    let mut stalled: Vec<TcpStream> = (0..implicit)
        .map(|_| TcpStream::connect(gw.implicit).expect("connect implicit"))
        .collect();
    // Explicit FTPS: AUTH TLS, then nothing.
    for _ in 0..explicit {
        let mut tcp = TcpStream::connect(gw.explicit).expect("connect explicit");
        tcp.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        assert!(read_line(&tcp).starts_with("220"));
        tcp.write_all(b"AUTH TLS\r\n").expect("AUTH TLS");
        assert!(read_line(&tcp).starts_with("234"));
        stalled.push(tcp);
    }
    let opened = Instant::now();

    // A real client meanwhile: logs in and downloads, hash-checked.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut ftp = suppaftp_session(gw.explicit, &gw.ca).await;
        let data = suppaftp_retr(&mut ftp, "real.bin").await;
        assert_eq!(sha256(&data), want, "served while under the slowloris");
        ftp.quit().await.expect("QUIT");
    });

    // Every stalled connection is closed by the gateway once the handshake timeout passes.
    let limit = Duration::from_secs(HANDSHAKE_SECS + 15);
    let mut still_open = 0;
    for tcp in &mut stalled {
        let left = limit
            .saturating_sub(opened.elapsed())
            .max(Duration::from_millis(10));
        tcp.set_read_timeout(Some(left)).expect("timeout");
        let mut buf = [0u8; 64];
        match tcp.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            _ => still_open += 1,
        }
    }
    let took = opened.elapsed();
    println!(
        "{} stalled connections ({implicit} implicit, {explicit} explicit) all closed after {took:?}",
        stalled.len()
    );
    assert_eq!(
        still_open, 0,
        "connections left open past the handshake timeout"
    );
    assert!(
        took >= Duration::from_secs(HANDSHAKE_SECS),
        "cut before the timeout"
    );
}

#[test]
fn the_per_address_limit_refuses_with_421_and_spares_other_addresses() {
    let gw = TestGateway::start(BackendKind::Unftp, |s| s.limits.max_sessions_per_ip = 3);
    let connect_from = |source: &str| -> TcpStream {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        let socket = rt.block_on(async {
            let s = tokio::net::TcpSocket::new_v4().expect("socket");
            s.bind(SocketAddr::new(source.parse().expect("ip"), 0))
                .expect("bind source");
            s.connect(gw.explicit).await.expect("connect")
        });
        let std = socket.into_std().expect("std");
        std.set_nonblocking(false).expect("blocking");
        std.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        std
    };
    let held: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.1")).collect();
    for tcp in &held {
        assert!(read_line(tcp).starts_with("220"));
    }
    let fourth = connect_from("127.0.0.1");
    let refused = read_line(&fourth);
    assert!(
        refused.starts_with("421 Too many sessions from your address"),
        "{refused}"
    );
    let other = connect_from("127.0.0.2");
    assert!(
        read_line(&other).starts_with("220"),
        "another address is unaffected"
    );
    drop(held);
    // The slots free as the sessions end.
    let again = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        read_line(&connect_from("127.0.0.1")).starts_with("220")
    });
    assert!(
        again,
        "the address is admitted again once its sessions close"
    );
}

#[test]
fn the_per_address_limit_counts_a_client_once_through_a_v4_and_a_dual_stack_listener() {
    // 127.0.0.1 and [::], which sees the same client as ::ffff:127.0.0.1.
    let gw = TestGateway::start(BackendKind::Unftp, |s| {
        admin_on_loopback(s);
        s.listen.explicit = vec![
            "127.0.0.1:0".parse().expect("addr"),
            "[::]:0".parse().expect("addr"),
        ];
        s.limits.max_sessions_per_ip = 3;
    });
    let admin = gw.admin.expect("admin");
    let dual = SocketAddr::from(([127, 0, 0, 1], gw.explicit6.port()));
    let open = |addr: SocketAddr| {
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        tcp
    };
    let mut held: Vec<TcpStream> = (0..3).map(|_| open(gw.explicit)).collect();
    for tcp in &held {
        assert!(read_line(tcp).starts_with("220"));
    }
    let refused = read_line(&open(dual));
    assert!(
        refused.starts_with("421 Too many sessions from your address"),
        "the 4th session, through [::]: {refused}"
    );
    let per_ip = || {
        value(
            &scrape(admin),
            "ftpsgate_refusals_total",
            &[("reason", "per_ip_limit")],
        )
    };
    assert_eq!(per_ip(), 1.0);
    // One closes: a whole session through [::] gets its slot, logs in and downloads.
    drop(held.pop());
    assert!(
        eventually(Duration::from_secs(10), || value(
            &scrape(admin),
            "ftpsgate_sessions_active",
            &[]
        ) == 2.0),
        "the closed session's slot did not come back"
    );
    let want = random_file(&gw.root.join("dual.bin"), 200_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut ftp = Ftps::login(dual, &gw.ca).await;
        let port = ftp.epsv().await;
        let mut data = ftp.data(port).await;
        let first = ftp.cmd("RETR dual.bin").await;
        assert!(first.starts_with("150"), "{first}");
        let mut got = Vec::new();
        data.read_to_end(&mut got).await.expect("download");
        assert_eq!(sha256(&got), want);
        let done = ftp.reply().await;
        assert!(done.starts_with("226"), "{done}");
        assert!(ftp.cmd("QUIT").await.starts_with("221"));
    });
    assert_eq!(per_ip(), 1.0, "only the 4th was refused");
}
