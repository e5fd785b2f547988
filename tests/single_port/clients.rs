//! The clients people run, each with several transfers at once from one address through the
//! gateway's one data port: rclone (`--transfers 8`) and lftp (`mirror --parallel=8`) copying
//! a tree up and back, curl, ftplib with and without TLS reuse, Apache Commons Net, basic-ftp
//! and wget. Every file is hash-checked where it arrived: on vsftpd's disk, or the client's.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ftpsgate::config::ReuseMode;
use support::curl::curl;
use support::files::{random_file, sha256_file};
use support::gateway::TestGateway;
use support::peers::{basic_ftp, bounded, commons_net};
use support::process::{have, run_ok};
use support::servers::FtpServer;
use support::{PASSWORD, USER};

use super::{metric, no_lease_left, one_port_gateway};

/// How long one client program may run.
const LIMIT: Duration = Duration::from_secs(240);

/// A tree of 24 random files, a third of them in `sub/`, from empty to ~400 KB: their names
/// (relative) and hashes.
fn tree(dir: &Path) -> Vec<(String, String)> {
    std::fs::create_dir_all(dir.join("sub")).expect("tree");
    (0..24usize)
        .map(|i| {
            let name = match i % 3 {
                0 => format!("sub/t{i}.bin"),
                _ => format!("t{i}.bin"),
            };
            let size = match i {
                0 => 0,
                1 => 1,
                _ => (i * 37_813) % 400_000 + i,
            };
            (name.clone(), random_file(&dir.join(&name), size))
        })
        .collect()
}

/// Fails the test unless every file of the tree is under `dir` with its hash.
fn same_tree(dir: &Path, files: &[(String, String)], what: &str) {
    for (name, hash) in files {
        let path = dir.join(name);
        assert!(path.exists(), "{what}: {name} missing");
        assert_eq!(&sha256_file(&path), hash, "{what}: {name}");
    }
}

