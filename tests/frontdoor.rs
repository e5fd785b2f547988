//! The front door under attack: nothing a client does holds a session slot, a passive port or an
//! identity for longer than its configured limit.
//!
//! Each test runs the real binary in front of vsftpd, drives a hostile client at it with raw
//! sockets, keeps a well-behaved session of the same gateway working throughout, and ends by
//! checking that nothing is left behind: sessions and passive leases back to zero, and the
//! gateway's descriptors (client, backend and data sockets) back to their count before.
//! (The data connection of a neighbour behind the same NAT is in tests/refusals.rs, with
//! Python's ftplib.)

// A test, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;
use std::time::{Duration, Instant};

use support::control::{localhost, Control};
use support::files::sha256;
use support::process::{have, run_ok};
use support::servers::{FtpServer, VsTls};
use support::{MIB, PASSWORD, USER};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[path = "frontdoor/gate.rs"]
mod gate;

use gate::{connect_from, ends_stalled, eventually_async, flood, runtime, Gate};

#[test]
fn clients_that_never_read_their_replies_lose_their_slots_within_the_write_limit() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let want = vs.put("file.bin", 3 * MIB);
    let gate = Gate::start(
        vs.addr,
        4,
        |s| {
            s.limits.max_sessions = 5;
            s.timeouts.client_write_secs = 2;
        },
        // Each refused line is an info line; a quarter of a million of them say nothing new.
        &[("FTPSGATE_LOG", "warn")],
        &[],
    );
    gate.run(async {
        let mut bystander = gate.logged_in([127, 0, 0, 1]).await;
        assert_eq!(sha256(&bystander.retr("file.bin").await), want);

        // Four clients from two addresses send about 2 MB of commands each and never read a
        // reply, with a 4 KiB receive buffer: two before TLS (USER, refused by the gateway
        // itself), two after it (STAT).
        let began = Instant::now();
        let mut floods = Vec::new();
        for i in 0..4u8 {
            let source = [127, 0, 0, 20 + i % 2];
            let tcp = connect_from(source, gate.explicit, Some(4096)).await;
            if i < 2 {
                let mut ctl = Control::new(tcp);
                assert!(ctl.reply().await.starts_with("220"));
                floods.push(flood(ctl.into_inner(), "USER x\r\n", 250_000));
            } else {
                let mut ctl = Control::new(tcp);
                assert!(ctl.reply().await.starts_with("220"));
                let tls = ctl.auth_tls(&gate.tls(), localhost()).await.expect("TLS");
                floods.push(flood(tls.into_inner(), "STAT\r\n", 330_000));
            }
        }
        // The gateway is full while they hold on ...
        let mut refused = Control::new(TcpStream::connect(gate.explicit).await.expect("connect"));
        let line = refused.reply().await;
        assert!(line.starts_with("421 Too many sessions"), "{line}");
        // ... and they lose their slots within the write limit (2 s), with room for a loaded
        // machine: a new client gets in and downloads. The connection that finds the free slot
        // is the one that logs in: dropping it and dialling again would race its own slot's
        // release.
        let (freed, plain) = loop {
            let mut probe = Control::new(TcpStream::connect(gate.explicit).await.expect("connect"));
            if probe.reply().await.starts_with("220") {
                break (began.elapsed(), probe);
            }
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "slots still held"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        println!("never-reading clients lost their slots after {freed:?}");
        let mut newcomer = gate.secure(plain).await.log_in().await;
        assert_eq!(sha256(&newcomer.retr("file.bin").await), want);
        for f in floods {
            let hung_up = f.await.expect("flood task");
            assert!(hung_up, "the gateway kept a flood's connection open");
        }
        assert!(
            gate.metric(
                "ftpsgate_refusals_total",
                &[("reason", "client_write_timeout")]
            ) >= 4.0
        );
        // The bystander was served throughout.
        assert_eq!(sha256(&bystander.retr("file.bin").await), want);
        for mut s in [bystander, newcomer] {
            assert!(s.cmd("QUIT").await.starts_with("221"));
        }
    });
}

