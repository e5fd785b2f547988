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
        admin_on_loopback(s);
        s.access.allow = ftpsgate::config::Networks::new(vec!["127.0.0.0/24".parse().unwrap()]);
        s.access.deny = ftpsgate::config::Networks::new(vec!["127.0.0.7/32".parse().unwrap()]);
        s.routing.user_suffix = true;
        let mut route = s.backend.clone();
        route.addresses = vec![backend.into()];
        route.deny = ftpsgate::config::Networks::new(vec!["127.0.0.9/32".parse().unwrap()]);
        route.hosts = vec!["inner.test".into()];
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
    // HOST naming the route is refused before the route's backend hears of it.
    if have("python3") {
        let script = format!(
            "import ftplib\nftp = ftplib.FTP(source_address=('127.0.0.9', 0))\n\
             ftp.connect('127.0.0.1', {})\n\
             try:\n    ftp.sendcmd('HOST inner.test')\nexcept ftplib.error_temp as e:\n    print(e)\n",
            gw.explicit.port()
        );
        let out = run_ok(Command::new("python3").args(["-c", &script]));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.starts_with("421 Access denied."), "{said}");
    }
    assert_eq!(refusals(&gw, "access_denied"), 4.0);
}

#[test]
fn failed_logins_ban_an_address_until_the_ban_ends_while_others_log_in() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let ban_secs = 6;
    let gw = TestGateway::start(vs.backend(), move |s| {
        admin_on_loopback(s);
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

/// Ten sessions from one address wait at PASS and send a wrong password at once, with three
/// failures allowed: no more than three passwords reach the backend (each holds one of the
/// address's attempts while vsftpd checks it), the address is banned after, and a session
/// from another address logs in throughout.
#[test]
fn parallel_wrong_passwords_reach_the_backend_only_as_often_as_attempts_are_left() {
    let Some(vs) = vsftpd_logging_commands() else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |s| {
        admin_on_loopback(s);
        s.access.max_failed_logins = 3;
        s.access.failed_login_delay_secs = 0;
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let replies = rt.block_on(async {
        let mut waiting = Vec::new();
        for _ in 0..10 {
            let mut ftp = HandFtps::secured(gw.explicit, &gw.ca).await;
            assert!(ftp.cmd(&format!("USER {USER}")).await.starts_with("331"));
            waiting.push(ftp);
        }
        let guesses = waiting
            .into_iter()
            .map(|mut ftp| async move { ftp.cmd("PASS wrong-guess").await });
        futures_join_all(guesses).await
    });
    let refused = replies.iter().filter(|r| r.starts_with("530")).count();
    let turned_away = replies.iter().filter(|r| r.starts_with("421")).count();
    assert_eq!(refused + turned_away, 10, "{replies:?}");
    assert!((1..=3).contains(&refused), "{replies:?}");
    let passes = vs
        .log()
        .lines()
        .filter(|l| l.contains("FTP command") && l.contains("PASS"))
        .count();
    assert!(
        (1..=3).contains(&passes),
        "{passes} passwords reached vsftpd:\n{}",
        vs.log()
    );
    let admin = gw.admin.expect("admin");
    assert_eq!(value(&scrape(admin), "ftpsgate_bans_active", &[]), 1.0);
    let out = curl_from(&gw, "127.0.0.1", &format!("{USER}:{PASSWORD}"), &[]);
    assert!(!out.status.success(), "banned:\n{}", trace(&out));
    let out = curl_from(&gw, "127.0.0.2", &format!("{USER}:{PASSWORD}"), &[]);
    assert!(out.status.success(), "another address:\n{}", trace(&out));
}

/// Runs `futures` at once on the current runtime; their outputs in order.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("join"));
    }
    out
}

/// IPv6 documentation addresses on the loopback interface for one test, removed when dropped.
/// Loopback IPv6 has only ::1, and a ban per network needs two addresses in one.
struct LoopbackV6(Vec<&'static str>);

impl LoopbackV6 {
    /// Adds `addrs` (as /128s: no route for the rest of their network) to lo; `None` after a
    /// loud message when that is not allowed here (not root), a failure in CI (root there).
    fn add(addrs: &[&'static str]) -> Option<LoopbackV6> {
        if !have("ip") {
            return None;
        }
        let mut added = LoopbackV6(Vec::new());
        for addr in addrs {
            let out = Command::new("ip")
                .args([
                    "-6",
                    "addr",
                    "add",
                    &format!("{addr}/128"),
                    "dev",
                    "lo",
                    "nodad",
                ])
                .output()
                .expect("ip");
            let err = String::from_utf8_lossy(&out.stderr);
            // Left by an earlier run that was killed: it is removed at the end all the same.
            if !out.status.success() && !err.contains("File exists") {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("cannot add {addr} to lo in CI (root there): {err}");
                }
                eprintln!(
                    "\n!!!!! SKIPPED: cannot add {addr} to lo ({}); run as root !!!!!\n",
                    err.trim()
                );
                return None;
            }
            added.0.push(addr);
        }
        Some(added)
    }
}

impl Drop for LoopbackV6 {
    fn drop(&mut self) {
        for addr in &self.0 {
            let _ = Command::new("ip")
                .args(["-6", "addr", "del", &format!("{addr}/128"), "dev", "lo"])
                .status();
        }
    }
}

#[test]
fn an_ipv6_ban_covers_the_clients_prefix_and_no_more() {
    if !have("curl") {
        return;
    }
    let Some(_lo) = LoopbackV6::add(&["2001:db8:1:2::1", "2001:db8:1:2::2"]) else {
        return;
    };
    let gw = TestGateway::start(BackendKind::Unftp, |s| {
        admin_on_loopback(s);
        s.access.max_failed_logins = 2;
        s.access.failed_login_delay_secs = 0;
        s.access.ipv6_prefix = 64;
    });
    std::fs::write(gw.root.join("v6.txt"), "over IPv6\n").expect("fixture");
    let url = format!("ftp://[::1]:{}/", gw.explicit6.port());
    let from = |source: Option<&str>, login: &str| {
        let mut cmd = curl(&gw, 30);
        cmd.args(["-v", "-g", "--ssl-reqd", "--user", login]);
        if let Some(source) = source {
            cmd.args(["--interface", source]);
        }
        cmd.arg(&url).output().expect("curl")
    };
    let wrong = format!("{USER}:wrong");
    for _ in 0..2 {
        let out = from(Some("2001:db8:1:2::1"), &wrong);
        assert_eq!(out.status.code(), Some(67), "{}", trace(&out));
    }
    let (_, bans) = http_get(gw.admin.expect("admin"), "/bans");
    assert!(bans.contains("\"address\":\"2001:db8:1:2::/64\""), "{bans}");
    // Its neighbour in the /64 is turned away at the door, with the right password too ...
    let out = from(Some("2001:db8:1:2::2"), &format!("{USER}:{PASSWORD}"));
    assert!(!out.status.success(), "{}", trace(&out));
    assert!(
        trace(&out).contains(&format!("< 421 {}", "Too many failed logins")),
        "{}",
        trace(&out)
    );
    assert_eq!(refusals(&gw, "banned"), 1.0);
    // ... while ::1, outside it, logs in and lists.
    let out = from(None, &format!("{USER}:{PASSWORD}"));
    assert!(out.status.success(), "{}", trace(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("v6.txt"),
        "{}",
        trace(&out)
    );
}

#[test]
fn denied_users_are_refused_by_the_gateway_and_never_reach_the_backend() {
    let Some(vs) = vsftpd_logging_commands() else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |s| {
        admin_on_loopback(s);
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
fn user_names_with_whitespace_around_or_control_characters_are_refused_by_the_gateway() {
    let Some(vs) = vsftpd_logging_commands() else {
        return;
    };
    let backend = vs.addr;
    let gw = TestGateway::start(vs.backend(), move |s| {
        admin_on_loopback(s);
        s.access.deny_users = vec!["ftpuser".into()];
        s.access.max_failed_logins = 4;
        s.access.failed_login_delay_secs = 0;
        s.routing.user_suffix = true;
        let mut route = s.backend.clone();
        route.addresses = vec![backend.into()];
        s.routes.insert("inner".into(), route);
    });
    let admin = gw.admin.expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut ftp = HandFtps::secured(gw.explicit, &gw.ca).await;
        // A denied user hidden by a space before the suffix (pure-ftpd took it as `ftpuser`);
        // its PASS is the gateway's to answer too.
        let said = ftp.cmd("USER ftpuser @inner").await;
        assert!(said.starts_with("530 Login incorrect."), "{said}");
        let said = ftp.cmd("PASS secret").await;
        assert!(said.starts_with("503"), "{said}");
        for line in [
            "USER ftpuser ".to_string(),
            "USER \tftpuser".to_string(),
            // Not a denied name, refused all the same: the shape is the rule.
            format!("USER {USER} "),
        ] {
            let said = ftp.cmd(&line).await;
            assert!(said.starts_with("530 Login incorrect."), "{line:?}: {said}");
        }
        // Four failed logins: the address is banned.
        let said = ftp.cmd(&format!("USER {USER}")).await;
        assert!(said.starts_with("421"), "{said}");
    });
    assert_eq!(refusals(&gw, "malformed_user"), 4.0);
    let (_, bans) = http_get(admin, "/bans");
    assert!(bans.contains("\"address\":\"127.0.0.1\""), "{bans}");
    // Well-formed logins from another address, by the route suffix and without one.
    for login in [
        format!("{USER}@inner:{PASSWORD}"),
        format!("{USER}:{PASSWORD}"),
    ] {
        let out = curl_from(&gw, "127.0.0.2", &login, &[]);
        assert!(out.status.success(), "{login}: {}", trace(&out));
    }
    // The backend heard those two USER lines and nothing else.
    let heard = users_heard(&vs);
    assert_eq!(heard.len(), 2, "{}", vs.log());
    assert!(
        heard
            .iter()
            .all(|l| l.contains(&format!("\"USER {USER}\""))),
        "{heard:#?}"
    );
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
    let pki = ClientPki::new();
    let (clients, ca) = (&pki.ca, pki.ca_path.clone());
    let write = |name: &str, c: &ClientCert| pki.write(name, c);
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
            admin_on_loopback(s);
            s.tls.client_auth = ftpsgate::config::ClientAuth::Required;
            s.tls.client_ca = Some(client_ca);
            s.tls.client_cert_user = Some(field);
            if field == ftpsgate::config::CertUser::Email {
                s.tls.client_cert_email_domains = vec!["example.org".into()];
            }
            s.access.failed_login_delay_secs = 0;
        });
        let got = pki.dir.path().join("got.bin");
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

/// A client CA and the client certificates made under it, written to a temporary directory
/// for curl and the gateway to read.
struct ClientPki {
    dir: tempfile::TempDir,
    ca: ClientCa,
    ca_path: std::path::PathBuf,
}

impl ClientPki {
    fn new() -> ClientPki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClientCa::new();
        let ca_path = dir.path().join("clients-ca.pem");
        std::fs::write(&ca_path, &ca.pem).expect("write CA");
        ClientPki { dir, ca, ca_path }
    }

    /// Writes `c` as `name.pem` and `name.key`; their paths.
    fn write(&self, name: &str, c: &ClientCert) -> (String, String) {
        let (cert, key) = (
            self.dir.path().join(format!("{name}.pem")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&cert, &c.cert_pem).expect("cert");
        std::fs::write(&key, &c.key_pem).expect("key");
        (cert.display().to_string(), key.display().to_string())
    }
}

/// A plain vsftpd that logs every command it hears, for tests that show what never reached
/// it, and curl to drive the gateway in front of it; `None` (the test skips) without them.
fn vsftpd_logging_commands() -> Option<FtpServer> {
    if !have("curl") {
        return None;
    }
    FtpServer::vsftpd_on(
        VsTls::None,
        false,
        "xferlog_enable=YES\nlog_ftp_protocol=YES\n",
    )
}

/// The `USER` commands vsftpd heard, from its command log.
fn users_heard(vs: &FtpServer) -> Vec<String> {
    vs.log()
        .lines()
        .filter(|l| l.contains("FTP command") && l.to_uppercase().contains("\"USER "))
        .map(str::to_string)
        .collect()
}

#[test]
fn email_bound_logins_accept_only_the_listed_domains() {
    let Some(vs) = vsftpd_logging_commands() else {
        return;
    };
    let want = vs.put("domain.bin", 100_000);
    let pki = ClientPki::new();
    let (clients, ca) = (&pki.ca, pki.ca_path.clone());
    let write = |name: &str, c: &ClientCert| pki.write(name, c);
    // Both valid under the same CA, both with the local part the user logs in as.
    let evil = write(
        "evil",
        &clients.client("evil", Some(&format!("{USER}@evil.example"))),
    );
    let ours = write(
        "ours",
        &clients.client("ours", Some(&format!("{USER}@Example.ORG"))),
    );
    let gw = TestGateway::start(vs.backend(), move |s| {
        admin_on_loopback(s);
        s.tls.client_auth = ftpsgate::config::ClientAuth::Required;
        s.tls.client_ca = Some(ca);
        s.tls.client_cert_user = Some(ftpsgate::config::CertUser::Email);
        s.tls.client_cert_email_domains = vec!["example.org".into(), "corp.example".into()];
        s.access.failed_login_delay_secs = 0;
    });
    let login = format!("{USER}:{PASSWORD}");
    let url = format!("ftp://127.0.0.1:{}/domain.bin", gw.explicit.port());
    let got = pki.dir.path().join("got.bin");
    let fetch = |pair: &(String, String)| {
        curl(&gw, 30)
            .args(["-v", "--ssl-reqd", "--cert", &pair.0, "--key", &pair.1])
            .args(["--user", &login, &url, "-o"])
            .arg(&got)
            .output()
            .expect("curl")
    };

    let out = fetch(&evil);
    assert_eq!(out.status.code(), Some(67), "{}", trace(&out));
    assert!(
        trace(&out).contains("< 530 Login incorrect."),
        "{}",
        trace(&out)
    );
    assert!(!trace(&out).contains("> PASS"), "{}", trace(&out));
    assert_eq!(refusals(&gw, "certificate_user"), 1.0);
    assert_eq!(users_heard(&vs), Vec::<String>::new(), "{}", vs.log());

    // The listed domain, in another case, logs in and downloads.
    let out = fetch(&ours);
    assert!(out.status.success(), "{}", trace(&out));
    assert_eq!(sha256_file(&got), want);
    assert_eq!(users_heard(&vs).len(), 1, "{}", vs.log());
    assert_eq!(refusals(&gw, "certificate_user"), 1.0);
}

#[test]
fn certificate_expiry_is_on_metrics_for_the_default_and_each_sni_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair =
        ftpsgate::tls::self_signed(&["two.test".into(), "alt.two.test".into()]).expect("cert");
    let (cert, key) = pair.write_to(dir.path()).expect("write");
    let sni_der = pem_certs(&cert).remove(0);
    let gw = TestGateway::start(BackendKind::Unftp, move |s| {
        admin_on_loopback(s);
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
        ("[access]\nipv6_prefix = 0\n", "access.ipv6_prefix"),
        ("[access]\nipv6_prefix = 129\n", "access.ipv6_prefix"),
        // Email binding with no domains would let any domain's `user@` in as `user`.
        (
            "[tls]\nclient_auth = \"required\"\nclient_ca = \"/ca.pem\"\n\
             client_cert_user = \"email\"\n",
            "tls.client_cert_email_domains",
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

#[test]
fn check_takes_the_ipv6_prefix_from_the_flag_or_the_variable_and_refuses_one_out_of_range() {
    let check = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ftpsgate"));
        cmd.arg("check").env_remove("FTPSGATE_IPV6_PREFIX");
        cmd
    };
    let effective = |out: Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(effective(check().output().expect("check")).contains("ipv6_prefix = 64\n"));
    let flag = check()
        .args(["--ipv6-prefix", "56"])
        .output()
        .expect("check");
    assert!(effective(flag).contains("ipv6_prefix = 56\n"));
    let var = check()
        .env("FTPSGATE_IPV6_PREFIX", "128")
        .output()
        .expect("check");
    assert!(effective(var).contains("ipv6_prefix = 128\n"));
    let out = check()
        .args(["--ipv6-prefix", "0"])
        .output()
        .expect("check");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("access.ipv6_prefix"), "{err}");
}

#[test]
fn check_takes_the_email_domains_from_the_flag_or_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("clients-ca.pem");
    std::fs::write(&ca, ClientCa::new().pem).expect("write CA");
    let config = dir.path().join("email.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\nclient_auth = \"required\"\nclient_ca = {:?}\nclient_cert_user = \"email\"\n",
            ca.display().to_string()
        ),
    )
    .expect("write");
    let check = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ftpsgate"));
        cmd.arg("check").arg("--config").arg(&config);
        cmd.env_remove("FTPSGATE_CLIENT_CERT_EMAIL_DOMAINS");
        cmd
    };
    let out = check().output().expect("check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("tls.client_cert_email_domains"), "{err}");
    let out = check()
        .env(
            "FTPSGATE_CLIENT_CERT_EMAIL_DOMAINS",
            "example.org,corp.example",
        )
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(
            "client_cert_email_domains = [\n    \"example.org\",\n    \"corp.example\",\n]"
        ),
        "{text}"
    );
    let out = check()
        .args(["--client-cert-email-domains", "example.org"])
        .output()
        .expect("check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The audit log's lines, parsed.
fn audit_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect()
}

fn transfers<'a>(lines: &'a [serde_json::Value], command: &str) -> Vec<&'a serde_json::Value> {
    lines
        .iter()
        .filter(|l| l["event"] == "transfer" && l["command"] == command)
        .collect()
}

