//! `ftpsgate probe` on loopback, against servers whose faults are known: a healthy gateway
//! (explicit and implicit, active too; its one data port named by every passive reply), one that advertises an address where nothing listens,
//! a server without TLS, a server that requires TLS session reuse, and a certificate for
//! another name; and a hostile server, whose greeting and replies carry terminal escape
//! sequences, or whose 227 names another host. The NAT cases (dropped, rejected range, wrong external address) are in
//! tests/nat.rs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::process::Command;

use support::gateway::{gateway_command, TestGateway};
use support::net::{free_low_range, free_port};
use support::process::{eventually, has_lines, have, KillOnDrop};
use support::scripted::{FtpsScript, ScriptedFtps};
use support::servers::{FtpServer, VsTls};
use support::{PASSWORD, USER};

/// `ftpsgate probe` with `args`: whether it passed, and its report.
fn probe(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ftpsgate"))
        .arg("probe")
        .args(["--timeout", "5"])
        .args(args)
        .env("FTPSGATE_PROBE_PASSWORD", PASSWORD)
        .env_remove("FTPSGATE_LOG")
        .output()
        .expect("run probe");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

fn url(scheme: &str, at: SocketAddr) -> String {
    format!("{scheme}://{USER}@{at}/")
}

#[test]
fn a_healthy_gateway_passes_every_step_explicit_implicit_and_active() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    vs.put("small.bin", 5_000);
    let gw = TestGateway::start(vs.backend(), |_| {});
    let ca = gw.ca.display().to_string();
    let (ok, report) = probe(&["--ca", &ca, "--active", &url("ftp", gw.explicit)]);
    println!("{report}");
    assert!(ok, "{report}");
    has_lines(
        &report,
        &[
            "[ ok ] connect: 127.0.0.1:",
            "[ ok ] TLS: TLSv1_3, ",
            "names localhost, 127.0.0.1, ::1",
            ", verified",
            "[ ok ] login: ftpsgate-test: 230",
            "[ ok ] PASV: 227 names 127.0.0.1:",
            "[ ok ] PASV data TLS: resumed the control connection's TLS session",
            "[ ok ] EPSV data: 229 port ",
            // ftpsgate requires data connections to resume the control session by default.
            "[ ok ] TLS reuse: a data connection that does not resume the control session is refused",
            "[ ok ] download: RETR small.bin: 5000 bytes, as SIZE said",
            "[ ok ] active: the server connected back from 127.0.0.1:",
            "summary: 0 failed, 0 warned",
        ],
    );
    // The test gateway has one data port, as recommended: every PASV and EPSV (PASV, EPSV, the
    // download's two, the reuse check's) named it, and the probe says so.
    let port = report
        .split_once("[ ok ] EPSV data: 229 port ")
        .and_then(|(_, rest)| rest.split_once(':'))
        .map(|(port, _)| port)
        .expect("EPSV's port");
    has_lines(
        &report,
        &[&format!(
            "[ ok ] passive ports: every passive reply named port {port} (5 replies): one port for every transfer, as recommended"
        )],
    );
    let (ok, report) = probe(&["--ca", &ca, &url("ftps", gw.implicit)]);
    assert!(ok, "{report}");
    has_lines(
        &report,
        &["[ ok ] greeting: 220", "[ ok ] download: RETR small.bin"],
    );

    // --json, for scripts: one object with the same checks.
    let (ok, json) = probe(&["--ca", &ca, "--json", &url("ftp", gw.explicit)]);
    assert!(ok, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON report");
    assert_eq!(v["ok"], true);
    assert_eq!(v["target"], url("ftp", gw.explicit));
    let checks = v["checks"].as_array().expect("checks");
    assert!(checks.iter().all(|c| c["level"] == "ok"), "{json}");
    assert!(checks.iter().any(|c| c["what"] == "download"), "{json}");
}

/// A hostile server's 227 names another host (here 127.0.0.77, where the test listens on the
/// 227's port): the probe reports it, and never connects there.
#[test]
fn a_227_naming_another_address_is_reported_but_never_dialled() {
    let elsewhere = std::net::Ipv4Addr::new(127, 0, 0, 77);
    let server = ScriptedFtps::start(FtpsScript {
        greeting: "220 scripted FTPS server\r\n",
        login: "230 logged in\r\n",
        pasv_ip: elsewhere,
    });
    let ca = server.ca.display().to_string();
    let (ok, report) = probe(&["--ca", &ca, &url("ftp", server.addr)]);
    println!("{report}");
    assert!(!ok, "a 227 naming another address is a failure:\n{report}");
    has_lines(
        &report,
        &[
            "[FAIL] PASV: 227 names 127.0.0.77:",
            "but the server was reached at 127.0.0.1",
            "clients that use the 227's address connect to 127.0.0.77, which the probe does not (it connects to 127.0.0.1:",
            "passive.external_address = \"127.0.0.1\"",
            "[ ok ] PASV data: connected to 127.0.0.1:",
            "[ ok ] PASV data TLS:",
            // The later data connections (TLS reuse) go to the address reached too.
            "[ ok ] TLS reuse:",
            // A fresh listener, so a port of its own, for each of the three PASV.
            "[ ok ] passive ports: the 3 passive replies named ",
            "): a range, every port of which must be open and forwarded",
        ],
    );
    assert_eq!(
        server.dialled_elsewhere(),
        0,
        "the probe connected to the 227's address"
    );
    // PASV's LIST, NLST for the download, the TLS reuse check's LIST: all at 127.0.0.1.
    assert_eq!(
        server
            .data_accepted
            .load(std::sync::atomic::Ordering::SeqCst),
        3,
        "{report}"
    );
}

#[test]
fn an_external_address_where_nothing_listens_is_named_with_the_fix() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    vs.put("small.bin", 5_000);
    let gw = TestGateway::start(vs.backend(), |s| {
        s.passive.external_address = Some("127.0.0.99".into());
    });
    let ca = gw.ca.display().to_string();
    let (ok, report) = probe(&["--ca", &ca, &url("ftp", gw.explicit)]);
    println!("{report}");
    assert!(!ok, "a client that trusts the 227 fails:\n{report}");
    has_lines(
        &report,
        &[
            "[FAIL] PASV: 227 names 127.0.0.99:",
            "a loopback address, but the server was reached at 127.0.0.1",
            "clients that use the 227's address connect to 127.0.0.99",
            "passive.external_address = \"127.0.0.1\"",
            // The probe connects where curl does by default: the address reached.
            "[ ok ] PASV data: connected to 127.0.0.1:",
            // EPSV carries no address, so it works.
            "[ ok ] EPSV data:",
            "summary: 1 failed, 0 warned",
        ],
    );
}