#[test]
fn a_stalled_transfer_ends_with_426_and_its_port_goes_back_at_accept() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let big = vs.put("big.bin", 64 * MIB);
    let small = vs.put("small.bin", 100_000);
    let _ = big;
    let gate = Gate::start(
        vs.addr,
        2,
        |s| {
            s.timeouts.data_stall_secs = 2;
        },
        &[],
        &[],
    );
    gate.run(async {
        let mut bystander = gate.logged_in([127, 0, 0, 1]).await;
        // Two downloads whose clients read the first 64 KiB and then nothing: with a 2-port
        // pool, both ports are leased ...
        let mut stalled = Vec::new();
        for _ in 0..2 {
            let mut s = gate.logged_in([127, 0, 0, 1]).await;
            let tcp = s.open("RETR big.bin").await.expect("PASV");
            let mut data = s.secure_data(tcp).await;
            assert!(s.reply().await.starts_with("150"));
            let mut first = vec![0u8; 64 * 1024];
            tokio::io::AsyncReadExt::read_exact(&mut data, &mut first)
                .await
                .expect("first 64 KiB");
            stalled.push((s, data, Instant::now()));
        }
        // ... and back in the pool as soon as each data connection was accepted: a third
        // transfer runs beside the two stalled ones.
        assert_eq!(gate.metric("ftpsgate_passive_leases_in_use", &[]), 0.0);
        assert_eq!(sha256(&bystander.retr("small.bin").await), small);
        // Each stalled transfer ends with 426 once nothing moved for 2 s (the bound leaves
        // room for the buffers to fill on a loaded machine), and its session carries on.
        for (s, data, since) in &mut stalled {
            ends_stalled(s, *since, "download").await;
            let _ = data;
        }
        assert!(gate.metric("ftpsgate_refusals_total", &[("reason", "data_stalled")]) >= 2.0);
        assert_eq!(sha256(&bystander.retr("small.bin").await), small);
        drop(stalled);
        assert!(bystander.cmd("QUIT").await.starts_with("221"));
    });
}

/// After a download the gateway reads the client's data connection for what it sent (a
/// KeyUpdate, its close_notify) for at most two seconds: a client that keeps the connection
/// open, and writes to it, does not hold the gateway's socket longer, and its session carries on.
#[test]
fn a_finished_downloads_connection_held_open_by_its_client_closes_within_the_linger() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let small = vs.put("small.bin", 100_000);
    let gate = Gate::start(vs.addr, 2, |_| {}, &[], &[]);
    gate.run(async {
        let mut s = gate.logged_in([127, 0, 0, 1]).await;
        let idle = gate.fds();
        let tcp = s.open("RETR small.bin").await.expect("PASV");
        let mut data = s.secure_data(tcp).await;
        assert!(s.reply().await.starts_with("150"));
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut data, &mut got)
            .await
            .expect("download");
        assert_eq!(sha256(&got), small);
        assert!(s.reply().await.starts_with("226"));
        // The client neither closes nor stops talking: application data after the end.
        let since = Instant::now();
        let _ = data.write_all(&[b'x'; 4096]).await;
        let _ = data.flush().await;
        let closed =
            eventually_async(Duration::from_secs(15), || async { gate.fds() <= idle }).await;
        assert!(closed, "the gateway still holds the data connection");
        let took = since.elapsed();
        assert!(took < Duration::from_secs(10), "closed after {took:?}");
        println!("a held-open download connection closed after {took:?}");
        assert_eq!(sha256(&s.retr("small.bin").await), small);
        drop(data);
        assert!(s.cmd("QUIT").await.starts_with("221"));
    });
}

/// The upload side of the stall limit: a client that sends part of a file over TLS and then
/// nothing, holding its data connection open. Uploads are copied in turn by one task (see
/// `data::pump`), so this is the read that must time out there.
#[test]
fn a_stalled_upload_ends_with_426_and_the_session_carries_on() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let small = vs.put("small.bin", 100_000);
    let gate = Gate::start(
        vs.addr,
        4,
        |s| {
            s.timeouts.data_stall_secs = 2;
        },
        &[],
        &[],
    );
    gate.run(async {
        let mut s = gate.logged_in([127, 0, 0, 1]).await;
        let tcp = s.open("STOR cut.bin").await.expect("PASV");
        let mut data = s.secure_data(tcp).await;
        assert!(s.reply().await.starts_with("150"));
        data.write_all(&[7u8; 300_000]).await.expect("first bytes");
        data.flush().await.expect("flush");
        let took = ends_stalled(&mut s, Instant::now(), "upload").await;
        // Not before 2 s of silence, give or take the machine's timer.
        assert!(
            took >= Duration::from_millis(1500),
            "426 after only {took:?}"
        );
        assert!(gate.metric("ftpsgate_refusals_total", &[("reason", "data_stalled")]) >= 1.0);
        assert_eq!(sha256(&s.retr("small.bin").await), small);
        drop(data);
        assert!(s.cmd("QUIT").await.starts_with("221"));
    });
}

