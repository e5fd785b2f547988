//! The front door's policy, with real clients (curl, Python's ftplib) in front of vsftpd:
//! address rules at accept and per route, bans after failed logins (and their end), users the
//! gateway refuses itself, logins bound to client certificates, and the certificates' expiry
//! on /metrics.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use ftpsgate::config::Settings;

fn with_admin(s: &mut Settings) {
    s.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
}

/// curl from `source` listing the root as `user`:`password` over explicit FTPS.
fn curl_from(gw: &TestGateway, source: &str, login: &str, extra: &[&str]) -> Output {
    curl(gw, 30)
        .args(["-v", "--ssl-reqd", "--interface", source, "--user", login])
        .args(extra)
        .arg(format!("ftp://127.0.0.1:{}/", gw.explicit.port()))
        .output()
        .expect("curl")
}

fn trace(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn refusals(gw: &TestGateway, reason: &str) -> f64 {
    value(
        &scrape(gw.admin.expect("admin")),
        "ftpsgate_refusals_total",
        &[("reason", reason)],
    )
}

#[test]
fn denied_networks_are_refused_at_accept_and_a_routes_own_rules_once_it_is_known() {
    if !have("curl") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let backend = vs.addr;
    let gw = TestGateway::start(vs.backend(), move |s| {
        with_admin(s);
        s.access.allow = ftpsgate::config::Networks::new(vec!["127.0.0.0/24".parse().unwrap()]);
        s.access.deny = ftpsgate::config::Networks::new(vec!["127.0.0.7/32".parse().unwrap()]);
        s.routing.user_suffix = true;
        let mut route = s.backend.clone();
        route.addresses = vec![backend.into()];
        route.deny = ftpsgate::config::Networks::new(vec!["127.0.0.9/32".parse().unwrap()]);
        s.routes.insert("inner".into(), route);
    });
    let login = format!("{USER}:{PASSWORD}");
    for source in ["127.0.0.7", "127.0.1.5"] {
        let out = curl_from(&gw, source, &login, &[]);
        assert!(!out.status.success(), "{source} got in");
        assert!(
            trace(&out).contains("< 421 Access denied."),
            "{source}: {}",
            trace(&out)
        );
    }
    assert_eq!(refusals(&gw, "access_denied"), 2.0);
    let out = curl_from(&gw, "127.0.0.9", &login, &[]);
    assert!(
        out.status.success(),
        "the default route lets 127.0.0.9 in: {}",
        trace(&out)
    );
    // The route `inner` keeps 127.0.0.9 out once USER names it; others still get in there.
    let inner = format!("{USER}@inner:{PASSWORD}");
    let out = curl_from(&gw, "127.0.0.9", &inner, &[]);
    assert!(!out.status.success());
    assert!(
        trace(&out).contains("< 421 Access denied."),
        "{}",
        trace(&out)
    );
    let out = curl_from(&gw, "127.0.0.1", &inner, &[]);
    assert!(out.status.success(), "{}", trace(&out));
    assert_eq!(refusals(&gw, "access_denied"), 3.0);
}

#[test]
fn failed_logins_ban_an_address_until_the_ban_ends_while_others_log_in() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let ban_secs = 6;
    let gw = TestGateway::start(vs.backend(), move |s| {
        with_admin(s);
        s.access.max_failed_logins = 3;
        s.access.failed_login_window_secs = 60;
        s.access.ban_secs = ban_secs;
        s.access.failed_login_delay_secs = 1;
    });
    let admin = gw.admin.expect("admin");
    let Some(out) = py_scenario(
        &gw,
        "bans",
        &[
            "--source",
            "127.0.0.7",
            "--other",
            "127.0.0.8",
            "--failures",
            "3",
            "--delay",
            "1",
        ],
    ) else {
        return;
    };
    println!("{out}");
    let banned_at = std::time::Instant::now();
    let (code, bans) = http_get(admin, "/bans");
    assert_eq!(code, 200);
    assert!(bans.contains("\"address\":\"127.0.0.7\""), "{bans}");
    assert!(!bans.contains("127.0.0.8"), "{bans}");
    let m = scrape(admin);
    assert_eq!(value(&m, "ftpsgate_bans_active", &[]), 1.0);
    // The connection turned away at the door and the session refused at its next USER.
    assert_eq!(
        value(&m, "ftpsgate_refusals_total", &[("reason", "banned")]),
        2.0
    );
    // The ban ends by itself after ban_secs, and the address logs in again.
    assert!(
        eventually(Duration::from_secs(ban_secs + 10), || http_get(
            admin, "/bans"
        )
        .1
        .trim()
            == "[]"),
        "the ban did not end"
    );
    let lasted = banned_at.elapsed();
    assert!(
        lasted >= Duration::from_secs(ban_secs - 2),
        "lifted after {lasted:?}"
    );
    py_scenario(&gw, "login-from", &["--source", "127.0.0.7"]);
    assert_eq!(value(&scrape(admin), "ftpsgate_bans_active", &[]), 0.0);
}

