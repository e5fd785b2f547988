//! `[backend]` and `[routes.NAME]`: where sessions go and how the gateway talks to each
//! backend; `[routing]`: how a route and an address are chosen.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::one_or_more;
use super::{
    Bad, ConfigError, Fingerprint, HostPort, Networks, PolicySettings, ScanSettings, Settings,
    TlsVersion,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendSettings {
    /// `HOST:PORT` of the internal FTP server (`address = "..."`), or several of one FTP
    /// service (replicas sharing storage: `addresses = [...]`), whose unhealthy ones are
    /// skipped. Resolved at each connect, so a Kubernetes Service name works.
    #[serde(alias = "address", deserialize_with = "one_or_more")]
    pub addresses: Vec<HostPort>,
    /// How a session picks among `addresses`: `round-robin` or `least-connections`.
    pub balance: Balance,
    /// For a route: SNI names (from the client's TLS handshake) that select it.
    /// Case-insensitive; `*.example.com` matches one label, and an exact name elsewhere wins.
    pub sni: Vec<String>,
    /// For a route: names in the client's `HOST` command (RFC 7151) that select it, matched
    /// as `sni` is.
    pub hosts: Vec<String>,
    /// For a route: client networks let in once a session is known to be for it (the SNI
    /// name, HOST or `USER name@route`), on top of `[access] allow`. Empty: all.
    pub allow: Networks,
    /// For a route: client networks kept out of it; wins over `allow`. Refused with 421.
    pub deny: Networks,
    /// How the gateway talks to the backend: `none` (plain FTP), `explicit` (AUTH TLS, then
    /// PBSZ 0 and PROT P after login) or `implicit` (TLS from the first byte).
    pub tls: BackendTlsMode,
    /// Extra CA bundle (PEM) trusted for the backend's certificate, on top of the system roots.
    pub ca: Option<PathBuf>,
    /// Name the backend's certificate must carry (and SNI). Default: the host of `address`.
    pub server_name: Option<String>,
    /// SHA-256 fingerprint of the backend's certificate (hex, colons allowed). When set, a
    /// certificate with this fingerprint is accepted instead of checking its chain.
    pub pin_sha256: Option<Fingerprint>,
    /// Accept any certificate from the backend. Only for tests: a warning is logged at start.
    pub insecure_skip_verify: bool,
    /// Client certificate chain and key (PEM) presented to the backend.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Newest TLS version offered to the backend: "1.2" caps it for old servers.
    pub max_tls_version: TlsVersion,
    /// Data connections toward a TLS backend: `private` (PROT P) or `clear` (PROT C).
    pub data_protection: DataProtection,
    /// How data connections to the backend are made: `passive` (the gateway connects to the
    /// backend's PASV/EPSV port) or `active` (the gateway sends PORT/EPRT and the backend
    /// connects to it), for backends that only do active mode.
    pub data_mode: BackendDataMode,
    /// PROXY protocol header at the start of each control connection to the backend, so it
    /// logs the real client: `off`, `v1` (text) or `v2` (binary).
    pub proxy_protocol: ProxyVersion,
    /// Connect to the backend as soon as a client connects and relay its greeting, as before
    /// the gateway greeted by itself. Off by default: the gateway greets, and connects only
    /// once the client has finished TLS, so connections that never get that far cost the
    /// backend nothing. Only for the default backend of a gateway without routes.
    pub relay_greeting: bool,
    /// Relay `STAT` without an argument to the backend. Off by default: the gateway answers
    /// it, since the backend's status names its server, version and internal addresses.
    pub relay_stat: bool,
    /// This backend's own command and name rules, in place of the global `[policy]`.
    pub policy: Option<PolicySettings>,
    /// This backend's own upload scanning, in place of the global `[scan]`: a table without
    /// `icap` turns scanning off for it.
    pub scan: Option<ScanSettings>,
}

impl Default for BackendSettings {
    fn default() -> Self {
        Self {
            addresses: vec![HostPort::loopback_ftp()],
            balance: Balance::RoundRobin,
            sni: Vec::new(),
            hosts: Vec::new(),
            allow: Networks::default(),
            deny: Networks::default(),
            tls: BackendTlsMode::None,
            ca: None,
            server_name: None,
            pin_sha256: None,
            insecure_skip_verify: false,
            client_cert: None,
            client_key: None,
            max_tls_version: TlsVersion::V1_3,
            data_protection: DataProtection::Private,
            data_mode: BackendDataMode::Passive,
            proxy_protocol: ProxyVersion::Off,
            relay_greeting: false,
            relay_stat: false,
            policy: None,
            scan: None,
        }
    }
}

impl BackendSettings {
    /// Checks one backend's settings; `key` is its table (`backend` or `routes.NAME`).
    fn validate(&self, key: &str, bad: Bad) -> Result<(), ConfigError> {
        if self.addresses.is_empty() {
            return Err(bad(
                format!("{key}.addresses"),
                "at least one HOST:PORT".into(),
            ));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(bad(
                format!("{key}.client_cert"),
                "set both client_cert and client_key, or neither".into(),
            ));
        }
        if let Some(policy) = &self.policy {
            policy.validate(&format!("{key}.policy"), bad)?;
        }
        if let Some(scan) = &self.scan {
            scan.validate(&format!("{key}.scan"), bad)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    #[default]
    Off,
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConnections,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendDataMode {
    #[default]
    Passive,
    Active,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendTlsMode {
    None,
    Explicit,
    Implicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataProtection {
    Private,
    Clear,
}

/// How sessions are spread over backends and their addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSettings {
    /// `USER name@route` sends the session to the route of that name, and the backend sees
    /// `USER name`. Off by default: `@` is common in user names, and a suffix that names no
    /// route is left alone either way.
    pub user_suffix: bool,
    /// Seconds between health checks of a backend with several addresses (each must greet
    /// within `health_timeout_secs`); 0 turns them off. A backend with one address is always
    /// tried: its sessions see its failures directly.
    pub health_interval_secs: u64,
    pub health_timeout_secs: u64,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        Self {
            user_suffix: false,
            health_interval_secs: 10,
            health_timeout_secs: 5,
        }
    }
}

impl RoutingSettings {
    /// `None` when health checks are off.
    pub fn health_interval(&self) -> Option<Duration> {
        (self.health_interval_secs > 0).then(|| Duration::from_secs(self.health_interval_secs))
    }
    pub fn health_timeout(&self) -> Duration {
        Duration::from_secs(self.health_timeout_secs)
    }
}

impl Settings {
    /// Every backend's own checks, then the routing rules: a name selects one route only.
    pub(super) fn validate_backends(&self, bad: Bad) -> Result<(), ConfigError> {
        self.backend.validate("backend", bad)?;
        if self.backend.relay_greeting && !self.routes.is_empty() {
            return Err(bad(
                "backend.relay_greeting".into(),
                "with routes the gateway greets before it knows the backend".into(),
            ));
        }
        if !self.backend.sni.is_empty() || !self.backend.hosts.is_empty() {
            return Err(bad(
                "backend.sni".into(),
                "the default backend takes what no route claims; put sni and hosts on a \
                 [routes.NAME] table"
                    .into(),
            ));
        }
        let mut claimed = std::collections::HashMap::new();
        for (name, route) in &self.routes {
            let key = format!("routes.{name}");
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name {
                return Err(bad(key, "route names are letters, digits, - and _".into()));
            }
            if name == "default" {
                // The default backend's name in logs, metrics, the audit log and its scanner.
                return Err(bad(key, "`default` is the [backend] table's route".into()));
            }
            route.validate(&key, bad)?;
            if route.relay_greeting {
                return Err(bad(
                    format!("{key}.relay_greeting"),
                    "a route is chosen after the greeting; only [backend] can relay one".into(),
                ));
            }
            for (kind, names) in [("sni", &route.sni), ("hosts", &route.hosts)] {
                for n in names {
                    let n = n.to_ascii_lowercase();
                    if let Some(other) = claimed.insert((kind, n.clone()), name) {
                        return Err(bad(
                            format!("{key}.{kind}"),
                            format!("`{n}` already selects route `{other}`"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
