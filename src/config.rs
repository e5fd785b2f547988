//! Settings: a TOML file, then `FTPSGATE_*` environment variables and command-line flags on top,
//! validated into typed values. Every error names where the bad value came from, the key and
//! why, so `ftpsgate check` can tell an operator exactly what to fix.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{origin}: `{key}`: {why}")]
    Invalid {
        origin: String,
        key: String,
        why: String,
    },
}

/// Everything the gateway needs to run. Field names are the TOML keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The text of the gateway's own `220` greeting. The backend's greeting names its server
    /// and version, so it is only relayed with `backend.relay_greeting`.
    pub greeting: String,
    pub listen: ListenSettings,
    /// The default backend: where a session goes when no route claims it.
    pub backend: BackendSettings,
    /// Named backends, each with its own addresses and TLS settings, and the SNI names and
    /// HOST names (RFC 7151) that send a session to it. `USER name@route` picks one too when
    /// `routing.user_suffix` is on.
    pub routes: std::collections::BTreeMap<String, BackendSettings>,
    pub routing: RoutingSettings,
    pub passive: PassiveSettings,
    pub active: ActiveSettings,
    pub tls: TlsSettings,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub admin: AdminSettings,
    pub proxy_protocol: ProxyProtocolSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            greeting: "FTP gateway ready.".into(),
            listen: ListenSettings::default(),
            backend: BackendSettings::default(),
            routes: Default::default(),
            routing: RoutingSettings::default(),
            passive: PassiveSettings::default(),
            active: ActiveSettings::default(),
            tls: TlsSettings::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            admin: AdminSettings::default(),
            proxy_protocol: ProxyProtocolSettings::default(),
        }
    }
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

/// PROXY protocol v2 from load balancers in front of the gateway.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyProtocolSettings {
    /// Networks of the balancers whose PROXY v2 headers are believed (e.g. "10.0.0.0/8").
    /// Connections from them, control and data alike, must start with a header; from anyone
    /// else none is read. Empty: no PROXY protocol.
    pub trusted: Trusted,
}

/// The load balancers whose PROXY headers are believed: CIDR networks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Trusted(Vec<ipnet::IpNet>);

impl Trusted {
    pub fn new(nets: Vec<ipnet::IpNet>) -> Self {
        Trusted(nets)
    }

