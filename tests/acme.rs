//! `[tls.acme]`: the gateway gets its own certificate from an ACME server (RFC 8555), here
//! Pebble, Let's Encrypt's test server, validating real http-01 and tls-alpn-01 challenges
//! against the gateway on loopback (its DNS answers 127.0.0.1 for `ftp.acme.test`).
//!
//! Each test runs the real binary with a config of its making in front of vsftpd, as an
//! operator would (SIGHUP, restarts and refusals at start are the binary's), and checks what
//! an operator and a client see: the certificate curl verifies against Pebble's root, /readyz,
//! the metrics, the log lines and the files in state_dir. Every download is hash-checked.

// A test, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ftpsgate::config::Settings;
use rustls::pki_types::{CertificateDer, ServerName};
use support::admin::{http_get, scrape, value};
use support::control::{client_config, Control};
use support::files::sha256;
use support::ftps::Ftps;
use support::net::free_port;
use support::pebble::{Pebble, PebbleOptions};
use support::pki::pem_certs;
use support::process::{eventually, run_ok, KillOnDrop};
use support::servers::{FtpServer, VsTls};
use support::{MIB, PASSWORD, USER};
use tokio_rustls::TlsConnector;

/// The name the gateway asks Pebble to certify (pebble-challtestsrv resolves it to 127.0.0.1).
const DOMAIN: &str = "ftp.acme.test";
/// Generous bounds: the machine running the tests may be small and loaded.
const ISSUE_LIMIT: Duration = Duration::from_secs(120);

/// Pebble, vsftpd with a file to download, and a directory for configs, logs and state.
struct Bed {
    pebble: Pebble,
    vs: FtpServer,
    /// SHA-256 of `file.bin` on vsftpd.
    want: String,
    dir: tempfile::TempDir,
}

impl Bed {
    /// `None` (skip) without Pebble or vsftpd on a laptop; a panic in CI.
    fn new(options: PebbleOptions) -> Option<Bed> {
        let pebble = Pebble::start_with(options)?;
        let vs = FtpServer::vsftpd(VsTls::None)?;
        let want = vs.put("file.bin", MIB);
        Some(Bed {
            pebble,
            vs,
            want,
            dir: tempfile::tempdir().expect("tempdir"),
        })
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Where the gateway keeps the certificate for [`DOMAIN`].
    fn cert_dir(&self) -> PathBuf {
        self.state_dir().join(self.pebble.state_key()).join(DOMAIN)
    }

    /// `[tls.acme]` by `challenge`, the challenge's responder where Pebble validates it and
    /// the other on a free port; `extra` adds keys.
    fn acme(&self, challenge: &str, extra: &str) -> String {
        let (http, alpn) = match challenge {
            "http-01" => (self.pebble.http_port, free_port()),
            _ => (free_port(), self.pebble.tls_port),
        };
        self.acme_on(challenge, http, alpn, extra)
    }

    fn acme_on(&self, challenge: &str, http: u16, alpn: u16, extra: &str) -> String {
        format!(
            "[tls.acme]\ndirectory = {dir:?}\ncontact = \"ops@example.com\"\n\
             domains = [{DOMAIN:?}]\nchallenge = {challenge:?}\n\
             http_listen = \"127.0.0.1:{http}\"\ntls_alpn_listen = \"127.0.0.1:{alpn}\"\n\
             state_dir = {state:?}\ndirectory_ca = {ca:?}\ntimeout_secs = 120\n{extra}",
            dir = self.pebble.directory,
            state = self.state_dir().display().to_string(),
            ca = self.pebble.directory_ca.display().to_string(),
        )
    }

    /// The gateway in front of vsftpd with `acme`, its admin listener up.
    fn gateway(&self, name: &str, acme: &str) -> Gw {
        let mut gw = Gw::spawn(self.dir.path(), name, self.vs.addr, acme);
        gw.wait_admin();
        gw
    }

    /// curl over explicit FTPS to `ftp.acme.test` on the gateway, verifying its certificate
    /// against Pebble's root: the file's bytes, hash-checked.
    fn curl_download(&self, gw: &Gw) {
        let port = gw.explicit.port();
        let out = self.dir.path().join("curl.out");
        let result = Command::new("curl")
            .args(["-sS", "--max-time", "60", "--ssl-reqd", "--cacert"])
            .arg(&self.pebble.root)
            .args(["--resolve", &format!("{DOMAIN}:{port}:127.0.0.1")])
            .args(["-u", &format!("{USER}:{PASSWORD}"), "-o"])
            .arg(&out)
            .arg(format!("ftp://{DOMAIN}:{port}/file.bin"))
            .output()
            .expect("curl");
        assert!(
            result.status.success(),
            "curl verifying against Pebble's root: {}\n{}",
            String::from_utf8_lossy(&result.stderr),
            gw.log()
        );
        let got = std::fs::read(&out).expect("downloaded");
        assert_eq!(sha256(&got), self.want, "download through the gateway");
    }
}

/// The ftpsgate binary run with a config of the test's making, its JSON log in a file.
struct Gw {
    child: KillOnDrop,
    explicit: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

impl Gw {
    /// Starts the binary (without waiting for it); `name` keeps each run's config and log apart.
    fn spawn(dir: &Path, name: &str, backend: SocketAddr, acme: &str) -> Gw {
        let explicit = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut s = Settings::default();
        s.listen.explicit = vec![explicit];
        s.backend.addresses = vec![backend.into()];
        let pool = free_port();
        s.passive.ports = format!("{pool}-{pool}").parse().expect("range");
        s.admin.listen = Some(admin);
        // No tls.cert/key: the certificate comes from ACME. [tls.acme] follows [tls] as a table
        // of its own, written out as an operator would.
        let text = format!("{}\n{acme}", toml::to_string(&s).expect("toml"));
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, text).expect("write config");
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_ftpsgate"))
            .args(["run", "--config"])
            .arg(&config)
            .env("FTPSGATE_LOG_FORMAT", "json")
            .env("FTPSGATE_LOG", "info,rustls::msgs::handshake=error")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start ftpsgate");
        Gw {
            child: KillOnDrop(child),
            explicit,
            admin,
            log,
        }
    }