/// What a command said on stdout and stderr.
fn said(cmd: &mut Command) -> String {
    let out = run_ok(&mut bounded(LIMIT, cmd));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits for every child, failing the test with the output of the first that failed.
fn all_succeed(children: Vec<(String, Child)>) {
    for (what, child) in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// What a client's test runs on: the client `tool` installed (or a loud skip), vsftpd behind a
/// one-port gateway requiring TLS session reuse, and a scratch directory.
fn with_client(tool: &str) -> Option<(FtpServer, TestGateway, tempfile::TempDir)> {
    if !have(tool) {
        return None;
    }
    let (vs, gw) = one_port_gateway(ReuseMode::Require)?;
    Some((vs, gw, tempfile::tempdir().expect("tempdir")))
}

/// The end of a parallel client's test: no lease left pending, and `what` it did printed with
/// the histogram of PASV/EPSV waits for the port (every lease is observed, most at once).
fn done(gw: &TestGateway, what: &str) {
    no_lease_left(gw);
    println!(
        "{what}; {} PASV/EPSV, {:.2} s waiting for the port in all",
        metric(gw, "ftpsgate_passive_wait_seconds_count"),
        metric(gw, "ftpsgate_passive_wait_seconds_sum")
    );
}

/// rclone's on-the-fly remote for the gateway, explicit or implicit TLS.
fn rclone_remote(gw: &TestGateway, implicit: bool) -> String {
    let out = run_ok(Command::new("rclone").args(["obscure", PASSWORD]));
    let obscured = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (port, mode) = match implicit {
        true => (gw.implicit.port(), "tls"),
        false => (gw.explicit.port(), "explicit_tls"),
    };
    format!(
        ":ftp,host=127.0.0.1,port={port},user={USER},pass={obscured},{mode}=true,\
         no_check_certificate=true:"
    )
}

/// rclone with `args`: no retries of its own, so a refused transfer fails the run.
fn rclone(args: &[&str]) -> String {
    said(
        Command::new("rclone")
            .args(["--retries", "1", "--low-level-retries", "1", "-v"])
            .args([
                "--config",
                "/dev/null",
                "--contimeout",
                "20s",
                "--timeout",
                "60s",
            ])
            .args(args),
    )
}

#[test]
fn rclone_copies_a_tree_up_and_back_with_8_transfers_through_one_port() {
    let Some((vs, gw, work)) = with_client("rclone") else {
        return;
    };
    let src = work.path().join("src");
    let files = tree(&src);
    let at_once = ["--transfers", "8", "--checkers", "8"];
    for implicit in [false, true] {
        let tag = if implicit { "implicit" } else { "explicit" };
        let remote = format!("{}rclone-{tag}", rclone_remote(&gw, implicit));
        let source = src.display().to_string();
        rclone(&[&["copy", &source, &remote][..], &at_once].concat());
        same_tree(&vs.root.join(format!("rclone-{tag}")), &files, tag);
        let checked = rclone(&[&["check", &source, &remote, "--download"][..], &at_once].concat());
        assert!(checked.contains("0 differences found"), "{tag}: {checked}");
        let back = work.path().join(format!("back-{tag}"));
        let dest = back.display().to_string();
        rclone(&[&["copy", &remote, &dest][..], &at_once].concat());
        same_tree(&back, &files, tag);
    }
    done(&gw, "rclone: 24 files up, checked and back, 8 at once");
}

#[test]
fn lftp_mirrors_a_tree_up_and_back_with_8_at_once_through_one_port() {
    let Some((vs, gw, work)) = with_client("lftp") else {
        return;
    };
    let src = work.path().join("src");
    let files = tree(&src);
    for (tag, epsv, open) in [
        ("pasv", "no", format!("-p {} 127.0.0.1", gw.explicit.port())),
        (
            "epsv",
            "yes",
            format!("-p {} 127.0.0.1", gw.explicit.port()),
        ),
        (
            "implicit",
            "yes",
            format!("ftps://127.0.0.1:{}", gw.implicit.port()),
        ),
    ] {
        let back = work.path().join(format!("back-{tag}"));
        said(Command::new("lftp").arg("-c").arg(format!(
            "set ssl:ca-file {ca}; set ftp:ssl-force true; set ftp:ssl-protect-data true; \
             set net:max-retries 1; set net:timeout 30; set cmd:fail-exit true; \
             set ftp:prefer-epsv {epsv}; open -u {USER},{PASSWORD} {open}; \
             mirror -R --parallel=8 {src} lftp-{tag}; mirror --parallel=8 lftp-{tag} {back}; bye",
            ca = gw.ca.display(),
            src = src.display(),
            back = back.display(),
        )));
        same_tree(&vs.root.join(format!("lftp-{tag}")), &files, tag);
        same_tree(&back, &files, tag);
    }
    done(
        &gw,
        "lftp: mirror -R and mirror, 8 at once, PASV, EPSV, implicit",
    );
}

#[test]
fn curl_downloads_and_uploads_8_at_once_through_one_port() {
    let Some((vs, gw, work)) = with_client("curl") else {
        return;
    };
    let explicit = format!("ftp://{USER}:{PASSWORD}@127.0.0.1:{}/", gw.explicit.port());
    let implicit = format!("ftps://{USER}:{PASSWORD}@127.0.0.1:{}/", gw.implicit.port());
    for (tag, base, flags) in [
        ("epsv", &explicit, &["--ssl-reqd"][..]),
        ("pasv", &explicit, &["--ssl-reqd", "--disable-epsv"]),
        ("implicit", &implicit, &[]),
    ] {
        let mut children = Vec::new();
        let mut want = Vec::new();
        for i in 0..4 {
            let down = format!("curl-{tag}-{i}.bin");
            let hash = vs.put(&down, 300_000 + i);
            let got = work.path().join(&down);
            want.push((got.clone(), hash));
            let mut cmd = curl(&gw, 120);
            cmd.args(flags)
                .arg("-o")
                .arg(&got)
                .arg(format!("{base}{down}"));
            children.push((format!("curl {tag} RETR {down}"), spawn(&mut cmd)));
            let up = format!("curl-up-{tag}-{i}.bin");
            let src = work.path().join(&up);
            let hash = random_file(&src, 250_000 + i);
            want.push((vs.root.join(&up), hash));
            let mut cmd = curl(&gw, 120);
            cmd.args(flags)
                .arg("-T")
                .arg(&src)
                .arg(format!("{base}{up}"));
            children.push((format!("curl {tag} STOR {up}"), spawn(&mut cmd)));
        }
        all_succeed(children);
        for (path, hash) in want {
            assert_eq!(sha256_file(&path), hash, "{}", path.display());
        }
    }
    done(
        &gw,
        "curl: 4 downloads and 4 uploads at once, EPSV, PASV, implicit",
    );
}

/// `cmd` started with its output captured.
fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

/// One scenario of tests/py/scenarios.py (Python's ftplib) against `gw`, bounded in time.
fn ftplib(gw: &TestGateway, root: &Path, scenario: &str, extra: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/scenarios.py");
    let mut args = gw.py_args();
    let at = args.iter().position(|a| a == "--root").expect("--root") + 1;
    args[at] = root.display().to_string();
    said(
        Command::new("python3")
            .arg(script)
            .arg(scenario)
            .args(args)
            .args(extra),
    )
}

/// A scenario of tests/py/scenarios.py and its arguments.
type Run<'a> = (&'a str, &'a [&'a str]);

