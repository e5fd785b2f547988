//! Settings: a TOML file, then `FTPSGATE_*` environment variables and command-line flags on top,
//! validated into typed values. Every error names where the bad value came from, the key and
//! why, so `ftpsgate check` can tell an operator exactly what to fix.
//!
//! One file per group of tables, each type beside its own checks: [`backend`] (`[backend]`,
//! `[routes.NAME]`, `[routing]`), [`tls`], [`network`] (listeners, passive and active mode,
//! PROXY protocol, admin, timeouts, limits), [`access`] (address rules, bans, denied users), [`policy`] (command and name rules),
//! [`acme`] (`[tls.acme]`), shared [`values`], and the [`overrides`] that
//! flags and variables apply.

mod access;
mod acme;
mod backend;
mod icap_url;
mod network;
mod overrides;
mod policy;
mod scan;
mod tls;
mod values;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use access::{AccessSettings, AuditSettings};
pub use acme::{AcmeCert, AcmeSettings, Challenge, LETS_ENCRYPT};
pub use backend::{
    BackendDataMode, BackendSettings, BackendTlsMode, Balance, DataProtection, ProxyVersion,
    RoutingSettings,
};
pub(crate) use icap_url::IcapUrl;
pub use network::{
    ActiveSettings, AdminSettings, Limits, ListenSettings, PassiveSettings, ProxyProtocolSettings,
    Timeouts,
};
pub use overrides::Overrides;
pub use policy::PolicySettings;
pub use scan::{FailMode, Oversize, RouteRules, ScanSettings};
pub use tls::{CertPair, CertUser, ClientAuth, ReuseMode, TlsSettings, TlsVersion};
pub use values::{Fingerprint, HostPort, Networks, PortRange, Switch};

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