#[test]
fn the_audit_log_records_transfers_with_their_sha256_and_logins() {
    if !have("curl") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let want = vs.put("audited.bin", MIB);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("audit.jsonl");
    let audit = log.clone();
    let gw = TestGateway::start(vs.backend(), move |s| {
        admin_on_loopback(s);
        s.audit.log = Some(audit);
        s.audit.sha256 = true;
        s.access.failed_login_delay_secs = 0;
    });
    let base = format!("ftp://127.0.0.1:{}/", gw.explicit.port());
    let login = format!("{USER}:{PASSWORD}");
    let got = dir.path().join("got.bin");
    let up = dir.path().join("up.bin");
    let up_sha = random_file(&up, 300_001);
    for args in [
        vec![
            "-o".into(),
            got.display().to_string(),
            format!("{base}audited.bin"),
        ],
        vec![
            "-T".into(),
            up.display().to_string(),
            format!("{base}uploaded.bin"),
        ],
    ] {
        let out = curl(&gw, 30)
            .args(["--ssl-reqd", "--user", &login])
            .args(&args)
            .output()
            .expect("curl");
        assert!(out.status.success(), "{}", trace(&out));
    }
    assert_eq!(sha256_file(&got), want);
    let wrong = curl_from(&gw, "127.0.0.1", &format!("{USER}:wrong"), &[]);
    assert_eq!(wrong.status.code(), Some(67));

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log)
        .expect("audit log")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the owner only");
    let logins = |lines: &[serde_json::Value], outcome: &str| {
        lines
            .iter()
            .filter(|l| l["event"] == "login" && l["outcome"] == outcome && l["user"] == USER)
            .count()
    };
    // Records are written by the audit log's own thread, just after the replies.
    let mut lines = Vec::new();
    eventually(Duration::from_secs(10), || {
        lines = audit_lines(&log);
        logins(&lines, "failed") == 1
    });
    let retr = transfers(&lines, "RETR");
    let stor = transfers(&lines, "STOR");
    assert_eq!((retr.len(), stor.len()), (1, 1), "{lines:#?}");
    let (retr, stor) = (retr[0], stor[0]);
    assert_eq!(retr["sha256"], want.as_str(), "the file on disk");
    assert_eq!(retr["bytes"], MIB as u64);
    assert_eq!(retr["direction"], "download");
    assert_eq!(retr["path"], "audited.bin");
    assert_eq!(stor["sha256"], up_sha.as_str(), "the uploaded file");
    assert_eq!(sha256_file(&vs.root.join("uploaded.bin")), up_sha);
    assert_eq!(stor["direction"], "upload");
    for t in [retr, stor] {
        assert_eq!(t["outcome"], "ok");
        assert_eq!(t["user"], USER);
        assert_eq!(t["client"], "127.0.0.1");
        assert_eq!(t["route"], "default");
        assert_eq!(t["tls_version"], "TLSv1_3");
        assert!(t["session"].as_u64().is_some() && t["duration_ms"].as_u64().is_some());
        assert!(t["time"].as_str().is_some_and(|s| s.ends_with('Z')), "{t}");
    }
    assert_eq!(
        (logins(&lines, "ok"), logins(&lines, "failed")),
        (2, 1),
        "{lines:#?}"
    );
}

