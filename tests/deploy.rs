//! The packaging in deploy/ is checked like code: the systemd unit must load and stay hardened.

// A test, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::Command;

use support::process::{have, run_ok};

#[test]
fn systemd_unit_verifies_and_keeps_its_hardening() {
    if !have("systemd-analyze") {
        return;
    }
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/ftpsgate.service"),
    )
    .expect("unit file");
    for line in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    // The unit as installed, pointing at the binary just built (verify checks it exists).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ftpsgate.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/ftpsgate", env!("CARGO_BIN_EXE_ftpsgate")),
    )
    .expect("write unit");
    let path = path.to_str().expect("utf-8 path");
    let verify = run_ok(Command::new("systemd-analyze").args(["verify", path]));
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );
    // systemd's own exposure score (0 = locked down, 10 = exposed); the unit scores 1.7.
    let security = run_ok(Command::new("systemd-analyze").args([
        "security",
        "--offline=yes",
        "--threshold=20",
        path,
    ]));
    let report = String::from_utf8_lossy(&security.stdout);
    assert!(report.contains("Overall exposure level"), "{report}");
}

/// The `ftpsgate.toml` blocks of the manifests' ConfigMaps (`ftpsgate.toml: |` and the lines
/// indented under it).
fn embedded_configs(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = manifest.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(at) = line.find("ftpsgate.toml: |") else {
            continue;
        };
        let mut block = String::new();
        while let Some(next) = lines.peek() {
            let indent = next.len() - next.trim_start().len();
            if !next.trim().is_empty() && indent <= at {
                break;
            }
            block.push_str(next.get(at + 2..).unwrap_or("").trim_end());
            block.push('\n');
            lines.next();
        }
        out.push(block);
    }
    out
}

#[test]
fn kubernetes_manifests_validate_and_carry_valid_configs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        3,
        "sidecar, standalone, statefulset: {files:?}"
    );
    for file in &files {
        let text = std::fs::read_to_string(file).expect("manifest");
        let configs = embedded_configs(&text);
        assert_eq!(configs.len(), 1, "{}: one ConfigMap config", file.display());
        for config in configs {
            // Parsed as the gateway parses its file (unknown keys refused); not validated, since
            // that would resolve the example external names.
            toml::from_str::<ftpsgate::config::Settings>(&config)
                .unwrap_or_else(|e| panic!("{}: {e}\n{config}", file.display()));
        }
    }
    if !have("kubernetes-validate") {
        return;
    }
    // The Kubernetes schemas ship with kubernetes-validate: no cluster, no network.
    let out = run_ok(
        Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .args(&files),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("ERROR"), "{said}");
}

#[test]
fn the_image_is_built_with_the_command_ci_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).expect("Dockerfile");
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
    assert!(dockerfile
        .lines()
        .any(|l| l == "RUN deploy/build-release.sh"));
    assert!(ci.lines().any(|l| l == "deploy/build-release.sh"));
    assert!(
        dockerfile.contains("USER 65532:65532"),
        "the image runs as non-root"
    );
}
