//! PROXY protocol with a real peer, Debian's HAProxy in TCP mode, both ways:
//! - scale-out: two replicas behind HAProxy, which sends PROXY v2 on the control port and on
//!   each replica's one data port (its slice of `passive.ports`); 100 sessions from a client
//!   address the replicas only learn from the headers, every byte hash-checked, and a port
//!   thief at another address, also through the balancer, closed unclaimed;
//! - toward a backend that wants it: the gateway sends v1 or v2 to HAProxy (`accept-proxy`) in
//!   front of vsftpd, and HAProxy's own log names the real client.

// A test, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::admin::{scrape, value};
use support::gateway::{BackendKind, TestGateway};
use support::net::free_port;
use support::peers::bounded;
use support::process::{have, run_ok, KillOnDrop};
use support::servers::{FtpServer, VsTls};

/// The whole passive range, one port per replica: replica i owns port `PASSIVE.0 + i`, and
/// every transfer it carries goes through it.
const PASSIVE: (u16, u16) = (19000, 19001);

/// One replica; all of them serve the same certificate, as replicas behind one name do.
fn replica(backend: &FtpServer, index: u16, cert: &(PathBuf, PathBuf)) -> TestGateway {
    let root = backend.root.clone();
    let addr = backend.addr;
    let (cert, key) = cert.clone();
    TestGateway::start(BackendKind::At(addr, root), move |s| {
        s.tls.cert = Some(cert);
        s.tls.key = Some(key);
        // Each replica on its own loopback address, so the balancer can hold the public ports.
        let ip = Ipv4Addr::new(127, 0, 1, 1 + index as u8);
        s.listen.explicit[0] = SocketAddr::from((ip, 0));
        s.listen.implicit = vec![SocketAddr::from((ip, 0))];
        s.passive.ports = format!("{}-{}", PASSIVE.0, PASSIVE.1)
            .parse()
            .expect("range");
        s.passive.replicas = 2;
        s.passive.replica_index = index;
        s.passive.external_address = Some("127.0.0.1".into());
        s.proxy_protocol.trusted =
            ftpsgate::config::Networks::new(vec!["127.0.0.1/32".parse().expect("net")]);
        s.admin.listen = Some(SocketAddr::from((ip, 0)));
    })
}

/// The peers both tests need: HAProxy, python3, and a vsftpd whose root the scenario can read
/// back. `None` (after the loud skip message) when one is missing.
fn peers() -> Option<FtpServer> {
    if !have("haproxy") || !have("python3") {
        return None;
    }
    let vs = FtpServer::vsftpd(VsTls::None)?;
    run_ok(Command::new("chmod").arg("777").arg(&vs.root));
    Some(vs)
}

