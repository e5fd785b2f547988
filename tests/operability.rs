//! What operators rely on: metrics while traffic flows, readiness that follows the backend,
//! certificates rotated under live sessions, SIGHUP, and a drain on SIGTERM that lets a
//! transfer in flight finish whole.

// A test, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio_rustls::TlsConnector;

use support::admin::{http_get, scrape, value};
use support::control::{client_config, Control};
use support::files::{random_file, sha256};
use support::ftps::Ftps;
use support::gateway::{
    admin_on_loopback, gateway_command, suppaftp_retr, suppaftp_session, BackendKind, TestGateway,
};
use support::net::free_port;
use support::pki::{pem_certs, ClientCa, ClientCert};
use support::process::{eventually, has_lines, have, run_ok, KillOnDrop};
use support::servers::{FtpServer, VsTls};
use support::{MIB, PASSWORD, USER};

/// Connects, sends AUTH TLS, completes the handshake asking for `name` (SNI) and returns the
/// certificate the gateway presented. `trusted` are the acceptable (self-signed) certificates.
fn served_cert(
    addr: SocketAddr,
    name: &str,
    trusted: &[CertificateDer<'static>],
) -> Result<CertificateDer<'static>, String> {
    let tls = TlsConnector::from(client_config(trusted).map_err(|e| e.to_string())?);
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut ctl = Control::connect(addr)
            .await
            .map_err(|e| e.to_string())?
            .with_limit(Duration::from_secs(10));
        let greeting = ctl.reply().await;
        if !greeting.starts_with("220") {
            return Err(format!("greeting: {greeting}"));
        }
        let secured = ctl
            .auth_tls(&tls, server_name)
            .await
            .map_err(|e| e.to_string())?;
        let cert = secured
            .get_ref()
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or("no certificate")?;
        Ok(cert.into_owned())
    })
}

/// Replaces a certificate pair the way rotation tools do: new files written beside, then
/// renamed over the old ones.
fn rotate(cert: &Path, key: &Path, names: &[&str]) -> CertificateDer<'static> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let pair = ftpsgate::tls::self_signed(&names).expect("rcgen");
    let dir = tempfile::tempdir_in(cert.parent().expect("dir")).expect("staging");
    let (new_cert, new_key) = pair.write_to(dir.path()).expect("write");
    std::fs::rename(&new_cert, cert).expect("swap cert");
    std::fs::rename(&new_key, key).expect("swap key");
    pem_certs(cert).remove(0)
}

#[test]
fn metrics_are_scraped_and_parsed_during_a_transfer() {
    if !have("curl") {
        return;
    }
    let gw = TestGateway::start(BackendKind::Unftp, admin_on_loopback);
    let admin = gw.admin.expect("admin listener");
    let size = 64 * MIB;
    let want = random_file(&gw.root.join("big.bin"), size);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut ftp = suppaftp_session(gw.explicit, &gw.ca).await;
        let mut down = ftp.retr_as_stream("big.bin").await.expect("RETR");
        let mut data = vec![0u8; MIB];
        down.read_exact(&mut data).await.expect("first MiB");

        // Mid-transfer: the client reads no more, so the gateway is stuck well short of 64 MiB.
        let during = tokio::task::spawn_blocking(move || scrape(admin))
            .await
            .expect("scrape");
        assert_eq!(value(&during, "ftpsgate_sessions_active", &[]), 1.0);
        let moving = value(
            &during,
            "ftpsgate_data_bytes_total",
            &[("direction", "download")],
        );
        assert!(
            moving >= MIB as f64 && moving < size as f64,
            "bytes mid-transfer: {moving}"
        );
        assert_eq!(
            value(&during, "ftpsgate_passive_leases_in_use", &[]),
            0.0,
            "the pool port goes back once the data connection is accepted"
        );

        let mut rest = Vec::new();
        down.read_to_end(&mut rest).await.expect("rest");
        down.finish().await.expect("226");
        data.extend_from_slice(&rest);
        assert_eq!(sha256(&data), want, "downloaded whole");
        ftp.quit().await.expect("QUIT");
    });

    let after = scrape(admin);
    let download = [("direction", "download"), ("outcome", "ok")];
    assert_eq!(value(&after, "ftpsgate_transfers_total", &download), 1.0);
    assert_eq!(
        value(
            &after,
            "ftpsgate_data_bytes_total",
            &[("direction", "download")]
        ),
        size as f64
    );
    assert_eq!(value(&after, "ftpsgate_sessions_total", &[]), 1.0);
    assert_eq!(value(&after, "ftpsgate_passive_leases_in_use", &[]), 0.0);
    let control_full = [("channel", "control"), ("kind", "full"), ("outcome", "ok")];
    assert_eq!(
        value(&after, "ftpsgate_tls_handshakes_total", &control_full),
        1.0
    );
    let data_resumed = [("channel", "data"), ("kind", "resumed"), ("outcome", "ok")];
    assert_eq!(
        value(&after, "ftpsgate_tls_handshakes_total", &data_resumed),
        1.0
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            value(&scrape(admin), "ftpsgate_sessions_active", &[]) == 0.0
        }),
        "the session ends after QUIT"
    );
}

