//! The front door's policy, with real clients (curl, Python's ftplib) in front of vsftpd:
//! address rules at accept and per route, bans after failed logins (and their end, and per
//! IPv6 prefix), passwords in flight held to the attempts left, users the gateway refuses
//! itself, and `check` on the access settings. Certificates are in tests/certificates.rs, the
//! audit log in tests/audit.rs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::{Command, Output};
use std::time::Duration;

use support::admin::{http_get, refusals, scrape, value};
use support::curl::{curl, curl_from, trace};
use support::ftps::Ftps;
use support::gateway::{admin_on_loopback, BackendKind, TestGateway};
use support::pki::ClientCa;
use support::process::{eventually, have, py_scenario, run_ok};
use support::servers::{users_heard, vsftpd_logging_commands, FtpServer, VsTls};
use support::{PASSWORD, USER};

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
            let mut ftp = Ftps::secured(gw.explicit, &gw.ca).await;
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
        let mut ftp = Ftps::secured(gw.explicit, &gw.ca).await;
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
