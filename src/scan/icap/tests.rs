//! The client against the real scanner (`support::icap::IcapBed`: c-icap's `virus_scan` with
//! clamd behind it, docs/TESTING.md "ICAP test bed"), and against scripted servers on loopback
//! for what c-icap never does: stay silent, answer garbage, close a kept-alive connection
//! without a word. No test asserts a speed; the bounds are generous, for a loaded machine.

use std::time::Duration;

use support::icap::{IcapBed, THREAT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// The client's bound in the tests that expect an answer: far above a 64 MiB scan here.
const LIMIT: Duration = Duration::from_secs(120);
const MIB: usize = 1024 * 1024;

fn client_of(bed: &IcapBed) -> IcapClient {
    IcapClient::new(bed.url.parse().expect("bed url"), LIMIT)
}

fn random(len: usize) -> Vec<u8> {
    let mut data = vec![0; len];
    fastrand::Rng::with_seed(len as u64).fill(&mut data);
    data
}

async fn scan(client: &IcapClient, data: &[u8]) -> Result<Verdict, ScanError> {
    client
        .scan("/uploads/report 2026.pdf", data.len() as u64, data)
        .await
}

fn infected() -> Verdict {
    Verdict::Infected {
        threat: THREAT.to_string(),
    }
}

#[tokio::test]
async fn a_clean_mib_is_clean() {
    let Some(bed) = IcapBed::start() else { return };
    let client = client_of(&bed);
    assert_eq!(
        scan(&client, &random(MIB)).await.expect("scan"),
        Verdict::Clean
    );
    assert!(client.istag().is_some_and(|t| t.starts_with("\"CI0001-")));
}

#[tokio::test]
async fn the_marker_at_the_start_middle_and_end_of_64_mib_is_found() {
    let Some(bed) = IcapBed::start() else { return };
    let client = client_of(&bed);
    let clean = random(64 * MIB);
    let m = bed.marker.len();
    for at in [0, 32 * MIB + 7, 64 * MIB - m] {
        let mut data = clean.clone();
        data[at..at + m].copy_from_slice(&bed.marker);
        let verdict = scan(&client, &data).await;
        assert_eq!(verdict.expect("scan"), infected(), "marker at {at}");
    }
    // From a spool file, as the session hands it over.
    let mut data = clean;
    data[MIB..MIB + m].copy_from_slice(&bed.marker);
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &data).expect("write");
    let spool = tokio::fs::File::open(file.path()).await.expect("open");
    let verdict = client.scan("/big.bin", data.len() as u64, spool).await;
    assert_eq!(verdict.expect("scan"), infected());
}

/// c-icap asks a 1024-byte preview: smaller files go whole with `ieof` and get their verdict
/// at once; one byte more takes the `100 Continue` path.
#[tokio::test]
async fn files_within_the_preview_and_just_past_it() {
    let Some(bed) = IcapBed::start() else { return };
    let client = client_of(&bed);
    for len in [0, 1, 100, 1023, 1024, 1025] {
        assert_eq!(
            scan(&client, &random(len)).await.expect("scan"),
            Verdict::Clean,
            "{len} bytes"
        );
    }
    for (len, at) in [(40, 0), (100, 50), (1024, 992), (1025, 993)] {
        let mut data = random(len);
        data[at..at + bed.marker.len()].copy_from_slice(&bed.marker);
        assert_eq!(
            scan(&client, &data).await.expect("scan"),
            infected(),
            "{len} bytes"
        );
    }
}

#[tokio::test]
async fn one_connection_serves_scan_after_scan_and_survives_a_restart() {
    let Some(mut bed) = IcapBed::start() else {
        return;
    };
    let client = client_of(&bed);
    for _ in 0..3 {
        assert_eq!(
            scan(&client, &random(5000)).await.expect("scan"),
            Verdict::Clean
        );
    }
    // OPTIONS and three REQMODs on one connection, and the kernel knows of no other.
    assert_eq!(client.connections_opened(), 1);
    assert_eq!(established_to(bed.addr.port()), 1);

    // Every pooled connection dies with c-icap; the next scan opens one new connection.
    bed.stop_icap();
    bed.start_icap();
    assert_eq!(
        scan(&client, &random(5000)).await.expect("scan"),
        Verdict::Clean
    );
    assert_eq!(client.connections_opened(), 2);
    assert_eq!(
        scan(&client, &random(50)).await.expect("scan"),
        Verdict::Clean
    );
    assert_eq!(client.connections_opened(), 2);
    assert_eq!(established_to(bed.addr.port()), 1);
}

