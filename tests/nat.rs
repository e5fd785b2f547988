//! The story ftpsgate exists for, end to end: an FTP server behind a real NAT. Each test builds
//! its own lab with deploy/natlab/natlab.sh (network namespaces: a client on "the internet" with
//! no route but to the public /25, one or two NAT routers, the gateway's host, the internal FTP
//! server; documentation-range addresses only) and tears it down when it ends, failed or not.
//! The gateway's `passive.ports` is one port, the only data port the routers forward: every
//! passive transfer of every client crosses the NAT through it, eight at once in places.
//! Needs root, iproute2 and nftables: a skip on a laptop without them, a failure in CI.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::files::sha256_file;
use support::net::wait_for_port_in;
use support::peers::bounded;
use support::process::{has_lines, have, run_ok, KillOnDrop};
use support::servers::{FtpServer, VsTls};
use support::{PASSWORD, USER};
use tempfile::TempDir;

const PUBLIC: &str = "203.0.113.1";
const GATEWAY_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The inner router's outside address in a double NAT: the outer one forwards there.
const INNER_ROUTER: &str = "203.0.113.130";
/// The gateway's one data port (`passive.ports`): the routers forward it and nothing more, and
/// every passive transfer of every client goes through it.
const PASSIVE: &str = "20000";
const SIZE: usize = 300_000;
/// How long one run of a client without a whole-run limit of its own (ftplib, lftp, rclone)
/// may take.
const PEER_LIMIT: Duration = Duration::from_secs(180);

fn natlab() -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/natlab/natlab.sh"));
    cmd
}

/// One lab's namespaces, removed (with everything running in them) on drop.
struct Lab {
    name: String,
    /// Two NAT routers: `edge` (the public address) in front of `router`.
    double: bool,
}

impl Lab {
    /// A lab with one NAT router, or two with `double`; `None` (skip) on a laptop without
    /// root, `ip` or `nft`.
    fn up(double: bool) -> Option<Lab> {
        if !have("ip") || !have("nft") {
            return None;
        }
        let root = run_ok(Command::new("id").arg("-u")).stdout == b"0\n";
        if !root {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "the NAT tests need root in CI"
            );
            eprintln!("\n!!!!! SKIPPED: the NAT test bed needs root (network namespaces) !!!!!\n");
            return None;
        }
        sweep_stale_labs();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let lab = Lab {
            name: format!(
                "fg{}x{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
            double,
        };
        let mut up = natlab();
        up.args(["up", &lab.name]);
        if double {
            up.arg("--double");
        }
        run_ok(&mut up);
        Some(lab)
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.name)
    }

    /// `program` run in the namespace of `role` (client, edge, router, gw, ftp).
    fn cmd(&self, role: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(role)]).arg(program);
        cmd
    }

    fn natlab(&self, args: &[&str]) {
        let mut cmd = natlab();
        cmd.arg(args[0]).arg(&self.name).args(&args[1..]);
        run_ok(&mut cmd);
    }

    /// Adds one nft rule in `role`'s namespace.
    fn nft(&self, role: &str, rule: &str) {
        run_ok(self.cmd(role, "sh").args(["-c", &format!("nft {rule}")]));
    }

    /// vsftpd in the FTP server's namespace on `addr`, passive ports 40000-40019, with
    /// `extra` lines.
    fn vsftpd(&self, addr: SocketAddrV4, tls: VsTls, extra: &str) -> Option<FtpServer> {
        FtpServer::vsftpd_in(
            &self.ns("ftp"),
            addr,
            tls,
            &format!("pasv_min_port=40000\npasv_max_port=40019\n{extra}"),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = natlab().args(["down", &self.name]).status();
    }
}

/// Labs left by a test process that was killed before its guards ran.
fn sweep_stale_labs() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split(['-', ' ']).next().unwrap_or_default();
        let pid = name
            .strip_prefix("fg")
            .and_then(|rest| rest.split('x').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = natlab().args(["down", name]).status();
            }
        }
    }
}

/// ftpsgate running in a lab namespace from a config file, as an operator runs it.
struct NsGateway {
    external: String,
    config: PathBuf,
    ca: PathBuf,
    _child: Option<KillOnDrop>,
    dir: TempDir,
}