#[test]
fn denied_users_are_refused_by_the_gateway_and_never_reach_the_backend() {
    if !have("curl") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd_on(
        VsTls::None,
        false,
        "xferlog_enable=YES\nlog_ftp_protocol=YES\n",
    ) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |s| {
        with_admin(s);
        s.access.deny_users = vec!["root".into(), "Anonymous".into()];
        s.access.failed_login_delay_secs = 0;
    });
    for user in ["root", "ROOT", "anonymous"] {
        let out = curl_from(&gw, "127.0.0.1", &format!("{user}:secret"), &[]);
        assert_eq!(
            out.status.code(),
            Some(67),
            "{user}: login denied\n{}",
            trace(&out)
        );
        assert!(
            trace(&out).contains("< 530 Login incorrect."),
            "{}",
            trace(&out)
        );
    }
    let out = curl_from(&gw, "127.0.0.1", &format!("{USER}:{PASSWORD}"), &[]);
    assert!(out.status.success(), "{}", trace(&out));
    assert_eq!(refusals(&gw, "denied_user"), 3.0);
    let log = vs.log();
    assert!(
        log.contains(&format!("USER {USER}")),
        "vsftpd logs commands:\n{log}"
    );
    // Every command vsftpd heard came from the one good login.
    let commands: Vec<&str> = log.lines().filter(|l| l.contains("FTP command")).collect();
    for name in ["root", "anonymous"] {
        assert!(
            !commands
                .iter()
                .any(|l| l.to_lowercase().contains(&format!("user {name}"))),
            "{name} reached the backend:\n{log}"
        );
    }
    assert!(!commands.is_empty());
}

#[test]
fn client_certificates_bind_logins_by_cn_or_email() {
    if !have("curl") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let want = vs.put("bound.bin", 100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let clients = ClientCa::new();
    let ca = dir.path().join("clients-ca.pem");
    std::fs::write(&ca, &clients.pem).expect("write CA");
    let write = |name: &str, c: &ClientCert| {
        let (cert, key) = (
            dir.path().join(format!("{name}.pem")),
            dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&cert, &c.cert_pem).expect("cert");
        std::fs::write(&key, &c.key_pem).expect("key");
        (cert.display().to_string(), key.display().to_string())
    };
    let ours = write(
        "ours",
        &clients.client(USER, Some(&format!("{USER}@example.org"))),
    );
    let alice = write("alice", &clients.client("alice", Some("alice@example.org")));
    for field in [
        ftpsgate::config::CertUser::Cn,
        ftpsgate::config::CertUser::Email,
    ] {
        let client_ca = ca.clone();
        let gw = TestGateway::start(vs.backend(), move |s| {
            with_admin(s);
            s.tls.client_auth = ftpsgate::config::ClientAuth::Required;
            s.tls.client_ca = Some(client_ca);
            s.tls.client_cert_user = Some(field);
            s.access.failed_login_delay_secs = 0;
        });
        let got = dir.path().join("got.bin");
        let login = format!("{USER}:{PASSWORD}");
        let url = format!("ftp://127.0.0.1:{}/bound.bin", gw.explicit.port());
        let out = curl(&gw, 30)
            .args([
                "--ssl-reqd",
                "--cert",
                &ours.0,
                "--key",
                &ours.1,
                "--user",
                &login,
                &url,
                "-o",
            ])
            .arg(&got)
            .output()
            .expect("curl");
        assert!(out.status.success(), "{field:?}: {}", trace(&out));
        assert_eq!(sha256_file(&got), want);
        // alice's certificate is valid, but it does not name the user she logs in as.
        let out = curl(&gw, 30)
            .args([
                "-v",
                "--ssl-reqd",
                "--cert",
                &alice.0,
                "--key",
                &alice.1,
                "--user",
                &login,
                &url,
                "-o",
                "/dev/null",
            ])
            .output()
            .expect("curl");
        assert_eq!(out.status.code(), Some(67), "{field:?}: {}", trace(&out));
        assert!(
            trace(&out).contains("< 530 Login incorrect."),
            "{}",
            trace(&out)
        );
        assert_eq!(refusals(&gw, "certificate_user"), 1.0);
    }
}

#[test]
fn certificate_expiry_is_on_metrics_for_the_default_and_each_sni_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair =
        ftpsgate::tls::self_signed(&["two.test".into(), "alt.two.test".into()]).expect("cert");
    let (cert, key) = pair.write_to(dir.path()).expect("write");
    let sni_der = pem_certs(&cert).remove(0);
    let gw = TestGateway::start(BackendKind::Unftp, move |s| {
        with_admin(s);
        s.tls.sni = vec![ftpsgate::config::CertPair { cert, key }];
    });
    let m = scrape(gw.admin.expect("admin"));
    let expiry = |der: &[u8]| {
        let (_, c) = x509_parser::parse_x509_certificate(der).expect("x509");
        c.validity().not_after.timestamp() as f64
    };
    let default_der = pem_certs(&gw.ca).remove(0);
    let name = "ftpsgate_certificate_expiry_timestamp_seconds";
    assert_eq!(
        value(&m, name, &[("name", "default")]),
        expiry(&default_der)
    );
    assert_eq!(
        value(&m, name, &[("name", "alt.two.test")]),
        expiry(&sni_der)
    );
    assert_eq!(m.samples.iter().filter(|s| s.metric == name).count(), 2);
}

#[test]
fn check_refuses_a_malformed_cidr_and_an_unknown_access_key_naming_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (text, names) in [
        ("[access]\ndeny = [\"10.0.0.0/33\"]\n", "deny"),
        ("[access]\nalow = [\"10.0.0.0/8\"]\n", "alow"),
        (
            "[routes.r]\naddress = \"127.0.0.1:21\"\nallow = [\"nonsense\"]\n",
            "allow",
        ),
        (
            "[access]\nmax_failed_logins = 3\nban_secs = 0\n",
            "access.failed_login_window_secs",
        ),
    ] {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, text).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_ftpsgate"))
            .arg("check")
            .arg("--config")
            .arg(&config)
            .output()
            .expect("check");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(err.contains(names), "{text}: {err}");
    }
}
