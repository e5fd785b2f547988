//! `[scan]` and `[routes.NAME.scan]`: uploads handed to an antivirus over ICAP (RFC 3507)
//! before the backend sees a byte of them. docs/ARCHITECTURE.md, "Scanned uploads".

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Bad, ConfigError, PolicySettings, Settings};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScanSettings {
    /// The scanner's ICAP service, `icap://host[:port]/service` (port 1344 by default). Unset:
    /// uploads are not scanned.
    pub icap: Option<String>,
    /// What an upload gets when the scanner cannot give a verdict (unreachable, an error, too
    /// slow): `closed` refuses it (451), `open` stores it unscanned; both log and count it.
    pub fail: FailMode,
    /// Uploads larger than this (bytes) are not scanned: refused (552), or stored unscanned
    /// with `oversize = "pass"`. Keep it at or below the scanner's own limit (c-icap's
    /// `MaxObjectSize`), which passes larger objects unscanned without saying so.
    pub max_size: u64,
    /// `refuse` or `pass` an upload larger than `max_size`.
    pub oversize: Oversize,
    /// One scan, from connecting to the verdict, at most this long.
    pub timeout_secs: u64,
    /// Where uploads wait for their verdict once memory is full: a 0700 directory of the
    /// gateway's user, created if missing. The gateway's own setting: a route cannot move it.
    pub spool_dir: PathBuf,
    /// Bytes of uploads held in memory at once, across all sessions, before they spill to
    /// files in `spool_dir`. The gateway's own setting, like `spool_dir`.
    pub spool_memory: u64,
    /// While an upload is received and scanned, the backend has heard nothing of it: it gets
    /// a NOOP this often (seconds), so its idle timer (vsftpd's `idle_session_timeout`, 300 s
    /// by default) does not end the session under a slow client or a slow scanner.
    pub backend_noop_secs: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    #[default]
    Closed,
    Open,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Oversize {
    #[default]
    Refuse,
    Pass,
}

impl Default for ScanSettings {
    fn default() -> Self {
        Self {
            icap: None,
            fail: FailMode::Closed,
            max_size: 1024 * 1024 * 1024,
            oversize: Oversize::Refuse,
            timeout_secs: 120,
            spool_dir: PathBuf::from("/var/lib/ftpsgate/spool"),
            spool_memory: 64 * 1024 * 1024,
            backend_noop_secs: 60,
        }
    }
}

impl ScanSettings {
    /// Checks `[scan]` (`key` = `scan`) or a route's own (`routes.NAME.scan`).
    pub(super) fn validate(&self, key: &str, bad: Bad) -> Result<(), ConfigError> {
        if let Some(url) = &self.icap {
            if let Err(why) = url.parse::<super::IcapUrl>() {
                return Err(bad(format!("{key}.icap"), why.to_string()));
            }
        }
        for (name, secs) in [
            ("timeout_secs", self.timeout_secs),
            ("backend_noop_secs", self.backend_noop_secs),
        ] {
            if !(1..=86_400).contains(&secs) {
                return Err(bad(format!("{key}.{name}"), "1 to 86400".into()));
            }
        }
        if self.max_size == 0 {
            return Err(bad(format!("{key}.max_size"), "at least 1 byte".into()));
        }
        if key != "scan" {
            let global = ScanSettings::default();
            if self.spool_dir != global.spool_dir || self.spool_memory != global.spool_memory {
                return Err(bad(
                    format!("{key}.spool_dir"),
                    "spool_dir and spool_memory are the gateway's: set them in [scan]".into(),
                ));
            }
        } else if !self.spool_dir.is_absolute() {
            return Err(bad("scan.spool_dir".into(), "an absolute path".into()));
        }
        Ok(())
    }

    /// Whether uploads are scanned at all.
    pub fn is_on(&self) -> bool {
        self.icap.is_some()
    }
}

/// The `[scan]` and `[policy]` in effect on one route: its own tables, else the gateway's.
pub struct RouteRules<'a> {
    /// `None`: the default backend, `[backend]`.
    pub route: Option<&'a str>,
    pub scan: &'a ScanSettings,
    /// `scan` is the route's own table, not `[scan]`.
    pub own_scan: bool,
    pub policy: &'a PolicySettings,
}

impl RouteRules<'_> {
    /// The route's table in the configuration: `backend` or `routes.NAME`.
    pub fn key(&self) -> String {
        self.route
            .map_or_else(|| "backend".to_string(), |name| format!("routes.{name}"))
    }

    /// Where its `scan` settings are written: `scan` or `routes.NAME.scan`.
    pub fn scan_key(&self) -> String {
        if self.own_scan {
            format!("{}.scan", self.key())
        } else {
            "scan".to_string()
        }
    }
}

impl Settings {
    /// Each route's rules, the default backend's first.
    pub fn route_rules(&self) -> impl Iterator<Item = RouteRules<'_>> {
        let routes = self.routes.iter().map(|(name, b)| (Some(name.as_str()), b));
        std::iter::once((None, &self.backend))
            .chain(routes)
            .map(|(route, backend)| RouteRules {
                route,
                scan: backend.scan.as_ref().unwrap_or(&self.scan),
                own_scan: backend.scan.is_some(),
                policy: backend.policy.as_ref().unwrap_or(&self.policy),
            })
    }

    /// `oversize = "pass"` spools what it then passes: without `policy.max_upload_bytes` on
    /// the same route nothing would bound the spool.
    pub(super) fn validate_oversize(&self, bad: Bad) -> Result<(), ConfigError> {
        for rules in self.route_rules() {
            let scan = rules.scan;
            if scan.is_on()
                && scan.oversize == Oversize::Pass
                && rules.policy.max_upload_bytes.is_none()
            {
                return Err(bad(
                    format!("{}.oversize", rules.scan_key()),
                    format!(
                        "\"pass\" spools what it passes: set policy.max_upload_bytes for {} to bound it",
                        rules.key()
                    ),
                ));
            }
        }
        Ok(())
    }
}
