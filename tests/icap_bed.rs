//! The ICAP test bed itself (`support::icap`: clamd with a one-marker database behind c-icap's
//! `virus_scan`), proven with c-icap's own client, `c-icap-client`, before the gateway's ICAP
//! client is built on it: if these pass, a gateway test that fails is the gateway's.
//!
//! `c-icap-client -f FILE -req URL` sends a REQMOD with the file as the request body, the
//! preview size taken from the service's OPTIONS (1024), and `Allow: 204` unless `-no204`;
//! `-v` prints the ICAP response headers and the encapsulated HTTP headers, `-o` writes the
//! encapsulated body (a new file: it refuses an existing one).
//!
//! What the bed answers, asserted below: clean → `ICAP/1.0 204 Unmodified` (with `-no204`,
//! `ICAP/1.0 200 OK` and the request echoed byte for byte); marker anywhere → `ICAP/1.0 200
//! OK`, `X-Infection-Found: Type=0; Resolution=2; Threat=Ftpsgate.Test.Marker.UNOFFICIAL;`,
//! and an encapsulated `HTTP/1.0 403 Forbidden` "VIRUS FOUND" page instead of the request.
//!
//! Each run is bounded in time (`timeout`); 64 MiB through c-icap takes about a second here,
//! and no speed is asserted.

// A test, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::icap::{options_on, IcapBed, IcapOptions, THREAT};
use support::peers::bounded;
use support::process::have;
use support::MIB;

/// Generous: one 64 MiB REQMOD on a small, loaded machine.
const CLIENT_LIMIT: Duration = Duration::from_secs(120);

/// What `c-icap-client` printed and wrote.
struct Reply {
    /// Its output: `-v`'s headers (and `-d 3`'s status lines when asked).
    printed: String,
    /// The encapsulated body it wrote (`-o`), empty when the answer had none.
    body: Vec<u8>,
    /// Whether it exited 0 (it does even on a 500; 255 when it cannot connect).
    ok: bool,
}

impl Reply {
    fn has(&self, line: &str) -> bool {
        self.printed.lines().any(|l| l.trim() == line)
    }
}

/// One REQMOD of `file` through the bed's service with `c-icap-client`, `extra` flags added.
fn reqmod(bed: &IcapBed, file: &Path, extra: &[&str]) -> Reply {
    let out = out_path(file);
    let _ = std::fs::remove_file(&out);
    let started = Instant::now();
    let run = bounded(
        CLIENT_LIMIT,
        Command::new("c-icap-client")
            .args(["-i", "127.0.0.1", "-p", &bed.addr.port().to_string()])
            .args(["-s", support::icap::SERVICE, "-f"])
            .arg(file)
            .args(["-req", "http://ftpsgate.test/upload", "-v", "-o"])
            .arg(&out)
            .args(extra),
    )
    .output()
    .expect("run c-icap-client");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert_ne!(
        run.status.code(),
        Some(124),
        "c-icap-client ran over {CLIENT_LIMIT:?}:\n{printed}\n{}",
        bed.logs()
    );
    eprintln!(
        "c-icap-client {} ({} bytes) {extra:?}: {:?}",
        file.display(),
        std::fs::metadata(file).map(|m| m.len()).unwrap_or(0),
        started.elapsed()
    );
    let body = std::fs::read(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    Reply {
        printed,
        body,
        ok: run.status.success(),
    }
}

fn out_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap().to_os_string();
    name.push(".out");
    file.with_file_name(name)
}

/// `size` random bytes (a seed of their own each run, so no file is ever the same).
fn random(size: usize) -> Vec<u8> {
    let mut data = vec![0u8; size];
    fastrand::Rng::new().fill(&mut data);
    data
}

/// The tools the tests run besides the bed; `None` (skip) without them.
fn bed_with(options: IcapOptions) -> Option<IcapBed> {
    if !have("timeout") {
        return None;
    }
    IcapBed::start_with(options)
}

fn assert_clean(bed: &IcapBed, reply: &Reply) {
    assert!(
        reply.ok && reply.has("ICAP/1.0 204 Unmodified"),
        "a clean file was not answered 204:\n{}\n{}",
        reply.printed,
        bed.logs()
    );
    assert!(
        !reply.printed.contains("X-Infection-Found"),
        "{}",
        reply.printed
    );
}