#[test]
fn audit_write_errors_are_counted_and_transfers_go_on() {
    if !have("curl") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let want = vs.put("still.bin", 100_000);
    // A FIFO whose reader is gone, as a collector that died leaves it: every write fails
    // (EPIPE), as every write to a full disk would.
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("audit.fifo");
    run_ok(Command::new("mkfifo").args(["-m", "0600"]).arg(&fifo));
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("open the FIFO");
    let audit = fifo.clone();
    let gw = TestGateway::start(vs.backend(), move |s| {
        admin_on_loopback(s);
        s.audit.log = Some(audit);
    });
    drop(reader);
    let got = dir.path().join("got.bin");
    let out = curl(&gw, 30)
        .args(["--ssl-reqd", "--user", &format!("{USER}:{PASSWORD}"), "-o"])
        .arg(&got)
        .arg(format!("ftp://127.0.0.1:{}/still.bin", gw.explicit.port()))
        .output()
        .expect("curl");
    assert!(out.status.success(), "{}", trace(&out));
    assert_eq!(sha256_file(&got), want);
    let errors = || {
        value(
            &scrape(gw.admin.expect("admin")),
            "ftpsgate_audit_write_errors_total",
            &[],
        )
    };
    // Written (and failed) by the audit log's own thread, just after the replies.
    assert!(
        eventually(Duration::from_secs(10), || errors() >= 2.0),
        "login and transfer: {}",
        errors()
    );
}

