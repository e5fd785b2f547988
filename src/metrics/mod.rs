//! The gateway's counters, exposed in the Prometheus/OpenMetrics text format on the admin
//! listener (see [`crate::admin`]).
//!
//! One [`Metrics`] per gateway, not a process-global recorder: tests run several gateways in one
//! process, and each must report only its own sessions. Every metric is a typed field, so the
//! code that counts cannot misspell a name, and label values come from closed sets (the enums
//! below), so a hostile peer cannot grow the label space.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::ftp::Direction;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values as Prometheus users expect them: lower case
pub(crate) enum DirectionLabel {
    upload,
    download,
}

impl From<Direction> for DirectionLabel {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Upload => DirectionLabel::upload,
            Direction::Download => DirectionLabel::download,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    ok,
    failed,
    aborted,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Channel {
    control,
    data,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum HandshakeKind {
    full,
    resumed,
    /// The handshake failed, so it was neither.
    none,
}

/// What a certificate reload did.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Reload {
    changed,
    unchanged,
    failed,
}

/// How an ACME order ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AcmeOrder {
    issued,
    failed,
}

/// What scanning an upload found (`[scan]`). Whether the upload was then stored or refused
/// follows from the verdict and the settings (`fail`, `oversize`); the log line says which.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue, serde::Serialize)]
#[allow(non_camel_case_types)]
pub enum ScanVerdict {
    /// The scanner found nothing.
    clean,
    /// The scanner named a threat.
    infected,
    /// No verdict: the scanner unreachable, failing, too slow or speaking nonsense.
    error,
    /// Larger than `scan.max_size`: not sent to the scanner.
    oversize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScanLabels {
    verdict: ScanVerdict,
}

/// Why the gateway refused something. A closed set: log lines carry the detail.
/// Its name is the same in a metric label and an audit record (serde writes a unit variant as
/// its name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue, serde::Serialize)]
#[allow(non_camel_case_types)]
pub enum Reason {
    session_limit,
    per_ip_limit,
    tls_required,
    bad_line,
    data_from_other_address,
    data_not_resumed,
    clear_data,
    port_refused,
    pool_full,
    /// A client address holds `limits.max_passive_per_ip` passive ports already.
    passive_per_ip,
    /// A transfer moved no byte for `timeouts.data_stall_secs`.
    data_stalled,
    /// A client did not read a reply within `timeouts.client_write_secs`.
    client_write_timeout,
    /// The listener could not accept a connection (out of descriptors, most often).
    accept_failed,
    shutting_down,
    timeout,
    bad_proxy_header,
    /// Every address of the chosen backend is down or unreachable.
    backend_down,
    /// A client address outside `access.allow` or a route's `allow`, or inside a `deny`.
    access_denied,
    /// A client address banned after failed logins.
    banned,
    /// A password waited too long for one of its address's login attempts, all held by
    /// passwords still at a backend.
    logins_in_flight,
    /// A user in `access.deny_users`.
    denied_user,
    /// A user name with whitespace at either end or a control character in it.
    malformed_user,
    /// A user other than the one the client certificate names (`tls.client_cert_user`).
    certificate_user,
    /// A verb in the route's `policy.deny_commands`.
    policy_command,
    /// A verb that changes files, under the route's `policy.read_only`.
    policy_read_only,
    /// An upload's name refused by the route's `policy.allow_names`/`deny_names`.
    policy_name,
    /// An upload the scanner flagged.
    scan_infected,
    /// An upload refused for want of a verdict (`scan.fail = "closed"`).
    scan_failed,
    /// An upload larger than `scan.max_size`, refused.
    scan_oversize,
    /// APPE or REST+STOR while uploads are scanned.
    scan_partial,
    /// An upload larger than `policy.max_upload_bytes`.
    upload_too_large,
}

/// Why an audit record was not written. Its name is the same in the metric label and in the
/// log's own `dropped` record.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue, serde::Serialize)]
#[allow(non_camel_case_types)]
pub enum AuditDrop {
    /// The writer is behind (a slow disk, a full pipe): the queue to it is full.
    queue_full,
    /// Beyond `audit.refusals_per_sec`.
    rate_limited,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuditDropLabels {
    reason: AuditDrop,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    direction: DirectionLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransferLabels {
    direction: DirectionLabel,
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    channel: Channel,
    outcome: Outcome,
    kind: HandshakeKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: Reason,
}

/// A backend address. Both values come from the configuration, never from a peer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    route: String,
    address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabels {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    outcome: Reload,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcmeLabels {
    outcome: AcmeOrder,
}

/// Everything the gateway counts. Cheap to update from any task: atomics underneath.
pub struct Metrics {
    registry: Registry,
    pub sessions_active: Gauge,
    pub sessions: Counter,
    bytes: Family<BytesLabels, Counter>,
    transfers: Family<TransferLabels, Counter>,
    handshakes: Family<HandshakeLabels, Counter>,
    pub leases_in_use: Gauge,
    /// How long PASV/EPSV waited for a (port, address) pair, in seconds.
    pub passive_wait: Histogram,
    /// Connections to a passive port from an address with no lease pending there.
    pub passive_unclaimed: Counter,
    pub backend_connect_errors: Counter,
    backends_up: Family<BackendLabels, Gauge>,
    refusals: Family<ReasonLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    /// Client addresses banned now (read at scrape time).
    pub bans_active: Gauge,
    pub audit_write_errors: Counter,
    audit_dropped: Family<AuditDropLabels, Counter>,
    certificate_expiry: Family<NameLabels, Gauge>,
    acme_orders: Family<AcmeLabels, Counter>,
    scans: Family<ScanLabels, Counter>,
    /// How long the scanner took over each upload, in seconds.
    pub scan_seconds: Histogram,
    /// Bytes of uploads spooled now, in memory and on disk, waiting for their verdict.
    pub spool_bytes: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("ftpsgate");
        let sessions_active = Gauge::default();
        let sessions = Counter::default();
        let bytes = Family::default();
        let transfers = Family::default();
        let handshakes = Family::default();
        let leases_in_use = Gauge::default();
        // 0.1 ms to about 6.5 s: an immediate lease, a wait of round trips, a wait to 425.
        let passive_wait = Histogram::new(exponential_buckets(0.0001, 4.0, 9));
        let passive_unclaimed = Counter::default();
        let backend_connect_errors = Counter::default();
        let backends_up = Family::default();
        let refusals = Family::default();
        let reloads = Family::default();
        let bans_active = Gauge::default();
        let audit_write_errors = Counter::default();
        let audit_dropped = Family::default();
        let certificate_expiry = Family::default();
        let acme_orders = Family::default();
        let scans = Family::default();
        // 1 ms to about 4.5 min: a small file, a large one, one that reaches the timeout.
        let scan_seconds = Histogram::new(exponential_buckets(0.001, 4.0, 10));
        let spool_bytes = Gauge::default();
        registry.register(
            "sessions_active",
            "Client sessions open now",
            sessions_active.clone(),
        );
        registry.register("sessions", "Client sessions accepted", sessions.clone());
        registry.register(
            "data_bytes",
            "Bytes copied on data connections",
            bytes.clone(),
        );
        registry.register(
            "transfers",
            "Data transfers by direction and outcome",
            transfers.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes with clients by channel, outcome and kind",
            handshakes.clone(),
        );
        registry.register(
            "passive_leases_in_use",
            "Passive leases pending now: (port, client address) pairs from PASV/EPSV to the client's data connection",
            leases_in_use.clone(),
        );
        registry.register(
            "passive_wait_seconds",
            "How long PASV/EPSV waited for a passive port free for the client's address",
            passive_wait.clone(),
        );
        registry.register(
            "passive_unclaimed_connections",
            "Connections to a passive port from an address with no lease pending there, closed",
            passive_unclaimed.clone(),
        );
        registry.register(
            "backend_connect_errors",
            "Failed connections to the backend's control port",
            backend_connect_errors.clone(),
        );
        registry.register(
            "backend_up",
            "1 while a backend address is taking sessions, 0 while health checks find it down",
            backends_up.clone(),
        );
        registry.register(
            "refusals",
            "Requests the gateway refused, by reason",
            refusals.clone(),
        );
        registry.register(
            "bans_active",
            "Client addresses banned now after failed logins",
            bans_active.clone(),
        );
        registry.register(
            "audit_write_errors",
            "Audit records that could not be written",
            audit_write_errors.clone(),
        );
        registry.register(
            "audit_dropped",
            "Audit records not written, by reason: the writer was behind (queue_full) or refusals beyond audit.refusals_per_sec (rate_limited)",
            audit_dropped.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When each certificate in use expires (Unix time): default, and each SNI certificate by its first name",
            certificate_expiry.clone(),
        );
        registry.register(
            "certificate_reloads",
            "Certificate reloads (SIGHUP or a file change) by outcome",
            reloads.clone(),
        );
        registry.register(
            "acme_orders",
            "ACME orders (tls.acme) by outcome: issued, or failed and retried later",
            acme_orders.clone(),
        );
        registry.register(
            "scans",
            "Uploads scanned over ICAP ([scan]) by verdict",
            scans.clone(),
        );
        registry.register(
            "scan_seconds",
            "How long the ICAP scanner took over an upload",
            scan_seconds.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes of uploads spooled now (memory and disk), waiting for the scanner",
            spool_bytes.clone(),
        );
        Arc::new(Metrics {
            registry,
            sessions_active,
            sessions,
            bytes,
            transfers,
            handshakes,
            leases_in_use,
            passive_wait,
            passive_unclaimed,
            backend_connect_errors,
            backends_up,
            refusals,
            reloads,
            bans_active,
            audit_write_errors,
            audit_dropped,
            certificate_expiry,
            acme_orders,
            scans,
            scan_seconds,
            spool_bytes,
        })
    }

    /// The byte counter of one direction. A transfer takes it once and adds to it as bytes
    /// flow (one atomic add per chunk), so a scrape during a long transfer sees it move.
    pub fn bytes(&self, direction: Direction) -> Counter {
        self.bytes
            .get_or_create(&BytesLabels {
                direction: direction.into(),
            })
            .clone()
    }

    pub fn transfer(&self, direction: Direction, outcome: Outcome) {
        self.transfers
            .get_or_create(&TransferLabels {
                direction: direction.into(),
                outcome,
            })
            .inc();
    }

    /// A TLS handshake with a client: `Some(resumed)` when it completed, `None` when it failed.
    pub fn handshake(&self, channel: Channel, resumed: Option<bool>) {
        let (outcome, kind) = match resumed {
            Some(true) => (Outcome::ok, HandshakeKind::resumed),
            Some(false) => (Outcome::ok, HandshakeKind::full),
            None => (Outcome::failed, HandshakeKind::none),
        };
        self.handshakes
            .get_or_create(&HandshakeLabels {
                channel,
                outcome,
                kind,
            })
            .inc();
    }

    pub fn backend_up(&self, route: &str, address: &str, up: bool) {
        self.backends_up
            .get_or_create(&BackendLabels {
                route: route.to_string(),
                address: address.to_string(),
            })
            .set(i64::from(up));
    }

    pub fn reloaded(&self, outcome: Reload) {
        self.reloads.get_or_create(&ReloadLabels { outcome }).inc();
    }

    pub fn acme_ordered(&self, outcome: AcmeOrder) {
        self.acme_orders
            .get_or_create(&AcmeLabels { outcome })
            .inc();
    }

    /// The certificates in use and their expiry times, replacing those of an earlier scrape.
    pub fn certificate_expiries(&self, expiries: Vec<(String, i64)>) {
        self.certificate_expiry.clear();
        for (name, at) in expiries {
            self.certificate_expiry
                .get_or_create(&NameLabels { name })
                .set(at);
        }
    }

    pub fn scanned(&self, verdict: ScanVerdict) {
        self.scans.get_or_create(&ScanLabels { verdict }).inc();
    }

    pub fn audit_dropped(&self, reason: AuditDrop) {
        self.audit_dropped
            .get_or_create(&AuditDropLabels { reason })
            .inc();
    }

    pub fn refused(&self, reason: Reason) {
        self.refusals.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests;
