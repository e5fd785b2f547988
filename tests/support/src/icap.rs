//! An ICAP server (RFC 3507) that really scans, for upload scanning: ClamAV's daemon behind
//! c-icap's `virus_scan` service (Debian's `clamav-daemon`, `c-icap` and
//! `libc-icap-mod-virus-scan`), all offline and on loopback, so the gateway's ICAP client is
//! judged by the server operators run rather than by a mock that agrees with it.
//!
//! clamd loads only a database the bed writes: one `.ndb` signature, the hex of a marker drawn
//! at random ([`IcapBed::marker`]), so a file is "infected" exactly when a test plants the
//! marker in it, and no official database (nor freshclam, nor the network) is needed. clamd
//! answers on a unix socket in the bed's directory, c-icap on `127.0.0.1` and a free port, both
//! in the foreground with configs of the bed's making, their logs kept for failure messages.
//!
//! What c-icap answers (docs/TESTING.md, "ICAP test bed", has the details):
//! clean → `204 Unmodified` when the request allows 204 (else `200 OK` echoing the request);
//! marker → `200 OK` with `X-Infection-Found` and an encapsulated `HTTP/1.0 403 Forbidden`
//! page; clamd unreachable → `500 Server error`; larger than `MaxObjectSize` (announced by
//! the encapsulated `Content-Length`) → `204` unscanned.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::net::free_port;
use crate::process::{eventually, have, KillOnDrop};

/// The c-icap service the bed configures (`Service virus_scan virus_scan.so`): the path of
/// [`IcapBed::url`].
pub const SERVICE: &str = "virus_scan";

/// The name clamd gives the bed's signature in its answers. clamd appends `.UNOFFICIAL` to
/// every signature that is not from a signed official database.
pub const THREAT: &str = "Ftpsgate.Test.Marker.UNOFFICIAL";

/// The ISTag c-icap's `virus_scan` advertises when no antivirus engine registered (clamd was
/// unreachable when c-icap started): `CI0001-` and the base64 of the MD5 of nothing. Such a
/// c-icap answers 204 to everything, unscanned, so the bed refuses to hand it out.
const ISTAG_WITHOUT_ENGINE: &str = "\"CI0001-1B2M2Y8AsgTpgAmY7PhCfgAA\"";

/// Generous bounds: the machine running the tests may be small and loaded.
const CLAMD_START: Duration = Duration::from_secs(60);
const ICAP_START: Duration = Duration::from_secs(30);

/// How a test wants the bed.
#[derive(Debug, Clone, Copy)]
pub struct IcapOptions {
    /// `virus_scan.MaxObjectSize`, in bytes: an object announced larger than this is passed
    /// unscanned (204). The default, 256 MiB, is well above the tests' 64 MiB files.
    pub max_object_size: u64,
}

impl Default for IcapOptions {
    fn default() -> Self {
        IcapOptions {
            max_object_size: 256 * 1024 * 1024,
        }
    }
}

/// A running clamd and c-icap, both killed on drop.
pub struct IcapBed {
    /// The 32 random bytes clamd's only signature matches.
    pub marker: Vec<u8>,
    /// `icap://127.0.0.1:PORT/virus_scan`.
    pub url: String,
    /// Where c-icap listens.
    pub addr: SocketAddr,
    /// `virus_scan.MaxObjectSize` in bytes.
    pub max_object_size: u64,
    // c-icap before clamd before the directory: fields drop in order.
    icap: Option<GroupOnDrop>,
    clamd: Option<KillOnDrop>,
    dir: TempDir,
}

/// The packages' files the bed needs besides the programs: c-icap's modules directory (it
/// holds `virus_scan.so` and `clamd_mod.so`), its magic file and the service's templates.
struct Installed {
    clamd: PathBuf,
    modules: PathBuf,
    magic: PathBuf,
    templates: PathBuf,
}

impl IcapBed {
    /// The bed with its defaults; `None` (skip) without the packages on a laptop, a panic in
    /// CI.
    pub fn start() -> Option<IcapBed> {
        IcapBed::start_with(IcapOptions::default())
    }

