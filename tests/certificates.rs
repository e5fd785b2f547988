//! Certificates at the front door, with curl in front of vsftpd: logins bound to client
//! certificates (by CN, by email within the listed domains), the expiry of the gateway's
//! own certificates on /metrics, and the certificates `ftpsgate cert` makes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use support::admin::{refusals, scrape, value};
use support::curl::{curl, trace};
use support::files::{random_file, sha256_file};
use support::gateway::{admin_on_loopback, BackendKind, TestGateway};
use support::pki::{pem_certs, ClientCa, ClientCert};
use support::process::have;
use support::servers::{users_heard, vsftpd_logging_commands, FtpServer, VsTls};
use support::{PASSWORD, USER};

#[test]
fn client_certificates_bind_logins_by_cn_or_email() {
    if !have("curl") {
        return;
    }
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let want = vs.put("bound.bin", 100_000);
    let pki = ClientPki::new();
    let (clients, ca) = (&pki.ca, pki.ca_path.clone());
    let write = |name: &str, c: &ClientCert| pki.write(name, c);
    let ours = write(
        "ours",
        &clients.client(USER, Some(&format!("{USER}@example.org"))),
    );
    let alice = write("alice", &clients.client("alice", Some("alice@example.org")));
    for field in [
        ftpsgate::config::CertUser::Cn,
        ftpsgate::config::CertUser::Email,
    ] {
        let client_ca = ca.clone();
        let gw = TestGateway::start(vs.backend(), move |s| {
            admin_on_loopback(s);
            s.tls.client_auth = ftpsgate::config::ClientAuth::Required;
            s.tls.client_ca = Some(client_ca);
            s.tls.client_cert_user = Some(field);
            if field == ftpsgate::config::CertUser::Email {
                s.tls.client_cert_email_domains = vec!["example.org".into()];
            }
            s.access.failed_login_delay_secs = 0;
        });
        let got = pki.dir.path().join("got.bin");
        let login = format!("{USER}:{PASSWORD}");
        let url = format!("ftp://127.0.0.1:{}/bound.bin", gw.explicit.port());
        let out = curl(&gw, 30)
            .args([
                "--ssl-reqd",
                "--cert",
                &ours.0,
                "--key",
                &ours.1,
                "--user",
                &login,
                &url,
                "-o",
            ])
            .arg(&got)
            .output()
            .expect("curl");
        assert!(out.status.success(), "{field:?}: {}", trace(&out));
        assert_eq!(sha256_file(&got), want);
        // alice's certificate is valid, but it does not name the user she logs in as.
        let out = curl(&gw, 30)
            .args([
                "-v",
                "--ssl-reqd",
                "--cert",
                &alice.0,
                "--key",
                &alice.1,
                "--user",
                &login,
                &url,
                "-o",
                "/dev/null",
            ])
            .output()
            .expect("curl");
        assert_eq!(out.status.code(), Some(67), "{field:?}: {}", trace(&out));
        assert!(
            trace(&out).contains("< 530 Login incorrect."),
            "{}",
            trace(&out)
        );
        assert_eq!(refusals(&gw, "certificate_user"), 1.0);
    }
}

/// A client CA and the client certificates made under it, written to a temporary directory
/// for curl and the gateway to read.
struct ClientPki {
    dir: tempfile::TempDir,
    ca: ClientCa,
    ca_path: std::path::PathBuf,
}

impl ClientPki {
    fn new() -> ClientPki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClientCa::new();
        let ca_path = dir.path().join("clients-ca.pem");
        std::fs::write(&ca_path, &ca.pem).expect("write CA");
        ClientPki { dir, ca, ca_path }
    }

    /// Writes `c` as `name.pem` and `name.key`; their paths.
    fn write(&self, name: &str, c: &ClientCert) -> (String, String) {
        let (cert, key) = (
            self.dir.path().join(format!("{name}.pem")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&cert, &c.cert_pem).expect("cert");
        std::fs::write(&key, &c.key_pem).expect("key");
        (cert.display().to_string(), key.display().to_string())
    }
}

#[test]
fn email_bound_logins_accept_only_the_listed_domains() {
    let Some(vs) = vsftpd_logging_commands() else {
        return;
    };
    let want = vs.put("domain.bin", 100_000);
    let pki = ClientPki::new();
    let (clients, ca) = (&pki.ca, pki.ca_path.clone());
    let write = |name: &str, c: &ClientCert| pki.write(name, c);
    // Both valid under the same CA, both with the local part the user logs in as.
    let evil = write(
        "evil",
        &clients.client("evil", Some(&format!("{USER}@evil.example"))),
    );
    let ours = write(
        "ours",
        &clients.client("ours", Some(&format!("{USER}@Example.ORG"))),
    );
    let gw = TestGateway::start(vs.backend(), move |s| {
        admin_on_loopback(s);
        s.tls.client_auth = ftpsgate::config::ClientAuth::Required;
        s.tls.client_ca = Some(ca);
        s.tls.client_cert_user = Some(ftpsgate::config::CertUser::Email);
        s.tls.client_cert_email_domains = vec!["example.org".into(), "corp.example".into()];
        s.access.failed_login_delay_secs = 0;
    });
    let login = format!("{USER}:{PASSWORD}");
    let url = format!("ftp://127.0.0.1:{}/domain.bin", gw.explicit.port());
    let got = pki.dir.path().join("got.bin");
    let fetch = |pair: &(String, String)| {
        curl(&gw, 30)
            .args(["-v", "--ssl-reqd", "--cert", &pair.0, "--key", &pair.1])
            .args(["--user", &login, &url, "-o"])
            .arg(&got)
            .output()
            .expect("curl")
    };

    let out = fetch(&evil);
    assert_eq!(out.status.code(), Some(67), "{}", trace(&out));
    assert!(
        trace(&out).contains("< 530 Login incorrect."),
        "{}",
        trace(&out)
    );
    assert!(!trace(&out).contains("> PASS"), "{}", trace(&out));
    assert_eq!(refusals(&gw, "certificate_user"), 1.0);
    assert_eq!(users_heard(&vs), Vec::<String>::new(), "{}", vs.log());

    // The listed domain, in another case, logs in and downloads.
    let out = fetch(&ours);
    assert!(out.status.success(), "{}", trace(&out));
    assert_eq!(sha256_file(&got), want);
    assert_eq!(users_heard(&vs).len(), 1, "{}", vs.log());
    assert_eq!(refusals(&gw, "certificate_user"), 1.0);
}

