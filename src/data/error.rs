//! Why a data transfer failed, and the reply the client gets instead of the backend's for each.

use std::io;

use thiserror::Error;

use crate::ftp::Reply;

/// Why a data transfer failed. Each maps to the reply the client gets instead of the backend's.
#[derive(Debug, Error)]
pub(crate) enum BridgeError {
    #[error("the data connection with the client was not up in time")]
    AcceptTimeout,
    #[error("opening the data connection with the client: {0}")]
    Accept(io::Error),
    #[error("TLS handshake on the data connection failed: {0}")]
    Handshake(io::Error),
    #[error("TLS handshake on the backend's data connection failed: {0}")]
    BackendHandshake(io::Error),
    /// `offered`: the client offered a session to resume, only not this one's.
    #[error("data connection did not resume the control connection's TLS session (offered one: {offered})")]
    NotResumed { offered: bool },
    #[error("no transfer command came within the data connection timeout")]
    NoTransfer,
    #[error("no byte moved for {secs} s: the {peer} stopped")]
    Stalled { peer: &'static str, secs: u64 },
    #[error("client data connection failed: {0}")]
    Client(io::Error),
    #[error("backend data connection failed: {0}")]
    Backend(io::Error),
    #[error("upload ended without TLS close_notify (truncated)")]
    Truncated,
    #[error("transfer cancelled")]
    Cancelled,
    #[error("upload larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("spooling the upload for the scanner: {0}")]
    Spool(io::Error),
}

impl BridgeError {
    pub(crate) fn reply(&self) -> Reply {
        match self {
            BridgeError::AcceptTimeout | BridgeError::Accept(_) | BridgeError::NoTransfer => {
                Reply::new(425, "Can't open data connection.")
            }
            BridgeError::Stalled { .. } => {
                Reply::new(426, "Data connection stalled; transfer aborted.")
            }
            BridgeError::Handshake(_) => {
                Reply::new(522, "TLS handshake on the data connection failed.")
            }
            BridgeError::BackendHandshake(_) => {
                Reply::new(425, "Can't open data connection: TLS to the server failed.")
            }
            BridgeError::NotResumed { .. } => Reply::new(
                522,
                "Data connection must resume the TLS session of the control connection.",
            ),
            BridgeError::Client(_) | BridgeError::Backend(_) | BridgeError::Truncated => {
                Reply::transfer_aborted()
            }
            BridgeError::Cancelled => Reply::new(426, "Transfer aborted."),
            BridgeError::TooLarge { .. } => Reply::new(
                552,
                "Requested file action aborted: the file is larger than this server takes.",
            ),
            // No room is the client's to retry later (452); a spool that cannot be read back
            // is the gateway's own failure (451).
            BridgeError::Spool(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                ) =>
            {
                Reply::new(
                    452,
                    "Requested action not taken: no room to hold the upload while it is scanned.",
                )
            }
            BridgeError::Spool(_) => Reply::new(
                451,
                "Requested action aborted: local error in processing the upload.",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No room (a full disk, a quota) is worth a retry (452); a spool the gateway cannot read
    /// back is its own fault
    /// (451), whether before the scan or after the backend's 150.
    #[test]
    fn a_spool_error_replies_by_its_kind() {
        let full = BridgeError::Spool(io::ErrorKind::StorageFull.into());
        assert_eq!(full.reply().code(), 452);
        let quota = BridgeError::Spool(io::ErrorKind::QuotaExceeded.into());
        assert_eq!(quota.reply().code(), 452);
        let broken = BridgeError::Spool(io::Error::other("EIO"));
        assert_eq!(broken.reply().code(), 451);
    }
}