#[test]
fn readyz_follows_the_backend_and_healthz_the_process() {
    if !have("curl") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), admin_on_loopback);
    let admin = gw.admin.expect("admin listener");
    assert_eq!(http_get(admin, "/readyz"), (200, "ready\n".into()));
    assert_eq!(http_get(admin, "/healthz").0, 200);
    drop(vs);
    let (code, body) = http_get(admin, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("backend not ready"), "{body}");
    assert_eq!(http_get(admin, "/healthz").0, 200, "alive all the same");
    assert_eq!(http_get(admin, "/nope").0, 404);
}

#[test]
fn certificates_rotate_under_live_sessions_and_a_broken_file_keeps_the_old_one() {
    if !have("curl") {
        return;
    }
    let gw = TestGateway::start(BackendKind::Unftp, admin_on_loopback);
    let admin = gw.admin.expect("admin listener");
    let reloads = |outcome: &str| {
        value(
            &scrape(admin),
            "ftpsgate_certificate_reloads_total",
            &[("outcome", outcome)],
        )
    };
    let cert = gw.ca.clone();
    let key = cert.with_file_name("key.pem");
    let old = pem_certs(&cert).remove(0);
    let want = random_file(&gw.root.join("before.bin"), MIB);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // A session opened before any change, kept open throughout.
    let mut live = rt.block_on(suppaftp_session(gw.explicit, &gw.ca));
    assert_eq!(
        served_cert(gw.explicit, "localhost", std::slice::from_ref(&old)),
        Ok(old.clone())
    );

    // A broken file: refused, the old certificate stays and new sessions still work.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n").expect("break");
    assert!(
        eventually(Duration::from_secs(10), || reloads("failed") >= 1.0),
        "the change is seen and the reload refused"
    );
    assert_eq!(
        served_cert(gw.explicit, "localhost", std::slice::from_ref(&old)),
        Ok(old.clone()),
        "a broken certificate file must not replace the working one"
    );

    // Other files in the same directory (a log, say) trigger nothing.
    let before: f64 = ["changed", "unchanged", "failed"].map(reloads).iter().sum();
    for i in 0..5 {
        std::fs::write(cert.with_file_name("notes.txt"), format!("{i}")).expect("write");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(800));
    let after: f64 = ["changed", "unchanged", "failed"].map(reloads).iter().sum();
    assert_eq!(
        before, after,
        "unrelated files must not reload the certificates"
    );

    // A real rotation: new sessions get the new certificate.
    let new = rotate(&cert, &key, &["localhost", "127.0.0.1"]);
    let trusted = [old.clone(), new.clone()];
    assert!(
        eventually(Duration::from_secs(10), || {
            served_cert(gw.explicit, "localhost", &trusted) == Ok(new.clone())
        }),
        "new sessions see the new certificate"
    );
    assert!(reloads("changed") >= 1.0);

    // The session from before the rotation still transfers (its data connections resume the
    // TLS session it began with).
    rt.block_on(async {
        let data = suppaftp_retr(&mut live, "before.bin").await;
        assert_eq!(
            sha256(&data),
            want,
            "old session's download after the rotation"
        );
        live.quit().await.expect("QUIT");
    });
}