#[test]
fn certificate_expiry_is_on_metrics_for_the_default_and_each_sni_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair =
        ftpsgate::tls::self_signed(&["two.test".into(), "alt.two.test".into()]).expect("cert");
    let (cert, key) = pair.write_to(dir.path()).expect("write");
    let sni_der = pem_certs(&cert).remove(0);
    let gw = TestGateway::start(BackendKind::Unftp, move |s| {
        admin_on_loopback(s);
        s.tls.sni = vec![ftpsgate::config::CertPair { cert, key }];
    });
    let m = scrape(gw.admin.expect("admin"));
    let expiry = |der: &[u8]| {
        let (_, c) = x509_parser::parse_x509_certificate(der).expect("x509");
        c.validity().not_after.timestamp() as f64
    };
    let default_der = pem_certs(&gw.ca).remove(0);
    let name = "ftpsgate_certificate_expiry_timestamp_seconds";
    assert_eq!(
        value(&m, name, &[("name", "default")]),
        expiry(&default_der)
    );
    assert_eq!(
        value(&m, name, &[("name", "alt.two.test")]),
        expiry(&sni_der)
    );
    assert_eq!(m.samples.iter().filter(|s| s.metric == name).count(), 2);
}

/// `ftpsgate cert` writes what a careful operator would: the name in the subject, a bounded
/// lifetime starting a little before now, a random serial, a server certificate's usages. And
/// a client that trusts it verifies it for the name.
#[test]
fn cert_writes_a_server_certificate_with_its_name_and_a_bounded_life() {
    use x509_parser::extensions::ParsedExtension;
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |sub: &str, days: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ftpsgate"));
        cmd.args(["cert", "--out"]).arg(dir.path().join(sub));
        cmd.args(["--name", "ftp.example.test", "--name", "127.0.0.1"]);
        if let Some(days) = days {
            cmd.args(["--days", days]);
        }
        support::process::run_ok(&mut cmd);
        let pem = dir.path().join(sub).join("cert.pem");
        (
            pem_certs(&pem).remove(0),
            pem,
            dir.path().join(sub).join("key.pem"),
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let (ten, ten_pem, ten_key) = write("ten", Some("10"));
    let (default, _, _) = write("default", None);
    let mut serials = Vec::new();
    for (der, days) in [(&ten, 10), (&default, 397)] {
        let (_, c) = x509_parser::parse_x509_certificate(der).expect("x509");
        let cn: Vec<&str> = c
            .subject()
            .iter_common_name()
            .map(|n| n.as_str().expect("utf-8"))
            .collect();
        assert_eq!(cn, ["ftp.example.test"], "the first name is the subject");
        let names = ftpsgate::tls::x509::subject_alt_names(&c);
        assert_eq!(names, ["ftp.example.test", "127.0.0.1"]);
        let (from, to) = (
            c.validity().not_before.timestamp(),
            c.validity().not_after.timestamp(),
        );
        assert!(
            (now - 7200..=now - 60).contains(&from),
            "valid from a little before now: {}",
            c.validity().not_before
        );
        let want = now + days * 86_400;
        assert!(
            (want - 600..=want + 600).contains(&to),
            "{days} days: {}",
            c.validity().not_after
        );
        let mut seen = (false, false, false);
        for ext in c.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::KeyUsage(ku) => {
                    seen.0 = ku.digital_signature() && !ku.key_cert_sign();
                }
                ParsedExtension::ExtendedKeyUsage(eku) => seen.1 = eku.server_auth,
                ParsedExtension::BasicConstraints(bc) => seen.2 = !bc.ca,
                _ => {}
            }
        }
        assert_eq!(
            seen,
            (true, true, true),
            "digitalSignature, serverAuth, CA:FALSE"
        );
        assert_eq!(c.raw_serial().len(), 16, "a 128-bit serial");
        serials.push(c.raw_serial().to_vec());
    }
    assert_ne!(serials[0], serials[1], "serials are drawn, not derived");

    // curl trusts exactly this certificate and checks it for the name it connects by.
    let gw = TestGateway::start(BackendKind::Unftp, move |s| {
        s.tls.cert = Some(ten_pem);
        s.tls.key = Some(ten_key);
    });
    let want = random_file(&gw.root.join("named.bin"), 300_000);
    let got = dir.path().join("got.bin");
    let port = gw.explicit.port();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "--cacert"])
        .arg(dir.path().join("ten/cert.pem"))
        .args(["--ssl-reqd", "--resolve"])
        .arg(format!("ftp.example.test:{port}:127.0.0.1"))
        .args(["--user", &format!("{USER}:{PASSWORD}"), "-o"])
        .arg(&got)
        .arg(format!("ftp://ftp.example.test:{port}/named.bin"))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256_file(&got), want);
}