#[test]
fn unused_passive_leases_expire_and_one_address_holds_only_its_share() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let small = vs.put("small.bin", 100_000);
    let gate = Gate::start(
        vs.addr,
        3,
        |s| {
            s.limits.max_passive_per_ip = 1;
            s.timeouts.data_connection_secs = 3;
        },
        &[],
        &[],
    );
    gate.run(async {
        let mut a = gate.logged_in([127, 0, 0, 1]).await;
        let mut b = gate.logged_in([127, 0, 0, 1]).await;
        let mut c = gate.logged_in([127, 0, 0, 2]).await;
        a.pasv().await.expect("first lease of 127.0.0.1");
        let refused = b.pasv().await.expect_err("second lease of 127.0.0.1");
        assert!(refused.starts_with("425"), "{refused}");
        c.pasv().await.expect("another address has its own share");
        assert_eq!(
            gate.metric("ftpsgate_refusals_total", &[("reason", "passive_per_ip")]),
            1.0
        );
        // Nobody connects: the leases end with the data connection timeout (3 s).
        let expired = eventually_async(Duration::from_secs(15), || async {
            gate.metric("ftpsgate_passive_leases_in_use", &[]) == 0.0
        })
        .await;
        assert!(
            expired,
            "pending leases outlived timeouts.data_connection_secs"
        );
        let late = a.cmd("LIST").await;
        assert!(late.starts_with("425"), "LIST on an expired lease: {late}");
        // The address has its share back.
        assert_eq!(sha256(&b.retr("small.bin").await), small);
        assert_eq!(sha256(&a.retr("small.bin").await), small);
        for mut s in [a, b, c] {
            assert!(s.cmd("QUIT").await.starts_with("221"));
        }
    });
}

#[test]
fn a_user_name_the_backend_refused_never_becomes_the_sessions_user() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let want = vs.put("file.bin", 200_000);
    let gate = Gate::start(
        vs.addr,
        2,
        |_| {},
        &[("FTPSGATE_LOG_FORMAT", "json"), ("FTPSGATE_LOG", "debug")],
        &[],
    );
    gate.run(async {
        let mut s = gate.logged_in([127, 0, 0, 1]).await;
        let refused = s.cmd("USER alice").await;
        assert!(
            refused.starts_with("530"),
            "vsftpd refuses a second USER: {refused}"
        );
        assert_eq!(sha256(&s.retr("file.bin").await), want);
        let status = s.cmd("STAT").await;
        assert!(status.contains(&format!("Logged in as {USER}")), "{status}");
        assert!(s.cmd("QUIT").await.starts_with("221"));
    });
    let log = gate.log();
    assert!(
        !log.contains("alice"),
        "a refused name reached the log:\n{log}"
    );
    let transfer = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"] == "transfer")
        .expect("a transfer line");
    assert_eq!(transfer["span"]["user"], USER, "{transfer}");
}

#[test]
fn connections_that_never_finish_tls_never_reach_the_backend() {
    // vsftpd takes two clients at a time: three connections that never finish TLS would
    // take its places if the gateway connected at once.
    let Some(vs) = FtpServer::vsftpd_on(VsTls::None, false, "max_clients=2\n") else {
        return;
    };
    let want = vs.put("file.bin", 200_000);
    let gate = Gate::start(vs.addr, 2, |_| {}, &[], &[]);
    gate.run(async {
        let mut idle = Vec::new();
        for _ in 0..3 {
            let mut ctl = Control::new(TcpStream::connect(gate.explicit).await.expect("connect"));
            let greeting = ctl.reply().await;
            assert_eq!(greeting, "220 FTP gateway ready.\r\n");
            idle.push(ctl);
            // Implicit: TCP only, no handshake.
            idle.push(Control::new(
                TcpStream::connect(gate.implicit).await.expect("connect"),
            ));
        }
        let mut s = gate.logged_in([127, 0, 0, 1]).await;
        assert_eq!(sha256(&s.retr("file.bin").await), want);
        assert!(s.cmd("QUIT").await.starts_with("221"));
        drop(idle);
    });

    // `relay_greeting` keeps the old way, and shows what the default prevents: two
    // connections that only read the greeting take both of vsftpd's places.
    let relaying = Gate::start(vs.addr, 2, |s| s.backend.relay_greeting = true, &[], &[]);
    runtime().block_on(async {
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut ctl = Control::new(
                TcpStream::connect(relaying.explicit)
                    .await
                    .expect("connect"),
            );
            assert!(ctl.reply().await.starts_with("220"));
            held.push(ctl);
        }
        let mut third = Control::new(
            TcpStream::connect(relaying.explicit)
                .await
                .expect("connect"),
        );
        let refused = third.reply().await;
        assert!(refused.starts_with("421"), "{refused}");
    });
}