#[test]
fn a_server_without_tls_fails_before_any_password_is_sent() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let (ok, report) = probe(&["--insecure", &url("ftp", vs.addr)]);
    println!("{report}");
    assert!(!ok);
    has_lines(
        &report,
        &[
            "[ ok ] greeting: 220",
            "[FAIL] TLS: AUTH TLS answered 5",
            "the server does not offer FTPS",
        ],
    );
    assert!(!report.contains("] login:"), "{report}");
}

#[test]
fn a_server_that_requires_tls_session_reuse_is_told_apart() {
    let Some(vs) = FtpServer::vsftpd(VsTls::Explicit) else {
        return;
    };
    vs.put("small.bin", 1_000);
    let ca = vs.cert.as_ref().expect("cert").display().to_string();
    let (ok, report) = probe(&["--ca", &ca, &url("ftp", vs.addr)]);
    println!("{report}");
    assert!(ok, "{report}");
    has_lines(
        &report,
        &[
            "[ ok ] PASV data TLS: resumed the control connection's TLS session",
            "is refused",
            "the server requires reuse",
            "[ ok ] download: RETR small.bin: 1000 bytes",
        ],
    );
}

#[test]
fn a_certificate_for_another_name_fails_with_the_names_it_has() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = ftpsgate::tls::self_signed(&["other.example".into()]).expect("cert");
    let (cert, key) = pair.write_to(dir.path()).expect("write");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let pool = free_low_range(4);
    let _gw = KillOnDrop(
        gateway_command(
            env!("CARGO_BIN_EXE_ftpsgate"),
            listen,
            vs.addr,
            (pool, 4),
            &cert,
            &key,
        )
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start ftpsgate"),
    );
    assert!(
        eventually(std::time::Duration::from_secs(10), || {
            std::net::TcpStream::connect(listen).is_ok()
        }),
        "gateway did not start"
    );
    let ca = cert.display().to_string();
    let (ok, report) = probe(&["--ca", &ca, &url("ftp", listen)]);
    println!("{report}");
    assert!(!ok);
    has_lines(
        &report,
        &[
            "[FAIL] TLS: handshake failed: ",
            "not valid for name \"127.0.0.1\"",
            "the certificate names other.example",
            "not 127.0.0.1: connect by one of those names",
        ],
    );
}

