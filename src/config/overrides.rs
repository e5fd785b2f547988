//! Values given on the command line or in `FTPSGATE_*` variables: they win over the file.
//! Each is written once, here: its flag, its variable and its help come from the field, and
//! `ftpsgate run`, `check` and `doctor` all take the same set.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::{BackendTlsMode, HostPort, PortRange, Settings};

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
    /// Passive data port range, LO-HI. Open it in the firewall.
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
    }
}