#[test]
fn greeting_and_status_are_the_gateways_own() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gate = Gate::start(
        vs.addr,
        2,
        |s| s.greeting = "Welcome to Example Corp.".into(),
        &[],
        &[],
    );
    let baseline = gate.fds();
    let leaks = [
        "vsFTPd",
        "plain text",
        "Connected to",
        &vs.addr.port().to_string(),
    ];
    runtime().block_on(async {
        let mut ctl = Control::new(TcpStream::connect(gate.explicit).await.expect("connect"));
        assert_eq!(ctl.reply().await, "220 Welcome to Example Corp.\r\n");
        drop(ctl);
        let mut s = gate.logged_in([127, 0, 0, 1]).await;
        let status = s.cmd("STAT").await;
        assert!(status.starts_with("211-") && status.ends_with("211 End of status.\r\n"));
        assert!(status.contains(&format!("Logged in as {USER}")), "{status}");
        for leak in leaks {
            assert!(!status.contains(leak), "STAT shows `{leak}`:\n{status}");
        }
        // STAT with an argument still goes to the backend (a listing).
        assert!(s.cmd("STAT .").await.starts_with("213"));
        assert!(s.cmd("QUIT").await.starts_with("221"));
    });
    gate.settles_to(baseline);

    // `relay_greeting` and `relay_stat` show the backend's own words again.
    let relaying = Gate::start(
        vs.addr,
        2,
        |s| {
            s.backend.relay_greeting = true;
            s.backend.relay_stat = true;
        },
        &[],
        &[],
    );
    runtime().block_on(async {
        let mut s = relaying.logged_in([127, 0, 0, 1]).await;
        let status = s.cmd("STAT").await;
        assert!(status.contains("vsFTPd"), "{status}");
    });
}

#[test]
fn client_supplied_fields_reach_the_log_escaped() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let name = "\u{1b}[31mred\u{7}.bin";
    let want = vs.put(name, 50_000);
    let gate = Gate::start(vs.addr, 2, |_| {}, &[("FTPSGATE_LOG", "debug")], &[]);
    gate.run(async {
        let mut s = gate.logged_in([127, 0, 0, 1]).await;
        let cwd = s.cmd("CWD \u{1b}]0;owned\u{7}").await;
        assert!(cwd.starts_with("550"), "{cwd}");
        assert!(s.cmd("MKD \u{1b}[2Jgone").await.starts_with("257"));
        assert_eq!(sha256(&s.retr(name).await), want);
        assert!(s.cmd("QUIT").await.starts_with("221"));
        // A name with escapes of its own, refused by the gateway (control characters), so its
        // PASS is the gateway's to answer too.
        let mut t = gate.secured([127, 0, 0, 1]).await;
        let refused = t.cmd("USER \u{1b}[5mmallory").await;
        assert!(refused.starts_with("530"), "{refused}");
        assert!(t.cmd("PASS x").await.starts_with("503"));
    });
    let log = std::fs::read(&gate.log).expect("log");
    let text = String::from_utf8_lossy(&log);
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.chars().any(char::is_control))
        .collect();
    assert!(bad.is_empty(), "control characters in the log:\n{bad:?}");
    assert!(
        text.contains("\\u{1b}]0;owned\\u{7}"),
        "CWD not in the log, escaped:\n{text}"
    );
    assert!(
        text.contains("\\u{1b}[31mred\\u{7}.bin"),
        "path not escaped:\n{text}"
    );
    assert!(
        !text.contains("mallory"),
        "a refused user name reached the log"
    );
}

