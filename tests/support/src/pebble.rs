//! Pebble, Let's Encrypt's ACME test server (Debian's `pebble` package), for the `[tls.acme]`
//! tests: a real RFC 8555 server that validates real challenges against the gateway, rather
//! than a mock that would agree with whatever the client does.
//!
//! Two processes, both killed on drop: `pebble-challtestsrv` only as the DNS server Pebble's
//! validation asks (it answers 127.0.0.1 for every name, so `ftp.acme.test` is the gateway on
//! loopback; its own challenge responders are off, the gateway answers the challenges), and
//! `pebble` itself, its HTTPS certificate made at run time with rcgen (no key in the tree).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::net::{free_port, wait_for_port};
use crate::process::{eventually, have, KillOnDrop};

/// How a test wants Pebble to behave.
#[derive(Debug, Clone, Copy, Default)]
pub struct PebbleOptions {
    /// `PEBBLE_WFE_NONCEREJECT`: the percentage of good nonces Pebble rejects with `badNonce`
    /// (Pebble's own default is 5; the harness makes it 0 so only the test that asks for
    /// rejections sees any).
    pub nonce_reject: u8,
}

/// A running Pebble and its DNS server.
pub struct Pebble {
    /// The ACME directory URL (`[tls.acme] directory`).
    pub directory: String,
    /// Pebble's own HTTPS certificate (`[tls.acme] directory_ca`).
    pub directory_ca: PathBuf,
    /// The root that Pebble's certificates chain to, for clients to trust (`curl --cacert`).
    pub root: PathBuf,
    /// Where Pebble's validation connects for http-01: `<name>:http_port`, the name resolving
    /// to 127.0.0.1.
    pub http_port: u16,
    /// Where Pebble's validation connects for tls-alpn-01.
    pub tls_port: u16,
    /// Pebble's management interface (roots, intermediates, certificate status).
    pub management: SocketAddr,
    log: PathBuf,
    // Pebble before its DNS server: fields drop in order.
    _pebble: KillOnDrop,
    _dns: KillOnDrop,
    _dir: TempDir,
}

impl Pebble {
    /// Pebble with no nonce rejections; `None` (skip) without it on a laptop, a panic in CI.
    pub fn start() -> Option<Pebble> {
        Pebble::start_with(PebbleOptions::default())
    }

    pub fn start_with(options: PebbleOptions) -> Option<Pebble> {
        if !have("pebble") || !have("pebble-challtestsrv") || !have("curl") {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("ftpsgate-pebble-")
            .tempdir()
            .expect("tempdir");
        let log = dir.path().join("pebble.log");
        let dns = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let dns_management = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &dns.to_string()])
            // Pebble 2.4's challtestsrv has no -doh; these four are all its responders.
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &dns_management.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("dns.log")).expect("dns log"))
            .spawn()
            .expect("start pebble-challtestsrv");
        let dns_server = KillOnDrop(dns_server);

        let pair = ftpsgate::tls::self_signed(&["localhost".into(), "127.0.0.1".into()])
            .expect("certificate");
        let (cert, key) = pair.write_to(&dir.path().join("https")).expect("write");
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let management = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let (http_port, tls_port) = (free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).expect("pebble config");
        // The DNS server must answer before Pebble validates anything.
        assert!(
            wait_for_port(dns_management, Duration::from_secs(30)),
            "pebble-challtestsrv did not start:\n{}",
            std::fs::read_to_string(dir.path().join("dns.log")).unwrap_or_default()
        );
        let log_file = std::fs::File::create(&log).expect("pebble log");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &dns.to_string()])
            // No random 0-15 s sleep before each validation: the tests stay quick.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", options.nonce_reject.to_string())
            // Pebble's own lines go to stdout, Go's HTTP server's to stderr: one file for both.
            .stdout(log_file.try_clone().expect("pebble log"))
            .stderr(log_file)
            .spawn()
            .expect("start pebble");
        let pebble = KillOnDrop(pebble);
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            wait_for_port(listen, Duration::from_secs(30))
                && wait_for_port(management, Duration::from_secs(30)),
            "pebble did not start:\n{}",
            log_text()
        );
        let root = dir.path().join("pebble-root.pem");
        let fetched = eventually(Duration::from_secs(30), || {
            fetch_root(&cert, management, &root)
        });
        assert!(fetched, "pebble's root not fetched:\n{}", log_text());
        Some(Pebble {
            directory: format!("https://{listen}/dir"),
            directory_ca: cert,
            root,
            http_port,
            tls_port,
            management,
            log,
            _pebble: pebble,
            _dns: dns_server,
            _dir: dir,
        })
    }

    /// The directory's `host_port`, as the gateway names its account directory in state_dir.
    pub fn state_key(&self) -> String {
        let hostport = self
            .directory
            .trim_start_matches("https://")
            .trim_end_matches("/dir");
        hostport.replace(':', "_")
    }

    /// Pebble's log (each request, each validation and its problem).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// GET /roots/0 from Pebble's management interface, trusting its HTTPS certificate `ca`,
/// into `to`; false until Pebble answers with a certificate.
fn fetch_root(ca: &Path, management: SocketAddr, to: &Path) -> bool {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "--cacert"])
        .arg(ca)
        .arg(format!("https://{management}/roots/0"))
        .output();
    match out {
        Ok(out) if out.status.success() && out.stdout.starts_with(b"-----BEGIN CERTIFICATE") => {
            std::fs::write(to, &out.stdout).expect("write root");
            true
        }
        _ => false,
    }
}
