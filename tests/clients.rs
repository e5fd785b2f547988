//! Real clients (curl, lftp, Python's ftplib, suppaftp) through the gateway to real servers
//! (vsftpd from Debian, libunftp in-process): every byte arrives, checked by SHA-256.

// A test, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::Command;

use ftpsgate::config::TlsVersion;
use support::curl::curl;
use support::files::{random_file, sha256, sha256_file};
use support::gateway::{suppaftp_retr, suppaftp_session, BackendKind, TestGateway};
use support::process::{have, py_scenario, run_ok};
use support::scripted::ScriptedBackend;
use support::servers::{FtpServer, VsTls};
use support::{MIB, PASSWORD, USER};

fn url(gw: &TestGateway, implicit: bool, name: &str) -> String {
    match implicit {
        false => format!(
            "ftp://{USER}:{PASSWORD}@127.0.0.1:{}/{name}",
            gw.explicit.port()
        ),
        true => format!(
            "ftps://{USER}:{PASSWORD}@127.0.0.1:{}/{name}",
            gw.implicit.port()
        ),
    }
}

/// Downloads and uploads each size with curl; `mode` is "epsv", "pasv" or "implicit".
fn curl_round_trips(
    gw: &TestGateway,
    sizes: &[usize],
    mode: &str,
    put: impl Fn(&str, usize) -> String,
) {
    let work = tempfile::tempdir().expect("tempdir");
    let implicit = mode == "implicit";
    let mut flags = vec!["--ssl-reqd"];
    if mode == "pasv" {
        flags.push("--disable-epsv");
    }
    for &size in sizes {
        // Download.
        let name = format!("curl-{mode}-{size}.bin");
        let want = put(&name, size);
        let out = work.path().join(&name);
        let mut args = flags.clone();
        let (u, o) = (url(gw, implicit, &name), out.display().to_string());
        args.extend(["-o", &o, &u]);
        run_ok(curl(gw, 180).args(&args));
        // curl creates no file for an empty download.
        let got = if out.exists() {
            sha256_file(&out)
        } else {
            sha256(b"")
        };
        assert_eq!(got, want, "download {name} ({mode})");
        // Upload.
        let up_name = format!("curl-up-{mode}-{size}.bin");
        let src = work.path().join(&up_name);
        let want = random_file(&src, size);
        let (u, s) = (url(gw, implicit, &up_name), src.display().to_string());
        let mut args = flags.clone();
        args.extend(["-T", &s, &u]);
        run_ok(curl(gw, 180).args(&args));
        assert_eq!(
            sha256_file(&gw.root.join(&up_name)),
            want,
            "upload {up_name} ({mode})"
        );
    }
}

const SIZES: &[usize] = &[0, 1, MIB];

/// OpenSSL (through curl) opens a download's records under every version and cipher the
/// gateway offers, for an empty file, one byte, and records of every length.
#[test]
fn curl_downloads_under_every_tls_version_and_cipher_open_whole() {
    if !have("curl") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    let work = tempfile::tempdir().expect("tempdir");
    let tls13 = |suite| vec!["--tlsv1.3", "--tls13-ciphers", suite];
    let tls12 = |suite| vec!["--tls-max", "1.2", "--ciphers", suite];
    let cases = [
        ("TLS_AES_128_GCM_SHA256", tls13("TLS_AES_128_GCM_SHA256")),
        ("TLS_AES_256_GCM_SHA384", tls13("TLS_AES_256_GCM_SHA384")),
        (
            "TLS_CHACHA20_POLY1305_SHA256",
            tls13("TLS_CHACHA20_POLY1305_SHA256"),
        ),
        (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            tls12("ECDHE-ECDSA-AES128-GCM-SHA256"),
        ),
        (
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            tls12("ECDHE-ECDSA-AES256-GCM-SHA384"),
        ),
        (
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            tls12("ECDHE-ECDSA-CHACHA20-POLY1305"),
        ),
    ];
    for (cipher, flags) in cases {
        for size in [0, 1, 3 * MIB + 12_345] {
            let name = format!("cipher-{cipher}-{size}.bin");
            let want = vs.put(&name, size);
            let out = work.path().join(&name);
            let (u, o) = (url(&gw, false, &name), out.display().to_string());
            let done = run_ok(
                curl(&gw, 120)
                    .args(["-v", "--ssl-reqd", "-o", &o, &u])
                    .args(&flags),
            );
            let log = String::from_utf8_lossy(&done.stderr);
            assert!(log.contains(cipher), "{cipher} was not negotiated:\n{log}");
            let got = if out.exists() {
                sha256_file(&out)
            } else {
                sha256(b"")
            };
            assert_eq!(got, want, "download {name}");
        }
    }
}