    /// Waits for the admin listener, polling closely so that /readyz can be read before an
    /// order completes.
    fn wait_admin(&mut self) {
        let until = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(self.admin).is_err() {
            let exited = self.child.0.try_wait().expect("wait");
            assert!(
                exited.is_none() && Instant::now() < until,
                "gateway did not start ({exited:?}):\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON log lines whose message contains `text`.
    fn lines(&self, text: &str) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(text))
            })
            .collect()
    }

    fn readyz(&self) -> u16 {
        http_get(self.admin, "/readyz").0
    }

    fn orders(&self, outcome: &str) -> f64 {
        value(
            &scrape(self.admin),
            "ftpsgate_acme_orders_total",
            &[("outcome", outcome)],
        )
    }

    /// Waits until `n` orders have been issued, failing with the log otherwise.
    fn wait_issued(&self, n: f64) {
        let done = eventually(ISSUE_LIMIT, || self.orders("issued") >= n);
        assert!(done, "{n} orders not issued:\n{}", self.log());
    }

    fn signal(&self, sig: &str) {
        run_ok(Command::new("kill").args([sig, &self.child.0.id().to_string()]));
    }

    /// SIGTERM, as systemd stops it, and waits for the exit (no session holds the drain).
    fn stop(mut self) {
        self.signal("-TERM");
        let exited = eventually(Duration::from_secs(60), || {
            self.child.0.try_wait().expect("wait").is_some()
        });
        assert!(
            exited,
            "no exit on SIGTERM:
{}",
            self.log()
        );
    }

    /// The certificate chain the gateway presents for `name`, verified against `roots`.
    fn served(&self, name: &str, roots: &Path) -> Vec<CertificateDer<'static>> {
        let tls = TlsConnector::from(client_config(&pem_certs(roots)).expect("config"));
        let name = ServerName::try_from(name.to_string()).expect("name");
        runtime().block_on(async {
            let mut ctl = Control::connect(self.explicit).await.expect("connect");
            assert!(ctl.reply().await.starts_with("220"));
            let secured = ctl.auth_tls(&tls, name).await.expect("handshake");
            let chain = secured.get_ref().get_ref().1.peer_certificates();
            chain.expect("a chain").to_vec()
        })
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// The serial number of a DER certificate, as lowercase hex without leading zeros.
fn serial(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("certificate");
    normal_hex(&cert.raw_serial_as_string())
}

/// Hex digits only, lowercase, no leading zeros: serials compare whatever their spelling.
fn normal_hex(s: &str) -> String {
    let hex: String = s
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect::<String>()
        .to_lowercase();
    hex.trim_start_matches('0').to_string()
}

/// A logged-in FTPS session that checks the gateway's certificate against Pebble's root for
/// [`DOMAIN`], on the control and the data connections.
async fn session(gw: &Gw, pebble: &Pebble) -> Ftps {
    let mut plain = Control::connect(gw.explicit).await.expect("connect");
    assert!(plain.reply().await.starts_with("220"));
    let config = client_config(&pem_certs(&pebble.root)).expect("config");
    let name = ServerName::try_from(DOMAIN).expect("name");
    Ftps::secure_as(plain, config, name).await.log_in().await
}

/// Fails unless every directory under (and including) `dir` is 0700 and every file 0600.
fn private_tree(dir: &Path) -> usize {
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(
        mode(dir),
        0o700,
        "{} is a directory of secrets",
        dir.display()
    );
    let mut files = 0;
    for entry in std::fs::read_dir(dir).expect("read state") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files += private_tree(&path);
        } else {
            assert_eq!(mode(&path), 0o600, "{} holds secrets", path.display());
            files += 1;
        }
    }
    files
}

