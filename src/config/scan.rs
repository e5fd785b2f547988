//! `[scan]` and `[routes.NAME.scan]`: uploads handed to an antivirus over ICAP (RFC 3507)
//! before the backend sees a byte of them. docs/ARCHITECTURE.md, "Scanned uploads".

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Bad, ConfigError, Settings};

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
        if self.timeout_secs == 0 {
            return Err(bad(format!("{key}.timeout_secs"), "at least 1".into()));
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

impl Settings {
    /// `oversize = "pass"` spools what it then passes: without `policy.max_upload_bytes` on
    /// the same route nothing would bound the spool.
    pub(super) fn validate_oversize(&self, bad: Bad) -> Result<(), ConfigError> {
        let routes = std::iter::once(("backend".to_string(), &self.backend)).chain(
            self.routes
                .iter()
                .map(|(name, b)| (format!("routes.{name}"), b)),
        );
        for (key, backend) in routes {
            let (scan, at) = match &backend.scan {
                Some(own) => (own, format!("{key}.scan")),
                None => (&self.scan, "scan".to_string()),
            };
            let policy = backend.policy.as_ref().unwrap_or(&self.policy);
            if scan.is_on() && scan.oversize == Oversize::Pass && policy.max_upload_bytes.is_none()
            {
                return Err(bad(
                    format!("{at}.oversize"),
                    format!("\"pass\" spools what it passes: set policy.max_upload_bytes for {key} to bound it"),
                ));
            }
        }
        Ok(())
    }
}
