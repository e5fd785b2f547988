//! The audit log (`[audit] log = FILE`): one JSON object a line for each transfer, login,
//! ban and refusal, appended and flushed as each happens, for a security team's collector.
//! With `audit.sha256` a transfer's record carries the SHA-256 of the bytes relayed, hashed
//! as the pump writes them (docs/ARCHITECTURE.md, "Access policy and audit").
//!
//! Writes are small and go to a local file from the task that has the event, under a mutex:
//! the order of lines is the order of events. A failed write is logged and counted
//! (`ftpsgate_audit_write_errors_total`); the transfer it describes goes on. SIGHUP reopens
//! the file, for logrotate.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::warn;

use crate::metrics::{Metrics, Reason};

/// What a session knows of itself when it writes a record.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Who<'a> {
    pub session: u64,
    /// The real client, behind a PROXY header when a trusted balancer sent one.
    pub client: IpAddr,
    pub user: Option<&'a str>,
    pub route: Option<&'a str>,
}

/// One line of the audit log.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    Transfer {
        #[serde(flatten)]
        who: Who<'a>,
        command: &'a str,
        path: &'a str,
        direction: &'a str,
        bytes: u64,
        duration_ms: u64,
        outcome: &'a str,
        tls_version: Option<String>,
        tls_resumed: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
    },
    Login {
        #[serde(flatten)]
        who: Who<'a>,
        outcome: &'a str,
    },
    Ban {
        client: IpAddr,
        ban_secs: u64,
    },
    Refusal {
        #[serde(flatten)]
        who: Who<'a>,
        reason: Reason,
        reply: u16,
    },
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a Event<'a>,
}

pub struct Audit {
    /// `None`: no audit log configured.
    file: Option<(PathBuf, Mutex<File>)>,
    /// Transfers' bytes are hashed for their records (`audit.sha256` with a log to put them in).
    hashes: bool,
}

impl Audit {
    /// Opens (creating, appending) the configured file; an error refuses the start, since a
    /// security team that asked for an audit log must not silently go without one.
    pub fn open(path: Option<&Path>, sha256: bool) -> io::Result<Audit> {
        let file = match path {
            Some(p) => Some((p.to_path_buf(), Mutex::new(append(p)?))),
            None => None,
        };
        let hashes = sha256 && file.is_some();
        Ok(Audit { file, hashes })
    }

    pub fn hashes(&self) -> bool {
        self.hashes
    }

    /// Reopens the file by its name (after logrotate moved it away).
    pub fn reopen(&self) {
        let Some((path, file)) = &self.file else {
            return;
        };
        match append(path) {
            Ok(new) => {
                if let Ok(mut f) = file.lock() {
                    *f = new;
                }
            }
            Err(e) => {
                warn!(file = %path.display(), error = %e, "cannot reopen the audit log; writing to the old file")
            }
        }
    }

    /// Appends `event` as one line and flushes it.
    pub fn record(&self, event: &Event<'_>, metrics: &Metrics) {
        let Some((path, file)) = &self.file else {
            return;
        };
        let time = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        let mut line = match serde_json::to_vec(&Line { time, event }) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot encode an audit record");
                return;
            }
        };
        line.push(b'\n');
        let written = match file.lock() {
            Ok(mut f) => f.write_all(&line).and_then(|()| f.flush()),
            Err(_) => Err(io::Error::other("audit log lock poisoned")),
        };
        if let Err(e) = written {
            metrics.audit_write_errors.inc();
            warn!(file = %path.display(), error = %e, "audit record not written");
        }
    }
}

/// Opens `path` for appending, creating it readable by its owner and group only: the records
/// name users and client addresses.
fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal's record names its reason as the metric label does.
    #[test]
    fn a_refusal_record_names_its_reason_as_the_metric_does() {
        let event = Event::Refusal {
            who: Who {
                session: 7,
                client: "192.0.2.7".parse().expect("ip"),
                user: None,
                route: None,
            },
            reason: Reason::denied_user,
            reply: 530,
        };
        let json = serde_json::to_string(&event).expect("json");
        assert_eq!(
            json,
            r#"{"event":"refusal","session":7,"client":"192.0.2.7","user":null,"route":null,"reason":"denied_user","reply":530}"#
        );
    }
}