/// The ACME certificate's notAfter, from its file.
fn not_after(cert_pem: &Path) -> i64 {
    let der = pem_certs(cert_pem).remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("certificate");
    cert.validity().not_after.timestamp()
}

/// One issuance by `challenge`, checked end to end: the temporary certificate and /readyz
/// 503 until the order completes; then the files, the metrics, the log line, the certificate
/// served for the name, and curl verifying it against Pebble's root while downloading.
fn issues_by(challenge: &str, options: PebbleOptions) {
    let Some(bed) = Bed::new(options) else {
        return;
    };
    // Orders that fail are retried soon: see the badNonce test.
    let gw = bed.gateway("gw", &bed.acme(challenge, "retry_secs = 2\n"));

    // Until the order completes, /readyz is 503. Each answer is read before the log, so a
    // 200 with no issuance logged yet would be a gateway ready on its temporary certificate.
    let mut saw_503 = false;
    let ready = eventually(ISSUE_LIMIT, || {
        let code = gw.readyz();
        let issued = !gw.lines("ACME certificate issued").is_empty();
        assert!(code == 503 || issued, "/readyz {code} before issuance");
        saw_503 |= code == 503;
        code == 200
    });
    assert!(ready, "/readyz never 200:\n{}", gw.log());
    println!("/readyz answered 503 before issuance: {saw_503}");
    assert!(
        !gw.lines("temporary self-signed").is_empty(),
        "no temporary certificate logged:\n{}",
        gw.log()
    );

    gw.wait_issued(1.0);
    let cert_dir = bed.cert_dir();
    let (cert, key) = (cert_dir.join("cert.pem"), cert_dir.join("key.pem"));
    assert!(cert.exists() && key.exists(), "no {}", cert_dir.display());
    let account = bed
        .state_dir()
        .join(bed.pebble.state_key())
        .join("account.json");
    assert!(account.exists(), "no {}", account.display());
    assert!(private_tree(&bed.state_dir()) >= 3);

    // The certificate served for the name is the one in state_dir, and chains to Pebble.
    let chain = gw.served(DOMAIN, &bed.pebble.root);
    let stored = pem_certs(&cert);
    assert_eq!(
        chain[0], stored[0],
        "the served certificate is the stored one"
    );
    let issued = gw.lines("ACME certificate issued");
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0]["fields"]["domain"].as_str(), Some(DOMAIN));
    let logged = issued[0]["fields"]["serial"].to_string();
    assert_eq!(normal_hex(&logged), serial(&chain[0]), "logged serial");

    let metrics = scrape(gw.admin);
    let expiry = value(
        &metrics,
        "ftpsgate_certificate_expiry_timestamp_seconds",
        &[("name", "default")],
    );
    assert_eq!(expiry as i64, not_after(&cert), "expiry metric is notAfter");
    // Without nonce rejections no order fails; with them, an order fails only when one
    // request's nonce is rejected three times running (instant-acme's retries), and then
    // for that reason alone.
    let failed = gw.lines("ACME order failed");
    assert_eq!(gw.orders("failed"), failed.len() as f64);
    if options.nonce_reject == 0 {
        assert!(failed.is_empty(), "{}", gw.log());
    }
    for line in &failed {
        let error = line["fields"]["error"].to_string();
        assert!(
            error.contains("badNonce"),
            "an order failed otherwise: {line}"
        );
    }
    if options.nonce_reject > 0 {
        let rejecting = format!("reject {}% of good nonces", options.nonce_reject);
        assert!(
            bed.pebble.log().contains(&rejecting),
            "{}",
            bed.pebble.log()
        );
    }
    println!(
        "orders failed on badNonce before issuance: {}",
        failed.len()
    );
    bed.curl_download(&gw);
}