#[test]
fn curl_vsftpd_explicit_epsv_pasv_and_implicit_all_sizes() {
    if !have("curl") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    curl_round_trips(&gw, &[0, 1, MIB, 64 * MIB], "epsv", |n, s| vs.put(n, s));
    curl_round_trips(&gw, SIZES, "pasv", |n, s| vs.put(n, s));
    curl_round_trips(&gw, &[1, MIB, 64 * MIB], "implicit", |n, s| vs.put(n, s));
}

#[test]
fn curl_libunftp_explicit_epsv_pasv_and_implicit() {
    if !have("curl") {
        return;
    }
    let gw = TestGateway::start(BackendKind::Unftp, |_| {});
    let root = gw.root.clone();
    let put = move |n: &str, s: usize| random_file(&root.join(n), s);
    curl_round_trips(&gw, SIZES, "epsv", &put);
    curl_round_trips(&gw, SIZES, "pasv", &put);
    curl_round_trips(&gw, SIZES, "implicit", &put);
}

fn lftp(gw: &TestGateway, script: &str) -> String {
    // -d: on failure the protocol trace is in the panic message.
    let out = run_ok(Command::new("lftp").arg("-d").arg("-c").arg(format!(
        "set ssl:ca-file {ca}; set ftp:ssl-force true; set ftp:ssl-protect-data true; \
         set net:max-retries 1; set net:timeout 30; set cmd:fail-exit true; {script}",
        ca = gw.ca.display()
    )));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lftp_round_trips(gw: &TestGateway, root: &Path, put: impl Fn(&str, usize) -> String) {
    let work = tempfile::tempdir().expect("tempdir");
    for (epsv, implicit) in [("no", false), ("yes", false), ("yes", true)] {
        for size in [0, 1, MIB, 64 * MIB] {
            let tag = format!("{epsv}-{implicit}-{size}");
            let name = format!("lftp-down-{tag}.bin");
            let want_down = put(&name, size);
            let src = work.path().join(format!("lftp-up-{tag}.bin"));
            let want_up = random_file(&src, size);
            let out = work.path().join(&name);
            let open = if implicit {
                format!(
                    "open -u {USER},{PASSWORD} ftps://127.0.0.1:{}",
                    gw.implicit.port()
                )
            } else {
                format!(
                    "open -u {USER},{PASSWORD} -p {} 127.0.0.1",
                    gw.explicit.port()
                )
            };
            lftp(
                gw,
                &format!(
                    "set ftp:prefer-epsv {epsv}; {open}; get {name} -o {out}; put {src} -o lftp-up-{tag}.bin; bye",
                    out = out.display(),
                    src = src.display()
                ),
            );
            assert_eq!(sha256_file(&out), want_down, "lftp download {tag}");
            assert_eq!(
                sha256_file(&root.join(format!("lftp-up-{tag}.bin"))),
                want_up,
                "lftp upload {tag}"
            );
        }
    }
    let listing = lftp(
        gw,
        &format!("open -u {USER},{PASSWORD} -p {} 127.0.0.1; mkdir made-by-lftp; cls -1; rmdir made-by-lftp", gw.explicit.port()),
    );
    assert!(listing.contains("made-by-lftp"), "lftp listing: {listing}");
}

#[test]
fn lftp_vsftpd_pasv_epsv_implicit_all_sizes() {
    if !have("lftp") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    lftp_round_trips(&gw, &vs.root, |n, s| vs.put(n, s));
}

#[test]
fn lftp_libunftp_pasv_epsv_implicit_all_sizes() {
    if !have("lftp") {
        return;
    }
    let gw = TestGateway::start(BackendKind::Unftp, |_| {});
    let root = gw.root.clone();
    lftp_round_trips(&gw, &gw.root, |n, s| random_file(&root.join(n), s));
}

#[test]
fn ftplib_vsftpd_round_trips_all_sizes_pasv_and_epsv() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    py_scenario(&gw, "roundtrip", &["--sizes", "0,1,1048576,67108864"]);
}