#[test]
fn the_audit_log_reopens_on_sighup_and_an_unwritable_one_refuses_the_start() {
    if !have("curl") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    vs.put("one.bin", 1000);
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = ftpsgate::tls::self_signed(&["127.0.0.1".into()]).expect("cert");
    let (cert, key) = pair.write_to(dir.path()).expect("write");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_low_port()));
    let pool = free_low_range(4);
    let config = dir.path().join("ftpsgate.toml");
    let configure = |audit: &std::path::Path| {
        let text = format!(
            "[listen]\nexplicit = [\"{listen}\"]\n[backend]\naddress = \"{}\"\n\
             [passive]\nports = \"{pool}-{}\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             [audit]\nlog = \"{}\"\n",
            vs.addr,
            pool + 3,
            cert.display(),
            key.display(),
            audit.display(),
        );
        std::fs::write(&config, text).expect("config");
    };
    let run = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ftpsgate"));
        cmd.args(["run", "--config"]).arg(&config);
        cmd
    };

    // A log it cannot open: no start, and the message names the key.
    configure(&dir.path().join("missing-dir/audit.jsonl"));
    let out = run().output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("audit.log"), "{err}");

    let log = dir.path().join("audit.jsonl");
    configure(&log);
    let gw = KillOnDrop(
        run()
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start"),
    );
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect(
            listen
        )
        .is_ok()),
        "gateway did not start"
    );
    let download = || {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "--ssl-reqd", "--cacert"])
            .arg(&cert)
            .args(["--user", &format!("{USER}:{PASSWORD}"), "-o", "/dev/null"])
            .arg(format!("ftp://{listen}/one.bin"))
            .output()
            .expect("curl");
        assert!(out.status.success(), "{}", trace(&out));
    };
    download();
    let retrs = |log: &std::path::Path| transfers(&audit_lines(log), "RETR").len();
    // Written by the audit log's own thread, just after the reply.
    assert!(eventually(Duration::from_secs(10), || retrs(&log) == 1));
    // logrotate: the file is moved away, then the gateway told to reopen.
    let rotated = dir.path().join("audit.jsonl.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    run_ok(Command::new("kill").args(["-HUP", &gw.0.id().to_string()]));
    assert!(
        eventually(Duration::from_secs(10), || log.exists()),
        "not reopened on SIGHUP"
    );
    download();
    eventually(Duration::from_secs(10), || retrs(&log) == 1);
    let (old, new) = (audit_lines(&rotated), audit_lines(&log));
    assert_eq!(transfers(&old, "RETR").len(), 1, "{old:#?}");
    assert_eq!(transfers(&new, "RETR").len(), 1, "{new:#?}");
}