#[test]
fn sni_picks_the_certificate_named_by_the_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = ftpsgate::tls::self_signed(&["files.example.test".into()])
        .expect("rcgen")
        .write_to(&dir.path().join("files"))
        .expect("write");
    let sni_cert = pem_certs(&files.0).remove(0);
    let pair = ftpsgate::config::CertPair {
        cert: files.0.clone(),
        key: files.1.clone(),
    };
    let gw = TestGateway::start(BackendKind::Unftp, move |s| s.tls.sni = vec![pair]);
    let default = pem_certs(&gw.ca).remove(0);
    let trusted = [default.clone(), sni_cert.clone()];
    assert_eq!(
        served_cert(gw.explicit, "files.example.test", &trusted),
        Ok(sni_cert)
    );
    assert_eq!(served_cert(gw.explicit, "localhost", &trusted), Ok(default));
}

/// The binary, as an operator runs it: SIGHUP reloads certificates; SIGTERM stops the
/// listeners, tells idle sessions 421, and lets a 64 MiB download in flight finish whole. Its
/// JSON log has the transfer line with the session's fields, and no password.
#[test]
fn sighup_reloads_and_sigterm_drains_a_transfer_in_flight() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let size = 64 * MIB;
    let want = vs.put("drain.bin", size);
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = ftpsgate::tls::self_signed(&["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen")
        .write_to(&dir.path().join("certs"))
        .expect("write");
    let config = dir.path().join("ftpsgate.toml");
    // No file watching here, so only SIGHUP can explain a reload.
    std::fs::write(
        &config,
        "[tls]\nwatch = false\n[timeouts]\nshutdown_grace_secs = 60\n",
    )
    .expect("config");
    let port = free_port();
    // One data port, as the README's set-up (and the flag's one-port form).
    let data_port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let log = dir.path().join("ftpsgate.log");
    let mut child = KillOnDrop(
        gateway_command(
            env!("CARGO_BIN_EXE_ftpsgate"),
            listen,
            vs.addr,
            (data_port, 1),
            &cert,
            &key,
        )
        .args(["--log-format", "json"])
        .arg("--config")
        .arg(&config)
        .env("FTPSGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start ftpsgate"),
    );
    let pid = child.0.id().to_string();
    assert!(
        eventually(Duration::from_secs(20), || TcpStream::connect(listen)
            .is_ok()),
        "ftpsgate listens"
    );
    let signal = |sig: &str| run_ok(Command::new("kill").args([sig, &pid]));

    let old = pem_certs(&cert).remove(0);
    let new = rotate(&cert, &key, &["localhost", "127.0.0.1"]);
    std::thread::sleep(Duration::from_millis(500));
    let trusted = [old.clone(), new.clone()];
    assert_eq!(
        served_cert(listen, "localhost", &trusted),
        Ok(old),
        "no reload without SIGHUP"
    );
    signal("-HUP");
    assert!(
        eventually(Duration::from_secs(10), || {
            served_cert(listen, "localhost", &trusted) == Ok(new.clone())
        }),
        "SIGHUP reloads the certificate"
    );

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut idle = suppaftp_session(listen, &cert).await;
        let mut ftp = suppaftp_session(listen, &cert).await;
        let mut down = ftp.retr_as_stream("drain.bin").await.expect("RETR");
        let mut data = vec![0u8; MIB];
        down.read_exact(&mut data).await.expect("first MiB");

        signal("-TERM");
        let refused = eventually(Duration::from_secs(10), || {
            TcpStream::connect(listen).is_err()
        });
        assert!(refused, "no new sessions once draining");
        let idle_reply = idle.noop().await.expect_err("idle session is closed");
        assert!(idle_reply.to_string().contains("421"), "{idle_reply}");

        let mut rest = Vec::new();
        down.read_to_end(&mut rest)
            .await
            .expect("rest of the download");
        down.finish().await.expect("226 after the drain began");
        data.extend_from_slice(&rest);
        assert_eq!(sha256(&data), want, "the transfer in flight finished whole");
    });
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < end, "ftpsgate exits after the drain");
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(status.success(), "clean exit: {status}\n{log}");
    assert!(!log.contains(PASSWORD), "a password reached the log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let transfer = lines
        .iter()
        .find(|l| l["fields"]["message"] == "transfer")
        .unwrap_or_else(|| panic!("no transfer line in\n{log}"));
    assert_eq!(transfer["fields"]["command"], "RETR");
    assert_eq!(transfer["fields"]["bytes"], size as u64);
    assert_eq!(transfer["fields"]["outcome"], "ok");
    assert_eq!(transfer["fields"]["resumed"], true);
    assert_eq!(transfer["span"]["user"], USER);
    assert!(transfer["span"]["client"].is_string() && transfer["span"]["backend"].is_string());
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "certificates reloaded"),
        "SIGHUP's reload is logged"
    );
}