/// Established TCP connections to `port` on this host, as the kernel lists them
/// (`/proc/net/tcp`): how many connections the client really holds, not what it says.
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let remote = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        // sl, local_address, rem_address, st (01: ESTABLISHED)
        .filter(|f| f.get(2).is_some_and(|r| r.ends_with(&remote)) && f.get(3) == Some(&"01"))
        .count()
}

#[tokio::test]
async fn c_icap_stopped_is_unreachable() {
    let Some(mut bed) = IcapBed::start() else {
        return;
    };
    let used = client_of(&bed);
    assert_eq!(scan(&used, b"x").await.expect("scan"), Verdict::Clean);
    bed.stop_icap();
    for client in [used, client_of(&bed)] {
        let e = scan(&client, &random(5000)).await.expect_err("no scanner");
        assert!(matches!(e, ScanError::Unreachable { .. }), "{e:?}");
    }
}

#[tokio::test]
async fn clamd_stopped_is_the_server_error() {
    let Some(mut bed) = IcapBed::start() else {
        return;
    };
    let client = client_of(&bed);
    assert_eq!(scan(&client, b"x").await.expect("scan"), Verdict::Clean);
    bed.stop_clamd();
    for len in [100, 5000] {
        let e = scan(&client, &random(len)).await.expect_err("no engine");
        assert!(
            matches!(e, ScanError::Status { status: 500, .. }),
            "{len} bytes: {e:?}\n{}",
            bed.logs()
        );
    }
    bed.start_clamd();
    assert_eq!(
        scan(&client, &random(5000)).await.expect("scan"),
        Verdict::Clean
    );
}

// Scripted servers.

/// c-icap's OPTIONS answer, shortened.
const OPTIONS: &[u8] = b"ICAP/1.0 200 OK\r\nMethods: RESPMOD, REQMOD\r\nISTag: \"T1\"\r\n\
Preview: 1024\r\nAllow: 204\r\nEncapsulated: null-body=0\r\n\r\n";
const CLEAN: &[u8] = b"ICAP/1.0 204 Unmodified\r\nConnection: keep-alive\r\n\r\n";

/// What a scripted server does with the `request`th request on its `conn`th connection.
enum Act {
    Answer(&'static [u8]),
    /// Closes the connection without answering.
    Close,
    /// Keeps the connection open and never answers.
    Silent,
    /// Sends a head that never ends.
    Endless,
}

/// A server on loopback acting as `script` says; its URL.
async fn scripted(script: fn(usize, usize) -> Act) -> IcapUrl {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        for conn in 0.. {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve(stream, conn, script));
        }
    });
    format!("icap://127.0.0.1:{port}/scan")
        .parse()
        .expect("url")
}

async fn serve(mut stream: TcpStream, conn: usize, script: fn(usize, usize) -> Act) {
    for request in 0.. {
        if !read_request(&mut stream).await {
            return;
        }
        match script(conn, request) {
            Act::Answer(bytes) => {
                if stream.write_all(bytes).await.is_err() {
                    return;
                }
            }
            Act::Close => return,
            Act::Silent => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Act::Endless => {
                let _ = stream.write_all(b"ICAP/1.0 200 OK\r\nX-Pad: ").await;
                while stream.write_all(&[b'a'; 8192]).await.is_ok() {}
                return;
            }
        }
    }
}

