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

/// A port as a manifest lists it: `(name, port, targetPort)`; a container's `containerPort`
/// is both.
type Port = (String, u16, u16);

/// What each Service and container of a manifest lists under `ports:`, in order: `("Service
/// NAME" or "container NAME", its ports)`. Every entry must be one flow mapping
/// (`- {name: ftps, port: 21, targetPort: 2121}`) whose numbers are single ports: anything else
/// (a block mapping this reader would miss, a `50000-50019`) fails the test.
fn listed_ports(manifest: &str) -> Vec<(String, Vec<Port>)> {
    let mut out = Vec::new();
    for doc in manifest.split("\n---\n") {
        let service = doc.lines().any(|l| l == "kind: Service");
        let lines: Vec<&str> = doc.lines().collect();
        let mut metadata_name = None;
        // The indent of `containers:`'s items, and the container whose item this is.
        let (mut containers, mut item_indent, mut owner) = (false, None, None);
        for (at, line) in lines.iter().enumerate() {
            let text = line.trim_start();
            let indent = line.len() - text.len();
            if indent == 2 && metadata_name.is_none() {
                metadata_name = text.strip_prefix("name: ").map(str::to_string);
            }
            if text == "containers:" {
                containers = true;
            } else if containers && text.starts_with("- ") {
                item_indent = Some(indent);
                containers = false;
            }
            if let Some(name) = text.strip_prefix("- name: ") {
                if item_indent == Some(indent) {
                    owner = Some(format!("container {name}"));
                }
            }
            if text != "ports:" {
                continue;
            }
            let who = if service {
                format!("Service {}", metadata_name.clone().expect("metadata.name"))
            } else {
                owner.clone().expect("a container's name before its ports")
            };
            let mut ports = Vec::new();
            for entry in lines[at + 1..]
                .iter()
                .take_while(|l| l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .filter(|l| !l.starts_with('#'))
            {
                let fields = entry
                    .strip_prefix("- {")
                    .and_then(|e| e.strip_suffix('}'))
                    .unwrap_or_else(|| panic!("{who}: `{entry}` is not `- {{name: ..., ...}}`"));
                let field = |key: &str| {
                    fields
                        .split(", ")
                        .find_map(|f| f.strip_prefix(key)?.strip_prefix(": "))
                        .unwrap_or_else(|| panic!("{who}: no {key} in `{entry}`"))
                };
                let number = |key: &str| {
                    field(key)
                        .parse::<u16>()
                        .unwrap_or_else(|_| panic!("{who}: {key} in `{entry}` is not one port"))
                };
                ports.push(if service {
                    (
                        field("name").to_string(),
                        number("port"),
                        number("targetPort"),
                    )
                } else {
                    let p = number("containerPort");
                    (field("name").to_string(), p, p)
                });
            }
            out.push((who, ports));
        }
    }
    out
}

fn port(name: &str, port: u16, target: u16) -> Port {
    (name.to_string(), port, target)
}

/// The one data port of `settings`' replica `index`: its slice of `passive.ports` must be a
/// single port.
fn data_port(settings: &ftpsgate::config::Settings, index: u16) -> u16 {
    let mut replica = settings.clone();
    replica.passive.replica_index = index;
    let slice = replica.passive.range();
    assert_eq!(
        slice.start(),
        slice.end(),
        "replica {index}: one data port, not {slice:?}"
    );
    *slice.start()
}

/// What each manifest's Services and containers must list: 21 and 990 to the gateway's
/// explicit and implicit listeners, and the one data port of the replica behind the Service.
fn expected_ports(
    manifest: &str,
    settings: &ftpsgate::config::Settings,
) -> Vec<(String, Vec<Port>)> {
    let listener = |l: &[std::net::SocketAddr]| l.first().expect("a listener").port();
    let explicit = listener(&settings.listen.explicit);
    let implicit = listener(&settings.listen.implicit);
    let admin = settings.admin.listen.expect("admin listener").port();
    let control = vec![
        port("ftps", 21, explicit),
        port("ftps-implicit", 990, implicit),
    ];
    let container = vec![
        port("ftps", explicit, explicit),
        port("ftps-implicit", implicit, implicit),
        port("admin", admin, admin),
    ];
    let with_data = |mut ports: Vec<Port>, p: u16| {
        ports.push(port("data", p, p));
        ports
    };
    let one = data_port(settings, 0);
    match manifest {
        "sidecar" | "standalone" => {
            let service = if manifest == "sidecar" {
                "ftp-server"
            } else {
                "ftpsgate"
            };
            vec![
                ("container ftpsgate".into(), with_data(container, one)),
                (format!("Service {service}"), with_data(control, one)),
            ]
        }
        "statefulset" => {
            // The pod template is shared, so it does not name a pod's data port.
            let mut out = vec![("container ftpsgate".to_string(), container)];
            for i in 0..settings.passive.replicas {
                let p = data_port(settings, i);
                out.push((
                    format!("Service ftpsgate-{i}"),
                    with_data(control.clone(), p),
                ));
            }
            out
        }
        other => panic!("no expected ports for {other}.yaml"),
    }
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
        // Parsed as the gateway parses its file (unknown keys refused); not validated, since
        // that would resolve the example external names.
        let settings = toml::from_str::<ftpsgate::config::Settings>(&configs[0])
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", file.display(), configs[0]));
        // One data port a replica: the Services carry it and the control ports, no list.
        let stem = file.file_stem().and_then(|s| s.to_str()).expect("name");
        assert_eq!(
            listed_ports(&text),
            expected_ports(stem, &settings),
            "{}",
            file.display()
        );
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