/// Connects to `to` `n` times from 127.0.0.1 and hangs up at once: with 127.0.0.0/8 denied,
/// each is a refusal at accept, and a refusal record. Returns how many connected, up to the
/// first that did not.
fn refused_connections(to: SocketAddr, n: usize) -> usize {
    (0..n)
        .take_while(|_| std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok())
        .count()
}

/// The audit log's lines as read from a pipe: every line read within `limit`, until `done`
/// says enough.
fn read_pipe_until(
    pipe: std::fs::File,
    limit: Duration,
    done: impl Fn(&serde_json::Value) -> bool + Send + 'static,
) -> Vec<serde_json::Value> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    // Blocks when the pipe is empty (the test holds a write end too): the channel bounds it.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object a line");
            let enough = done(&v);
            if tx.send(v).is_err() || enough {
                return;
            }
        }
    });
    let end = std::time::Instant::now() + limit;
    let mut lines = Vec::new();
    while let Ok(v) = rx.recv_timeout(end.saturating_duration_since(std::time::Instant::now())) {
        lines.push(v);
    }
    lines
}

/// An audit log that stops taking lines (a FIFO whose reader stopped reading; a slow disk or
/// a full pipe does the same) costs records, never service: while it is stuck new sessions get
/// their 220 and log in, a session already open answers NOOP, and the records that did not
/// fit are counted; once it is read again, the log says how many it is missing.
#[test]
fn an_audit_log_that_stops_taking_lines_drops_records_and_never_stalls_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("audit.fifo");
    run_ok(Command::new("mkfifo").args(["-m", "0600"]).arg(&fifo));
    // Read and write: the open does not wait for a writer, and the gateway's open (write only)
    // finds a reader. The test then reads nothing until the end.
    let pipe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("open the FIFO");
    let audit = fifo.clone();
    let gw = TestGateway::start(BackendKind::Unftp, move |s| {
        admin_on_loopback(s);
        s.audit.log = Some(audit);
        // Every refusal gets its record (the rate limit has a test of its own), to fill the pipe.
        s.audit.refusals_per_sec = u32::MAX;
        // Refused at accept with a record each: the flood. The sessions come over [::1].
        s.access.deny = ftpsgate::config::Networks::new(vec!["127.0.0.0/8".parse().unwrap()]);
    });
    let admin = gw.admin.expect("admin");
    let dropped = || {
        value(
            &scrape(admin),
            "ftpsgate_audit_dropped_total",
            &[("reason", "queue_full")],
        )
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut open = rt.block_on(suppaftp_session(gw.explicit6, &gw.ca));

    // The pipe holds 64 KiB and the queue 4096 records: a few thousand refusals fill both.
    let (mut flooded, flooding) = (0, std::time::Instant::now());
    while dropped() == 0.0 {
        assert!(
            flooded < 40_000 && flooding.elapsed() < Duration::from_secs(120),
            "no record dropped after {flooded} refusals"
        );
        flooded += refused_connections(gw.explicit, 500);
    }
    let before = dropped();

    // A new session: its 220 at once, and a login (whose record is dropped too).
    let started = std::time::Instant::now();
    let mut greeted = std::net::TcpStream::connect(gw.explicit6).expect("connect");
    greeted
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut greeting = [0u8; 4];
    std::io::Read::read_exact(&mut greeted, &mut greeting).expect("a 220 within 5 s");
    assert_eq!(&greeting, b"220 ");
    assert!(started.elapsed() < Duration::from_secs(5));
    rt.block_on(async {
        let five = Duration::from_secs(5);
        let mut fresh = tokio::time::timeout(five, suppaftp_session(gw.explicit6, &gw.ca))
            .await
            .expect("a login within 5 s");
        let noop = tokio::time::timeout(five, fresh.noop()).await;
        noop.expect("within 5 s").expect("NOOP on the new session");
        // The session opened before the log stalled.
        let noop = tokio::time::timeout(five, open.noop()).await;
        noop.expect("within 5 s").expect("NOOP on the open session");
    });
    assert!(
        dropped() > before,
        "the login's record was dropped and counted"
    );

    // Read again: the writer catches up, and says what it dropped.
    let lines = read_pipe_until(pipe, Duration::from_secs(20), |v| v["event"] == "dropped");
    let summary = lines.last().expect("lines");
    assert_eq!(summary["event"], "dropped", "{summary}");
    assert_eq!(summary["reason"], "queue_full");
    assert!(summary["records"].as_u64().expect("records") as f64 >= before);
    // Before it, the records the pipe held, whole and in the order of events.
    let sessions: Vec<u64> = lines
        .iter()
        .filter(|l| l["event"] == "refusal")
        .map(|l| l["session"].as_u64().expect("session"))
        .collect();
    assert!(sessions.len() > 100, "{}", sessions.len());
    assert!(sessions.windows(2).all(|w| w[0] < w[1]), "in order");
}