/// A transfer that fails after its data connection resumed is logged with that connection's
/// TLS facts, as a finished one is: an upload whose client closes the data socket without
/// close_notify, and a download whose client drops the data socket mid-transfer. The binary's
/// JSON log has `tls` and `resumed = true` on both failed transfer lines.
#[test]
fn failed_transfers_are_logged_with_their_data_connections_tls() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    vs.put("cut-down.bin", 64 * MIB);
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = ftpsgate::tls::self_signed(&["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen")
        .write_to(&dir.path().join("certs"))
        .expect("write");
    let port = free_port();
    // One data port, as the README's set-up (and the flag's one-port form).
    let data_port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let log = dir.path().join("ftpsgate.log");
    let _child = KillOnDrop(
        gateway_command(
            env!("CARGO_BIN_EXE_ftpsgate"),
            listen,
            vs.addr,
            (data_port, 1),
            &cert,
            &key,
        )
        .args(["--log-format", "json"])
        .env("FTPSGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start ftpsgate"),
    );
    assert!(
        eventually(Duration::from_secs(20), || TcpStream::connect(listen)
            .is_ok()),
        "ftpsgate listens"
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut ftp = Ftps::login(listen, &cert).await;

        // Upload: a MiB, flushed, then FIN without close_notify.
        let port = ftp.epsv().await;
        let mut data = ftp.data(port).await;
        let first = ftp.cmd("STOR cut-up.bin").await;
        assert!(first.starts_with("150"), "{first}");
        data.write_all(&vec![7u8; MIB]).await.expect("upload");
        data.flush().await.expect("flush");
        let (mut tcp, _) = data.into_inner();
        tcp.shutdown().await.expect("FIN");
        let done = ftp.reply().await;
        assert!(done.starts_with("426"), "truncated upload: {done}");
        drop(tcp);

        // Download: a MiB read of 64, then the socket dropped with the rest unread (RST).
        let port = ftp.epsv().await;
        let mut data = ftp.data(port).await;
        let first = ftp.cmd("RETR cut-down.bin").await;
        assert!(first.starts_with("150"), "{first}");
        let mut got = vec![0u8; MIB];
        data.read_exact(&mut got).await.expect("first MiB");
        drop(data);
        let done = ftp.reply().await;
        assert!(done.starts_with("426"), "cut download: {done}");
        assert!(ftp.cmd("NOOP").await.starts_with("200"));
    });
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for command in ["STOR", "RETR"] {
        let line = lines
            .iter()
            .find(|l| l["fields"]["message"] == "transfer" && l["fields"]["command"] == command)
            .unwrap_or_else(|| panic!("no {command} transfer line in\n{text}"));
        let fields = &line["fields"];
        assert_eq!(fields["outcome"], "failed", "{line}");
        assert_eq!(fields["resumed"], true, "{line}");
        assert_eq!(fields["tls"], "TLSv1_3", "{line}");
        assert!(fields["error"].is_string(), "{line}");
    }
}