/// ftplib's `FTP_TLS` never resumes TLS on data connections; wrapped with `session=` it does.
/// Under `require` the resuming sessions pass (eight at once over IPv4, then a round trip over
/// IPv6, EPSV through the port's [::1] listener) and the plain one gets 522 within seconds; under
/// `allow` both pass; under `off` the plain one. Eight sessions at once each time.
#[test]
fn ftplib_with_and_without_tls_reuse_8_at_once_through_one_port() {
    if !have("python3") {
        return;
    }
    let reusing: &[&str] = &["--count", "8", "--size", "300000"];
    let plain: &[&str] = &["--count", "8", "--size", "300000", "--plain"];
    let ipv6: &[&str] = &["--ipv6", "--sizes", "0,1,300000"];
    let runs: [(ReuseMode, &[Run]); 3] = [
        (
            ReuseMode::Require,
            &[
                ("parallel", reusing),
                ("roundtrip", ipv6),
                ("no-reuse-refused", &[]),
            ],
        ),
        (
            ReuseMode::Allow,
            &[("parallel", reusing), ("parallel", plain)],
        ),
        (ReuseMode::Off, &[("parallel", plain)]),
    ];
    for (reuse, scenarios) in runs {
        let Some((vs, gw)) = one_port_gateway(reuse) else {
            return;
        };
        for (scenario, extra) in scenarios {
            let out = ftplib(&gw, &vs.root, scenario, extra);
            println!("ftplib under {reuse:?}: {}", out.trim());
        }
        no_lease_left(&gw);
    }
}

/// Commons Net never resumes TLS on data connections: with `data_session_reuse = "off"` it
/// stores, lists and fetches back, explicit and implicit at once; under `require` it gets 522
/// within seconds.
#[test]
fn commons_net_through_one_port_with_reuse_off_and_522_under_require() {
    let Some(classpath) = commons_net() else {
        return;
    };
    let java = |gw: &TestGateway, implicit: bool, mode: &str| {
        let port = if implicit { gw.implicit } else { gw.explicit }.port();
        let mut cmd = bounded(
            LIMIT,
            Command::new("java")
                .args(["-cp", &classpath, "CommonsNet", "127.0.0.1"])
                .arg(port.to_string())
                .arg(if implicit { "implicit" } else { "explicit" })
                .args([USER, PASSWORD, mode]),
        );
        spawn(&mut cmd)
    };
    let Some((vs, gw)) = one_port_gateway(ReuseMode::Off) else {
        return;
    };
    let both = [false, true].map(|implicit| (implicit, java(&gw, implicit, "roundtrip")));
    for (implicit, child) in both {
        let out = child.wait_with_output().expect("java");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "implicit {implicit}: {said}");
        let (name, hash) = said
            .trim()
            .strip_prefix("ok ")
            .and_then(|r| r.split_once(' '))
            .expect("ok NAME HASH");
        assert_eq!(
            sha256_file(&vs.root.join(name)),
            hash,
            "{name} on vsftpd's disk"
        );
    }
    no_lease_left(&gw);
    let Some((vs, strict)) = one_port_gateway(ReuseMode::Require) else {
        return;
    };
    // vsftpd answers 550 for a missing file before any data connection: this one exists.
    vs.put("anything.bin", 1000);
    all_succeed(vec![(
        "Commons Net under require".into(),
        java(&strict, false, "refused"),
    )]);
    no_lease_left(&strict);
}

/// basic-ftp resumes TLS on data connections: eight clients at once, each uploading, listing
/// and downloading a file of its own, explicit then implicit, under the default `require`.
#[test]
fn basic_ftp_8_clients_at_once_through_one_port() {
    let Some(script) = basic_ftp() else {
        return;
    };
    let Some((_vs, gw)) = one_port_gateway(ReuseMode::Require) else {
        return;
    };
    for (mode, port) in [
        ("explicit", gw.explicit.port()),
        ("implicit", gw.implicit.port()),
    ] {
        let out = said(
            Command::new("node")
                .arg(&script)
                .arg("127.0.0.1")
                .arg(port.to_string())
                .args([mode, USER, PASSWORD, "8"]),
        );
        assert!(out.starts_with("ok 8 clients"), "{mode}: {out}");
    }
    no_lease_left(&gw);
}

/// GNU wget downloads only: four at once, explicit and implicit, hash-checked.
#[test]
fn wget_4_downloads_at_once_through_one_port() {
    let Some((vs, gw, work)) = with_client("wget") else {
        return;
    };
    for (implicit, port) in [(false, gw.explicit.port()), (true, gw.implicit.port())] {
        let mut children = Vec::new();
        let mut want = Vec::new();
        for i in 0..4 {
            let name = format!("wget-{implicit}-{i}.bin");
            want.push((work.path().join(&name), vs.put(&name, 400_000 + i)));
            let mut cmd = Command::new("wget");
            cmd.args(["-q", "--no-check-certificate", "--tries=1", "--timeout=30"])
                .arg(format!("ftps://{USER}:{PASSWORD}@127.0.0.1:{port}/{name}"))
                .arg("-O")
                .arg(work.path().join(&name));
            if implicit {
                cmd.arg("--ftps-implicit");
            }
            children.push((format!("wget {name}"), spawn(&mut bounded(LIMIT, &cmd))));
        }
        all_succeed(children);
        for (path, hash) in want {
            assert_eq!(sha256_file(&path), hash, "{}", path.display());
        }
    }
    no_lease_left(&gw);
}
