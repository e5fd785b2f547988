//! The gateway's own network side: `[listen]`, `[passive]`, `[active]`, `[proxy_protocol]`,
//! `[admin]`, and the `[timeouts]` and `[limits]` that bound what a peer can hold.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Bad, ConfigError, Networks, PortRange, Switch};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenSettings {
    /// Explicit FTPS: plain TCP until the client sends `AUTH TLS` (RFC 4217).
    pub explicit: Vec<SocketAddr>,
    /// Implicit FTPS: TLS from the first byte (port 990 by convention).
    pub implicit: Vec<SocketAddr>,
}

impl ListenSettings {
    /// Every listener, explicit then implicit.
    pub fn all(&self) -> impl Iterator<Item = &SocketAddr> {
        self.explicit.iter().chain(&self.implicit)
    }
}

impl Default for ListenSettings {
    fn default() -> Self {
        Self {
            explicit: vec![SocketAddr::from(([0, 0, 0, 0], 2121))],
            implicit: Vec::new(),
        }
    }
}

impl ListenSettings {
    pub(super) fn validate(&self, bad: Bad) -> Result<(), ConfigError> {
        if self.explicit.is_empty() && self.implicit.is_empty() {
            return Err(bad(
                "listen".into(),
                "no listener: set listen.explicit or listen.implicit".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveSettings {
    /// The address clients reach the gateway on, put in 227 replies. Unset: the local address
    /// of the client's control connection, which is right when there is no NAT in front.
    pub external_address: Option<String>,
    /// The passive data port (`PORT`) or ports (`LO-HI`); open them in the firewall. Each
    /// lease is a (port, client address) pair, so one port serves every client.
    pub ports: PortRange,
    /// Scale-out: how many replicas share `ports` (each owns an equal, disjoint slice, so a
    /// balancer can forward each slice to its owner) ...
    pub replicas: u16,
    /// ... and which one this is, from 0 (`FTPSGATE_REPLICA_INDEX`; in a StatefulSet, the
    /// pod-index label). `{replica}` in `external_address` is replaced with it.
    pub replica_index: u16,
}

impl Default for PassiveSettings {
    fn default() -> Self {
        Self {
            external_address: None,
            ports: PortRange(50000..=50000),
            replicas: 1,
            replica_index: 0,
        }
    }
}

impl PassiveSettings {
    /// This replica's slice of `passive.ports` (all of it without scale-out).
    pub fn range(&self) -> RangeInclusive<u16> {
        let p = self;
        let (lo, hi) = (*p.ports.0.start(), *p.ports.0.end());
        let replicas = p.replicas.max(1);
        let size = (u32::from(hi - lo) + 1) / u32::from(replicas);
        let start = u32::from(lo) + size * u32::from(p.replica_index.min(replicas - 1));
        // Validated: size >= 1 and the slice ends inside the range.
        let end = (start + size - 1).min(u32::from(hi));
        (start as u16)..=(end as u16)
    }

    /// `passive.external_address` with `{replica}` replaced by this replica's index.
    pub fn external_host(&self) -> Option<String> {
        self.external_address
            .as_ref()
            .map(|h| h.replace("{replica}", &self.replica_index.to_string()))
    }

    /// The configured external address, resolved. A DNS name is looked up once, at start.
    pub fn external_ip(&self) -> Result<Option<IpAddr>, String> {
        let Some(host) = self.external_host() else {
            return Ok(None);
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Some(ip));
        }
        let mut addrs = (host.as_str(), 0)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve `{host}`: {e}"))?;
        let first = addrs
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| format!("`{host}` has no IPv4 address for PASV replies"))?;
        Ok(Some(first.ip()))
    }

    pub(super) fn validate(&self, bad: Bad) -> Result<(), ConfigError> {
        if self.replicas == 0 || self.replica_index >= self.replicas {
            return Err(bad(
                "passive.replica_index".into(),
                format!(
                    "{} is not a replica of {} (0 to {})",
                    self.replica_index,
                    self.replicas,
                    self.replicas.saturating_sub(1)
                ),
            ));
        }
        if self.ports.0.len() < usize::from(self.replicas) {
            return Err(bad(
                "passive.replicas".into(),
                format!(
                    "{} ports cannot be shared by {} replicas",
                    self.ports.0.len(),
                    self.replicas
                ),
            ));
        }
        self.external_ip()
            .map_err(|why| bad("passive.external_address".into(), why))?;
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveSettings {
    /// Accept PORT and EPRT from clients. Only the client's own address and a port >= 1024
    /// are accepted (no FTP bounce); toward the backend the gateway uses `backend.data_mode`,
    /// whatever the client chose.
    pub mode: Switch,
    /// Source ports for the gateway's connections to clients, `LO-HI`. Unset: any free port.
    pub source_ports: Option<PortRange>,
}

/// PROXY protocol v2 from load balancers in front of the gateway.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyProtocolSettings {
    /// Networks of the balancers whose PROXY v2 headers are believed (e.g. "10.0.0.0/8").
    /// Connections from them, control and data alike, must start with a header; from anyone
    /// else none is read. Empty: no PROXY protocol.
    pub trusted: Networks,
}

/// The admin listener: `/metrics`, `/healthz`, `/readyz`. Off unless `listen` is set; keep it on
/// loopback or a management network, since it needs no credentials.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    pub listen: Option<SocketAddr>,
}

/// Timeouts in seconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub tls_handshake_secs: u64,
    /// From connect to a successful login.
    pub login_secs: u64,
    /// No command from the client for this long ends the session (421).
    pub idle_secs: u64,
    /// From PASV/EPSV/PORT/EPRT until the client's data connection is up and its transfer
    /// command has come; a passive port leased and not used is released after this.
    pub data_connection_secs: u64,
    /// How long a PASV/EPSV waits for a passive port when every one is pending for the
    /// client's address (its other sessions' PASVs not yet connected); 425 after it.
    pub passive_wait_secs: u64,
    /// A transfer that moves no byte for this long ends with 426, releasing its backend
    /// connection (as vsftpd's data_connection_timeout): one read, or one write of at most
    /// 256 KiB, that does not complete in this time.
    pub data_stall_secs: u64,
    /// How long one reply on the control connection may wait for the client to read it;
    /// past it the session ends.
    pub client_write_secs: u64,
    pub backend_connect_secs: u64,
    /// How long the backend may take to answer a command (transfers excepted).
    pub backend_reply_secs: u64,
    /// After SIGTERM/SIGINT: how long transfers in flight may run on before they are cut.
    pub shutdown_grace_secs: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tls_handshake_secs: 10,
            login_secs: 60,
            idle_secs: 300,
            data_connection_secs: 30,
            passive_wait_secs: 5,
            data_stall_secs: 300,
            client_write_secs: 30,
            backend_connect_secs: 10,
            backend_reply_secs: 60,
            shutdown_grace_secs: 30,
        }
    }
}