    /// An IPv4-mapped IPv6 address counts as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The admin listener: `/metrics`, `/healthz`, `/readyz`. Off unless `listen` is set; keep it on
/// loopback or a management network, since it needs no credentials.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    pub listen: Option<SocketAddr>,
}

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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendSettings {
    /// `host:port` of the internal FTP server. Resolved at each connect, so a Kubernetes
    /// Service name works.
    pub address: String,
    /// Several `host:port` addresses of one FTP service (replicas sharing storage); when set,
    /// used instead of `address`. Unhealthy ones are skipped.
    pub addresses: Vec<String>,
    /// How a session picks among `addresses`: `round-robin` or `least-connections`.
    pub balance: Balance,
    /// For a route: SNI names (from the client's TLS handshake) that select it.
    /// Case-insensitive; `*.example.com` matches one label, and an exact name elsewhere wins.
    pub sni: Vec<String>,
    /// For a route: names in the client's `HOST` command (RFC 7151) that select it, matched
    /// as `sni` is.
    pub hosts: Vec<String>,
    /// How the gateway talks to the backend: `none` (plain FTP), `explicit` (AUTH TLS, then
    /// PBSZ 0 and PROT P after login) or `implicit` (TLS from the first byte).
    pub tls: BackendTlsMode,
    /// Extra CA bundle (PEM) trusted for the backend's certificate, on top of the system roots.
    pub ca: Option<PathBuf>,
    /// Name the backend's certificate must carry (and SNI). Default: the host of `address`.
    pub server_name: Option<String>,
    /// SHA-256 fingerprint of the backend's certificate (hex, colons allowed). When set, a
    /// certificate with this fingerprint is accepted instead of checking its chain.
    pub pin_sha256: Option<String>,
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

impl BackendSettings {
    /// The addresses to spread sessions over: `addresses`, or `address` alone.
    pub fn all_addresses(&self) -> Vec<&str> {
        if self.addresses.is_empty() {
            vec![self.address.as_str()]
        } else {
            self.addresses.iter().map(String::as_str).collect()
        }
    }

    /// Checks one backend's settings; `key` is its table (`backend` or `routes.NAME`).
    fn validate(
        &self,
        key: &str,
        bad: &dyn Fn(String, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        for a in self.all_addresses() {
            split_host_port(a).map_err(|why| bad(format!("{key}.address"), why))?;
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(bad(
                format!("{key}.client_cert"),
                "set both client_cert and client_key, or neither".into(),
            ));
        }
        if let Some(pin) = &self.pin_sha256 {
            parse_fingerprint(pin).map_err(|why| bad(format!("{key}.pin_sha256"), why))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendDataMode {
    #[default]
    Passive,
    Active,
}

impl Default for BackendSettings {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:21".into(),
            addresses: Vec::new(),
            balance: Balance::RoundRobin,
            sni: Vec::new(),
            hosts: Vec::new(),
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
        }
    }
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveSettings {
    /// The address clients reach the gateway on, put in 227 replies. Unset: the local address
    /// of the client's control connection, which is right when there is no NAT in front.
    pub external_address: Option<String>,
    /// Ports leased to passive data connections, `LO-HI`. Open these in the firewall.
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
            ports: PortRange(50000..=50099),
            replicas: 1,
            replica_index: 0,
        }
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    #[default]
    On,
    Off,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM certificate chain. Unset (with `key` unset): a self-signed pair is generated at start.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    pub min_version: TlsVersion,
    /// Must a TLS data connection resume the control connection's TLS session? This proves it
    /// comes from the same client, as vsftpd, ProFTPD and FileZilla Server check.
    pub data_session_reuse: ReuseMode,
    /// Refuse `USER` and everything but `AUTH`, `FEAT`, `HELP`, `QUIT`, `HOST`, `SYST`, `NOOP`
    /// until the control channel is encrypted.
    pub required: bool,
    /// Let clients choose `PROT C` (unencrypted data connections).
    pub allow_clear_data: bool,
    /// More certificates, chosen by the name the client asks for (SNI). Each serves the DNS
    /// names in its own subjectAltName; `cert`/`key` stay the default for other names and for
    /// clients that send no SNI.
    pub sni: Vec<CertPair>,
    /// Reload the certificates when their files change (SIGHUP always reloads).
    pub watch: bool,
    /// Client certificates: `none`, `optional` (checked when presented) or `required`.
    pub client_auth: ClientAuth,
    /// CA bundle (PEM) that client certificates must chain to; needed unless `client_auth` is
    /// `none`.
    pub client_ca: Option<PathBuf>,
}

/// A PEM certificate chain and its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    None,
    Optional,
    Required,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            min_version: TlsVersion::V1_2,
            data_session_reuse: ReuseMode::Require,
            required: true,
            allow_clear_data: false,
            sni: Vec::new(),
            watch: true,
            client_auth: ClientAuth::None,
            client_ca: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReuseMode {
    /// No session resumption on data connections at all.
    Off,
    /// Resume when the client offers; accept full handshakes too.
    Allow,
    /// Refuse a data connection that does not resume this FTP session's TLS session.
    Require,
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

/// An inclusive port range written `LO-HI`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange(pub RangeInclusive<u16>);

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (lo, hi) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not LO-HI"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("`{p}` is not a port number"))
        };
        let (lo, hi) = (port(lo)?, port(hi)?);
        if lo == 0 || lo > hi {
            return Err(format!("`{s}`: need 1 <= LO <= HI"));
        }
        Ok(PortRange(lo..=hi))
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<PortRange> for String {
    fn from(r: PortRange) -> String {
        r.to_string()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0.start(), self.0.end())
    }
}

/// Values given on the command line or in `FTPSGATE_*` variables; they win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Vec<SocketAddr>,
    pub implicit_listen: Vec<SocketAddr>,
    pub backend: Option<String>,
    pub passive_ports: Option<PortRange>,
    pub external_address: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub backend_tls: Option<BackendTlsMode>,
    pub backend_ca: Option<PathBuf>,
    pub backend_insecure: bool,
    pub admin_listen: Option<SocketAddr>,
    pub replica_index: Option<u16>,
}

impl Settings {
    /// Reads `file` (or starts from the defaults), applies `overrides`, validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let mut settings = match file {
            Some(path) => Self::from_file(path)?,
            None => Settings::default(),
        };
        settings.apply(overrides);
        let origin = match file {
            Some(path) => format!("{} (with flags and FTPSGATE_* variables)", path.display()),
            None => "built-in defaults (with flags and FTPSGATE_* variables)".into(),
        };
        settings.validate(&origin)?;
        Ok(settings)
    }

    fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            file: path.into(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    fn apply(&mut self, o: &Overrides) {
        if !o.listen.is_empty() {
            self.listen.explicit = o.listen.clone();
        }
        if !o.implicit_listen.is_empty() {
            self.listen.implicit = o.implicit_listen.clone();
        }
        if let Some(b) = &o.backend {
            self.backend.address = b.clone();
        }
        if let Some(p) = &o.passive_ports {
            self.passive.ports = p.clone();
        }
        if let Some(e) = &o.external_address {
            self.passive.external_address = Some(e.clone());
        }
        if let Some(c) = &o.cert {
            self.tls.cert = Some(c.clone());
        }
        if let Some(k) = &o.key {
            self.tls.key = Some(k.clone());
        }
        if let Some(t) = o.backend_tls {
            self.backend.tls = t;
        }
        if let Some(ca) = &o.backend_ca {
            self.backend.ca = Some(ca.clone());
        }
        if o.backend_insecure {
            self.backend.insecure_skip_verify = true;
        }
        if let Some(a) = o.admin_listen {
            self.admin.listen = Some(a);
        }
        if let Some(i) = o.replica_index {
            self.passive.replica_index = i;
        }
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key: key.to_string(),
            why,
        };
        if self.listen.explicit.is_empty() && self.listen.implicit.is_empty() {
            return Err(bad(
                "listen",
                "no listener: set listen.explicit or listen.implicit".into(),
            ));
        }
        self.validate_backends(&|key, why| bad(&key, why))?;
        if self.greeting.is_empty()
            || self.greeting.len() > 512
            || self.greeting.chars().any(char::is_control)
        {
            return Err(bad(
                "greeting",
                "one line of text, 1 to 512 bytes, no control characters".into(),
            ));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(bad(
                "tls.cert",
                "set both tls.cert and tls.key, or neither (a self-signed pair is then generated)"
                    .into(),
            ));
        }
        if self.tls.client_auth != ClientAuth::None && self.tls.client_ca.is_none() {
            return Err(bad(
                "tls.client_ca",
                "client_auth needs a CA bundle to check client certificates against".into(),
            ));
        }
        if !self.tls.sni.is_empty() && self.tls.cert.is_none() {
            return Err(bad(
                "tls.sni",
                "SNI certificates need a default tls.cert/tls.key for clients without SNI".into(),
            ));
        }
        let p = &self.passive;
        if p.replicas == 0 || p.replica_index >= p.replicas {
            return Err(bad(
                "passive.replica_index",
                format!(
                    "{} is not a replica of {} (0 to {})",
                    p.replica_index,
                    p.replicas,
                    p.replicas.saturating_sub(1)
                ),
            ));
        }
        if p.ports.0.len() < usize::from(p.replicas) {
            return Err(bad(
                "passive.replicas",
                format!(
                    "{} ports cannot be shared by {} replicas",
                    p.ports.0.len(),
                    p.replicas
                ),
            ));
        }
        self.external_ip()
            .map_err(|why| bad("passive.external_address", why))?;
        let t = &self.timeouts;
        for (key, secs) in [
            ("timeouts.tls_handshake_secs", t.tls_handshake_secs),
            ("timeouts.login_secs", t.login_secs),
            ("timeouts.idle_secs", t.idle_secs),
            ("timeouts.data_connection_secs", t.data_connection_secs),
            ("timeouts.data_stall_secs", t.data_stall_secs),
            ("timeouts.client_write_secs", t.client_write_secs),
            ("timeouts.backend_connect_secs", t.backend_connect_secs),
            ("timeouts.backend_reply_secs", t.backend_reply_secs),
        ] {
            if secs == 0 {
                return Err(bad(key, "must be at least 1 second".into()));
            }
        }
        if self.limits.max_sessions == 0 || self.limits.max_sessions_per_ip == 0 {
            return Err(bad("limits.max_sessions", "must be at least 1".into()));
        }
        if self.limits.max_passive_per_ip == 0 {
            return Err(bad(
                "limits.max_passive_per_ip",
                "must be at least 1".into(),
            ));
        }
        if !(512..=1 << 20).contains(&self.limits.max_line_length) {
            return Err(bad(
                "limits.max_line_length",
                "must be between 512 (RFC 959) and 1048576".into(),
            ));
        }
        Ok(())
    }

    /// Every backend's own checks, then the routing rules: a name selects one route only.
    fn validate_backends(
        &self,
        bad: &dyn Fn(String, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
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

    /// This replica's slice of `passive.ports` (all of it without scale-out).
    pub fn passive_range(&self) -> RangeInclusive<u16> {
        let p = &self.passive;
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
        self.passive
            .external_address
            .as_ref()
            .map(|h| h.replace("{replica}", &self.passive.replica_index.to_string()))
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
}

/// Parses a SHA-256 fingerprint written as 64 hex digits, optionally separated by colons.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "`{s}` is not a SHA-256 fingerprint (64 hex digits)"
        ));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("`{s}` is not hex"))?;
    }
    Ok(out)
}