#[test]
fn http01_issues_a_certificate_that_curl_verifies_against_pebbles_root() {
    issues_by("http-01", PebbleOptions::default());
}

#[test]
fn tls_alpn01_issues_a_certificate_that_curl_verifies_against_pebbles_root() {
    issues_by("tls-alpn-01", PebbleOptions::default());
}

/// Pebble rejects 30 % of good nonces (`badNonce`), as a busy CA may: the client retries each
/// rejected request with the fresh nonce of the rejection (RFC 8555 §6.5), and the rare order
/// that still fails (three rejections running) is retried, so the certificate still comes.
#[test]
fn issuance_survives_pebble_rejecting_a_third_of_the_nonces() {
    issues_by("http-01", PebbleOptions { nonce_reject: 30 });
}

/// SIGHUP re-checks renewal at once. With `renew_before_days` beyond the certificate's
/// lifetime (Pebble's last 5 years), the certificate just issued is due, yet the gateway waits
/// (no re-order within seconds) until SIGHUP, which orders a new one. A session opened on the
/// old certificate carries on, and new handshakes get the new one.
#[test]
fn sighup_renews_a_due_certificate_under_a_live_session() {
    let Some(bed) = Bed::new(PebbleOptions::default()) else {
        return;
    };
    let gw = bed.gateway("gw", &bed.acme("http-01", "renew_before_days = 3000\n"));
    gw.wait_issued(1.0);
    let first = gw.served(DOMAIN, &bed.pebble.root).remove(0);
    let rt = runtime();
    let mut old = rt.block_on(async {
        let mut s = session(&gw, &bed.pebble).await;
        assert_eq!(sha256(&s.retr("file.bin").await), bed.want);
        s
    });

    // Due, but just issued: no new order until SIGHUP.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        gw.orders("issued"),
        1.0,
        "re-ordered without SIGHUP:\n{}",
        gw.log()
    );
    gw.signal("-HUP");
    gw.wait_issued(2.0);

    let renewed = gw.served(DOMAIN, &bed.pebble.root).remove(0);
    assert_ne!(
        serial(&renewed),
        serial(&first),
        "a new certificate is served"
    );
    let stored = pem_certs(&bed.cert_dir().join("cert.pem")).remove(0);
    assert_eq!(stored, renewed, "the renewed certificate is stored");
    let serials: Vec<String> = gw
        .lines("ACME certificate issued")
        .iter()
        .map(|l| normal_hex(&l["fields"]["serial"].to_string()))
        .collect();
    assert_eq!(
        serials,
        [serial(&first), serial(&renewed)],
        "logged serials"
    );
    assert_eq!(
        not_after(&bed.cert_dir().join("cert.pem")),
        value(
            &scrape(gw.admin),
            "ftpsgate_certificate_expiry_timestamp_seconds",
            &[("name", "default")]
        ) as i64,
        "the expiry metric follows the renewal"
    );
    rt.block_on(async {
        // The session from before the renewal: a listing and a download, checked.
        let port = old.epsv().await;
        old.send("LIST").await;
        let mut data = old.data(port).await;
        assert!(old.reply().await.starts_with("150"));
        let mut listing = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut data, &mut listing)
            .await
            .expect("listing");
        assert!(old.reply().await.starts_with("226"));
        assert!(String::from_utf8_lossy(&listing).contains("file.bin"));
        assert_eq!(sha256(&old.retr("file.bin").await), bed.want);
        // And a new session, on the new certificate.
        let mut new = session(&gw, &bed.pebble).await;
        assert_eq!(sha256(&new.retr("file.bin").await), bed.want);
    });
    bed.curl_download(&gw);
}

