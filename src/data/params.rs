//! What the session tells a bridge when it starts it: who may connect, with what TLS, and the
//! limits every wait and every copy is held to.

use std::sync::Arc;
use std::time::Duration;

use crate::config::ReuseMode;
use crate::metrics::Metrics;
use crate::tls::backend::BackendSession;
use crate::tls::binding::Siblings;
use crate::tls::data::DataConfig;

/// What the session tells a bridge when it is created.
pub(crate) struct BridgeParams {
    /// `Some` for PROT P: this FTP session's own TLS config.
    pub tls: Option<DataConfig>,
    pub reuse: ReuseMode,
    /// From the bridge's start until the client's data connection is up and the transfer
    /// command has come.
    pub accept_timeout: Duration,
    pub handshake_timeout: Duration,
    /// A read or a write that moves nothing for this long ends the transfer.
    pub stall: Duration,
    /// Sibling sessions whose TLS sessions the data connection may resume too.
    pub siblings: Option<Siblings>,
    /// `Some` when the backend's data connections are TLS (backend PROT P).
    pub backend_tls: Option<BackendSession>,
    pub metrics: Arc<Metrics>,
    /// Hash the bytes relayed (SHA-256, for the audit log).
    pub hash: bool,
    /// The most bytes an upload may carry (`policy.max_upload_bytes`).
    pub max_upload: Option<u64>,
}