/// `ftpsgate doctor` as an operator runs it: `(exit success, stdout)`.
fn doctor(args: &[&str], password: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ftpsgate"))
        .arg("doctor")
        .args(args)
        .env("FTPSGATE_DOCTOR_PASSWORD", password)
        .output()
        .expect("run doctor");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn doctor_passes_a_good_setup_and_names_what_is_broken_in_a_bad_one() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = ftpsgate::tls::self_signed(&["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen")
        .write_to(dir.path())
        .expect("write");
    let listen = format!("127.0.0.1:{}", free_port());
    let backend = vs.addr.to_string();
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
    let common = [
        "--listen",
        &listen,
        "--passive-ports",
        "18990-18999",
        "--cert",
        &cert_arg,
        "--key",
        &key_arg,
        "--external-address",
        "127.0.0.1",
    ];

    let mut good = vec!["--backend", &backend, "--user", USER];
    good.extend(common);
    let (ok, report) = doctor(&good, PASSWORD);
    println!("{report}");
    assert!(ok, "a good setup passes:\n{report}");
    has_lines(&report, &[
        "[ ok ] backend: ",
        "[ ok ] backend passive mode: EPSV gave port",
        "[ ok ] backend passive mode: PASV gave port",
        "[ ok ] passive pool: all 10 ports of 18990-18999 can be bound",
        "[ ok ] certificate: CN=localhost, valid until",
        // ftpsgate's own certificates say who they are and that no CA vouches for them.
        "[warn] certificate: CN=localhost is self-signed: clients will not trust it",
        "fix: order one from a CA with [tls.acme]",
        "[ ok ] certificate: names 127.0.0.1",
        // A loopback external address is fine for this test, but never for the internet.
        "[warn] external address: 127.0.0.1, a loopback address: clients on the internet cannot reach it",
        "iptables -A INPUT -p tcp --dport 18990:18999 -j ACCEPT",
    ]);

    // A certificate with ten days left is a warning that names the renewal.
    let short = ftpsgate::tls::self_signed_for(&["localhost".into(), "127.0.0.1".into()], 10)
        .expect("rcgen");
    short.write_to(dir.path()).expect("write");
    let (ok, report) = doctor(&good, PASSWORD);
    assert!(ok, "expiring soon is a warning, not a failure:\n{report}");
    has_lines(&report, &["[warn] certificate: CN=localhost expires on"]);

    // A wrong password is a failure of its own, named as such.
    let (ok, report) = doctor(&good, "wrong");
    assert!(!ok && report.contains("login refused: 530"), "{report}");

    // Broken: the backend is gone, the certificate file is garbage, and something holds every
    // pool port.
    let mut bad = vec!["--backend", "127.0.0.1:1"];
    bad.extend(common);
    let held: Vec<_> = (18990..=18999)
        .map(|p| std::net::TcpListener::bind(("127.0.0.1", p)).expect("hold pool port"))
        .collect();
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nbroken\n").expect("break cert");
    let (ok, report) = doctor(&bad, "");
    println!("{report}");
    assert!(!ok, "a broken setup fails:\n{report}");
    has_lines(
        &report,
        &[
            "[FAIL] backend: 127.0.0.1:1: cannot connect",
            "[FAIL] passive pool: none of the 10 ports of 18990-18999 can be bound",
            "[FAIL] certificate: ",
            "fix: ",
        ],
    );
    drop(held);
}

/// An FTPS session from a client that presents `identity` (or no certificate).
async fn mtls_session(
    gw: &TestGateway,
    identity: Option<&ClientCert>,
) -> Result<suppaftp::tokio::AsyncRustlsFtpStream, String> {
    use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream};
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(&gw.ca) {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(
                vec![id.cert.clone()],
                rustls::pki_types::PrivatePkcs8KeyDer::from(id.key_der.clone()).into(),
            )
            .map_err(|e| e.to_string())?,
    };
    let connector = AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(Arc::new(config)));
    let ftp = AsyncRustlsFtpStream::connect(gw.explicit)
        .await
        .map_err(|e| e.to_string())?;
    let mut ftp = ftp
        .into_secure(connector, "localhost")
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3 reports a refused client certificate only at the first read after the handshake.
    ftp.login(USER, PASSWORD).await.map_err(|e| e.to_string())?;
    Ok(ftp)
}

