//! One data port for every transfer (`passive.ports` a single port): the pool leases a port
//! per client address, so one port serves any number of sessions and transfers at once.
//! Real clients through a gateway in front of vsftpd whose pool is that one port, every
//! transfer hash-checked (what arrived against what was sent), and the pool empty afterwards:
//! - 100 sessions from 100 loopback addresses, all 100 leases pending on the port at once,
//!   then downloading a file each (here);
//! - a stranger's connection to the port while the client's lease is pending gets not a byte,
//!   and the client its file whole (here);
//! - rclone, lftp `mirror`, curl, ftplib (with and without TLS reuse), Apache Commons Net,
//!   basic-ftp and wget, several transfers at once from one address (`single_port/clients.rs`).

// A test, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "single_port/clients.rs"]
mod clients;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ftpsgate::config::ReuseMode;
use support::admin::{scrape, value};
use support::control::{localhost, rustls_client, Control};
use support::files::sha256;
use support::ftps::Ftps;
use support::gateway::{admin_on_loopback, TestGateway};
use support::process::{eventually, raise_fd_limit};
use support::servers::{FtpServer, VsTls};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

/// vsftpd, and a gateway in front of it with the admin listener and `data_session_reuse` as
/// given; `None` (skip) without vsftpd. Its `passive.ports` is one free port, the test
/// gateway's own (`support::gateway`): the hundred sessions below find every lease on it.
fn one_port_gateway(reuse: ReuseMode) -> Option<(FtpServer, TestGateway)> {
    let vs = FtpServer::vsftpd(VsTls::None)?;
    let gw = TestGateway::start(vs.backend(), move |s| {
        admin_on_loopback(s);
        s.tls.data_session_reuse = reuse;
    });
    Some((vs, gw))
}

/// A metric of the gateway's /metrics (0 when absent).
fn metric(gw: &TestGateway, name: &str) -> f64 {
    value(&scrape(gw.admin.expect("admin listener")), name, &[])
}

/// Fails the test unless every pending lease is gone within a few seconds of the last
/// transfer (its client may still be closing).
fn no_lease_left(gw: &TestGateway) {
    let gone = eventually(Duration::from_secs(10), || {
        metric(gw, "ftpsgate_passive_leases_in_use") == 0.0
    });
    assert!(
        gone,
        "{} passive leases still pending",
        metric(gw, "ftpsgate_passive_leases_in_use")
    );
}

/// A TCP connection to `to` from the loopback address `source`.
async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind the source address");
    socket.connect(to).await.expect("connect")
}

/// An explicit FTPS session from `source`, logged in (PROT P, TYPE I), with a TLS session
/// store of its own.
async fn session_from(source: Ipv4Addr, gw: &TestGateway) -> Ftps {
    let mut plain = Control::new(connect_from(source, gw.explicit).await);
    let hello = plain.reply().await;
    assert!(hello.starts_with("220"), "{source}: {hello}");
    Ftps::secure(plain, rustls_client(&gw.ca))
        .await
        .log_in()
        .await
}

