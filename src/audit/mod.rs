//! The audit log (`[audit] log = FILE`): one JSON object a line for each transfer, login,
//! ban and refusal, for a security team's collector. With `audit.sha256` a transfer's record
//! carries the SHA-256 of the bytes relayed, hashed as the pump writes them
//! (docs/ARCHITECTURE.md, "Access policy and audit").
//!
//! Why a thread of its own. The task that has the event encodes its line and hands it to one
//! writer thread through a bounded queue, and never waits for it: a write that blocks (a slow
//! disk, a full pipe, a FIFO whose reader stopped) used to block the runtime thread that made
//! it, so new connections got no 220 and every session on that core froze. Now the queue fills
//! instead; a record that does not fit is dropped, counted
//! (`ftpsgate_audit_dropped_total{reason="queue_full"}`) and logged at most every 10 s, and once
//! the writer gets through, a `dropped` record in the log says how many are missing. One thread
//! writes in queue order, so the order of lines is the order of events, each line flushed as it
//! is written. Refusal records are rate-limited (`audit.refusals_per_sec`, a token bucket), so
//! a flood of refused connections cannot fill the disk: the rest are counted
//! (`reason="rate_limited"`) and summed up in a `dropped` record at most once a second.
//!
//! A failed write is logged and counted (`ftpsgate_audit_write_errors_total`); the transfer it
//! describes goes on. SIGHUP reopens the file (for logrotate), in the writer thread, between
//! two lines. A stopping gateway gives the writer two seconds to write what is queued.
//!
//! The file is opened without following a symbolic link, created 0600, and checked once open
//! (see [`file`]): what fails refuses the start, or, on SIGHUP, keeps the old file.
//!
//! Here: the records and what a caller calls; the writer thread and its queue in [`writer`];
//! opening and checking the file in [`file`].

mod file;
mod writer;

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::warn;

use crate::config::AuditSettings;
use crate::metrics::{AuditDrop, Metrics, Reason, ScanVerdict};
use writer::Sink;

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
    /// An upload the scanner judged (or could not, or was not asked to: `oversize`), before
    /// the backend saw it; `passed` says whether the gateway then sent it on (the transfer's
    /// own record says whether the backend stored it).
    Scan {
        #[serde(flatten)]
        who: Who<'a>,
        command: &'a str,
        path: &'a str,
        bytes: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        verdict: ScanVerdict,
        #[serde(skip_serializing_if = "Option::is_none")]
        threat: Option<&'a str>,
        scanner: &'a str,
        /// The service's ISTag: which rules (signature set) judged.
        #[serde(skip_serializing_if = "Option::is_none")]
        istag: Option<String>,
        scan_ms: u64,
        passed: bool,
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
        /// The command refused, where its words are the point (a policy's: `STOR tool.exe`).
        #[serde(skip_serializing_if = "Option::is_none")]
        command: Option<String>,
    },
    /// Records not written since the last `dropped` record of this reason: the log says
    /// where it has a gap, and how large.
    Dropped {
        reason: AuditDrop,
        records: u64,
    },
}

#[derive(Serialize)]
struct Stamped<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a Event<'a>,
}

pub struct Audit {
    /// `None`: no audit log configured.
    sink: Option<Sink>,
    /// Transfers' bytes are hashed for their records (`audit.sha256` with a log to put them in).
    hashes: bool,
}

impl Audit {
    /// Opens (creating, appending) the configured file and starts its writer; an error refuses
    /// the start, since a security team that asked for an audit log must not silently go
    /// without one.
    pub fn open(settings: &AuditSettings, metrics: &Arc<Metrics>) -> io::Result<Audit> {
        let sink = match &settings.log {
            Some(path) => Some(Sink::start(path, settings.refusals_per_sec, metrics)?),
            None => None,
        };
        let hashes = settings.sha256 && sink.is_some();
        Ok(Audit { sink, hashes })
    }

    pub fn hashes(&self) -> bool {
        self.hashes
    }

    /// Reopens the file by its name (after logrotate moved it away), before the next line.
    pub fn reopen(&self) {
        if let Some(sink) = &self.sink {
            sink.reopen();
        }
    }

    /// Queues `event` as one line, without waiting: dropped (and counted) when the writer is
    /// behind, or when it is a refusal beyond `audit.refusals_per_sec`.
    pub fn record(&self, event: &Event<'_>) {
        let Some(sink) = &self.sink else {
            return;
        };
        if matches!(event, Event::Refusal { .. }) && !sink.refusal_allowed() {
            sink.dropped(AuditDrop::rate_limited);
            return;
        }
        if let Some(line) = encode(event) {
            sink.send(line);
        }
    }
}

/// `event` as one line, stamped now.
pub(super) fn encode(event: &Event<'_>) -> Option<Vec<u8>> {
    let time = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    match serde_json::to_vec(&Stamped { time, event }) {
        Ok(mut line) => {
            line.push(b'\n');
            Some(line)
        }
        Err(e) => {
            warn!(error = %e, "cannot encode an audit record");
            None
        }
    }
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
            command: None,
        };
        let json = serde_json::to_string(&event).expect("json");
        assert_eq!(
            json,
            r#"{"event":"refusal","session":7,"client":"192.0.2.7","user":null,"route":null,"reason":"denied_user","reply":530}"#
        );
        let dropped = Event::Dropped {
            reason: AuditDrop::rate_limited,
            records: 12,
        };
        assert_eq!(
            serde_json::to_string(&dropped).expect("json"),
            r#"{"event":"dropped","reason":"rate_limited","records":12}"#
        );
    }
}
