//! The clients people run, through the gateway, beyond curl, lftp and ftplib: rclone (Go's
//! crypto/tls and its one TLS session cache per host, with parallel transfers). Every transfer
//! is hash-checked on the backend's disk and on the way back.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Sizes of the tree rclone copies: empty, tiny, odd, and a few MiB.
const SIZES: [usize; 10] = [
    0,
    1,
    1000,
    65_537,
    300_000,
    MIB,
    2 * MIB + 3,
    3 * MIB,
    17,
    4096,
];

/// A source tree of `SIZES.len()` random files; their names and hashes.
fn tree(dir: &Path) -> Vec<(String, String)> {
    std::fs::create_dir_all(dir.join("sub")).expect("tree");
    SIZES
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let name = if i % 3 == 0 {
                format!("sub/f{i}.bin")
            } else {
                format!("f{i}.bin")
            };
            (name.clone(), random_file(&dir.join(&name), size))
        })
        .collect()
}

fn rclone(args: &[&str]) -> String {
    let out = run_ok(
        Command::new("rclone")
            .args(args)
            .args([
                "--retries",
                "1",
                "--low-level-retries",
                "1",
                "--config",
                "/dev/null",
            ])
            .env("RCLONE_CONFIG", "/dev/null"),
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// rclone's connection string for the gateway: explicit or implicit TLS, TLS 1.2 or 1.3.
fn remote(gw: &TestGateway, implicit: bool, tls13: bool) -> String {
    let obscured = rclone(&["obscure", PASSWORD]).trim().to_string();
    let (port, mode) = if implicit {
        (gw.implicit.port(), "tls")
    } else {
        (gw.explicit.port(), "explicit_tls")
    };
    format!(
        ":ftp,host=127.0.0.1,port={port},user={USER},pass={obscured},{mode}=true,\
         no_check_certificate=true,disable_tls13={}:",
        !tls13
    )
}

#[test]
fn rclone_parallel_copy_check_and_sync_explicit_and_implicit_tls12_and_tls13() {
    if !have("rclone") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src");
    let files = tree(&src);
    for (implicit, tls13) in [(false, false), (false, true), (true, false), (true, true)] {
        let tag = format!(
            "{}-tls1{}",
            if implicit { "implicit" } else { "explicit" },
            if tls13 { 3 } else { 2 }
        );
        let dest = format!("{}up-{tag}", remote(&gw, implicit, tls13));
        let source = src.display().to_string();
        // Four transfers at once: each data connection may offer a sibling's ticket.
        rclone(&[
            "copy",
            &source,
            &dest,
            "--transfers",
            "4",
            "--checkers",
            "4",
        ]);
        for (name, hash) in &files {
            let stored = vs.root.join(format!("up-{tag}")).join(name);
            assert_eq!(&sha256_file(&stored), hash, "{tag}: {name} on the backend");
        }
        // Downloaded back and compared byte for byte.
        let checked = rclone(&["check", &source, &dest, "--download", "--transfers", "4"]);
        assert!(checked.contains("0 differences found"), "{tag}: {checked}");
        // Sync: one file changed, one removed at the source.
        let changed = random_file(&src.join("f1.bin"), 123_456);
        std::fs::remove_file(src.join("f2.bin")).expect("remove");
        rclone(&["sync", &source, &dest, "--transfers", "4"]);
        let up = vs.root.join(format!("up-{tag}"));
        assert_eq!(
            sha256_file(&up.join("f1.bin")),
            changed,
            "{tag}: synced file"
        );
        assert!(
            !up.join("f2.bin").exists(),
            "{tag}: removed file still there"
        );
        // The source as it was, for the next round.
        let restored = (
            random_file(&src.join("f1.bin"), SIZES[1]),
            random_file(&src.join("f2.bin"), SIZES[2]),
        );
        assert_eq!(restored.0, files[1].1);
        assert_eq!(restored.1, files[2].1);
        println!("rclone {tag}: copy, check --download and sync with 4 transfers at once");
    }
}
