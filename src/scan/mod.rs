//! Uploads scanned before the backend sees them (`[scan]`): held whole in a spool (`spool`),
//! sent to an antivirus over ICAP (`icap`, RFC 3507), and passed on only when clean.
//! docs/ARCHITECTURE.md, "Scanned uploads".
//!
//! The ICAP response parser is public (as `icap_wire`) only for the fuzz target
//! (`fuzz/fuzz_targets/icap_reply.rs`), as `ftp` is for its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub(crate) mod icap;
mod spool;

pub use icap::wire as icap_wire;
pub(crate) use icap::{IcapClient, IcapUrl, Verdict};
pub(crate) use spool::{check_dir, free_bytes, Spool, Spooler};

use prometheus_client::metrics::gauge::Gauge;
use tracing::warn;

use crate::backend::DEFAULT_ROUTE;
use crate::config::{ScanSettings, Settings};

/// One route's scanning: its settings, its ICAP client (with its pooled connections) and the
/// gateway's spool.
pub(crate) struct Scanner {
    pub(crate) settings: ScanSettings,
    pub(crate) icap: IcapClient,
    pub(crate) spooler: Arc<Spooler>,
}

/// The scanner of each route that scans: `[scan]`, or the route's own `scan` table in its
/// place. Built once at start; a route without an entry does not scan.
#[derive(Default)]
pub(crate) struct Scanners {
    by_route: HashMap<String, Arc<Scanner>>,
}

impl Scanners {
    /// Opens the spool directory (if any route scans) and makes one client per route that
    /// scans; routes with the same `icap` URL and timeout share a client, so its pooled
    /// connections serve them all.
    pub(crate) fn new(settings: &Settings, spool_bytes: &Gauge) -> Result<Scanners, String> {
        let mut spooler = None;
        let mut clients: HashMap<(String, u64), Arc<Scanner>> = HashMap::new();
        let mut by_route = HashMap::new();
        for key in turned_off(settings) {
            warn!(table = %key, "uploads on this route are not scanned: its own scan table sets no icap, while [scan] does");
        }
        for (name, scan, url) in scanning(settings) {
            let spooler = match &spooler {
                Some(s) => Arc::clone(s),
                None => {
                    let global = &settings.scan;
                    let metric = spool_bytes.clone();
                    let s = Spooler::open(&global.spool_dir, global.spool_memory, metric)?;
                    spooler.insert(s).clone()
                }
            };
            let key = (url.to_string(), scan.timeout_secs);
            let scanner = match clients.get(&key) {
                Some(shared) if shared.settings == *scan => Arc::clone(shared),
                _ => {
                    let parsed: IcapUrl = url.parse().map_err(|e| format!("scan.icap: {e}"))?;
                    let timeout = Duration::from_secs(scan.timeout_secs);
                    let scanner = Arc::new(Scanner {
                        settings: scan.clone(),
                        icap: IcapClient::new(parsed, timeout),
                        spooler,
                    });
                    clients.insert(key, Arc::clone(&scanner));
                    scanner
                }
            };
            by_route.insert(name.to_string(), scanner);
        }
        Ok(Scanners { by_route })
    }

    /// The scanner for uploads on `route`, if it scans.
    pub(crate) fn for_route(&self, route: &str) -> Option<&Arc<Scanner>> {
        self.by_route.get(route)
    }
}

/// Each route that scans, with its scan settings (its own table, else `[scan]`) and URL.
pub(crate) fn scanning(settings: &Settings) -> Vec<(&str, &ScanSettings, &str)> {
    settings
        .route_rules()
        .filter_map(|rules| {
            let name = rules.route.unwrap_or(DEFAULT_ROUTE);
            Some((name, rules.scan, rules.scan.icap.as_deref()?))
        })
        .collect()
}

/// The routes whose own `scan` table turns off the scanning `[scan]` asks for (it sets no
/// `icap`): a choice one may make on purpose, or an `icap` line forgotten.
pub(crate) fn turned_off(settings: &Settings) -> Vec<String> {
    if !settings.scan.is_on() {
        return Vec::new();
    }
    settings
        .route_rules()
        .filter(|rules| rules.own_scan && !rules.scan.is_on())
        .map(|rules| rules.scan_key())
        .collect()
}

/// A lock whose holder panicked is still usable: what the scanners keep behind one (the ICAP
/// pool and cached options, the spool's promised disk) is valid whatever was interrupted.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
