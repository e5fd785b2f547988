//! Command and name rules (`[policy]`, a route's own `policy`) with curl in front of vsftpd:
//! what a rule refuses never reaches the backend (vsftpd's own command log is the witness, and
//! its disk), what it allows arrives whole, and each refusal is counted and audited.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Output;
use std::time::Duration;

use ftpsgate::config::{BackendSettings, PolicySettings};
use support::admin::refusals;
use support::curl::{curl, trace};
use support::files::{random_file, sha256_file};
use support::gateway::{admin_on_loopback, TestGateway};
use support::process::eventually;
use support::servers::{vsftpd_logging_commands, FtpServer};
use support::{MIB, PASSWORD, USER};

/// curl as `login` over explicit FTPS with `args`, against the gateway's root.
fn ftps(gw: &TestGateway, login: &str, args: &[&str]) -> Output {
    curl(gw, 30)
        .args(["-v", "--ssl-reqd", "--user", login])
        .args(args)
        .output()
        .expect("curl")
}

fn url(gw: &TestGateway, path: &str) -> String {
    format!("ftp://127.0.0.1:{}/{path}", gw.explicit.port())
}

/// The commands vsftpd heard with `verb`, from its command log.
fn heard(vs: &FtpServer, verb: &str) -> Vec<String> {
    vs.log()
        .lines()
        .filter(|l| l.contains("FTP command") && l.to_uppercase().contains(&format!("\"{verb} ")))
        .map(str::to_string)
        .collect()
}

#[test]
fn denied_names_and_commands_never_reach_the_backend_and_are_audited() {
    let Some(vs) = vsftpd_logging_commands() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    let audit_file = audit.clone();
    let gw = TestGateway::start(vs.backend(), move |s| {
        admin_on_loopback(s);
        s.audit.log = Some(audit_file);
        s.policy = PolicySettings {
            deny_commands: vec!["dele".into(), "SITE".into()],
            deny_names: vec!["*.exe".into()],
            ..PolicySettings::default()
        };
    });
    let login = format!("{USER}:{PASSWORD}");
    let file = dir.path().join("up.bin");
    let want = random_file(&file, MIB);
    let up = file.display().to_string();

    // An executable by any spelling Windows would store as one: 553, nothing on the backend.
    // (nocwd: curl sends the path whole, `STOR sub/tool.exe`, as a client may.)
    for name in ["tool.exe", "Tool.EXE.", "sub/tool.exe"] {
        let out = ftps(
            &gw,
            &login,
            &["--ftp-method", "nocwd", "-T", &up, &url(&gw, name)],
        );
        assert!(!out.status.success(), "{name} uploaded");
        assert!(
            trace(&out).contains("< 553 File name not allowed."),
            "{}",
            trace(&out)
        );
    }
    // What the rules allow arrives whole, and the session carries on after a refusal.
    let out = ftps(
        &gw,
        &login,
        &[
            "-T",
            &up,
            &url(&gw, "tool.exe"),
            "-T",
            &up,
            &url(&gw, "ok.bin"),
        ],
    );
    assert!(trace(&out).contains("< 553"), "{}", trace(&out));
    let out = ftps(&gw, &login, &["-T", &up, &url(&gw, "ok.bin")]);
    assert!(out.status.success(), "{}", trace(&out));
    assert_eq!(sha256_file(&vs.root.join("ok.bin")), want);

    // A denied verb: 550, the file stays. A rename to a denied name is an upload of one.
    let out = ftps(&gw, &login, &["-Q", "DELE ok.bin", &url(&gw, "")]);
    assert!(trace(&out).contains("< 550 Permission denied: DELE is not allowed here."));
    let out = ftps(
        &gw,
        &login,
        &["-Q", "RNFR ok.bin", "-Q", "RNTO ok.exe", &url(&gw, "")],
    );
    assert!(
        trace(&out).contains("< 553 File name not allowed."),
        "{}",
        trace(&out)
    );
    assert!(
        vs.root.join("ok.bin").exists(),
        "neither deleted nor renamed"
    );
    let on_disk: Vec<String> = std::fs::read_dir(&vs.root)
        .expect("root")
        .map(|e| {
            e.expect("entry")
                .file_name()
                .to_string_lossy()
                .to_lowercase()
        })
        .collect();
    assert!(
        !on_disk.iter().any(|n| n.contains("exe")),
        "an executable reached the backend: {on_disk:?}"
    );
    assert!(heard(&vs, "DELE").is_empty() && heard(&vs, "RNTO").is_empty());
    let stors = heard(&vs, "STOR");
    assert!(
        stors.iter().all(|l| !l.to_lowercase().contains("exe")),
        "vsftpd heard {stors:?}"
    );

    assert_eq!(refusals(&gw, "policy_name"), 5.0);
    assert_eq!(refusals(&gw, "policy_command"), 1.0);
    let mut records = Vec::new();
    eventually(Duration::from_secs(10), || {
        records = std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["event"] == "refusal")
            .collect();
        records.len() == 6
    });
    let commands: Vec<&str> = records
        .iter()
        .filter_map(|r| r["command"].as_str())
        .collect();
    assert!(
        commands.contains(&"STOR tool.exe") && commands.contains(&"DELE"),
        "{records:#?}"
    );
    assert!(records
        .iter()
        .all(|r| r["user"] == USER && (r["reply"] == 553 || r["reply"] == 550)));
}

