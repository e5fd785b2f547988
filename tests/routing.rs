//! Routing: several vsftpd servers behind one gateway. Sessions go where their SNI name, their
//! HOST command or their `USER name@route` says (else to the default), spread over a backend's
//! addresses by round-robin or least connections, around addresses the health checks find
//! down, and get 421 when none is left. Each test proves where a session went by the bytes:
//! a file only that server has, hash-checked, and uploads found in that server's root.

// A test, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use ftpsgate::config::{BackendSettings, BackendTlsMode, Balance, HostPort};

use support::admin::{scrape, value};
use support::curl::curl;
use support::files::{random_file, sha256, sha256_file};
use support::gateway::{admin_on_loopback, TestGateway};
use support::process::{have, py_scenario};
use support::servers::{FtpServer, VsTls};
use support::{PASSWORD, USER};

/// curl as `user` for `name` through the gateway reached as `host` (an SNI name when not an
/// address), uploading `upload` when given.
fn curl_as(gw: &TestGateway, host: &str, user: &str, name: &str, upload: Option<&Path>) -> Output {
    let port = gw.explicit.port();
    let mut cmd = curl(gw, 60);
    cmd.arg("--ssl-reqd")
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(["-u", &format!("{user}:{PASSWORD}")]);
    if let Some(file) = upload {
        cmd.arg("-T").arg(file);
    }
    cmd.arg(format!("ftp://{host}:{port}/{name}"))
        .output()
        .expect("run curl")
}

fn succeeded(out: Output) -> Output {
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Downloads `name` as `user` through `host`; returns the SHA-256 of what arrived.
fn fetch(gw: &TestGateway, host: &str, user: &str, name: &str) -> String {
    sha256(&succeeded(curl_as(gw, host, user, name, None)).stdout)
}

/// Uploads `size` random bytes as `name` through `host` as `user`; returns their hash.
fn store(gw: &TestGateway, host: &str, user: &str, name: &str, size: usize) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(name);
    let hash = random_file(&file, size);
    succeeded(curl_as(gw, host, user, name, Some(&file)));
    hash
}

/// Which of `roots` holds `name` with `hash` (exactly one must).
fn landed(roots: &[&Path], name: &str, hash: &str) -> usize {
    let holders: Vec<usize> = (0..roots.len())
        .filter(|&i| roots[i].join(name).exists())
        .collect();
    assert_eq!(holders.len(), 1, "{name} is in roots {holders:?}");
    assert_eq!(sha256_file(&roots[holders[0]].join(name)), hash, "{name}");
    holders[0]
}

/// The labels of one address of the default backend.
fn at(address: &str) -> [(&str, &str); 2] {
    [("route", "default"), ("address", address)]
}

fn route(address: SocketAddr) -> BackendSettings {
    BackendSettings {
        addresses: vec![address.into()],
        ..BackendSettings::default()
    }
}

/// Waits (bounded) until the scraped `metric` with `labels` has `want`.
fn await_metric(admin: SocketAddr, metric: &str, labels: &[(&str, &str)], want: f64) {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let got = value(&scrape(admin), metric, labels);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < end,
            "{metric}{labels:?} stayed {got}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sni_host_and_user_suffix_each_reach_their_own_server() {
    if !have("curl") {
        return;
    }
    // Each backend has its own TLS settings: the default is plain FTP, `sales` explicit FTPS
    // checked against its own certificate.
    let (Some(a), Some(b)) = (
        FtpServer::vsftpd(VsTls::None),
        FtpServer::vsftpd(VsTls::Explicit),
    ) else {
        return;
    };
    let (a_addr, b_addr, b_cert) = (a.addr, b.addr, b.cert.clone());
    let gw = TestGateway::start(a.backend(), move |s| {
        let mut sales = route(b_addr);
        sales.tls = BackendTlsMode::Explicit;
        sales.ca = b_cert;
        sales.sni = vec!["localhost".into()];
        sales.hosts = vec!["sales.example.test".into()];
        s.routes.insert("sales".into(), sales);
        let mut ops = route(a_addr);
        ops.hosts = vec!["ops.example.test".into()];
        s.routes.insert("ops".into(), ops);
        s.routing.user_suffix = true;
    });
    let on_a = a.put("which.bin", 100_000);
    let on_b = b.put("which.bin", 100_001);
    assert_ne!(on_a, on_b);
    let roots = [a.root.as_path(), b.root.as_path()];

    // No SNI, no HOST, no suffix: the default backend.
    assert_eq!(fetch(&gw, "127.0.0.1", USER, "which.bin"), on_a);
    let h = store(&gw, "127.0.0.1", USER, "default-up.bin", 200_000);
    assert_eq!(landed(&roots, "default-up.bin", &h), 0);

    // SNI `localhost` (curl sends the URL's host name).
    assert_eq!(fetch(&gw, "localhost", USER, "which.bin"), on_b);
    let h = store(&gw, "localhost", USER, "sni-up.bin", 200_000);
    assert_eq!(landed(&roots, "sni-up.bin", &h), 1);

    // `USER name@sales`: vsftpd only knows `name`, so the login itself proves the suffix was
    // stripped.
    let suffixed = format!("{USER}@sales");
    assert_eq!(fetch(&gw, "127.0.0.1", &suffixed, "which.bin"), on_b);
    let h = store(&gw, "127.0.0.1", &suffixed, "user-up.bin", 200_000);
    assert_eq!(landed(&roots, "user-up.bin", &h), 1);
    // A suffix that names no route is left alone (and vsftpd refuses the name).
    let nowhere = curl_as(
        &gw,
        "127.0.0.1",
        &format!("{USER}@nowhere"),
        "which.bin",
        None,
    );
    assert!(!nowhere.status.success(), "an unknown route logged in");

    // HOST (Python's ftplib, which sends it after AUTH TLS and before USER).
    let Some(out) = py_scenario(
        &gw,
        "host",
        &[
            "--host-name",
            "SALES.example.test",
            "--name",
            "which.bin",
            "--expect",
            &on_b,
            "--root",
            &b.root.display().to_string(),
        ],
    ) else {
        return;
    };
    println!("{}", out.trim());
    assert!(out.contains("late HOST: 503"), "{out}");

    // Rules apply in order: once SNI chose `sales`, neither HOST nor a user suffix may move
    // the session to `ops`.
    let conflict = py_scenario(&gw, "host-conflict", &["--host-name", "ops.example.test"]);
    let conflict = conflict.expect("python3 ran above");
    println!("{}", conflict.trim());
    assert!(conflict.contains("route sales"), "{conflict}");
    let moved = curl_as(&gw, "localhost", &format!("{USER}@ops"), "which.bin", None);
    assert!(!moved.status.success(), "USER @ops moved an SNI session");
}