    pub fn start_with(options: IcapOptions) -> Option<IcapBed> {
        let installed = installed()?;
        let dir = tempfile::Builder::new()
            .prefix("ftpsgate-icap-")
            .tempdir()
            .expect("tempdir");
        let mut rng = fastrand::Rng::new();
        let marker: Vec<u8> = (0..32).map(|_| rng.u8(..)).collect();
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db).expect("db dir");
        std::fs::create_dir_all(dir.path().join("clamd-tmp")).expect("clamd tmp");
        std::fs::create_dir_all(dir.path().join("icap-tmp")).expect("c-icap tmp");
        // Name:TargetType(0: any file):Offset(*: anywhere):HexSignature
        let hex: String = marker.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(
            db.join("marker.ndb"),
            format!("Ftpsgate.Test.Marker:0:*:{hex}\n"),
        )
        .expect("marker.ndb");
        std::fs::write(dir.path().join("clamd.conf"), clamd_conf(dir.path())).expect("clamd.conf");
        let port = free_port();
        std::fs::write(
            dir.path().join("c-icap.conf"),
            icap_conf(dir.path(), port, &installed, options.max_object_size),
        )
        .expect("c-icap.conf");
        let mut bed = IcapBed {
            marker,
            url: format!("icap://127.0.0.1:{port}/{SERVICE}"),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            max_object_size: options.max_object_size,
            icap: None,
            clamd: None,
            dir,
        };
        // clamd first: c-icap registers its clamd engine only if clamd answers when c-icap
        // starts, and without an engine it passes everything unscanned.
        bed.start_clamd_with(&installed.clamd);
        bed.start_icap();
        Some(bed)
    }

    /// The bed's directory (configs, database, logs, both programs' temporary files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// clamd's unix socket (`clamd_mod.ClamdSocket`).
    pub fn clamd_socket(&self) -> PathBuf {
        self.dir.path().join("clamd.sock")
    }

    /// Starts c-icap (again) on the bed's port and waits until its `virus_scan` service
    /// answers OPTIONS with an engine behind it.
    pub fn start_icap(&mut self) {
        assert!(self.icap.is_none(), "c-icap is already running");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("c-icap.out"))
            .expect("c-icap.out");
        let child = Command::new("c-icap")
            // -N: in the foreground, the process the bed kills.
            .arg("-N")
            .arg("-f")
            .arg(self.dir.path().join("c-icap.conf"))
            // c-icap forks its servers: a group of their own, killed together.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("c-icap.out"))
            .stderr(out)
            .spawn()
            .expect("start c-icap");
        self.icap = Some(GroupOnDrop(child));
        let mut last = String::new();
        let ready = eventually(ICAP_START, || {
            if let Some(status) = self.icap.as_mut().and_then(|c| c.0.try_wait().ok()?) {
                panic!("c-icap exited ({status}):\n{}", self.logs());
            }
            match self.options() {
                Ok(headers) => {
                    last = headers;
                    last.starts_with("ICAP/1.0 200")
                }
                Err(e) => {
                    last = e.to_string();
                    false
                }
            }
        });
        assert!(
            ready,
            "c-icap did not answer OPTIONS ({last}):\n{}",
            self.logs()
        );
        assert!(
            !last.contains(ISTAG_WITHOUT_ENGINE),
            "c-icap's virus_scan has no engine (clamd unreachable at start?):\n{last}\n{}",
            self.logs()
        );
    }

    /// Kills c-icap and its servers, and waits until the port refuses connections.
    pub fn stop_icap(&mut self) {
        drop(self.icap.take());
        let closed = eventually(Duration::from_secs(10), || {
            TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err()
        });
        assert!(closed, "c-icap still listens on {}", self.addr);
    }

    /// Starts clamd (again) and waits until it answers PING.
    pub fn start_clamd(&mut self) {
        let installed = installed().expect("the packages were there at start");
        self.start_clamd_with(&installed.clamd);
    }

    fn start_clamd_with(&mut self, clamd: &Path) {
        assert!(self.clamd.is_none(), "clamd is already running");
        let socket = self.clamd_socket();
        // A killed clamd leaves its socket behind; a new one would refuse to bind it.
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("clamd.log"))
            .expect("clamd.log");
        let child = Command::new(clamd)
            .arg("-c")
            .arg(self.dir.path().join("clamd.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clamd.log"))
            .stderr(log)
            .spawn()
            .expect("start clamd");
        let mut child = KillOnDrop(child);
        let start = Instant::now();
        let ready = eventually(CLAMD_START, || {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!("clamd exited ({status}):\n{}", self.logs());
            }
            clamd_ping(&socket)
        });
        assert!(
            ready,
            "clamd did not answer PING within {CLAMD_START:?}:\n{}",
            self.logs()
        );
        eprintln!("clamd ready in {:?}", start.elapsed());
        self.clamd = Some(child);
    }

    /// Kills clamd; c-icap keeps running and answers 500 until clamd is back.
    pub fn stop_clamd(&mut self) {
        drop(self.clamd.take());
        let _ = std::fs::remove_file(self.clamd_socket());
    }

    /// One OPTIONS request to the service on a connection of its own: the response's status
    /// line and headers.
    pub fn options(&self) -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        options_on(&mut stream, &self.url)
    }

    /// clamd's log and c-icap's (server log, access log, its own output), for failure
    /// messages.
    pub fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "--- clamd.log\n{}--- c-icap server.log\n{}--- c-icap access.log\n{}--- c-icap output\n{}",
            read("clamd.log"),
            read("server.log"),
            read("access.log"),
            read("c-icap.out"),
        )
    }

    /// c-icap's server log alone (errors, `VIRUS DETECTED` lines, objects passed unscanned).
    pub fn icap_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