/// A read-only gateway (the global policy) with one route of its own rules: a drop box that
/// takes uploads but serves no downloads.
#[test]
fn a_route_policy_replaces_the_global_one() {
    let Some(vs) = vsftpd_logging_commands() else {
        return;
    };
    let want = vs.put("mirrored.bin", MIB);
    let vsftpd = vs.addr;
    let gw = TestGateway::start(vs.backend(), move |s| {
        admin_on_loopback(s);
        s.routing.user_suffix = true;
        s.policy.read_only = true;
        let drop_box = BackendSettings {
            addresses: vec![vsftpd.into()],
            policy: Some(PolicySettings {
                deny_commands: vec!["RETR".into(), "LIST".into(), "NLST".into(), "MLSD".into()],
                ..PolicySettings::default()
            }),
            ..BackendSettings::default()
        };
        s.routes.insert("dropbox".into(), drop_box);
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("up.bin");
    let up_sha = random_file(&file, MIB / 2);
    let up = file.display().to_string();
    let got = dir.path().join("got.bin");
    let got_arg = got.display().to_string();
    let reader = format!("{USER}:{PASSWORD}");
    let dropper = format!("{USER}@dropbox:{PASSWORD}");

    // Read-only: downloads whole, every kind of write refused with 550.
    let out = ftps(&gw, &reader, &["-o", &got_arg, &url(&gw, "mirrored.bin")]);
    assert!(out.status.success(), "{}", trace(&out));
    assert_eq!(sha256_file(&got), want);
    for args in [
        vec!["-T", up.as_str(), "URL/uploaded.bin"],
        vec!["-Q", "MKD newdir", "URL/"],
        vec!["-Q", "DELE mirrored.bin", "URL/"],
    ] {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("URL/", &url(&gw, "")))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ftps(&gw, &reader, &args);
        assert!(
            trace(&out).contains("< 550 Permission denied: read-only."),
            "{}",
            trace(&out)
        );
    }
    assert!(!vs.root.join("uploaded.bin").exists() && !vs.root.join("newdir").exists());
    assert!(vs.root.join("mirrored.bin").exists());

    // The drop box: its own rules only, so uploads pass and downloads do not.
    let out = ftps(&gw, &dropper, &["-T", &up, &url(&gw, "dropped.bin")]);
    assert!(out.status.success(), "{}", trace(&out));
    assert_eq!(sha256_file(&vs.root.join("dropped.bin")), up_sha);
    let out = ftps(&gw, &dropper, &["-o", &got_arg, &url(&gw, "mirrored.bin")]);
    assert!(trace(&out).contains("< 550 Permission denied: RETR is not allowed here."));
    assert!(
        heard(&vs, "RETR").len() == 1,
        "only the reader's RETR reached vsftpd"
    );
    assert_eq!(refusals(&gw, "policy_read_only"), 3.0);
    assert_eq!(refusals(&gw, "policy_command"), 1.0);
}
