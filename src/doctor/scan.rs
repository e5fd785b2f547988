//! The `[scan]` checks: the spool directory private (or yet to be created) with room to spare,
//! and each scanner answering a REQMOD for a small clean file as clean, with an antivirus
//! engine behind it.

use std::time::Duration;

use super::{check, with_fix, Check, Level};
use crate::config::Settings;
use crate::scan::{self, IcapClient, IcapUrl, Verdict};

const WHAT: &str = "scan";

/// The ISTag c-icap's virus_scan gives when no antivirus engine registered (clamd was not
/// answering when c-icap started): it then answers 204 to everything, unscanned.
/// docs/TESTING.md, "ICAP test bed".
const ISTAG_WITHOUT_ENGINE: &str = "\"CI0001-1B2M2Y8AsgTpgAmY7PhCfgAA\"";

/// A doctor's scan waits at most this long, whatever `scan.timeout_secs` says.
const LIMIT: Duration = Duration::from_secs(10);

pub(super) async fn checks(settings: &Settings) -> Vec<Check> {
    let scanning = scan::scanning(settings);
    let mut out: Vec<Check> = (scan::turned_off(settings).into_iter())
        .map(|key| {
            let what = format!(
                "{key} sets no icap: uploads on its route are not scanned, though [scan] scans"
            );
            with_fix(
                check(Level::Warn, WHAT, what),
                format!("set {key}.icap, unless that route is meant to go unscanned"),
            )
        })
        .collect();
    if scanning.is_empty() {
        return out;
    }
    out.push(spool_dir(settings));
    let mut urls: Vec<&str> = scanning.iter().map(|(_, _, url)| *url).collect();
    urls.sort_unstable();
    urls.dedup();
    for url in urls {
        out.push(scanner(url).await);
    }
    out
}

fn spool_dir(settings: &Settings) -> Check {
    let dir = &settings.scan.spool_dir;
    if !dir.exists() {
        return check(
            Level::Ok,
            WHAT,
            format!("{} is created (0700) at start", dir.display()),
        );
    }
    if let Err(e) = scan::check_dir(dir) {
        return with_fix(
            check(Level::Fail, WHAT, e),
            "chmod 0700 the spool directory and chown it to the gateway's user",
        );
    }
    match scan::free_bytes(dir) {
        Ok(free) if free < settings.scan.max_size => with_fix(
            check(
                Level::Warn,
                WHAT,
                format!(
                    "{}: {} MiB free, less than one upload of scan.max_size ({} MiB)",
                    dir.display(),
                    free >> 20,
                    settings.scan.max_size >> 20
                ),
            ),
            "give scan.spool_dir a file system with room for the uploads received at once",
        ),
        Ok(free) => check(
            Level::Ok,
            WHAT,
            format!("{} is private, {} MiB free", dir.display(), free >> 20),
        ),
        Err(e) => check(Level::Warn, WHAT, format!("{}: {e}", dir.display())),
    }
}

async fn scanner(url: &str) -> Check {
    let parsed: IcapUrl = match url.parse() {
        Ok(u) => u,
        Err(e) => return check(Level::Fail, WHAT, format!("scan.icap {url}: {e}")),
    };
    let client = IcapClient::new(parsed, LIMIT);
    let body = b"ftpsgate doctor: a small clean file\n";
    let verdict = client
        .scan("ftpsgate-doctor.txt", body.len() as u64, &body[..])
        .await;
    match (verdict, client.istag()) {
        (Ok(Verdict::Clean), Some(tag)) if tag == ISTAG_WITHOUT_ENGINE => with_fix(
            check(
                Level::Fail,
                WHAT,
                format!("{url} answers, but with no antivirus engine behind it (ISTag {tag}): c-icap then passes everything unscanned"),
            ),
            "start clamd first, then restart c-icap (its clamd_mod connects only at start)",
        ),
        (Ok(Verdict::Clean), tag) => check(
            Level::Ok,
            WHAT,
            format!(
                "{url} answers REQMOD; a clean file is clean (ISTag {})",
                tag.as_deref().unwrap_or("none")
            ),
        ),
        (Ok(Verdict::Infected { threat }), _) => with_fix(
            check(
                Level::Fail,
                WHAT,
                format!("{url} flags a plain text file ({threat}): every upload would be refused"),
            ),
            "check the scanner's rules",
        ),
        (Err(e), _) => with_fix(
            check(Level::Fail, WHAT, format!("{url}: {e}")),
            "check scan.icap and that the ICAP server and its antivirus run; until they answer, \
             scan.fail = \"closed\" refuses every upload",
        ),
    }
}