#[test]
fn a_low_open_file_limit_is_fitted_at_start_and_exhaustion_answers_421() {
    if !have("prlimit") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let want = vs.put("file.bin", 100_000);
    // A hard limit of 128 cannot be raised: the 1000 default sessions are lowered to what
    // fits, (128 - 64 reserved - 2 listeners) / 4 per session = 15, and the log says so.
    let gate = Gate::start(
        vs.addr,
        2,
        |_| {},
        &[],
        &["prlimit", "--nofile=128:128", "--"],
    );
    let baseline = gate.fds();
    let log = gate.log();
    assert!(
        log.contains("lowered it to fit") && log.contains("max_sessions=15"),
        "{log}"
    );
    runtime().block_on(async {
        let mut held = Vec::new();
        for _ in 0..15 {
            let mut ctl = Control::new(TcpStream::connect(gate.explicit).await.expect("connect"));
            assert!(ctl.reply().await.starts_with("220"));
            held.push(ctl);
        }
        let mut over = Control::new(TcpStream::connect(gate.explicit).await.expect("connect"));
        let refused = over.reply().await;
        assert!(refused.starts_with("421 Too many sessions"), "{refused}");
        drop(held);
        drop(over);
        let idle = eventually_async(Duration::from_secs(10), || async {
            gate.metric("ftpsgate_sessions_active", &[]) == 0.0
        });
        assert!(idle.await);

        // Descriptors running out anyway (the limit lowered under the running gateway): the
        // client that cannot be accepted hears 421 at once, instead of waiting in the backlog.
        let soft = gate.fds() + 2;
        let pid = gate.pid().to_string();
        run_ok(Command::new("prlimit").args(["--pid", &pid, &format!("--nofile={soft}:128")]));
        let mut squeezed = Vec::new();
        let began = Instant::now();
        let refusal = loop {
            let mut ctl = Control::new(TcpStream::connect(gate.explicit).await.expect("connect"));
            let line = ctl.reply().await;
            if !line.starts_with("220") {
                break line;
            }
            squeezed.push(ctl);
            assert!(squeezed.len() < 10, "never out of descriptors");
        };
        assert!(refusal.starts_with("421 Out of resources"), "{refusal:?}");
        assert!(began.elapsed() < Duration::from_secs(10));
        run_ok(Command::new("prlimit").args(["--pid", &pid, "--nofile=128:128"]));
        drop(squeezed);
        let mut s = gate.logged_in([127, 0, 0, 1]).await;
        assert_eq!(sha256(&s.retr("file.bin").await), want);
        assert!(s.cmd("QUIT").await.starts_with("221"));
    });
    assert!(gate.metric("ftpsgate_refusals_total", &[("reason", "accept_failed")]) >= 1.0);
    gate.settles_to(baseline);

    // A soft limit below a higher hard one is raised to it, and nothing is lowered.
    let raised = Gate::start(
        vs.addr,
        2,
        |_| {},
        &[],
        &["prlimit", "--nofile=128:8192", "--"],
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", raised.pid())).expect("limits");
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("limit line");
    assert!(
        open_files.split_whitespace().nth(3) == Some("8192"),
        "{open_files}"
    );
    assert!(!raised.log().contains("lowered it to fit"));
}

/// lftp connecting by IP puts that IP in SNI, which RFC 6066 forbids and rustls ignores with a
/// warning per handshake: no news to an operator, so the default log leaves it out.
#[test]
fn a_client_that_sends_an_ip_as_its_sni_name_leaves_no_warning_in_the_default_log() {
    if !have("lftp") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    std::fs::write(vs.root.join("by-ip.txt"), "listed").expect("write");
    let gate = Gate::start(vs.addr, 2, |_| {}, &[], &[]);
    let script = format!(
        "set ssl:ca-file {}; set ftp:ssl-force true; set ftp:ssl-protect-data true; ls; bye",
        gate.ca.display()
    );
    let out = run_ok(
        Command::new("lftp")
            .args(["-e", &script, "-u", &format!("{USER},{PASSWORD}")])
            .args(["-p", &gate.explicit.port().to_string(), "127.0.0.1"]),
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("by-ip.txt"), "lftp's listing: {listing}");
    let log = gate.log();
    assert!(log.contains("logged in"), "the default log is on:\n{log}");
    assert!(!log.contains("Illegal SNI"), "{log}");
}