/// What each table's check calls to build its error: (key, why) -> the error naming the origin.
type Bad<'a> = &'a dyn Fn(String, String) -> ConfigError;

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
    pub access: AccessSettings,
    pub audit: AuditSettings,
    /// Command and name rules for every session; a backend's own `policy` replaces them.
    pub policy: PolicySettings,
    /// Uploads scanned over ICAP before the backend sees them; a backend's own `scan` replaces
    /// it.
    pub scan: ScanSettings,
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
            access: AccessSettings::default(),
            audit: AuditSettings::default(),
            policy: PolicySettings::default(),
            scan: ScanSettings::default(),
        }
    }
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

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |key: String, why: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key,
            why,
        };
        self.listen.validate(&bad)?;
        self.validate_backends(&bad)?;
        if self.greeting.is_empty()
            || self.greeting.len() > 512
            || self.greeting.chars().any(char::is_control)
        {
            return Err(bad(
                "greeting".into(),
                "one line of text, 1 to 512 bytes, no control characters".into(),
            ));
        }
        self.tls.validate(&bad)?;
        self.passive.validate(&bad)?;
        self.timeouts.validate(&bad)?;
        self.access.validate(&bad)?;
        self.audit.validate(&bad)?;
        self.policy.validate("policy", &bad)?;
        self.scan.validate("scan", &bad)?;
        self.validate_oversize(&bad)?;
        self.limits.validate(&bad)
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
    fn acme_is_a_table_or_a_flag_and_never_beside_certificate_files() {
        let ok = parse(
            "[tls.acme]\ndomains = [\"ftp.example.com\"]\nchallenge = \"tls-alpn-01\"\n\
             sni = [[\"other.example.org\"]]\n",
        )
        .expect("valid");
        let acme = ok.tls.acme.expect("on");
        assert_eq!(acme.challenge, Challenge::TlsAlpn01);
        assert_eq!(acme.directory, LETS_ENCRYPT);
        assert_eq!(acme.certificates().len(), 2);
        let err = parse(
            "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[tls.acme]\ndomains = [\"a.example\"]\n",
        )
        .expect_err("files and ACME");
        assert!(
            err.to_string().contains("certificates come from ACME"),
            "{err}"
        );
        let err = parse("[tls.acme]\n").expect_err("no domain");
        assert!(err.to_string().contains("tls.acme.domains"), "{err}");
        let flags = Overrides {
            acme_domains: vec!["ftp.example.com".into()],
            acme_contact: Some("ops@example.com".into()),
            ..Overrides::default()
        };
        let s = Settings::load(None, &flags).expect("flags alone");
        let acme = s.tls.acme.expect("--acme-domains turns it on");
        assert_eq!(
            acme.contact_url().as_deref(),
            Some("mailto:ops@example.com")
        );
    }

    #[test]
    fn routes_are_checked_like_the_backend_and_names_select_one_route_only() {
        let ok = parse(
            "[routes.sales]\naddresses = [\"10.0.0.1:21\", \"10.0.0.2:21\"]\n\
             balance = \"least-connections\"\nsni = [\"a.example\"]\n",
        )
        .expect("valid route");
        let addresses: Vec<String> = ok.routes["sales"]
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addresses, ["10.0.0.1:21", "10.0.0.2:21"]);
        assert_eq!(ok.routes["sales"].balance, Balance::LeastConnections);
        let err = parse("[routes.sales]\naddress = \"nohostport\"\n").expect_err("bad address");
        assert!(
            err.to_string().contains("`nohostport` is not HOST:PORT"),
            "{err}"
        );
        let err = parse("[routes.sales]\naddresses = []\n").expect_err("no address");
        assert!(err.to_string().contains("routes.sales.addresses"), "{err}");
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

    /// No refusal records at all would leave an audit without what it is for.
    #[test]
    fn audit_refusals_per_sec_must_be_at_least_one() {
        let err = parse("[audit]\nrefusals_per_sec = 0\n").expect_err("zero");
        assert!(err.to_string().contains("audit.refusals_per_sec"), "{err}");
        let ok = parse("[audit]\nrefusals_per_sec = 1\n").expect("one");
        assert_eq!(ok.audit.refusals_per_sec, 1);
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
        let err = parse("[backend]\naddress = \"h:0\"\n").expect_err("no port");
        assert!(
            err.to_string().contains("`0` is not a port number"),
            "{err}"
        );
        let both = "[backend]\naddress = \"a:21\"\naddresses = [\"b:21\"]\n";
        assert!(parse(both).is_err(), "address and addresses are one key");
        let err = parse("[tls]\ncert = \"/x.pem\"\n").expect_err("cert without key");
        assert!(err.to_string().contains("tls.cert"), "{err}");
    }

    #[test]
    fn flags_win_over_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "[backend]\naddress = \"10.0.0.1:21\"\n").expect("write");
        let o = Overrides {
            backend: Some("127.0.0.1:2100".parse().expect("address")),
            passive_ports: Some("40000-40009".parse().expect("range")),
            ..Default::default()
        };
        let s = Settings::load(Some(&path), &o).expect("valid");
        assert_eq!(s.backend.addresses, ["127.0.0.1:2100".parse().expect("a")]);
        assert_eq!(s.passive.ports.0, 40000..=40009);
    }

    #[test]
    fn a_bad_pin_names_its_key() {
        let err = parse("[backend]\npin_sha256 = \"zz\"\n").expect_err("bad pin");
        assert!(err.to_string().contains("pin_sha256 = \"zz\""), "{err}");
        assert!(
            err.to_string().contains("not a SHA-256 fingerprint"),
            "{err}"
        );
    }

    #[test]
    fn replicas_own_disjoint_slices_of_the_passive_range() {
        let slice = |i: u16| {
            let s = parse(&format!(
                "[passive]\nports = \"50000-50999\"\nreplicas = 4\nreplica_index = {i}\n\
                 external_address = \"127.0.0.{i}\"\n"
            ))
            .expect("valid");
            (s.passive.range(), s.passive.external_ip().expect("ip"))
        };
        assert_eq!(slice(0).0, 50000..=50249);
        assert_eq!(slice(3).0, 50750..=50999);
        assert_eq!(slice(2).1, Some("127.0.0.2".parse().expect("ip")));
        // No lookup here (tests stay off the network): the template alone.
        let mut s = Settings::default();
        s.passive.external_address = Some("ftp-{replica}.example.com".into());
        s.passive.replica_index = 1;
        assert_eq!(
            s.passive.external_host().as_deref(),
            Some("ftp-1.example.com")
        );
        let err = parse("[passive]\nreplicas = 2\nreplica_index = 2\n").expect_err("index");
        assert!(err.to_string().contains("passive.replica_index"), "{err}");
    }
}