fn assert_infected(bed: &IcapBed, reply: &Reply, where_: &str) {
    let infection = format!("X-Infection-Found: Type=0; Resolution=2; Threat={THREAT};");
    assert!(
        reply.ok
            && reply.has("ICAP/1.0 200 OK")
            && reply.has(&infection)
            && reply.has("HTTP/1.0 403 Forbidden"),
        "the marker at the {where_} was not flagged:\n{}\n{}",
        reply.printed,
        bed.logs()
    );
    // The request is replaced by a response: c-icap's "VIRUS FOUND" page naming the threat.
    let page = String::from_utf8_lossy(&reply.body);
    assert!(
        page.contains("VIRUS FOUND") && page.contains(THREAT),
        "no block page for the marker at the {where_}:\n{page}"
    );
    assert!(reply.printed.contains("Encapsulated: res-hdr=0, res-body="));
}

/// OPTIONS: what the gateway's client learns before its first REQMOD (preview size, 204
/// outside previews, the ISTag), and two requests on one connection, as c-icap keeps
/// connections alive (`Connection: keep-alive` on every answer, 204s and 403s included).
#[test]
fn options_advertise_preview_204_and_keep_alive() {
    let Some(bed) = bed_with(IcapOptions::default()) else {
        return;
    };
    let headers = bed.options().unwrap();
    for line in [
        "ICAP/1.0 200 OK",
        "Methods: RESPMOD, REQMOD",
        "Preview: 1024",
        "Transfer-Preview: *",
        "Allow: 204",
        "Options-TTL: 3600",
        "Encapsulated: null-body=0",
    ] {
        assert!(
            headers.lines().any(|l| l == line),
            "{line:?} missing:\n{headers}"
        );
    }
    let istag = headers
        .lines()
        .find_map(|l| l.strip_prefix("ISTag: "))
        .unwrap_or_else(|| panic!("no ISTag:\n{headers}"));
    assert!(istag.starts_with("\"CI0001-"), "{istag}");

    let mut stream = TcpStream::connect(bed.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let first = options_on(&mut stream, &bed.url).unwrap();
    let second = options_on(&mut stream, &bed.url).unwrap();
    assert!(first.starts_with("ICAP/1.0 200 OK"), "{first}");
    assert!(second.starts_with("ICAP/1.0 200 OK"), "{second}");
    assert!(
        second.contains(&format!("ISTag: {istag}")),
        "the ISTag changed on one connection:\n{first}\n{second}"
    );
}

/// A clean 1 MiB file: 204 when the request allows it (the gateway's case: nothing comes
/// back, the spooled file goes on), and with `-no204` a 200 echoing the request whole.
#[test]
fn clean_file_comes_back_clean() {
    let Some(bed) = bed_with(IcapOptions::default()) else {
        return;
    };
    let file = bed.dir().join("clean-1m.bin");
    let data = random(MIB);
    std::fs::write(&file, &data).unwrap();

    assert_clean(&bed, &reqmod(&bed, &file, &[]));

    let echoed = reqmod(&bed, &file, &["-no204"]);
    assert!(
        echoed.ok && echoed.has("ICAP/1.0 200 OK"),
        "{}\n{}",
        echoed.printed,
        bed.logs()
    );
    assert!(!echoed.printed.contains("X-Infection-Found"));
    assert!(
        echoed
            .printed
            .contains("Encapsulated: req-hdr=0, req-body="),
        "{}",
        echoed.printed
    );
    assert!(echoed.body == data, "the echoed body differs from the file");
    assert!(!bed.icap_log().contains("VIRUS DETECTED"), "{}", bed.logs());
}

/// The marker at the start, in the middle and at the very end of a 64 MiB file is flagged
/// (whatever part of the body it is in: the preview, the middle, the last chunk), and the same
/// 64 MiB without it is clean, so the marker is what c-icap reacts to.
#[test]
fn marker_anywhere_in_64_mib_is_flagged() {
    let Some(bed) = bed_with(IcapOptions::default()) else {
        return;
    };
    let size = 64 * MIB;
    let base = random(size);
    let file = bed.dir().join("upload-64m.bin");

    std::fs::write(&file, &base).unwrap();
    assert_clean(&bed, &reqmod(&bed, &file, &[]));

    let m = bed.marker.len();
    for (where_, at) in [
        ("start", 0),
        ("middle", size / 2 - m / 2 + 7),
        ("end", size - m),
    ] {
        let mut data = base.clone();
        data[at..at + m].copy_from_slice(&bed.marker);
        std::fs::write(&file, &data).unwrap();
        assert_infected(&bed, &reqmod(&bed, &file, &[]), where_);
    }
    let detections = bed.icap_log().matches("VIRUS DETECTED").count();
    assert_eq!(detections, 3, "{}", bed.logs());
}

/// With c-icap stopped the client cannot connect at all (exit 255, "Failed to connect"); once
/// it is started again on the same port it scans again, and clamd, untouched, still flags.
#[test]
fn stopped_icap_cannot_be_reached_then_comes_back() {
    let Some(mut bed) = bed_with(IcapOptions::default()) else {
        return;
    };
    let file = bed.dir().join("marked.bin");
    let mut data = random(64 * 1024);
    data[1000..1000 + bed.marker.len()].copy_from_slice(&bed.marker);
    std::fs::write(&file, &data).unwrap();

    bed.stop_icap();
    let refused = reqmod(&bed, &file, &[]);
    assert!(
        !refused.ok && refused.printed.contains("Failed to connect to icap server"),
        "{}",
        refused.printed
    );
    assert_eq!(
        bed.options().unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );

    bed.start_icap();
    assert_infected(&bed, &reqmod(&bed, &file, &[]), "start (after a restart)");
}

/// clamd gone while c-icap runs: c-icap cannot scan and answers `500 Server error` (with
/// `Connection: close`), it does not pass the file; clamd back, and the next request is
/// scanned again without restarting c-icap (clamd_mod connects to clamd per scan).
#[test]
fn clamd_stopped_is_a_500_not_a_pass() {
    let Some(mut bed) = bed_with(IcapOptions::default()) else {
        return;
    };
    // Smaller than the preview: the whole file is the preview, and c-icap-client's `-d 3`
    // prints the status it got for it (its `-v` prints no headers for a 500).
    let file = bed.dir().join("small.bin");
    let mut data = random(1000);
    data[10..10 + bed.marker.len()].copy_from_slice(&bed.marker);
    std::fs::write(&file, &data).unwrap();

    bed.stop_clamd();
    let failed = reqmod(&bed, &file, &["-d", "3"]);
    assert!(
        failed
            .printed
            .contains("Preview response was with status: 500"),
        "{}\n{}",
        failed.printed,
        bed.logs()
    );
    assert!(
        failed.body.is_empty(),
        "c-icap passed data it could not scan"
    );
    assert!(
        bed.icap_log().contains("Failed to scan web object"),
        "{}",
        bed.logs()
    );

    bed.start_clamd();
    assert_infected(&bed, &reqmod(&bed, &file, &[]), "start (clamd back)");
}

/// Past `virus_scan.MaxObjectSize` c-icap does not scan: an object whose encapsulated
/// `Content-Length` is larger is answered 204 right after the preview, marker and all (its
/// log says "Bigger than max scannable file size ... Allow it"). The gateway cannot tell that
/// 204 from a clean verdict, so it must refuse such files itself (docs/TESTING.md).
#[test]
fn past_max_object_size_passes_unscanned() {
    let Some(bed) = bed_with(IcapOptions {
        max_object_size: MIB as u64,
    }) else {
        return;
    };
    let file = bed.dir().join("big.bin");
    let mut data = random(2 * MIB);
    let at = MIB + 12345;
    data[at..at + bed.marker.len()].copy_from_slice(&bed.marker);
    std::fs::write(&file, &data).unwrap();

    let reply = reqmod(&bed, &file, &[]);
    assert_clean(&bed, &reply);
    assert!(
        bed.icap_log()
            .contains("Bigger than max scannable file size (1048576). Allow it"),
        "{}",
        bed.logs()
    );
    assert!(!bed.icap_log().contains("VIRUS DETECTED"), "{}", bed.logs());

    // At the limit it is scanned: the same marker in a file of exactly MaxObjectSize.
    let mut data = random(MIB);
    data[MIB / 2..MIB / 2 + bed.marker.len()].copy_from_slice(&bed.marker);
    std::fs::write(&file, &data).unwrap();
    assert_infected(&bed, &reqmod(&bed, &file, &[]), "middle (at the limit)");
}