#[test]
fn client_certificates_are_required_or_optional_as_configured() {
    let clients = ClientCa::new();
    let pki = clients.client("alice", None);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("clients-ca.pem");
    std::fs::write(&ca, &clients.pem).expect("write CA");
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    let required_ca = ca.clone();
    let gw = TestGateway::start(BackendKind::Unftp, move |s| {
        s.tls.client_auth = ftpsgate::config::ClientAuth::Required;
        s.tls.client_ca = Some(required_ca);
    });
    let want = random_file(&gw.root.join("mtls.bin"), MIB);
    rt.block_on(async {
        let mut ftp = mtls_session(&gw, Some(&pki)).await.expect("alice gets in");
        ftp.transfer_type(suppaftp::types::FileType::Binary)
            .await
            .expect("TYPE I");
        assert_eq!(sha256(&suppaftp_retr(&mut ftp, "mtls.bin").await), want);
        ftp.quit().await.expect("QUIT");
        let refused = mtls_session(&gw, None).await;
        assert!(refused.is_err(), "no certificate, no session");
    });
    drop(gw);

    let gw = TestGateway::start(BackendKind::Unftp, move |s| {
        s.tls.client_auth = ftpsgate::config::ClientAuth::Optional;
        s.tls.client_ca = Some(ca);
    });
    rt.block_on(async {
        for identity in [None, Some(&pki)] {
            let mut ftp = mtls_session(&gw, identity)
                .await
                .expect("optional: with or without a certificate");
            ftp.quit().await.expect("QUIT");
        }
    });
}

#[test]
fn doctor_prints_a_tls_backends_pin_ready_to_paste_and_cert_prints_its_own() {
    let Some(vs) = FtpServer::vsftpd(VsTls::Explicit) else {
        return;
    };
    let served = vs.cert.as_deref().expect("vsftpd's certificate");
    let pin = ftpsgate::tls::backend::fingerprint(served).expect("pin");
    let listen = format!("127.0.0.1:{}", free_port());
    let backend = vs.addr.to_string();
    let base = [
        "--listen",
        listen.as_str(),
        "--passive-ports",
        "18980-18989",
        "--backend",
        backend.as_str(),
        "--backend-tls",
        "explicit",
    ];
    // Not yet trusted: doctor connects anyway when told to skip the check, and prints the pin.
    let mut first = base.to_vec();
    first.push("--backend-insecure");
    let (_, report) = doctor(&first, "");
    let line = format!("pin_sha256 = \"{pin}\"");
    assert!(report.contains(&line), "{line} missing in\n{report}");
    // Pasted into the config, it is what the gateway then checks the backend against.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pinned.toml");
    std::fs::write(&config, format!("[backend]\n{line}\n")).expect("write config");
    let config_arg = config.display().to_string();
    let mut pinned = base.to_vec();
    pinned.extend(["--config", config_arg.as_str()]);
    let (_, report) = doctor(&pinned, "");
    assert!(
        report.contains(&format!("[ ok ] backend: {backend} answered 220")),
        "the pinned backend passes:\n{report}"
    );
    // `ftpsgate cert` prints the pin of the certificate it writes.
    let out = Command::new(env!("CARGO_BIN_EXE_ftpsgate"))
        .args(["cert", "--out"])
        .arg(dir.path())
        .output()
        .expect("run cert");
    let printed = String::from_utf8_lossy(&out.stdout);
    let own = ftpsgate::tls::backend::fingerprint(&dir.path().join("cert.pem")).expect("pin");
    assert!(
        printed.contains(&format!("pin_sha256 = \"{own}\"")),
        "{printed}"
    );
}