#[test]
fn round_robin_alternates_and_least_connections_avoids_the_busy_server() {
    if !have("curl") {
        return;
    }
    let (Some(a), Some(b)) = (
        FtpServer::vsftpd(VsTls::None),
        FtpServer::vsftpd(VsTls::None),
    ) else {
        return;
    };
    let roots = [a.root.as_path(), b.root.as_path()];
    let both: Vec<HostPort> = vec![a.addr.into(), b.addr.into()];
    let addresses = both.clone();
    let rr = TestGateway::start(a.backend(), move |s| {
        s.backend.addresses = addresses;
        s.routing.health_interval_secs = 0;
    });
    let places: Vec<usize> = (0..4)
        .map(|i| {
            let name = format!("rr-{i}.bin");
            landed(&roots, &name, &store(&rr, "127.0.0.1", USER, &name, 50_000))
        })
        .collect();
    assert_eq!(places, [0, 1, 0, 1], "round-robin");
    drop(rr);

    let lc = TestGateway::start(a.backend(), move |s| {
        s.backend.addresses = both;
        s.backend.balance = Balance::LeastConnections;
        s.backend.relay_greeting = true;
        s.routing.health_interval_secs = 0;
        admin_on_loopback(s);
    });
    let admin = lc.admin.expect("admin listener");
    // One session held open on the first server (with `relay_greeting`, the gateway connects
    // at once; its greeting is the backend's).
    let mut held = BufReader::new(TcpStream::connect(lc.explicit).expect("connect"));
    let mut greeting = String::new();
    held.read_line(&mut greeting).expect("greeting");
    assert!(greeting.starts_with("220"), "{greeting}");
    for i in 0..3 {
        // The previous session is gone (its count with it) before the next starts.
        await_metric(admin, "ftpsgate_sessions_active", &[], 1.0);
        let name = format!("lc-{i}.bin");
        let h = store(&lc, "127.0.0.1", USER, &name, 50_000);
        assert_eq!(landed(&roots, &name, &h), 1, "least connections: {name}");
    }
}

#[test]
fn health_checks_route_around_dead_servers_and_421_when_none_is_left() {
    if !have("curl") {
        return;
    }
    let (Some(a), Some(b)) = (
        FtpServer::vsftpd(VsTls::None),
        FtpServer::vsftpd(VsTls::None),
    ) else {
        return;
    };
    // A server that accepts connections and never greets: only a greeting timeout finds it.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr").to_string();
    let addresses: Vec<HostPort> = vec![
        silent.local_addr().expect("addr").into(),
        a.addr.into(),
        b.addr.into(),
    ];
    let gw = TestGateway::start(a.backend(), move |s| {
        s.backend.addresses = addresses;
        // The gateway connects at once, so "all down" is the first line a client reads.
        s.backend.relay_greeting = true;
        s.routing.health_interval_secs = 1;
        s.routing.health_timeout_secs = 1;
        admin_on_loopback(s);
    });
    let admin = gw.admin.expect("admin listener");
    let up = "ftpsgate_backend_up";
    await_metric(admin, up, &at(&silent_addr), 0.0);
    let roots = [a.root.as_path(), b.root.as_path()];
    let mut places = Vec::new();
    for i in 0..6 {
        let name = format!("hc-{i}.bin");
        places.push(landed(
            &roots,
            &name,
            &store(&gw, "127.0.0.1", USER, &name, 50_000),
        ));
    }
    assert!(
        places.contains(&0) && places.contains(&1),
        "spread: {places:?}"
    );

    b.kill_all();
    await_metric(admin, up, &at(&b.addr.to_string()), 0.0);
    for i in 0..3 {
        let name = format!("hc-a-{i}.bin");
        let h = store(&gw, "127.0.0.1", USER, &name, 50_000);
        assert_eq!(
            landed(&roots, &name, &h),
            0,
            "{name} with the second server down"
        );
    }

    a.kill_all();
    await_metric(admin, up, &at(&a.addr.to_string()), 0.0);
    let began = Instant::now();
    let mut client = BufReader::new(TcpStream::connect(gw.explicit).expect("connect"));
    let mut reply = String::new();
    client.read_line(&mut reply).expect("reply");
    println!("all down: {} after {:?}", reply.trim(), began.elapsed());
    assert!(reply.starts_with("421 "), "{reply}");
    assert!(
        value(
            &scrape(admin),
            "ftpsgate_refusals_total",
            &[("reason", "backend_down")]
        ) >= 1.0
    );
}
