//! Values given on the command line or in `FTPSGATE_*` variables: they win over the file.
//! Each is written once, here: its flag, its variable and its help come from the field, and
//! `ftpsgate run`, `check` and `doctor` all take the same set.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::{AcmeSettings, BackendTlsMode, Challenge, HostPort, Networks, PortRange, Settings};

#[derive(Debug, Clone, Default, Args)]
pub struct Overrides {
    /// Explicit FTPS listener, e.g. 0.0.0.0:21 (repeatable; comma-separated in the variable).
    #[arg(long, env = "FTPSGATE_LISTEN", value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,
    /// Implicit FTPS listener, e.g. 0.0.0.0:990 (repeatable).
    #[arg(long, env = "FTPSGATE_IMPLICIT_LISTEN", value_delimiter = ',')]
    pub implicit_listen: Vec<SocketAddr>,
    /// The internal FTP server, HOST:PORT.
    #[arg(long, env = "FTPSGATE_BACKEND")]
    pub backend: Option<HostPort>,
    /// Passive data port (PORT) or range (LO-HI). Open it in the firewall.
    #[arg(long, env = "FTPSGATE_PASSIVE_PORTS")]
    pub passive_ports: Option<PortRange>,
    /// Address put in PASV replies: the one clients reach the gateway on (IP or DNS name).
    #[arg(long, env = "FTPSGATE_EXTERNAL_ADDRESS")]
    pub external_address: Option<String>,
    /// PEM certificate chain.
    #[arg(long, env = "FTPSGATE_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, env = "FTPSGATE_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// TLS toward the backend: none, explicit (AUTH TLS) or implicit.
    #[arg(long, env = "FTPSGATE_BACKEND_TLS", value_enum)]
    pub backend_tls: Option<BackendTlsMode>,
    /// Extra CA bundle (PEM) to verify the backend's certificate with.
    #[arg(long, env = "FTPSGATE_BACKEND_CA")]
    pub backend_ca: Option<PathBuf>,
    /// Do not verify the backend's certificate (tests only; logged as a warning).
    #[arg(long, env = "FTPSGATE_BACKEND_INSECURE")]
    pub backend_insecure: bool,
    /// Admin listener for /metrics, /healthz and /readyz, e.g. 127.0.0.1:9100 (off if unset).
    #[arg(long, env = "FTPSGATE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// This replica's index, from 0, when `passive.replicas` share the passive range.
    #[arg(long, env = "FTPSGATE_REPLICA_INDEX")]
    pub replica_index: Option<u16>,
    /// Client networks let in, CIDR (repeatable; comma-separated in the variable).
    #[arg(long, env = "FTPSGATE_ALLOW", value_delimiter = ',')]
    pub allow: Vec<ipnet::IpNet>,
    /// Client networks kept out, CIDR (repeatable); wins over --allow.
    #[arg(long, env = "FTPSGATE_DENY", value_delimiter = ',')]
    pub deny: Vec<ipnet::IpNet>,
    /// Users refused by the gateway, never sent to the backend (repeatable).
    #[arg(long, env = "FTPSGATE_DENY_USERS", value_delimiter = ',')]
    pub deny_users: Vec<String>,
    /// IPv6 prefix length one client is counted by, for bans and per-address limits (1-128).
    #[arg(long, env = "FTPSGATE_IPV6_PREFIX")]
    pub ipv6_prefix: Option<u8>,
    /// Domains whose certificate emails may log in with `tls.client_cert_user = "email"`
    /// (repeatable; comma-separated in the variable).
    #[arg(
        long,
        env = "FTPSGATE_CLIENT_CERT_EMAIL_DOMAINS",
        value_delimiter = ','
    )]
    pub client_cert_email_domains: Vec<String>,
    /// Audit log: one JSON line per transfer, login, ban and refusal.
    #[arg(long, env = "FTPSGATE_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Put each transfer's SHA-256 in its audit record.
    #[arg(long, env = "FTPSGATE_AUDIT_SHA256")]
    pub audit_sha256: bool,
    /// Certificates from ACME for these names, the first the subject (repeatable;
    /// comma-separated in the variable). Turns `[tls.acme]` on, its defaults for the rest.
    #[arg(long, env = "FTPSGATE_ACME_DOMAINS", value_delimiter = ',')]
    pub acme_domains: Vec<String>,
    /// The ACME directory URL (default: Let's Encrypt production).
    #[arg(long, env = "FTPSGATE_ACME_DIRECTORY")]
    pub acme_directory: Option<String>,
    /// An email address the ACME CA may write to.
    #[arg(long, env = "FTPSGATE_ACME_CONTACT")]
    pub acme_contact: Option<String>,
    /// The ACME challenge: http-01 (port 80) or tls-alpn-01 (port 443).
    #[arg(long, env = "FTPSGATE_ACME_CHALLENGE", value_parser = parse_challenge)]
    pub acme_challenge: Option<Challenge>,
    /// Where the ACME account and certificates are kept (a 0700 directory).
    #[arg(long, env = "FTPSGATE_ACME_STATE_DIR")]
    pub acme_state_dir: Option<PathBuf>,
    /// Scan uploads with this ICAP service before the backend sees them
    /// (icap://host[:port]/service).
    #[arg(long, env = "FTPSGATE_SCAN_ICAP")]
    pub scan_icap: Option<String>,
    /// Where uploads wait for their verdict past scan.spool_memory (a 0700 directory).
    #[arg(long, env = "FTPSGATE_SCAN_SPOOL_DIR")]
    pub scan_spool_dir: Option<PathBuf>,
}