#[test]
fn ftplib_libunftp_round_trips_all_sizes_pasv_and_epsv() {
    let gw = TestGateway::start(BackendKind::Unftp, |_| {});
    py_scenario(&gw, "roundtrip", &["--sizes", "0,1,1048576,67108864"]);
}

#[test]
fn ftplib_implicit_ftps() {
    let gw = TestGateway::start(BackendKind::Unftp, |_| {});
    py_scenario(&gw, "implicit", &[]);
}

/// suppaftp (rustls) against both backends: upload and download, list, nlst.
fn suppaftp_round_trips(gw: &TestGateway, sizes: &[usize]) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut ftp = suppaftp_session(gw.explicit, &gw.ca).await;
        for &size in sizes {
            let name = format!("suppa-{size}.bin");
            let mut rng = fastrand::Rng::with_seed(size as u64);
            let mut data = vec![0u8; size];
            rng.fill(&mut data);
            let mut up = ftp.put_with_stream(&name).await.expect("STOR");
            up.write_all(&data).await.expect("write");
            up.finish().await.expect("STOR done");
            assert_eq!(
                sha256_file(&gw.root.join(&name)),
                sha256(&data),
                "stored {name}"
            );
            let back = suppaftp_retr(&mut ftp, &name).await;
            assert_eq!(sha256(&back), sha256(&data), "downloaded {name}");
        }
        let names = ftp.nlst(None).await.expect("NLST");
        assert!(names.iter().any(|n| n.contains("suppa-1.bin")), "{names:?}");
        let list = ftp.list(None).await.expect("LIST");
        assert!(list.iter().any(|l| l.contains("suppa-1.bin")), "{list:?}");
        ftp.quit().await.expect("QUIT");
    });
}

#[test]
fn suppaftp_libunftp_round_trips() {
    let gw = TestGateway::start(BackendKind::Unftp, |_| {});
    suppaftp_round_trips(&gw, &[0, 1, MIB, 64 * MIB]);
}

#[test]
fn suppaftp_vsftpd_round_trips() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    suppaftp_round_trips(&gw, &[0, 1, MIB]);
}

#[test]
fn epsv_and_pasv_work_in_front_of_a_pasv_only_backend_that_lies_about_its_address() {
    if !have("curl") {
        return;
    }
    let mut blob = vec![0u8; 3 * MIB + 17];
    fastrand::Rng::with_seed(7).fill(&mut blob);
    let backend = ScriptedBackend::start(blob);
    let root = tempfile::tempdir().expect("tempdir");
    let gw = TestGateway::start(BackendKind::At(backend.addr, root.path().into()), |_| {});
    let work = tempfile::tempdir().expect("tempdir");
    for flags in [&[][..], &["--disable-epsv"][..]] {
        let out = work.path().join("blob.bin");
        let (o, u) = (out.display().to_string(), url(&gw, false, "blob.bin"));
        let mut args = vec!["--ssl-reqd", "-o", &o, &u];
        args.extend(flags);
        run_ok(curl(&gw, 180).args(&args));
        assert_eq!(
            sha256_file(&out),
            sha256(&backend.blob),
            "download {flags:?}"
        );
        let src = work.path().join("up.bin");
        let want = random_file(&src, MIB + 3);
        let (s, u) = (src.display().to_string(), url(&gw, false, "up.bin"));
        let mut args = vec!["--ssl-reqd", "-T", &s, &u];
        args.extend(flags);
        run_ok(curl(&gw, 180).args(&args));
        assert_eq!(
            sha256(&backend.stored.lock().expect("lock")),
            want,
            "upload {flags:?}"
        );
    }
}

// --- FTPS backends: the gateway re-encrypts toward vsftpd, which requires its data connections
// to resume the control connection's TLS session (require_ssl_reuse=YES).