/// Splits `host:port` (or `[v6]:port`) and checks the port.
pub fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}` is not HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{s}`: `{port}` is not a port number")),
        Ok(p) => Ok((host, p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.toml");
        std::fs::write(&path, text).expect("write");
        Settings::load(Some(&path), &Overrides::default())
    }

    #[test]
    fn routes_are_checked_like_the_backend_and_names_select_one_route_only() {
        let ok = parse(
            "[routes.sales]\naddresses = [\"10.0.0.1:21\", \"10.0.0.2:21\"]\n\
             balance = \"least-connections\"\nsni = [\"a.example\"]\n",
        )
        .expect("valid route");
        assert_eq!(
            ok.routes["sales"].all_addresses(),
            ["10.0.0.1:21", "10.0.0.2:21"]
        );
        assert_eq!(ok.routes["sales"].balance, Balance::LeastConnections);
        let err = parse("[routes.sales]\naddress = \"nohostport\"\n").expect_err("bad address");
        assert!(err.to_string().contains("routes.sales.address"), "{err}");
        let err =
            parse("[routes.a]\nhosts = [\"X.example\"]\n[routes.b]\nhosts = [\"x.example\"]\n")
                .expect_err("one name, two routes");
        assert!(
            err.to_string().contains("already selects route `a`"),
            "{err}"
        );
        let err = parse("[backend]\nsni = [\"a.example\"]\n").expect_err("sni on default");
        assert!(err.to_string().contains("backend.sni"), "{err}");
        let err = parse("[routes.\"a b\"]\n").expect_err("bad name");
        assert!(err.to_string().contains("route names"), "{err}");
    }

    #[test]
    fn example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ftpsgate.toml");
        let s = Settings::load(Some(&path), &Overrides::default()).expect("example is valid");
        assert_eq!(s.tls.data_session_reuse, ReuseMode::Require);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[backend]\nadress = \"x:21\"\n").expect_err("typo");
        assert!(err.to_string().contains("adress"), "{err}");
        assert!(err.to_string().contains("t.toml"), "{err}");
    }

    #[test]
    fn bad_value_names_key_and_reason() {
        let err = parse("[passive]\nports = \"60000-50000\"\n").expect_err("reversed");
        assert!(err.to_string().contains("LO <= HI"), "{err}");
        let err = parse("[backend]\naddress = \"nohostport\"\n").expect_err("no port");
        assert!(err.to_string().contains("backend.address"), "{err}");
        let err = parse("[tls]\ncert = \"/x.pem\"\n").expect_err("cert without key");
        assert!(err.to_string().contains("tls.cert"), "{err}");
    }

    #[test]
    fn flags_win_over_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "[backend]\naddress = \"10.0.0.1:21\"\n").expect("write");
        let o = Overrides {
            backend: Some("127.0.0.1:2100".into()),
            passive_ports: Some("40000-40009".parse().expect("range")),
            ..Default::default()
        };
        let s = Settings::load(Some(&path), &o).expect("valid");
        assert_eq!(s.backend.address, "127.0.0.1:2100");
        assert_eq!(s.passive.ports.0, 40000..=40009);
    }

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_fingerprint(&hex), Ok([0xab; 32]));
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons), Ok([0xab; 32]));
        assert!(parse_fingerprint("abcd").is_err());
        let err = parse("[backend]\npin_sha256 = \"zz\"\n").expect_err("bad pin");
        assert!(err.to_string().contains("backend.pin_sha256"), "{err}");
    }

    #[test]
    fn replicas_own_disjoint_slices_of_the_passive_range() {
        let slice = |i: u16| {
            let s = parse(&format!(
                "[passive]\nports = \"50000-50999\"\nreplicas = 4\nreplica_index = {i}\n\
                 external_address = \"127.0.0.{i}\"\n"
            ))
            .expect("valid");
            (s.passive_range(), s.external_ip().expect("ip"))
        };
        assert_eq!(slice(0).0, 50000..=50249);
        assert_eq!(slice(3).0, 50750..=50999);
        assert_eq!(slice(2).1, Some("127.0.0.2".parse().expect("ip")));
        // No lookup here (tests stay off the network): the template alone.
        let mut s = Settings::default();
        s.passive.external_address = Some("ftp-{replica}.example.com".into());
        s.passive.replica_index = 1;
        assert_eq!(s.external_host().as_deref(), Some("ftp-1.example.com"));
        let err = parse("[passive]\nreplicas = 2\nreplica_index = 2\n").expect_err("index");
        assert!(err.to_string().contains("passive.replica_index"), "{err}");
    }

    #[test]
    fn only_listed_networks_are_trusted() {
        let t = Trusted::new(vec!["10.0.0.0/8".parse().expect("net")]);
        assert!(t.contains("10.1.2.3".parse().expect("ip")));
        assert!(
            t.contains("::ffff:10.1.2.3".parse().expect("ip")),
            "mapped IPv4"
        );
        assert!(!t.contains("192.0.2.1".parse().expect("ip")));
        assert!(!Trusted::default().contains("10.1.2.3".parse().expect("ip")));
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("ftp.internal:21"), Ok(("ftp.internal", 21)));
        assert_eq!(split_host_port("[::1]:2121"), Ok(("::1", 2121)));
        assert!(split_host_port("host:0").is_err());
    }
}