fn parse_challenge(s: &str) -> Result<Challenge, String> {
    match s {
        "http-01" => Ok(Challenge::Http01),
        "tls-alpn-01" => Ok(Challenge::TlsAlpn01),
        _ => Err("http-01 or tls-alpn-01".into()),
    }
}

impl Settings {
    pub(super) fn apply(&mut self, o: &Overrides) {
        if !o.listen.is_empty() {
            self.listen.explicit = o.listen.clone();
        }
        if !o.implicit_listen.is_empty() {
            self.listen.implicit = o.implicit_listen.clone();
        }
        if let Some(b) = &o.backend {
            self.backend.addresses = vec![b.clone()];
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
        if !o.allow.is_empty() {
            self.access.allow = Networks::new(o.allow.clone());
        }
        if !o.deny.is_empty() {
            self.access.deny = Networks::new(o.deny.clone());
        }
        if !o.deny_users.is_empty() {
            self.access.deny_users = o.deny_users.clone();
        }
        if let Some(p) = o.ipv6_prefix {
            self.access.ipv6_prefix = p;
        }
        if !o.client_cert_email_domains.is_empty() {
            self.tls.client_cert_email_domains = o.client_cert_email_domains.clone();
        }
        if let Some(log) = &o.audit_log {
            self.audit.log = Some(log.clone());
        }
        if o.audit_sha256 {
            self.audit.sha256 = true;
        }
        if let Some(icap) = &o.scan_icap {
            self.scan.icap = Some(icap.clone());
        }
        if let Some(dir) = &o.scan_spool_dir {
            self.scan.spool_dir = dir.clone();
        }
        self.apply_acme(o);
    }

    /// The `--acme-*` flags: `--acme-domains` turns ACME on; the others change a table that
    /// the file or that flag made.
    fn apply_acme(&mut self, o: &Overrides) {
        if !o.acme_domains.is_empty() {
            self.tls
                .acme
                .get_or_insert_with(AcmeSettings::default)
                .domains = o.acme_domains.clone();
        }
        let Some(acme) = self.tls.acme.as_mut() else {
            return;
        };
        if let Some(d) = &o.acme_directory {
            acme.directory = d.clone();
        }
        if let Some(c) = &o.acme_contact {
            acme.contact = Some(c.clone());
        }
        if let Some(c) = o.acme_challenge {
            acme.challenge = c;
        }
        if let Some(d) = &o.acme_state_dir {
            acme.state_dir = d.clone();
        }
    }
}