fn tls_backend_matrix(server: Option<FtpServer>, mode: VsTls, version: TlsVersion) {
    let Some(ftpd) = server else { return };
    let tls = ftpd.gateway_tls(mode);
    let gw = TestGateway::start(ftpd.backend(), move |s| {
        tls(s);
        s.backend.max_tls_version = version;
    });
    let sizes = [MIB, 64 * MIB];
    if have("curl") {
        curl_round_trips(&gw, &sizes, "epsv", |n, s| ftpd.put(n, s));
        curl_round_trips(&gw, &sizes, "pasv", |n, s| ftpd.put(n, s));
    }
    if have("lftp") {
        lftp_round_trips(&gw, &ftpd.root, |n, s| ftpd.put(n, s));
    }
    py_scenario(&gw, "roundtrip", &["--sizes", "1048576,67108864"]);
}

#[test]
fn explicit_tls_backend_vsftpd_require_ssl_reuse_all_clients() {
    tls_backend_matrix(
        FtpServer::vsftpd(VsTls::Explicit),
        VsTls::Explicit,
        TlsVersion::V1_3,
    );
}

#[test]
fn implicit_tls_backend_vsftpd_require_ssl_reuse_all_clients() {
    tls_backend_matrix(
        FtpServer::vsftpd(VsTls::Implicit),
        VsTls::Implicit,
        TlsVersion::V1_3,
    );
}

// With TLS 1.3, ProFTPD refuses a session's third data connection and every third after it
// (docs/configuration.md, "FTPS backends": the tickets it accepts, and rustls using each once):
// the backend TLS 1.2 cap is the setting for it (TLS 1.2 sessions are reused). Both are shown
// here.

#[test]
fn explicit_tls_backend_proftpd_mod_tls_all_clients() {
    tls_backend_matrix(
        FtpServer::proftpd(VsTls::Explicit),
        VsTls::Explicit,
        TlsVersion::V1_2,
    );
}

#[test]
fn implicit_tls_backend_proftpd_mod_tls_all_clients() {
    tls_backend_matrix(
        FtpServer::proftpd(VsTls::Implicit),
        VsTls::Implicit,
        TlsVersion::V1_2,
    );
}

/// Two transfers a session pass with TLS 1.3 (the third would be refused), and doctor warns of
/// a ProFTPD backend on TLS 1.3.
#[test]
fn tls13_backend_proftpd_two_transfers_per_session() {
    let Some(ftpd) = FtpServer::proftpd(VsTls::Explicit) else {
        return;
    };
    let gw = TestGateway::start(ftpd.backend(), ftpd.gateway_tls(VsTls::Explicit));
    if have("curl") {
        curl_round_trips(&gw, &[MIB, 64 * MIB], "epsv", |n, s| ftpd.put(n, s));
    }
    py_scenario(&gw, "uploads", &["--count", "2", "--size", "10485760"]);
    // doctor says so, and names the cap; with the cap it has nothing to say.
    let backend_tls = |version| {
        let mut settings = ftpsgate::config::Settings::default();
        settings.backend.addresses = vec![ftpd.addr.to_string().parse().expect("address")];
        (ftpd.gateway_tls(VsTls::Explicit))(&mut settings);
        settings.backend.max_tls_version = version;
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(ftpsgate::doctor::run(&settings, None))
            .into_iter()
            .filter(|c| c.what == "backend TLS")
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
    };
    let warned = backend_tls(TlsVersion::V1_3);
    assert!(
        warned.len() == 1 && warned[0].starts_with("[warn]") && warned[0].contains("ProFTPD"),
        "{warned:?}"
    );
    assert!(warned[0].contains("max_tls_version"), "{warned:?}");
    assert_eq!(backend_tls(TlsVersion::V1_2), Vec::<String>::new());
}

// pure-ftpd 1.0.50, plain and with TLS (explicit: Debian's build has no implicit TLS).

#[test]
fn plain_pure_ftpd_backend_all_clients() {
    let Some(ftpd) = FtpServer::pure_ftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(ftpd.backend(), |_| {});
    let sizes = [0, 1, MIB, 8 * MIB];
    if have("curl") {
        curl_round_trips(&gw, &sizes, "epsv", |n, s| ftpd.put(n, s));
        curl_round_trips(&gw, &sizes, "pasv", |n, s| ftpd.put(n, s));
    }
    if have("lftp") {
        lftp_round_trips(&gw, &ftpd.root, |n, s| ftpd.put(n, s));
    }
    py_scenario(&gw, "roundtrip", &["--sizes", "0,1,1048576"]);
}