#[test]
fn two_replicas_behind_haproxy_serve_100_sessions_whole() {
    let Some(vs) = peers() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = ftpsgate::tls::self_signed(&["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen")
        .write_to(dir.path())
        .expect("write");
    let replicas = [replica(&vs, 0, &pair), replica(&vs, 1, &pair)];
    let control = free_port();
    let mut cfg = format!(
        "global\n  maxconn 2000\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
         timeout client 60s\n  timeout server 60s\n\
         frontend control\n  bind 127.0.0.1:{control}\n  default_backend replicas\n\
         backend replicas\n  balance roundrobin\n"
    );
    for (i, r) in replicas.iter().enumerate() {
        cfg += &format!("  server r{i} {} send-proxy-v2\n", r.explicit);
    }
    for (i, r) in replicas.iter().enumerate() {
        // No port on the server: each connection goes to the port it arrived on.
        cfg += &format!(
            "frontend data{i}\n  bind 127.0.0.1:{}\n  default_backend data{i}\n\
             backend data{i}\n  server r{i} {} send-proxy-v2\n",
            PASSIVE.0 + i as u16,
            r.explicit.ip()
        );
    }
    let _haproxy = haproxy(dir.path(), &cfg, control);

    let mut args = replicas[0].py_args();
    let port = args.iter().position(|a| a == "--port").expect("--port") + 1;
    args[port] = control.to_string();
    let root = args.iter().position(|a| a == "--root").expect("--root") + 1;
    args[root] = vs.root.display().to_string();
    let ca = args.iter().position(|a| a == "--ca").expect("--ca") + 1;
    args[ca] = pair.0.display().to_string();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/scenarios.py");
    let out = run_ok(&mut bounded(
        Duration::from_secs(300),
        Command::new("python3")
            .arg(script)
            .arg("balanced")
            .args(&args)
            .args([
                "--count",
                "100",
                "--source",
                "127.0.0.5",
                "--thief",
                "127.0.0.7",
            ]),
    ));
    let said = String::from_utf8_lossy(&out.stdout);
    println!("{}", said.trim());
    assert!(said.contains("balanced: 100 sessions ok"), "{said}");
    // Each replica served its share, and every transfer it carried ended well.
    let (mut sessions, mut thieves) = (0, 0);
    for (i, r) in replicas.iter().enumerate() {
        let m = scrape(r.admin.expect("admin listener"));
        let count = |name, labels: &[(&str, &str)]| value(&m, name, labels) as u64;
        let served = count("ftpsgate_sessions_total", &[]);
        let ok = count("ftpsgate_transfers_total", &[("outcome", "ok")]);
        let bad = count("ftpsgate_transfers_total", &[]) - ok;
        let unclaimed = count("ftpsgate_passive_unclaimed_connections_total", &[]);
        let pending = count("ftpsgate_passive_leases_in_use", &[]);
        println!(
            "replica {i} ({}, data port {}): {served} sessions, {ok} transfers ok, {bad} not, \
             {unclaimed} data connections from an address without a lease closed",
            r.explicit,
            PASSIVE.0 + i as u16,
        );
        assert!(served >= 40, "replica {i} served {served} sessions");
        assert_eq!(bad, 0, "replica {i}");
        assert_eq!(pending, 0, "replica {i}: leases left pending");
        sessions += served;
        thieves += unclaimed;
    }
    // The 100, and perhaps the connection that waited for HAProxy to listen (HAProxy may or
    // may not have passed it on before it closed).
    assert!(
        (100..=101).contains(&sessions),
        "{sessions} sessions across the replicas"
    );
    assert_eq!(thieves, 1, "the port thief");
}

/// Starts HAProxy on `cfg`, with its log on a pipe; waits for `port`.
fn haproxy(dir: &std::path::Path, cfg: &str, port: u16) -> KillOnDrop {
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).expect("config");
    run_ok(Command::new("haproxy").args(["-c", "-q", "-f"]).arg(&path));
    let log = std::fs::File::create(dir.join("haproxy.log")).expect("log");
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(log)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start haproxy");
    let front = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(front).is_err() {
        assert!(Instant::now() < end, "haproxy listens");
        std::thread::sleep(Duration::from_millis(50));
    }
    KillOnDrop(child)
}

#[test]
fn backends_that_want_proxy_protocol_learn_the_real_client() {
    let Some(vs) = peers() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = format!(
        "global\n  log stdout format raw local0 info\ndefaults\n  mode tcp\n  log global\n  \
         option tcplog\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend ftp\n  bind 127.0.0.1:{port} accept-proxy\n  default_backend vsftpd\n\
         backend vsftpd\n  server vs {}\n",
        vs.addr
    );
    let _haproxy = haproxy(dir.path(), &cfg, port);
    let behind = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    for (version, source) in [
        (ftpsgate::config::ProxyVersion::V1, "127.0.0.5"),
        (ftpsgate::config::ProxyVersion::V2, "127.0.0.6"),
    ] {
        let root = vs.root.clone();
        let gw = TestGateway::start(BackendKind::At(behind, root), move |s| {
            s.backend.proxy_protocol = version;
        });
        let mut args = gw.py_args();
        let root = args.iter().position(|a| a == "--root").expect("--root") + 1;
        args[root] = vs.root.display().to_string();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/scenarios.py");
        run_ok(&mut bounded(
            Duration::from_secs(120),
            Command::new("python3")
                .arg(script)
                .arg("balanced")
                .args(&args)
                .args(["--count", "2", "--source", source]),
        ));
        // HAProxy logs a TCP session when it ends: the client address is the header's.
        let wanted = format!("{source}:");
        let seen = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::read_to_string(dir.path().join("haproxy.log"))
                .is_ok_and(|log| log.lines().any(|l| l.starts_with(&wanted)))
        });
        let log = std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default();
        assert!(seen, "{version:?}: HAProxy never saw {source}:\n{log}");
    }
}