/// A flood of refused connections costs at most `audit.refusals_per_sec` records a second; the
/// rest are counted, and summed up in the log: records written plus records dropped make the
/// refusals.
#[test]
fn refusal_records_beyond_the_rate_are_summed_up_not_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("audit.jsonl");
    let audit = log.clone();
    let gw = TestGateway::start(BackendKind::Unftp, move |s| {
        admin_on_loopback(s);
        s.audit.log = Some(audit);
        s.audit.refusals_per_sec = 5;
        s.access.deny = ftpsgate::config::Networks::new(vec!["127.0.0.0/8".parse().unwrap()]);
    });
    let started = std::time::Instant::now();
    let connected = refused_connections(gw.explicit, 300) as f64;
    let lines = |kind: &str| {
        audit_lines(&log)
            .into_iter()
            .filter(|l| l["event"] == kind)
            .collect::<Vec<_>>()
    };
    // Every connection refused, each refusal either written or dropped, and those dropped
    // summed up in the log (within a second of them).
    let (mut refused, mut limited, mut written) = (0.0, 0.0, 0.0);
    let settled = eventually(Duration::from_secs(10), || {
        let metrics = scrape(gw.admin.expect("admin"));
        refused = value(
            &metrics,
            "ftpsgate_refusals_total",
            &[("reason", "access_denied")],
        );
        limited = value(
            &metrics,
            "ftpsgate_audit_dropped_total",
            &[("reason", "rate_limited")],
        );
        let summed: u64 = lines("dropped")
            .iter()
            .map(|l| l["records"].as_u64().unwrap())
            .sum();
        written = lines("refusal").len() as f64;
        refused == connected && summed as f64 == limited && written + limited == refused
    });
    assert!(
        settled,
        "{refused} refused of {connected}, {written} written, {limited} dropped: {:#?}",
        lines("dropped")
    );
    // A burst of 5, then 5 a second.
    let took = started.elapsed().as_secs_f64();
    assert!(written <= 5.0 + 5.0 * took, "{written} in {took} s");
    assert!(limited > 0.0);
    assert!(lines("dropped")
        .iter()
        .all(|l| l["reason"] == "rate_limited"));
}