/// RETR `name` over a data connection from `source` to the 127.0.0.1 port a PASV or EPSV has
/// leased: its bytes, once 226 came.
async fn retr_from(ftps: &mut Ftps, source: Ipv4Addr, port: u16, name: &str) -> Vec<u8> {
    let tcp = connect_from(source, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await;
    ftps.send(&format!("RETR {name}")).await;
    ftps.download(tcp, &format!("{source} RETR {name}")).await
}

/// Runs every task of `set` to its end within `limit`, a task's panic failing the test with
/// its own message (the others, waiting at a barrier for it, are dropped).
async fn all_of(mut set: JoinSet<()>, limit: Duration) {
    let joined = tokio::time::timeout(limit, async {
        while let Some(done) = set.join_next().await {
            if let Err(e) = done {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    })
    .await;
    assert!(joined.is_ok(), "not done within {limit:?}");
}

const SESSIONS: u8 = 100;

#[test]
fn a_hundred_addresses_download_at_once_through_one_data_port() {
    raise_fd_limit();
    let Some((vs, gw)) = one_port_gateway(ReuseMode::Require) else {
        return;
    };
    // A file of its own for each session, so a transfer crossed with another's shows.
    let files: Vec<(String, String)> = (0..SESSIONS)
        .map(|i| {
            let name = format!("many-{i}.bin");
            let hash = vs.put(&name, 200_000 + usize::from(i) * 1009);
            (name, hash)
        })
        .collect();
    let gw = Arc::new(gw);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        // The sessions and the test itself, three times: all logged in; all leased; counted.
        let barrier = Arc::new(Barrier::new(usize::from(SESSIONS) + 1));
        // The port the first lease named: every other must name it too.
        let port = Arc::new(OnceLock::new());
        let mut set = JoinSet::new();
        for (i, (name, want)) in files.into_iter().enumerate() {
            let (gw, barrier, port) = (Arc::clone(&gw), Arc::clone(&barrier), Arc::clone(&port));
            // 127.0.0.2 .. 127.0.0.101.
            let source = Ipv4Addr::new(127, 0, 0, 2 + i as u8);
            set.spawn(async move {
                let mut ftps = session_from(source, &gw).await;
                barrier.wait().await;
                let leased = if i % 2 == 0 {
                    ftps.epsv().await
                } else {
                    ftps.pasv()
                        .await
                        .unwrap_or_else(|r| panic!("{source}: {r}"))
                };
                let port = *port.get_or_init(|| leased);
                assert_eq!(leased, port, "{source} was sent to another port");
                barrier.wait().await;
                barrier.wait().await;
                let got = retr_from(&mut ftps, source, port, &name).await;
                assert_eq!(got.len(), 200_000 + i * 1009, "{source}: {name} cut");
                assert_eq!(sha256(&got), want, "{source}: {name}");
                assert!(ftps.cmd("QUIT").await.starts_with("221"));
            });
        }
        let (gw2, barrier2, port2) = (Arc::clone(&gw), Arc::clone(&barrier), Arc::clone(&port));
        set.spawn(async move {
            barrier2.wait().await;
            barrier2.wait().await;
            let pending =
                tokio::task::spawn_blocking(move || metric(&gw2, "ftpsgate_passive_leases_in_use"))
                    .await
                    .expect("scrape");
            assert_eq!(
                pending,
                f64::from(SESSIONS),
                "every session's lease pending on port {:?} at once",
                port2.get()
            );
            barrier2.wait().await;
        });
        all_of(set, Duration::from_secs(240)).await;
        let port = port.get().expect("a port");
        println!("{SESSIONS} sessions from 127.0.0.2-101 leased port {port} at once, all whole");
    });
    no_lease_left(&gw);
}

#[test]
fn a_stranger_on_the_data_port_gets_nothing_and_the_client_its_file_whole() {
    let Some((vs, gw)) = one_port_gateway(ReuseMode::Require) else {
        return;
    };
    let want = vs.put("mine.bin", 700_000);
    let client = Ipv4Addr::new(127, 0, 0, 2);
    let before = metric(&gw, "ftpsgate_passive_unclaimed_connections_total");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut ftps = session_from(client, &gw).await;
        let port = ftps.epsv().await;
        // The client's lease is pending. Two strangers land on the port first: one says
        // nothing, one sends a real TLS ClientHello (a thief needs a handshake).
        let mut hello = Vec::new();
        rustls::ClientConnection::new(rustls_client(&gw.ca), localhost())
            .expect("client hello")
            .write_tls(&mut hello)
            .expect("client hello");
        for (stranger, says) in [(3, Vec::new()), (4, hello.clone())] {
            let stranger = Ipv4Addr::new(127, 0, 0, stranger);
            let to = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            let tcp = connect_from(stranger, to).await.into_std().expect("std");
            tcp.set_nonblocking(false).expect("blocking");
            tcp.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let got = tokio::task::spawn_blocking(move || {
                let mut tcp = tcp;
                // Written before the gateway closes, or refused by a reset: either is fine.
                let _ = tcp.write_all(&says);
                let mut got = Vec::new();
                match tcp.read_to_end(&mut got) {
                    Ok(_) => Ok(got),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(got),
                    Err(e) => Err(e),
                }
            })
            .await
            .expect("stranger");
            let got = got.unwrap_or_else(|e| panic!("{stranger}: still open ({e})"));
            assert!(got.is_empty(), "{stranger} got {} bytes", got.len());
        }
        let data = retr_from(&mut ftps, client, port, "mine.bin").await;
        assert_eq!(sha256(&data), want, "the client's download");
        assert!(ftps.cmd("QUIT").await.starts_with("221"));
    });
    let after = metric(&gw, "ftpsgate_passive_unclaimed_connections_total");
    assert_eq!(after - before, 2.0, "both strangers counted as unclaimed");
    no_lease_left(&gw);
}
