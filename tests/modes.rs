//! Active mode (PORT, EPRT), IPv6, and the rest of the FTP command set, with real clients
//! against real servers; every transfer hash-checked.

// A test, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

use ftpsgate::config::Switch;
use support::files::{random_file, sha256_file};
use support::gateway::{BackendKind, TestGateway};
use support::process::{have, py_scenario, run_ok};
use support::servers::{FtpServer, VsTls};
use support::{MIB, PASSWORD, USER};

#[test]
fn ftplib_active_port_and_eprt_against_vsftpd_and_libunftp() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    py_scenario(
        &gw,
        "roundtrip",
        &["--active", "--sizes", "0,1,1048576,67108864"],
    );
    py_scenario(
        &gw,
        "roundtrip",
        &["--active", "--eprt", "--sizes", "1,1048576"],
    );
    let gw = TestGateway::start(BackendKind::Unftp, |_| {});
    py_scenario(&gw, "roundtrip", &["--active", "--sizes", "0,1,1048576"]);
    py_scenario(
        &gw,
        "roundtrip",
        &["--active", "--eprt", "--sizes", "1048576"],
    );
}

#[test]
fn ftplib_active_mode_with_a_tls_backend() {
    let Some(vs) = FtpServer::vsftpd(VsTls::Explicit) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), vs.gateway_tls(VsTls::Explicit));
    py_scenario(
        &gw,
        "roundtrip",
        &["--active", "--sizes", "1,1048576,67108864"],
    );
}

#[test]
fn lftp_active_mode_port() {
    if !have("lftp") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    let work = tempfile::tempdir().expect("tempdir");
    for size in [0, 1, MIB, 64 * MIB] {
        let name = format!("lftp-active-{size}.bin");
        let want_down = vs.put(&name, size);
        let src = work.path().join(format!("up-{size}.bin"));
        let want_up = random_file(&src, size);
        let out = work.path().join(&name);
        run_ok(Command::new("lftp").arg("-d").arg("-c").arg(format!(
            "set ssl:ca-file {ca}; set ftp:ssl-force true; set ftp:ssl-protect-data true; \
             set ftp:passive-mode off; set net:max-retries 1; set net:timeout 30; \
             set cmd:fail-exit true; open -u {USER},{PASSWORD} -p {port} 127.0.0.1; \
             get {name} -o {out}; put {src} -o up-{size}.bin; bye",
            ca = gw.ca.display(),
            port = gw.explicit.port(),
            out = out.display(),
            src = src.display(),
        )));
        assert_eq!(sha256_file(&out), want_down, "lftp active download {size}");
        assert_eq!(
            sha256_file(&vs.root.join(format!("up-{size}.bin"))),
            want_up,
            "lftp active upload {size}"
        );
    }
}

#[test]
fn bounce_attempts_are_refused_and_honest_active_mode_works() {
    let gw = TestGateway::start(BackendKind::Unftp, |_| {});
    py_scenario(&gw, "bounce", &[]);
}

#[test]
fn active_mode_can_be_switched_off() {
    let gw = TestGateway::start(BackendKind::Unftp, |s| s.active.mode = Switch::Off);
    let out = std::process::Command::new("python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/scenarios.py"))
        .arg("roundtrip")
        .args(gw.py_args())
        .args(["--active", "--sizes", "1"])
        .output();
    if !have("python3") {
        return;
    }
    let out = out.expect("python3");
    assert!(
        !out.status.success(),
        "active transfer succeeded with active mode off"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("502"), "expected 502: {stderr}");
}

#[test]
fn ipv6_client_epsv_and_eprt_in_front_of_an_ipv4_backend() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    py_scenario(
        &gw,
        "roundtrip",
        &["--ipv6", "--sizes", "0,1,1048576,67108864"],
    );
    py_scenario(
        &gw,
        "roundtrip",
        &["--ipv6", "--active", "--sizes", "1,1048576"],
    );
    py_scenario(&gw, "pasv-over-ipv6", &["--ipv6"]);
    if have("curl") {
        let work = tempfile::tempdir().expect("tempdir");
        let want = vs.put("curl6.bin", 3 * MIB);
        let out = work.path().join("curl6.bin");
        run_ok(
            Command::new("curl")
                .args(["-sS", "-g", "--ssl-reqd", "--max-time", "120", "--cacert"])
                .arg(&gw.ca)
                .arg("-o")
                .arg(&out)
                .arg(format!(
                    "ftp://{USER}:{PASSWORD}@[::1]:{}/curl6.bin",
                    gw.explicit6.port()
                )),
        );
        assert_eq!(sha256_file(&out), want, "curl over IPv6 (EPSV)");
        let src = work.path().join("up6.bin");
        let want = random_file(&src, MIB + 5);
        run_ok(
            Command::new("curl")
                .args(["-sS", "-g", "--ssl-reqd", "--max-time", "120", "--cacert"])
                .arg(&gw.ca)
                .arg("-T")
                .arg(&src)
                .arg(format!(
                    "ftp://{USER}:{PASSWORD}@[::1]:{}/up6.bin",
                    gw.explicit6.port()
                )),
        );
        assert_eq!(
            sha256_file(&vs.root.join("up6.bin")),
            want,
            "curl upload over IPv6"
        );
    }
}

#[test]
fn ipv4_client_in_front_of_an_ipv6_backend() {
    let Some(vs) = FtpServer::vsftpd_on(VsTls::None, true, "") else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    py_scenario(&gw, "roundtrip", &["--sizes", "0,1,1048576"]);
    py_scenario(&gw, "roundtrip", &["--active", "--sizes", "1048576"]);
}

#[test]
fn command_set_passes_through_vsftpd_and_libunftp() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    py_scenario(&gw, "commands", &[]);
    let gw = TestGateway::start(BackendKind::Unftp, |_| {});
    py_scenario(&gw, "commands", &["--mlsd"]);
}

#[test]
fn stat_during_a_transfer_reports_progress() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    py_scenario(&gw, "stat-during-transfer", &[]);
}

#[test]
fn active_only_backend_with_passive_and_active_clients() {
    use ftpsgate::config::BackendDataMode;
    let Some(vs) = FtpServer::vsftpd_on(VsTls::None, false, "pasv_enable=NO\nport_enable=YES\n")
    else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |s| {
        s.backend.data_mode = BackendDataMode::Active
    });
    py_scenario(&gw, "roundtrip", &["--sizes", "0,1,1048576,67108864"]);
    py_scenario(&gw, "roundtrip", &["--active", "--sizes", "1,1048576"]);
    // And with TLS on the backend's data connections, where the backend connects to the
    // gateway and the gateway is still the TLS client.
    let Some(vs) =
        FtpServer::vsftpd_on(VsTls::Explicit, false, "pasv_enable=NO\nport_enable=YES\n")
    else {
        return;
    };
    let tls = vs.gateway_tls(VsTls::Explicit);
    let gw = TestGateway::start(vs.backend(), move |s| {
        tls(s);
        s.backend.data_mode = BackendDataMode::Active;
    });
    py_scenario(&gw, "roundtrip", &["--sizes", "1,1048576,67108864"]);
}