#[test]
fn explicit_tls_backend_pure_ftpd_all_clients() {
    tls_backend_matrix(
        FtpServer::pure_ftpd(VsTls::Explicit),
        VsTls::Explicit,
        TlsVersion::V1_3,
    );
}

#[test]
fn plain_proftpd_backend_with_ftplib() {
    let Some(ftpd) = FtpServer::proftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(ftpd.backend(), |_| {});
    py_scenario(&gw, "roundtrip", &["--sizes", "0,1,1048576"]);
}

#[test]
fn twenty_sequential_10mib_uploads_over_tls12_to_proftpd_arrive_whole() {
    let Some(ftpd) = FtpServer::proftpd(VsTls::Explicit) else {
        return;
    };
    let tls = ftpd.gateway_tls(VsTls::Explicit);
    let gw = TestGateway::start(ftpd.backend(), move |s| {
        tls(s);
        s.backend.max_tls_version = TlsVersion::V1_2;
    });
    py_scenario(&gw, "uploads", &["--count", "20", "--size", "10485760"]);
}

#[test]
fn tls12_capped_backend_vsftpd() {
    let Some(vs) = FtpServer::vsftpd(VsTls::Explicit) else {
        return;
    };
    let tls = vs.gateway_tls(VsTls::Explicit);
    let gw = TestGateway::start(vs.backend(), move |s| {
        tls(s);
        s.backend.max_tls_version = TlsVersion::V1_2;
    });
    py_scenario(&gw, "roundtrip", &["--sizes", "0,1,1048576"]);
    py_scenario(&gw, "uploads", &["--count", "5", "--size", "1048576"]);
}

#[test]
fn twenty_sequential_10mib_uploads_over_tls13_to_vsftpd_arrive_whole() {
    let Some(vs) = FtpServer::vsftpd(VsTls::Explicit) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), vs.gateway_tls(VsTls::Explicit));
    py_scenario(&gw, "uploads", &["--count", "20", "--size", "10485760"]);
}

#[test]
fn client_prot_c_with_tls_backend_when_clear_data_is_allowed() {
    let Some(vs) = FtpServer::vsftpd(VsTls::Explicit) else {
        return;
    };
    let tls = vs.gateway_tls(VsTls::Explicit);
    let gw = TestGateway::start(vs.backend(), move |s| {
        tls(s);
        s.tls.allow_clear_data = true;
    });
    py_scenario(&gw, "clear-data", &[]);
}

#[test]
fn backend_certificate_is_verified_pinned_or_explicitly_skipped() {
    use ftpsgate::config::BackendTlsMode;
    let Some(vs) = FtpServer::vsftpd(VsTls::Explicit) else {
        return;
    };
    // Not trusted: the gateway refuses to talk to it and the client gets 421.
    let gw = TestGateway::start(vs.backend(), |s| s.backend.tls = BackendTlsMode::Explicit);
    py_scenario(&gw, "backend-down", &[]);
    drop(gw);
    // Pinned by fingerprint.
    let pin = ftpsgate::tls::backend::fingerprint(vs.cert.as_deref().expect("cert")).expect("pin");
    let gw = TestGateway::start(vs.backend(), move |s| {
        s.backend.tls = BackendTlsMode::Explicit;
        s.backend.pin_sha256 = Some(pin.parse().expect("pin"));
    });
    py_scenario(&gw, "roundtrip", &["--sizes", "1000"]);
    drop(gw);
    // A wrong pin is refused.
    let gw = TestGateway::start(vs.backend(), |s| {
        s.backend.tls = BackendTlsMode::Explicit;
        s.backend.pin_sha256 = Some(ftpsgate::config::Fingerprint([0; 32]));
    });
    py_scenario(&gw, "backend-down", &[]);
    drop(gw);
    // Verification skipped on purpose.
    let gw = TestGateway::start(vs.backend(), |s| {
        s.backend.tls = BackendTlsMode::Explicit;
        s.backend.insecure_skip_verify = true;
    });
    py_scenario(&gw, "roundtrip", &["--sizes", "1000"]);
}