/// Reads one request of the client's: OPTIONS is a head; a REQMOD here fits its preview, so
/// it ends with `0; ieof`. False when the client closed.
async fn read_request(stream: &mut TcpStream) -> bool {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let done = if seen.starts_with(b"REQMOD") {
            seen.ends_with(b"0; ieof\r\n\r\n")
        } else {
            seen.ends_with(b"\r\n\r\n")
        };
        if done {
            return true;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// Scans 10 bytes with a bound of `timeout`, itself bounded so a hang fails the test.
async fn scan_small(url: IcapUrl, timeout: Duration) -> (IcapClient, Result<Verdict, ScanError>) {
    let client = IcapClient::new(url, timeout);
    let result = tokio::time::timeout(LIMIT, scan(&client, b"0123456789"))
        .await
        .expect("the client's own timeout strikes first");
    (client, result)
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let url = scripted(|_, _| Act::Silent).await;
    let (_, result) = scan_small(url, Duration::from_secs(1)).await;
    assert!(matches!(result, Err(ScanError::TimedOut(_))), "{result:?}");
    // Silent only once OPTIONS is answered: the REQMOD's wait is bounded too.
    let url = scripted(|_, r| {
        if r == 0 {
            Act::Answer(OPTIONS)
        } else {
            Act::Silent
        }
    })
    .await;
    let (_, result) = scan_small(url, Duration::from_secs(1)).await;
    assert!(matches!(result, Err(ScanError::TimedOut(_))), "{result:?}");
}

#[tokio::test]
async fn garbage_and_endless_heads_are_protocol_errors() {
    let url = scripted(|_, _| Act::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")).await;
    let (_, result) = scan_small(url, LIMIT).await;
    assert!(
        matches!(result, Err(ScanError::Protocol(WireError::StatusLine(_)))),
        "{result:?}"
    );
    let url = scripted(|_, r| {
        if r == 0 {
            Act::Answer(OPTIONS)
        } else {
            Act::Endless
        }
    })
    .await;
    let (_, result) = scan_small(url, LIMIT).await;
    assert!(
        matches!(result, Err(ScanError::Protocol(WireError::HeadTooLong))),
        "{result:?}"
    );
    let url = scripted(|_, _| Act::Answer(b"ICAP/1.0 200 OK\r\nMethods: RESPMOD\r\n\r\n")).await;
    let (_, result) = scan_small(url, LIMIT).await;
    assert!(
        matches!(result, Err(ScanError::Protocol(WireError::NoReqmod(_)))),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_echoed_request_is_not_taken_for_clean() {
    const ECHO: &[u8] = b"ICAP/1.0 200 OK\r\nEncapsulated: req-hdr=0, req-body=60\r\n\r\n";
    let url = scripted(|_, r| Act::Answer(if r == 0 { OPTIONS } else { ECHO })).await;
    let (_, result) = scan_small(url, LIMIT).await;
    assert_eq!(
        result.expect("scan"),
        Verdict::Infected {
            threat: wire::MODIFIED.to_string()
        }
    );
}

/// c-icap after `MaxKeepAliveRequests`: a kept-alive connection closed as the next request
/// arrives. The request goes again, once, on a new connection.
#[tokio::test]
async fn a_pooled_connection_closed_unanswered_is_retried_once() {
    let url = scripted(|conn, r| match (conn, r) {
        (0, 0) => Act::Answer(OPTIONS),
        (0, _) => Act::Close,
        _ => Act::Answer(CLEAN),
    })
    .await;
    let (client, result) = scan_small(url, LIMIT).await;
    assert_eq!(result.expect("retried"), Verdict::Clean);
    assert_eq!(client.connections_opened(), 2);

    // Once only: a new connection closed the same way is the server's failure.
    let url = scripted(|conn, r| match (conn, r) {
        (0, 0) => Act::Answer(OPTIONS),
        _ => Act::Close,
    })
    .await;
    let (client, result) = scan_small(url, LIMIT).await;
    assert!(matches!(result, Err(ScanError::Io(_))), "{result:?}");
    assert_eq!(client.connections_opened(), 2);
}

#[tokio::test]
async fn connection_close_is_honoured() {
    const CLEAN_CLOSE: &[u8] = b"ICAP/1.0 204 Unmodified\r\nConnection: close\r\n\r\n";
    let url = scripted(|conn, r| match (conn, r) {
        (0, 0) => Act::Answer(OPTIONS),
        _ => Act::Answer(CLEAN_CLOSE),
    })
    .await;
    let client = IcapClient::new(url, LIMIT);
    for _ in 0..2 {
        assert_eq!(scan(&client, b"abc").await.expect("scan"), Verdict::Clean);
    }
    // OPTIONS and the first scan on one, the second scan on another.
    assert_eq!(client.connections_opened(), 2);
}

/// Sessions may run on any runtime: the client is shared between threads and a scan can be
/// spawned.
#[test]
fn the_client_and_its_scan_are_send() {
    fn send<T: Send + Sync>(_: &T) {}
    fn send_future<F: std::future::Future + Send>(_: F) {}
    let client = IcapClient::new("icap://127.0.0.1/x".parse().expect("url"), LIMIT);
    send(&client);
    send_future(client.scan("/f", 1, &b"x"[..]));
}

/// c-icap passes a file above its `MaxObjectSize` with a 204 right after the preview, marker
/// and all: that is no verdict on the file, and must not read as clean.
#[tokio::test]
async fn a_204_after_a_partial_preview_is_not_clean() {
    let options = support::icap::IcapOptions {
        max_object_size: MIB as u64,
    };
    let Some(bed) = IcapBed::start_with(options) else {
        return;
    };
    let client = client_of(&bed);
    let mut data = random(2 * MIB);
    data[MIB..MIB + bed.marker.len()].copy_from_slice(&bed.marker);
    let verdict = scan(&client, &data).await;
    assert!(
        matches!(verdict, Err(ScanError::NotRead { .. })),
        "{verdict:?}"
    );
    // Within the limit the same client still scans.
    assert_eq!(
        scan(&client, &random(1000)).await.expect("scan"),
        Verdict::Clean
    );
}