impl NsGateway {
    /// The config for a gateway in front of `backend`, PASV answered with `external`; not
    /// started yet, so that `doctor` can check the pool first.
    fn configure(backend: &str, external: &str) -> NsGateway {
        let dir = tempfile::Builder::new()
            .prefix("ftpsgate-nat-")
            .tempdir()
            .expect("tempdir");
        let pair = ftpsgate::tls::self_signed(&[PUBLIC.into()]).expect("certificate");
        let (cert, key) = pair.write_to(&dir.path().join("tls")).expect("write cert");
        let config = dir.path().join("ftpsgate.toml");
        std::fs::write(
            &config,
            format!(
                "[listen]\nexplicit = [\"0.0.0.0:21\"]\nimplicit = [\"0.0.0.0:990\"]\n\
                 [backend]\naddress = \"{backend}\"\n\
                 [passive]\nexternal_address = \"{external}\"\nports = \"{PASSIVE}\"\n\
                 [tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                key.display()
            ),
        )
        .expect("write config");
        NsGateway {
            external: external.to_string(),
            config,
            ca: cert,
            _child: None,
            dir,
        }
    }

    /// `ftpsgate doctor` in `role`'s namespace: its NAT rules, one `nft ...` command a line.
    fn doctor_nat_rules(&self, lab: &Lab, role: &str) -> Vec<String> {
        let out = run_ok(
            lab.cmd(role, env!("CARGO_BIN_EXE_ftpsgate"))
                .arg("doctor")
                .arg("--config")
                .arg(&self.config),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.contains(&format!("[ ok ] external address: {}", self.external)),
            "{text}"
        );
        let nat = text
            .split_once("Behind NAT")
            .unwrap_or_else(|| panic!("doctor printed no NAT rules:\n{text}"))
            .1;
        nat.lines()
            .filter_map(|l| l.trim().strip_prefix("nft "))
            .map(str::to_string)
            .collect()
    }