/// The audit log is opened without following a symbolic link and must be the gateway's own,
/// closed to others (0600 or 0640): a symlink or a file others may write refuses the start
/// with the reason; the normal case creates it 0600; and a SIGHUP that would reopen onto a
/// symlink keeps writing the old file and says why.
#[test]
fn an_audit_log_that_is_a_symlink_or_open_to_others_is_refused_at_start_and_on_sighup() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = ftpsgate::tls::self_signed(&["127.0.0.1".into()]).expect("cert");
    let (cert, key) = pair.write_to(dir.path()).expect("write");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_low_port()));
    let pool = free_low_range(4);
    let config = dir.path().join("ftpsgate.toml");
    // Every connection is refused at accept, with a refusal record: no backend needed.
    let configure = |audit: &std::path::Path| {
        let text = format!(
            "[listen]\nexplicit = [\"{listen}\"]\n[backend]\naddress = \"127.0.0.1:9\"\n\
             [passive]\nports = \"{pool}-{}\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             [access]\ndeny = [\"127.0.0.0/8\"]\n[audit]\nlog = \"{}\"\n",
            pool + 3,
            cert.display(),
            key.display(),
            audit.display(),
        );
        std::fs::write(&config, text).expect("config");
    };
    let run = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ftpsgate"));
        cmd.args(["run", "--config"]).arg(&config);
        cmd
    };
    // Exits at once, non-zero, naming the key and `why`.
    let refused = |why: &str| {
        let err_file = dir.path().join("refused.log");
        let mut gw = KillOnDrop(
            run()
                .stderr(std::fs::File::create(&err_file).expect("stderr"))
                .spawn()
                .expect("run"),
        );
        let mut status = None;
        eventually(Duration::from_secs(10), || {
            status = gw.0.try_wait().expect("wait");
            status.is_some()
        });
        let err = std::fs::read_to_string(&err_file).unwrap_or_default();
        assert!(status.is_some_and(|s| !s.success()), "started: {err}");
        assert!(err.contains("audit.log") && err.contains(why), "{err}");
    };
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };

    // A symlink, even to a file fit to be the log: refused, and nothing written through it.
    let target = dir.path().join("elsewhere.jsonl");
    std::fs::write(&target, b"").expect("write");
    chmod(&target, 0o600);
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    configure(&link);
    refused("symbolic link");
    // A file everyone may write: refused, its mode named.
    let open = dir.path().join("open.jsonl");
    std::fs::write(&open, b"").expect("write");
    chmod(&open, 0o666);
    configure(&open);
    refused("mode 0666");

    // The normal case: created 0600, and written.
    let log = dir.path().join("audit.jsonl");
    configure(&log);
    let stderr = dir.path().join("stderr.log");
    let gw = KillOnDrop(
        run()
            .stderr(std::fs::File::create(&stderr).expect("stderr"))
            .spawn()
            .expect("start"),
    );
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect(
            listen
        )
        .is_ok()),
        "gateway did not start"
    );
    let mode = std::fs::metadata(&log)
        .expect("created")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let refusals = |log: &std::path::Path| {
        audit_lines(log)
            .iter()
            .filter(|l| l["event"] == "refusal")
            .count()
    };
    assert!(eventually(Duration::from_secs(10), || refusals(&log) >= 1));

    // logrotate's move, then a symlink where the log was, then SIGHUP: the old file stays.
    let rotated = dir.path().join("audit.jsonl.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    std::os::unix::fs::symlink(&target, &log).expect("symlink");
    run_ok(Command::new("kill").args(["-HUP", &gw.0.id().to_string()]));
    let said = || std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(10), || said()
            .contains("cannot reopen the audit log")),
        "{}",
        said()
    );
    assert!(said().contains("symbolic link"), "{}", said());
    let before = refusals(&rotated);
    let _ = std::net::TcpStream::connect(listen).expect("connect");
    assert!(
        eventually(Duration::from_secs(10), || refusals(&rotated) > before),
        "records go on to the old file"
    );
    assert_eq!(
        std::fs::read(&target).expect("target"),
        b"",
        "nothing through the link"
    );
}