/// Sends OPTIONS for `url` on `stream` and reads the response headers (OPTIONS answers have
/// `Encapsulated: null-body=0`, so the headers are all of it and the connection can carry the
/// next request).
pub fn options_on(stream: &mut TcpStream, url: &str) -> std::io::Result<String> {
    let host = url
        .trim_start_matches("icap://")
        .split('/')
        .next()
        .unwrap_or_default();
    write!(
        stream,
        "OPTIONS {url} ICAP/1.0\r\nHost: {host}\r\nEncapsulated: null-body=0\r\n\r\n"
    )?;
    let mut headers = Vec::new();
    let mut byte = [0u8; 1];
    while !headers.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "closed after {:?}",
                    String::from_utf8_lossy(&headers).into_owned()
                ),
            ));
        }
        headers.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&headers).into_owned())
}

/// c-icap and the servers it forked, killed together (SIGKILL to the process group) and the
/// main process reaped, even when a test panics first.
struct GroupOnDrop(Child);

impl Drop for GroupOnDrop {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// clamd's `zPING`: true once it answers `PONG`.
fn clamd_ping(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(b"zPING\0").is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer.starts_with(b"PONG")
}

/// The programs and files of the three packages; `None` (skip) on a laptop without them, a
/// panic in CI.
fn installed() -> Option<Installed> {
    if !have("c-icap") || !have("c-icap-client") {
        return None;
    }
    // clamd is in /usr/sbin, often not on a user's PATH.
    let clamd = if Path::new("/usr/sbin/clamd").exists() {
        PathBuf::from("/usr/sbin/clamd")
    } else if have("clamd") {
        PathBuf::from("clamd")
    } else {
        return None;
    };
    // Debian's multiarch directory (/usr/lib/x86_64-linux-gnu/c_icap), or a plain one.
    let modules = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("c_icap"))
        .chain([PathBuf::from("/usr/lib/c_icap")])
        .find(|d| d.join("virus_scan.so").exists() && d.join("clamd_mod.so").exists());
    let Some(modules) = modules else {
        missing("c-icap's virus_scan.so and clamd_mod.so");
        return None;
    };
    let magic = PathBuf::from("/etc/c-icap/c-icap.magic");
    let templates = PathBuf::from("/usr/share/c_icap/templates");
    if !magic.exists() || !templates.join("virus_scan").exists() {
        missing("c-icap's magic file and virus_scan templates");
        return None;
    }
    Some(Installed {
        clamd,
        modules,
        magic,
        templates,
    })
}