    fn start(&mut self, lab: &Lab, role: &str) {
        let log = std::fs::File::create(self.dir.path().join("ftpsgate.log")).expect("log");
        let child = lab
            .cmd(role, env!("CARGO_BIN_EXE_ftpsgate"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ftpsgate");
        self._child = Some(KillOnDrop(child));
        assert!(
            wait_for_port_in(
                &lab.ns(role),
                SocketAddr::from(([127, 0, 0, 1], 21)),
                Duration::from_secs(10)
            ),
            "ftpsgate did not start:\n{}",
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ftpsgate.log")).unwrap_or_default()
    }
}

/// A gateway in `role`'s namespace in front of `backend`, with every router forwarding the
/// ports `doctor` names, by the rules it prints (the inner router exactly as printed, an outer
/// one to the inner router instead).
fn gateway_behind_nat(lab: &Lab, role: &str, backend: &str, external: &str) -> NsGateway {
    let mut gw = NsGateway::configure(backend, external);
    let rules = gw.doctor_nat_rules(lab, role);
    assert_eq!(rules.len(), 4, "{rules:?}");
    let host = if role == "gw" { GATEWAY_HOST } else { SERVER };
    for rule in &rules {
        lab.nft("router", rule);
        if lab.double {
            lab.nft(
                "edge",
                &rule.replace(
                    &format!("dnat to {host}"),
                    &format!("dnat to {INNER_ROUTER}"),
                ),
            );
        }
    }
    assert!(
        rules
            .iter()
            .any(|r| r.ends_with(&format!("dnat to {host}"))),
        "doctor should name {host}: {rules:?}"
    );
    gw.start(lab, role);
    gw
}

/// What curl in the client namespace did: its exit code and its -v trace.
struct CurlRun {
    code: Option<i32>,
    trace: String,
}

fn curl_in(lab: &Lab, args: &[&str]) -> CurlRun {
    let out = lab
        .cmd("client", "curl")
        .args(["-sS", "-v", "--max-time", "30", "--connect-timeout", "4"])
        .args(["--user", &format!("{USER}:{PASSWORD}")])
        .args(args)
        .output()
        .expect("curl");
    CurlRun {
        code: out.status.code(),
        trace: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `ftpsgate probe` from the client namespace against the public address: passed, report.
fn probe_in(lab: &Lab, args: &[&str]) -> (bool, String) {
    let out = lab
        .cmd("client", env!("CARGO_BIN_EXE_ftpsgate"))
        .args(["probe", "--timeout", "3"])
        .args(args)
        .arg(format!("ftp://{USER}@{PUBLIC}/"))
        .env("FTPSGATE_PROBE_PASSWORD", PASSWORD)
        .output()
        .expect("probe");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{report}");
    (out.status.success(), report)
}

/// Downloads and uploads `file.bin` in each way a client reaches the gateway, and checks both
/// by hash: curl with explicit FTPS over PASV and over EPSV, and with implicit FTPS; ftplib in
/// active mode (PORT, the gateway connecting out through the NAT), and eight ftplib sessions
/// uploading and downloading at once through the one data port. Not curl for that one: the
/// curl of Debian 12 (7.88.1) fails every active FTPS transfer, straight to vsftpd too, with
/// "sa_addr inet_ntop() failed" (curl issue 10622, fixed in 8.0).
fn every_mode(lab: &Lab, gw: &NsGateway, vs: &FtpServer, want: &str) {
    let work = tempfile::tempdir().expect("tempdir");
    let ca = gw.ca.display().to_string();
    let explicit = format!("ftp://{PUBLIC}/");
    let implicit = format!("ftps://{PUBLIC}/");
    let modes: [(&str, &str, &[&str]); 3] = [
        ("pasv", &explicit, &["--ssl-reqd", "--disable-epsv"]),
        ("epsv", &explicit, &["--ssl-reqd"]),
        ("implicit", &implicit, &[]),
    ];
    for (tag, base, flags) in modes {
        let got = work.path().join(format!("{tag}.bin")).display().to_string();
        let url = format!("{base}file.bin");
        let down = curl_in(lab, &[&["--cacert", &ca, "-o", &got, &url], flags].concat());
        assert_eq!(down.code, Some(0), "curl {tag} download:\n{}", down.trace);
        assert_eq!(sha256_file(Path::new(&got)), want, "curl {tag} download");
        let name = format!("curl-{tag}.bin");
        let url = format!("{base}{name}");
        let up = curl_in(lab, &[&["--cacert", &ca, "-T", &got, &url], flags].concat());
        assert_eq!(up.code, Some(0), "curl {tag} upload:\n{}", up.trace);
        assert_eq!(sha256_file(&vs.root.join(&name)), want, "curl {tag} upload");
    }
    ftplib_in(lab, gw, vs, "roundtrip", &["--active"]);
    // Eight sessions at once from the one client address, through the one forwarded port.
    ftplib_in(
        lab,
        gw,
        vs,
        "parallel",
        &["--count", "8", "--size", "300000"],
    );
}

/// One scenario of tests/py/scenarios.py (Python's ftplib, hash-checked both ways) from the
/// client namespace against the public address.
fn ftplib_in(lab: &Lab, gw: &NsGateway, vs: &FtpServer, scenario: &str, extra: &[&str]) {
    if !have("python3") {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/scenarios.py");
    run_ok(&mut bounded(
        PEER_LIMIT,
        lab.cmd("client", "python3")
            .arg(&script)
            .arg(scenario)
            .args(["--host", PUBLIC, "--port", "21", "--port6", "21"])
            .args(["--implicit-port", "990", "--ca"])
            .arg(&gw.ca)
            .args(["--user", USER, "--password", PASSWORD, "--root"])
            .arg(&vs.root)
            .args(["--sizes", &format!("0,1,{SIZE}")])
            .args(extra),
    ));
}

/// The backend's address as the gateway host reaches it.
fn server_21() -> SocketAddrV4 {
    SocketAddrV4::new(SERVER, 21)
}

/// curl using the 227's address (`--no-ftp-skip-pasv-ip`, PASV only) is sent to the FTP
/// server's internal address, which the client has no route to.
fn trusting_the_227_fails(lab: &Lab, url: &str, flags: &[&str]) {
    let trusting = [
        "--disable-epsv",
        "--no-ftp-skip-pasv-ip",
        url,
        "-o",
        "/dev/null",
    ];
    let run = curl_in(lab, &[flags, &trusting].concat());
    assert!(
        run.trace.contains("227 Entering Passive Mode (192,0,2,10,"),
        "{}",
        run.trace
    );
    assert_eq!(run.code, Some(7), "couldn't connect:\n{}", run.trace);
}

#[test]
fn the_problem_vsftpd_behind_nat_without_pasv_address_hands_out_its_internal_address() {
    let Some(lab) = Lab::up(false) else { return };
    let Some(vs) = lab.vsftpd(server_21(), VsTls::None, "") else {
        return;
    };
    vs.put("file.bin", SIZE);
    lab.natlab(&["forward", "21"]);
    let url = format!("ftp://{PUBLIC}/file.bin");
    // A client that trusts the 227 (FileZilla, Commons Net, ftplib by option) is sent to an
    // address the internet has no route to.
    trusting_the_227_fails(&lab, &url, &[]);
    // One that keeps the control connection's address (curl's default) reaches the router,
    // which forwards nothing there; EPSV (port only) the same.
    for flags in [&["--disable-epsv"][..], &[]] {
        let run = curl_in(&lab, &[flags, &[&url, "-o", "/dev/null"]].concat());
        assert!(
            run.trace.contains("Connection refused"),
            "{flags:?}: {}",
            run.trace
        );
        assert_eq!(run.code, Some(7), "{flags:?}:\n{}", run.trace);
    }
}

#[test]
fn the_problem_the_routers_ftp_helper_rewrites_plain_ftp() {
    let Some(lab) = Lab::up(false) else { return };
    let Some(vs) = lab.vsftpd(server_21(), VsTls::None, "") else {
        return;
    };
    let want = vs.put("file.bin", SIZE);
    lab.natlab(&["forward", "21"]);
    lab.natlab(&["helper"]);
    let work = tempfile::tempdir().expect("tempdir");
    for (tag, flags) in [("pasv", &["--disable-epsv"][..]), ("epsv", &[])] {
        let got = work.path().join(format!("{tag}.bin"));
        let got_s = got.display().to_string();
        let url = format!("ftp://{PUBLIC}/file.bin");
        let run = curl_in(
            &lab,
            &[flags, &["--no-ftp-skip-pasv-ip", &url, "-o", &got_s]].concat(),
        );
        assert_eq!(run.code, Some(0), "{tag} through the ALG:\n{}", run.trace);
        assert_eq!(sha256_file(&got), want);
        if tag == "pasv" {
            // nf_nat_ftp wrote the public address into the reply in flight.
            assert!(
                run.trace
                    .contains("227 Entering Passive Mode (203,0,113,1,"),
                "{}",
                run.trace
            );
        }
    }
}

#[test]
fn the_problem_ftps_through_the_same_helper_fails() {
    let Some(lab) = Lab::up(false) else { return };
    let Some(vs) = lab.vsftpd(server_21(), VsTls::Explicit, "") else {
        return;
    };
    vs.put("file.bin", SIZE);
    lab.natlab(&["forward", "21"]);
    lab.natlab(&["helper"]);
    let url = format!("ftp://{PUBLIC}/file.bin");
    // The 227 travels inside TLS: the helper cannot read it, rewrite it, or expect its port.
    trusting_the_227_fails(&lab, &url, &["--ssl-reqd", "-k"]);
    let run = curl_in(&lab, &["--ssl-reqd", "-k", &url, "-o", "/dev/null"]);
    assert!(run.trace.contains("Connection refused"), "{}", run.trace);
    assert_eq!(run.code, Some(7), "{}", run.trace);

    // Forwarding vsftpd's passive range too makes clients that ignore the 227's address work;
    // `probe` names the fault and what to set.
    lab.natlab(&["forward", "40000-40019"]);
    // vsftpd's certificate names localhost and 127.0.0.1, not the public address.
    let (ok, report) = probe_in(&lab, &["--insecure"]);
    assert!(!ok, "{report}");
    has_lines(
        &report,
        &[
            "[FAIL] PASV: 227 names 192.0.2.10:",
            "another address than 203.0.113.1",
            "clients that use the 227's address connect to 192.0.2.10",
            // The probe connects where curl does by default, never where a 227 sends it.
            "[ ok ] PASV data: connected to 203.0.113.1:",
            "vsftpd pasv_address=203.0.113.1",
            "[ ok ] EPSV data:",
        ],
    );
}

#[test]
fn the_fix_ftpsgate_behind_the_nat_serves_curl_lftp_ftplib_and_rclone() {
    let Some(lab) = Lab::up(false) else { return };
    let Some(vs) = lab.vsftpd(server_21(), VsTls::None, "") else {
        return;
    };
    let want = vs.put("file.bin", SIZE);
    let gw = gateway_behind_nat(&lab, "gw", &server_21().to_string(), PUBLIC);
    every_mode(&lab, &gw, &vs, &want);
    let work = tempfile::tempdir().expect("tempdir");

    for (tag, url) in [
        ("explicit", format!("ftp://{PUBLIC}")),
        ("implicit", format!("ftps://{PUBLIC}:990")),
    ] {
        if !have("lftp") {
            break;
        }
        let got = work.path().join(format!("lftp-{tag}.bin"));
        let up = format!("lftp-up-{tag}.bin");
        run_ok(&mut bounded(
            PEER_LIMIT,
            lab.cmd("client", "lftp").arg("-c").arg(format!(
                "set ssl:ca-file {ca}; set ftp:ssl-force true; set ftp:ssl-protect-data true; \
                 set net:max-retries 1; set net:timeout 20; set cmd:fail-exit true; \
                 open -u {USER},{PASSWORD} {url}; get file.bin -o {got}; put {got} -o {up}",
                ca = gw.ca.display(),
                got = got.display()
            )),
        ));
        assert_eq!(sha256_file(&got), want, "lftp {tag} download");
        assert_eq!(sha256_file(&vs.root.join(&up)), want, "lftp {tag} upload");
    }

    for (tag, port, mode) in [("explicit", 21, "explicit_tls"), ("implicit", 990, "tls")] {
        if !have("rclone") {
            break;
        }
        let obscured = run_ok(Command::new("rclone").args(["obscure", PASSWORD])).stdout;
        let remote = format!(
            ":ftp,host={PUBLIC},port={port},user={USER},pass={},{mode}=true,\
             no_check_certificate=true:",
            String::from_utf8_lossy(&obscured).trim()
        );
        let got = work.path().join(format!("rclone-{tag}.bin"));
        let up = format!("rclone-up-{tag}.bin");
        for (from, to) in [
            (format!("{remote}file.bin"), got.display().to_string()),
            (got.display().to_string(), format!("{remote}{up}")),
        ] {
            run_ok(&mut bounded(
                PEER_LIMIT,
                lab.cmd("client", "rclone")
                    .args(["--config", "/dev/null", "--retries", "1"])
                    .args(["--low-level-retries", "1", "copyto", &from, &to]),
            ));
        }
        assert_eq!(sha256_file(&got), want, "rclone {tag} download");
        assert_eq!(sha256_file(&vs.root.join(&up)), want, "rclone {tag} upload");
    }
    let ca = gw.ca.display().to_string();
    let (ok, report) = probe_in(&lab, &["--ca", &ca, "--active"]);
    assert!(ok, "{report}");
    has_lines(
        &report,
        &[
            "[ ok ] PASV: 227 names 203.0.113.1:",
            "[ ok ] download: RETR ",
            "[ ok ] active: the server connected back from 203.0.113.1:",
            // Seen from outside the NAT: one data port for every transfer.
            &format!("[ ok ] passive ports: every passive reply named port {PASSIVE} ("),
            "summary: 0 failed, 0 warned",
        ],
    );
    println!(
        "curl (3 modes), ftplib (PASV, EPSV, active, implicit), lftp and rclone (explicit, implicit) crossed the NAT"
    );
}

#[test]
fn the_fix_holds_behind_a_double_nat() {
    let Some(lab) = Lab::up(true) else { return };
    let Some(vs) = lab.vsftpd(server_21(), VsTls::None, "") else {
        return;
    };
    let want = vs.put("file.bin", SIZE);
    // The external address is the outermost router's; the inner one's is never seen.
    let gw = gateway_behind_nat(&lab, "gw", &server_21().to_string(), PUBLIC);
    every_mode(&lab, &gw, &vs, &want);
}

#[test]
fn the_fix_as_a_sidecar_on_the_ftp_servers_own_host() {
    let Some(lab) = Lab::up(false) else { return };
    let backend = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2121);
    let Some(vs) = lab.vsftpd(backend, VsTls::None, "") else {
        return;
    };
    let want = vs.put("file.bin", SIZE);
    let gw = gateway_behind_nat(&lab, "ftp", &backend.to_string(), PUBLIC);
    every_mode(&lab, &gw, &vs, &want);
}

/// A lab with the gateway set up as doctor says, then the router broken by `rule`, if any.
fn broken_lab(external: &str, rule: Option<&str>) -> Option<(Lab, FtpServer, NsGateway)> {
    let lab = Lab::up(false)?;
    let vs = lab.vsftpd(server_21(), VsTls::None, "")?;
    vs.put("file.bin", SIZE);
    let gw = gateway_behind_nat(&lab, "gw", &server_21().to_string(), external);
    if let Some(rule) = rule {
        lab.nft("router", rule);
    }
    Some((lab, vs, gw))
}

fn curl_download(lab: &Lab, gw: &NsGateway, flags: &[&str]) -> CurlRun {
    let url = format!("ftp://{PUBLIC}/file.bin");
    let ca = gw.ca.display().to_string();
    curl_in(
        lab,
        &[
            &["--ssl-reqd", "--cacert", &ca, "-o", "/dev/null", &url],
            flags,
        ]
        .concat(),
    )
}

#[test]
fn broken_on_purpose_a_dropped_data_port_times_out() {
    let Some((lab, _vs, gw)) = broken_lab(
        PUBLIC,
        Some(&format!(
            "insert rule inet lab forward tcp dport {PASSIVE} drop"
        )),
    ) else {
        return;
    };
    for flags in [&["--disable-epsv"][..], &[]] {
        let run = curl_download(&lab, &gw, flags);
        assert_eq!(run.code, Some(28), "{flags:?}: timed out\n{}", run.trace);
    }
    let ca = gw.ca.display().to_string();
    let (ok, report) = probe_in(&lab, &["--ca", &ca]);
    assert!(!ok, "{report}");
    has_lines(
        &report,
        &[
            "[ ok ] PASV: 227 names 203.0.113.1:",
            "[FAIL] PASV data: 203.0.113.1:",
            ": timed out",
            "a firewall drops connections to 203.0.113.1:",
            "[FAIL] EPSV data:",
        ],
    );
}

#[test]
fn broken_on_purpose_a_rejected_data_port_is_refused() {
    let Some((lab, _vs, gw)) = broken_lab(
        PUBLIC,
        Some(&format!(
            "insert rule inet lab forward tcp dport {PASSIVE} reject with tcp reset"
        )),
    ) else {
        return;
    };
    for flags in [&["--disable-epsv"][..], &[]] {
        let run = curl_download(&lab, &gw, flags);
        assert!(
            run.trace.contains("Connection refused"),
            "{flags:?}: {}",
            run.trace
        );
        assert_eq!(run.code, Some(7), "{flags:?}:\n{}", run.trace);
    }
    let ca = gw.ca.display().to_string();
    let (ok, report) = probe_in(&lab, &["--ca", &ca]);
    assert!(!ok, "{report}");
    has_lines(
        &report,
        &[
            "[FAIL] PASV data: 203.0.113.1:",
            ": refused",
            "nothing listens on 203.0.113.1:",
            "forward the passive range",
            "[FAIL] EPSV data:",
        ],
    );
}

#[test]
fn broken_on_purpose_a_wrong_external_address_sends_clients_nowhere() {
    let Some((lab, _vs, gw)) = broken_lab("203.0.113.99", None) else {
        return;
    };
    // A client that trusts the 227 goes where nothing is.
    let run = curl_download(&lab, &gw, &["--disable-epsv", "--no-ftp-skip-pasv-ip"]);
    assert!(
        run.trace
            .contains("227 Entering Passive Mode (203,0,113,99,"),
        "{}",
        run.trace
    );
    assert!(matches!(run.code, Some(7 | 28)), "{}", run.trace);
    // curl's default (the control connection's address with the 227's port) and EPSV (a port
    // only) still work, which is why such a fault shows up only with some clients.
    for flags in [&["--disable-epsv"][..], &[]] {
        let run = curl_download(&lab, &gw, flags);
        assert_eq!(run.code, Some(0), "{flags:?}:\n{}", run.trace);
    }
    let ca = gw.ca.display().to_string();
    let (ok, report) = probe_in(&lab, &["--ca", &ca]);
    assert!(!ok, "{report}");
    has_lines(
        &report,
        &[
            "[FAIL] PASV: 227 names 203.0.113.99:",
            "another address than 203.0.113.1",
            "clients that use the 227's address connect to 203.0.113.99",
            "[ ok ] PASV data: connected to 203.0.113.1:",
            "passive.external_address = \"203.0.113.1\"",
            "[ ok ] EPSV data:",
        ],
    );
}