/// Copies TCP connections from `from` to `to` until dropped: the path from Pebble's http-01
/// port to the gateway's responder, opened when the test decides.
fn forward(rt: &tokio::runtime::Runtime, from: u16, to: SocketAddr) -> tokio::task::JoinHandle<()> {
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", from))
            .await
            .expect("forwarder listens on Pebble's http-01 port");
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

/// A `retry_in` field as seconds, whether logged as a number of seconds or as a duration
/// ("2s", "1.9s", "1500ms", "2 s").
fn seconds(v: &serde_json::Value) -> f64 {
    if let Some(n) = v.as_f64() {
        return n;
    }
    let s = v.as_str().unwrap_or_else(|| panic!("retry_in: {v}")).trim();
    let number = |t: &str| {
        t.trim()
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("retry_in: {v}"))
    };
    match s.strip_suffix("ms") {
        Some(ms) => number(ms) / 1000.0,
        None => number(s.trim_end_matches('s')),
    }
}

/// The time of day of a log line's RFC 3339 timestamp, in seconds.
fn clock(v: &serde_json::Value) -> f64 {
    let t = v.as_str().expect("timestamp");
    let time = t
        .split_once('T')
        .expect("date and time")
        .1
        .trim_end_matches('Z');
    time.split(':')
        .map(|p| p.parse::<f64>().expect("number"))
        .fold(0.0, |acc, p| acc * 60.0 + p)
}

/// Nothing answers where Pebble validates http-01: each order fails with a log line naming
/// Pebble's problem, retries back off (2 s, then about 4, then about 8), and meanwhile the
/// temporary certificate serves clients while /readyz says 503. Once the test opens the path,
/// the next retry gets the certificate.
#[test]
fn an_unreachable_challenge_fails_clearly_backs_off_then_succeeds() {
    let Some(bed) = Bed::new(PebbleOptions::default()) else {
        return;
    };
    let responder = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let acme = bed.acme_on("http-01", responder.port(), free_port(), "retry_secs = 2\n");
    let gw = bed.gateway("gw", &acme);
    let three = eventually(ISSUE_LIMIT, || gw.lines("ACME order failed").len() >= 3);
    assert!(three, "not three failed orders:\n{}", gw.log());
    let failed = gw.lines("ACME order failed");
    println!("{failed:#?}");
    for line in &failed {
        // Pebble's problem, in its words: the connection to the responder was refused.
        let error = line["fields"]["error"].to_string();
        assert!(
            error.contains("urn:ietf:params:acme:error:connection")
                && error.contains("connection refused"),
            "the failure names Pebble's problem (nothing answering): {line}"
        );
    }
    let waits: Vec<f64> = failed
        .iter()
        .map(|l| seconds(&l["fields"]["retry_in"]))
        .collect();
    // 2, 4, 8 s, each within 20 %: each strictly longer than the one before.
    assert!(
        (1.5..=2.5).contains(&waits[0]) && waits.windows(2).all(|w| w[1] > w[0] * 1.2),
        "backoff: {waits:?}"
    );
    // And the gateway waits that long: the next failure comes no sooner (a lower bound only,
    // never a speed figure).
    let at: Vec<f64> = failed.iter().map(|l| clock(&l["timestamp"])).collect();
    for (i, wait) in waits.iter().enumerate().take(failed.len() - 1) {
        let gap = (at[i + 1] - at[i]).rem_euclid(86_400.0);
        assert!(
            gap >= wait - 0.05,
            "retry {i} came after {gap} s, not {wait} s"
        );
    }
    assert_eq!(gw.readyz(), 503, "not ready on the temporary certificate");
    assert!(gw.orders("failed") >= 3.0);
    assert_eq!(gw.orders("issued"), 0.0);

    // The temporary certificate still serves: curl (trusting anything) downloads the file.
    let port = gw.explicit.port();
    let out = run_ok(
        Command::new("curl")
            .args(["-sS", "--max-time", "60", "--ssl-reqd", "--insecure"])
            .args(["-u", &format!("{USER}:{PASSWORD}")])
            .arg(format!("ftp://127.0.0.1:{port}/file.bin")),
    );
    assert_eq!(
        sha256(&out.stdout),
        bed.want,
        "download on the temporary certificate"
    );

    let rt = runtime();
    let _path = forward(&rt, bed.pebble.http_port, responder);
    gw.wait_issued(1.0);
    let ready = eventually(Duration::from_secs(30), || gw.readyz() == 200);
    assert!(ready, "/readyz not 200 after issuance:\n{}", gw.log());
    bed.curl_download(&gw);
}