/// Fails the test in CI, and says loudly on a laptop (where the caller then skips), that
/// `what` is missing.
fn missing(what: &str) {
    let how = "apt-get install clamav-daemon c-icap libc-icap-mod-virus-scan";
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{what} is required in CI ({how})"
    );
    eprintln!("\n!!!!! SKIPPED: {what} is missing ({how}) !!!!!\n");
}

/// clamd in the foreground on a unix socket of `dir`, with only `dir/db` (the marker) and no
/// bytecode, no self-check (nothing reloads), and size limits above any object c-icap sends
/// it, so c-icap's `MaxObjectSize` is the only limit. No `User`: it runs as whoever runs the
/// tests. No `LogFile`: in the foreground clamd writes its log to its output, which the bed
/// keeps in `clamd.log`.
fn clamd_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "Foreground yes\n\
         LocalSocket {d}/clamd.sock\n\
         LocalSocketMode 600\n\
         DatabaseDirectory {d}/db\n\
         TemporaryDirectory {d}/clamd-tmp\n\
         PidFile {d}/clamd.pid\n\
         LogTime yes\n\
         LogVerbose yes\n\
         Bytecode no\n\
         SelfCheck 0\n\
         MaxThreads 4\n\
         MaxFileSize 1000M\n\
         MaxScanSize 1000M\n\
         StreamMaxLength 1000M\n"
    )
}

/// c-icap in the foreground on 127.0.0.1:`port`, with the `virus_scan` service on clamd's
/// socket. `StartSendPercentDataAfter` is above `MaxObjectSize` on purpose: at its default (0)
/// c-icap sends the response headers before the scan ends, and then cannot report an
/// infection any more (it answers `200 OK` with the request and an empty body, without
/// `X-Infection-Found`). `SendPercentData 0`: no byte leaves c-icap before the verdict. Every
/// file type group is scanned, so no random test file is skipped for its magic.
fn icap_conf(dir: &Path, port: u16, installed: &Installed, max_object_size: u64) -> String {
    let d = dir.display();
    let modules = installed.modules.display();
    format!(
        "PidFile {d}/c-icap.pid\n\
         CommandsSocket {d}/c-icap.ctl\n\
         Port 127.0.0.1:{port}\n\
         ServerName ftpsgate-test-icap\n\
         Timeout 300\n\
         MaxKeepAliveRequests 100\n\
         KeepAliveTimeout 600\n\
         StartServers 1\n\
         MaxServers 2\n\
         ThreadsPerChild 16\n\
         MinSpareThreads 4\n\
         MaxSpareThreads 16\n\
         MaxRequestsPerChild 0\n\
         TmpDir {d}/icap-tmp\n\
         MaxMemObject 131072\n\
         DebugLevel 1\n\
         Pipelining on\n\
         ModulesDir {modules}\n\
         ServicesDir {modules}\n\
         TemplateDir {templates}/\n\
         TemplateDefaultLanguage en\n\
         LoadMagicFile {magic}\n\
         ServerLog {d}/server.log\n\
         AccessLog {d}/access.log\n\
         Module common clamd_mod.so\n\
         clamd_mod.ClamdSocket {d}/clamd.sock\n\
         Service {SERVICE} virus_scan.so\n\
         virus_scan.DefaultEngine clamd\n\
         virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE DOCUMENT GRAPHICS STREAM\n\
         virus_scan.SendPercentData 0\n\
         virus_scan.StartSendPercentDataAfter {after}\n\
         virus_scan.MaxObjectSize {max_object_size}\n\
         virus_scan.Allow204Responces on\n\
         virus_scan.PassOnError off\n",
        templates = installed.templates.display(),
        magic = installed.magic.display(),
        after = max_object_size.saturating_mul(2),
    )
}
