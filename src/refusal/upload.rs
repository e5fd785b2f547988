//! Uploads the gateway turns down for what they hold or how they are sent, rather than for
//! who sends them: the scanner's verdicts (`[scan]`) and the size rule
//! (`policy.max_upload_bytes`). The backend has received none of their bytes.

use tracing::{info, warn};

use crate::metrics::Reason;

#[derive(Debug)]
pub(crate) enum UploadRefusal {
    /// The scanner named a threat. The client is not told its name: it is in the log and
    /// the audit record.
    Infected { threat: String, scanner: String },
    /// No verdict (`scan.fail = "closed"`): the scanner unreachable, failing or too slow.
    Unscanned { error: String, scanner: String },
    /// Larger than `scan.max_size` (`scan.oversize = "refuse"`).
    Oversize { limit: u64 },
    /// Larger than `policy.max_upload_bytes`.
    TooLarge { limit: u64 },
    /// APPE, STOU, or STOR after REST, under TYPE A or a MODE other than S: the backend would
    /// hold bytes other than those scanned (joined to what is there, converted, decompressed)
    /// or under a name the client never hears, so none is offered while uploads are scanned.
    Partial { command: String },
}

impl UploadRefusal {
    pub(super) fn reply(&self) -> (u16, String) {
        match self {
            UploadRefusal::Infected { .. } => (
                550,
                "Upload refused: the file failed the virus scan; it was not stored.".into(),
            ),
            UploadRefusal::Unscanned { .. } => (
                451,
                "Upload refused: the file could not be scanned; try again later.".into(),
            ),
            UploadRefusal::Oversize { .. } | UploadRefusal::TooLarge { .. } => (
                552,
                "Requested file action aborted: the file is larger than this server takes.".into(),
            ),
            UploadRefusal::Partial { command } => (
                504,
                format!("{command} is not available here: uploads are scanned whole, as sent (TYPE I, MODE S, no REST)."),
            ),
        }
    }

    pub(super) fn reason(&self) -> Reason {
        match self {
            UploadRefusal::Infected { .. } => Reason::scan_infected,
            UploadRefusal::Unscanned { .. } => Reason::scan_failed,
            UploadRefusal::Oversize { .. } => Reason::scan_oversize,
            UploadRefusal::TooLarge { .. } => Reason::upload_too_large,
            UploadRefusal::Partial { .. } => Reason::scan_partial,
        }
    }

    pub(super) fn log(&self) {
        match self {
            UploadRefusal::Infected { threat, scanner } => {
                warn!(%threat, %scanner, "upload refused: the scanner found a threat")
            }
            UploadRefusal::Unscanned { error, scanner } => {
                warn!(%error, %scanner, "upload refused: no verdict from the scanner (scan.fail = closed)")
            }
            UploadRefusal::Oversize { limit } => {
                info!(limit, "upload refused: larger than scan.max_size")
            }
            UploadRefusal::TooLarge { limit } => {
                info!(limit, "upload refused: larger than policy.max_upload_bytes")
            }
            UploadRefusal::Partial { command } => {
                info!(%command, "refused: uploads are scanned whole")
            }
        }
    }
}