/// A restart with the same state_dir reuses the account and the certificate: no new order,
/// the same certificate served, ready at once.
#[test]
fn a_restart_reuses_the_account_and_certificate_in_state_dir() {
    let Some(bed) = Bed::new(PebbleOptions::default()) else {
        return;
    };
    let acme = bed.acme("http-01", "");
    let first = bed.gateway("first", &acme);
    first.wait_issued(1.0);
    let served = gw_cert(&first, &bed);
    let account = bed
        .state_dir()
        .join(bed.pebble.state_key())
        .join("account.json");
    let account_before = std::fs::read(&account).expect("account.json");
    first.stop();

    let second = bed.gateway("second", &acme);
    let ready = eventually(Duration::from_secs(30), || second.readyz() == 200);
    assert!(
        ready,
        "/readyz not 200 on the stored certificate:\n{}",
        second.log()
    );
    assert_eq!(
        gw_cert(&second, &bed),
        served,
        "the stored certificate is served"
    );
    // Long enough for an order against Pebble to have completed, had one been placed.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(second.orders("issued"), 0.0, "{}", second.log());
    assert!(second.lines("ACME certificate issued").is_empty());
    assert!(
        second.lines("temporary self-signed").is_empty(),
        "{}",
        second.log()
    );
    assert_eq!(
        std::fs::read(&account).expect("account.json"),
        account_before
    );
    bed.curl_download(&second);
}

/// `tls.acme.sni`: a second certificate, its own order, chosen by the name a client asks for;
/// clients without that name keep the default one. Ready once both are issued.
#[test]
fn an_sni_certificate_is_ordered_apart_and_served_for_its_name() {
    let Some(bed) = Bed::new(PebbleOptions::default()) else {
        return;
    };
    let other = "other.acme.test";
    let gw = bed.gateway(
        "sni",
        &bed.acme("http-01", &format!("sni = [[{other:?}]]\n")),
    );
    gw.wait_issued(2.0);
    let ready = eventually(Duration::from_secs(30), || gw.readyz() == 200);
    assert!(ready, "/readyz not 200 with both issued:\n{}", gw.log());
    let names = |der: &CertificateDer<'_>| {
        let (_, c) = x509_parser::parse_x509_certificate(der).expect("certificate");
        ftpsgate::tls::x509::subject_alt_names(&c)
    };
    let by_sni = gw.served(other, &bed.pebble.root).remove(0);
    assert_eq!(names(&by_sni), [other]);
    let stored = bed.state_dir().join(bed.pebble.state_key()).join(other);
    assert_eq!(by_sni, pem_certs(&stored.join("cert.pem")).remove(0));
    assert_eq!(
        names(&gw_cert(&gw, &bed)),
        [DOMAIN],
        "the default for its own name"
    );
    let issued: Vec<String> = gw
        .lines("ACME certificate issued")
        .iter()
        .map(|l| {
            l["fields"]["domain"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(issued.contains(&other.to_string()) && issued.contains(&DOMAIN.to_string()));
    let expiry = value(
        &scrape(gw.admin),
        "ftpsgate_certificate_expiry_timestamp_seconds",
        &[("name", other)],
    );
    assert_eq!(expiry, not_after(&stored.join("cert.pem")) as f64);
    bed.curl_download(&gw);
}

fn gw_cert(gw: &Gw, bed: &Bed) -> CertificateDer<'static> {
    gw.served(DOMAIN, &bed.pebble.root).remove(0)
}

/// A state_dir others can read (0755) holds an account key and certificate keys in the open:
/// the gateway refuses to start, naming state_dir and the mode it wants. No peer is needed:
/// the refusal comes before any order.
#[test]
fn a_state_dir_others_can_read_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let backend = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let acme = format!(
        "[tls.acme]\ndirectory = \"https://127.0.0.1:{}/dir\"\ndomains = [{DOMAIN:?}]\n\
         http_listen = \"127.0.0.1:{}\"\nstate_dir = {:?}\n",
        free_port(),
        free_port(),
        state.display().to_string()
    );
    let mut gw = Gw::spawn(dir.path(), "gw", backend, &acme);
    let mut status = None;
    let exited = eventually(Duration::from_secs(30), || {
        status = gw.child.0.try_wait().expect("wait");
        status.is_some()
    });
    assert!(
        exited,
        "the gateway started on a 0755 state_dir:\n{}",
        gw.log()
    );
    let status = status.expect("status");
    assert!(!status.success(), "exit {status}:\n{}", gw.log());
    // The directory is named by its key or its path: either tells the operator which to fix.
    let log = gw.log();
    let named = log.contains("state_dir") || log.contains(&state.display().to_string());
    assert!(
        named && log.contains("0700"),
        "the refusal names state_dir and 0700:\n{log}"
    );
}