impl Timeouts {
    pub fn tls_handshake(&self) -> Duration {
        Duration::from_secs(self.tls_handshake_secs)
    }
    pub fn login(&self) -> Duration {
        Duration::from_secs(self.login_secs)
    }
    pub fn idle(&self) -> Duration {
        Duration::from_secs(self.idle_secs)
    }
    pub fn data_connection(&self) -> Duration {
        Duration::from_secs(self.data_connection_secs)
    }
    pub fn passive_wait(&self) -> Duration {
        Duration::from_secs(self.passive_wait_secs)
    }
    pub fn data_stall(&self) -> Duration {
        Duration::from_secs(self.data_stall_secs)
    }
    pub fn client_write(&self) -> Duration {
        Duration::from_secs(self.client_write_secs)
    }
    pub fn backend_connect(&self) -> Duration {
        Duration::from_secs(self.backend_connect_secs)
    }
    pub fn backend_reply(&self) -> Duration {
        Duration::from_secs(self.backend_reply_secs)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    pub(super) fn validate(&self, bad: Bad) -> Result<(), ConfigError> {
        for (key, secs) in [
            ("tls_handshake_secs", self.tls_handshake_secs),
            ("login_secs", self.login_secs),
            ("idle_secs", self.idle_secs),
            ("data_connection_secs", self.data_connection_secs),
            ("passive_wait_secs", self.passive_wait_secs),
            ("data_stall_secs", self.data_stall_secs),
            ("client_write_secs", self.client_write_secs),
            ("backend_connect_secs", self.backend_connect_secs),
            ("backend_reply_secs", self.backend_reply_secs),
        ] {
            if secs == 0 {
                return Err(bad(
                    format!("timeouts.{key}"),
                    "must be at least 1 second".into(),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_sessions: usize,
    pub max_sessions_per_ip: usize,
    /// Passive ports one client address may hold leased at once (a lease lasts from PASV or
    /// EPSV until its data connection is accepted). Beyond it PASV/EPSV get 425.
    pub max_passive_per_ip: usize,
    /// Longest command line accepted from a client, in bytes (RFC 959 needs at least 512).
    pub max_line_length: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 1000,
            max_sessions_per_ip: 50,
            max_passive_per_ip: 20,
            max_line_length: 4096,
        }
    }
}

impl Limits {
    pub(super) fn validate(&self, bad: Bad) -> Result<(), ConfigError> {
        if self.max_sessions == 0 || self.max_sessions_per_ip == 0 {
            return Err(bad(
                "limits.max_sessions".into(),
                "must be at least 1".into(),
            ));
        }
        if self.max_passive_per_ip == 0 {
            return Err(bad(
                "limits.max_passive_per_ip".into(),
                "must be at least 1".into(),
            ));
        }
        if !(512..=1 << 20).contains(&self.max_line_length) {
            return Err(bad(
                "limits.max_line_length".into(),
                "must be between 512 (RFC 959) and 1048576".into(),
            ));
        }
        Ok(())
    }
}