#[test]
fn without_the_variable_the_password_is_asked_on_the_terminal_without_echo() {
    use std::io::{BufRead, BufReader, Read, Write};
    if !have("script") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    // `script` gives the probe a terminal (a pty) whose input is this test's pipe.
    let command = format!(
        "{} probe --timeout 5 --ca {} {}",
        env!("CARGO_BIN_EXE_ftpsgate"),
        gw.ca.display(),
        url("ftp", gw.explicit)
    );
    let mut child = KillOnDrop(
        Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env_remove("FTPSGATE_PROBE_PASSWORD")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("script"),
    );
    let mut out = BufReader::new(child.0.stdout.take().expect("stdout"));
    let mut prompt = Vec::new();
    // The prompt has no newline: read up to its colon.
    out.read_until(b':', &mut prompt).expect("prompt");
    let prompt = String::from_utf8_lossy(&prompt).into_owned();
    assert!(
        prompt.ends_with(&format!("password for {USER}:")),
        "{prompt:?}"
    );
    // rpassword prints the prompt, then turns echo off: a person types after that; so does
    // this test, with room for a loaded machine (typing at once can beat the tcsetattr).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut stdin = child.0.stdin.take().expect("stdin");
    writeln!(stdin, "{PASSWORD}").expect("type the password");
    let mut report = String::new();
    out.read_to_string(&mut report).expect("report");
    assert!(child.0.wait().expect("wait").success(), "{report}");
    assert!(
        report.contains("[ ok ] login: ftpsgate-test: 230"),
        "{report}"
    );
    assert!(
        !report.contains(PASSWORD),
        "the password was echoed:\n{report}"
    );
}

/// A greeting and a reply that would clear the screen and retitle the terminal.
const HOSTILE_GREETING: &str = "220 \x1b[2J\x1b]0;pwned\x07 hostile server\r\n";
const HOSTILE_LOGIN: &str = "230 \x1b[31mlogged in\x1b[0m\r\n";

#[test]
fn escape_sequences_from_a_hostile_server_reach_the_report_only_as_visible_text() {
    let server = ScriptedFtps::start(FtpsScript {
        greeting: HOSTILE_GREETING,
        login: HOSTILE_LOGIN,
        pasv_ip: std::net::Ipv4Addr::LOCALHOST,
    });
    let ca = server.ca.display().to_string();
    let target = url("ftp", server.addr);
    for json in [false, true] {
        let mut args = vec!["--ca", &ca, &target];
        if json {
            args.insert(0, "--json");
        }
        let (_, report) = probe(&args);
        println!("{report}");
        // `probe` returns stdout and stderr together.
        for control in [0x1b_u8, 0x07] {
            assert!(
                !report.as_bytes().contains(&control),
                "a raw {control:#04x} reached the output (--json: {json}):\n{report:?}"
            );
        }
        if json {
            let v: serde_json::Value = serde_json::from_str(&report).expect("JSON report");
            let details: Vec<&str> = v["checks"]
                .as_array()
                .expect("checks")
                .iter()
                .filter_map(|c| c["detail"].as_str())
                .collect();
            assert!(
                details.contains(&r"220 \u{1b}[2J\u{1b}]0;pwned\u{7} hostile server"),
                "{details:?}"
            );
        } else {
            has_lines(
                &report,
                &[
                    r"[ ok ] greeting: 220 \u{1b}[2J\u{1b}]0;pwned\u{7} hostile server",
                    r"[ ok ] login: ftpsgate-test: 230 \u{1b}[31mlogged in\u{1b}[0m",
                    "[ ok ] PASV data TLS:",
                ],
            );
        }
    }
}
