//! `ftpsgate doctor`: the passive-mode checklist that breaks real deployments, walked against
//! a configuration from the machine the gateway runs on. Each check prints ok, warn or fail
//! with a fix; any fail makes the command exit non-zero.

use std::fmt;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::BackendSettings;
use crate::config::Settings;
use crate::ftp::addr;
use crate::tls::backend::BackendTls;
use crate::tls::store::CertStore;
use crate::tls::{self, TlsError};
use crate::upstream::{self, Backend, BackendError};

/// A certificate this close to expiry is a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Ok => " ok ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Debug)]
pub struct Check {
    pub level: Level,
    pub what: &'static str,
    pub detail: String,
    pub fix: Option<String>,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}", self.level, self.what, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n       fix: {fix}")?;
        }
        Ok(())
    }
}

fn check(level: Level, what: &'static str, detail: impl Into<String>) -> Check {
    Check {
        level,
        what,
        detail: detail.into(),
        fix: None,
    }
}

fn with_fix(mut c: Check, fix: impl Into<String>) -> Check {
    c.fix = Some(fix.into());
    c
}

/// Backend credentials for the passive-mode checks (they need a login).
pub struct Login {
    pub user: String,
    pub password: String,
}

/// Runs every check and returns them in order.
pub async fn run(settings: &Settings, login: Option<&Login>) -> Vec<Check> {
    let mut out = Vec::new();
    out.extend(backend_checks(settings, login).await);
    out.push(pool_ports(settings));
    out.extend(external_address(settings));
    out.extend(certificate(settings));
    out.push(fd_limit(settings));
    out
}

/// Firewall rules for the control ports and the passive range, ready to paste.
pub fn firewall(settings: &Settings) -> String {
    let list = settings
        .listen
        .all()
        .map(|a| a.port().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let range = settings.passive.range();
    let (lo, hi) = (range.start(), range.end());
    format!(
        "Open these TCP ports to clients (control, then the passive range):\n\
         \x20 iptables -A INPUT -p tcp -m multiport --dports {list} -j ACCEPT\n\
         \x20 iptables -A INPUT -p tcp --dport {lo}:{hi} -j ACCEPT\n\
         \x20 nft add rule inet filter input tcp dport {{ {} }} accept\n\
         \x20 nft add rule inet filter input tcp dport {lo}-{hi} accept\n\
         No FTP helper (nf_conntrack_ftp) is needed: the control channel is encrypted, and the\n\
         gateway answers PASV with these ports itself.",
        list.replace(',', ", ")
    )
}

/// Every address of the default backend and of each route.
async fn backend_checks(settings: &Settings, login: Option<&Login>) -> Vec<Check> {
    let mut out = Vec::new();
    let backends = std::iter::once(("backend".to_string(), &settings.backend)).chain(
        settings
            .routes
            .iter()
            .map(|(n, b)| (format!("routes.{n}"), b)),
    );
    for (key, b) in backends {
        let tls = match BackendTls::from_settings(b) {
            Ok(t) => t,
            Err(e) => {
                out.push(with_fix(
                    check(Level::Fail, "backend", format!("[{key}] TLS settings: {e}")),
                    format!("fix the [{key}] TLS keys (ca, pin_sha256, client_cert/client_key)"),
                ));
                continue;
            }
        };
        for address in b.all_addresses() {
            // The default backend's lines name the address alone; a route's say which route.
            let label = if key == "backend" {
                address.to_string()
            } else {
                format!("{key} {address}")
            };
            let to = Target {
                settings: b,
                tls: tls.as_ref(),
                address,
                label: &label,
            };
            out.extend(address_checks(settings, to, login).await);
        }
    }
    out
}

/// One backend address to check.
struct Target<'a> {
    settings: &'a BackendSettings,
    tls: Option<&'a BackendTls>,
    address: &'a str,
    /// How the lines name it.
    label: &'a str,
}

async fn address_checks(settings: &Settings, to: Target<'_>, login: Option<&Login>) -> Vec<Check> {
    let mut out = Vec::new();
    let what = "backend";
    let address = to.label;
    let t = &settings.timeouts;
    let timeouts = (t.backend_connect(), t.backend_reply());
    let connected = upstream::dial(to.settings, to.tls, to.address, None, timeouts, None).await;
    let (mut backend, greeting) = match connected {
        Ok(b) => b,
        Err(e) => {
            out.push(with_fix(
                check(Level::Fail, what, format!("{address}: {e}")),
                "check the address and tls keys, and that the server runs and is reachable from this host",
            ));
            return out;
        }
    };
    match greeting.last() {
        Some(g) if g.is_success() => out.push(check(
            Level::Ok,
            what,
            format!("{address} answered {} {}", g.code(), g.text()),
        )),
        other => {
            let said = other.map_or("nothing".to_string(), |g| {
                format!("{} {}", g.code(), g.text())
            });
            out.push(with_fix(
                check(Level::Fail, what, format!("{address} greeted with {said}")),
                "the server refuses sessions; see its own log",
            ));
            return out;
        }
    }
    let Some(login) = login else {
        out.push(with_fix(
            check(
                Level::Warn,
                "backend passive mode",
                "not checked: EPSV and PASV need a login",
            ),
            "run doctor with --user and FTPSGATE_DOCTOR_PASSWORD to check them",
        ));
        return out;
    };
    out.extend(passive_checks(&mut backend, login, settings).await);
    let _ = backend.send(b"QUIT\r\n").await;
    out
}

async fn passive_checks(backend: &mut Backend, login: &Login, settings: &Settings) -> Vec<Check> {
    let what = "backend passive mode";
    let mut out = Vec::new();
    let logged_in = async {
        backend
            .send(format!("USER {}\r\n", login.user).as_bytes())
            .await?;
        let mut reply = backend.expect_reply().await?;
        if reply.code() == 331 {
            backend
                .send(format!("PASS {}\r\n", login.password).as_bytes())
                .await?;
            reply = backend.expect_reply().await?;
        }
        if reply.code() == 230 {
            backend.protect_data().await?;
        }
        Ok::<_, BackendError>(reply)
    }
    .await;
    match logged_in {
        Ok(r) if r.code() == 230 => {}
        Ok(r) => {
            out.push(with_fix(
                check(
                    Level::Fail,
                    what,
                    format!("login refused: {} {}", r.code(), r.text()),
                ),
                "check --user and FTPSGATE_DOCTOR_PASSWORD",
            ));
            return out;
        }
        Err(e) => {
            out.push(check(Level::Fail, what, format!("login: {e}")));
            return out;
        }
    }
    let limit = settings.timeouts.backend_connect();
    for command in ["EPSV", "PASV"] {
        let asked = async {
            backend.send(format!("{command}\r\n").as_bytes()).await?;
            backend.expect_reply().await
        }
        .await;
        let reply = match asked {
            Ok(r) => r,
            Err(e) => {
                out.push(check(Level::Fail, what, format!("{command}: {e}")));
                return out;
            }
        };
        let port = match (command, reply.code()) {
            ("EPSV", 229) => addr::parse_epsv(&reply.text()).map_err(|e| e.to_string()),
            ("PASV", 227) => addr::parse_pasv(&reply.text())
                .map(|a| {
                    if a.ip() != &backend.peer().ip() {
                        out.push(check(
                            Level::Ok,
                            what,
                            format!(
                                "PASV names {}, not the control address {}; the gateway connects to the control address anyway",
                                a.ip(),
                                backend.peer().ip()
                            ),
                        ));
                    }
                    a.port()
                })
                .map_err(|e| e.to_string()),
            _ => Err(format!("{} {}", reply.code(), reply.text())),
        };
        let port = match port {
            Ok(p) => p,
            Err(e) => {
                let level = if command == "EPSV" {
                    Level::Warn
                } else {
                    Level::Fail
                };
                out.push(with_fix(
                    check(level, what, format!("{command} failed: {e}")),
                    if command == "EPSV" {
                        "the gateway falls back to PASV; enable EPSV on the server for IPv6"
                    } else {
                        "enable passive mode on the server, or set backend.data_mode = \"active\""
                    },
                ));
                continue;
            }
        };
        match backend.connect_data(port, limit).await {
            Ok(_) => out.push(check(
                Level::Ok,
                what,
                format!("{command} gave port {port}, reachable from here"),
            )),
            Err(e) => out.push(with_fix(
                check(
                    Level::Fail,
                    what,
                    format!("{command} gave port {port}, but connecting failed: {e}"),
                ),
                "open the server's passive port range between the gateway and the server",
            )),
        }
    }
    out
}

fn pool_ports(settings: &Settings) -> Check {
    let what = "passive pool";
    let range = settings.passive.range();
    let ip = settings
        .listen
        .all()
        .map(SocketAddr::ip)
        .next()
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let size = range.clone().count();
    let busy: Vec<u16> = range
        .clone()
        .filter(|&p| TcpListener::bind(SocketAddr::new(ip, p)).is_err())
        .collect();
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().filter_map(|v| v.parse::<u16>().ok());
            Some((it.next()?, it.next()?))
        });
    let overlap = ephemeral
        .filter(|&(lo, hi)| *range.start() <= hi && *range.end() >= lo)
        .map(|(lo, hi)| format!("; it overlaps the kernel's ephemeral ports {lo}-{hi}"));
    let range_text = format!("{}-{}", range.start(), range.end());
    match (busy.len(), overlap) {
        (0, None) => check(
            Level::Ok,
            what,
            format!("all {size} ports of {range_text} can be bound on {ip}"),
        ),
        (0, Some(o)) => with_fix(
            check(
                Level::Warn,
                what,
                format!("all {size} ports of {range_text} are free now{o}"),
            ),
            "outgoing connections may take pool ports: pick a range outside ip_local_port_range",
        ),
        (n, _) if n == size => with_fix(
            check(
                Level::Fail,
                what,
                format!("none of the {size} ports of {range_text} can be bound on {ip}"),
            ),
            "another program holds them (a running ftpsgate?) or the range needs privileges",
        ),
        (n, _) => with_fix(
            check(
                Level::Warn,
                what,
                format!(
                    "{n} of {size} ports of {range_text} are in use (first: {}); fine if this gateway is running",
                    busy[0]
                ),
            ),
            "otherwise find the holder with `ss -ltnp`",
        ),
    }
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_private() || v4.is_loopback() || v4.is_link_local() || v4.is_unspecified())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xfe00) == 0xfc00)
        }
    }
}

fn external_address(settings: &Settings) -> Vec<Check> {
    let what = "external address";
    let exposed = settings
        .listen
        .all()
        .any(|a| a.ip().is_unspecified() || is_public(a.ip()));
    let Some(host) = settings.passive.external_host() else {
        let level = if exposed { Level::Warn } else { Level::Ok };
        let c = check(
            level,
            what,
            "unset: PASV replies carry the address each client connected to",
        );
        return vec![if exposed {
            with_fix(
                c,
                "behind NAT or a load balancer set passive.external_address to the public address or name",
            )
        } else {
            c
        }];
    };
    match settings.passive.external_ip() {
        Err(e) => vec![with_fix(
            check(Level::Fail, what, e),
            "use an IP address, or a DNS name that resolves from this host",
        )],
        Ok(Some(ip)) if !is_public(ip) && exposed => {
            vec![with_fix(
                check(
                    Level::Warn,
                    what,
                    if ip.to_string() == *host {
                        format!("{host} is a private or loopback address, while the listeners are public")
                    } else {
                        format!("{host} is {ip}, a private or loopback address, while the listeners are public")
                    },
                ),
                "clients on the internet cannot reach it: use the public address",
            )]
        }
        Ok(ip) => vec![check(
            Level::Ok,
            what,
            format!(
                "{host}{}",
                ip.filter(|ip| ip.to_string() != *host)
                    .map(|ip| format!(" resolves to {ip}"))
                    .unwrap_or_default()
            ),
        )],
    }
}

fn certificate(settings: &Settings) -> Vec<Check> {
    let what = "certificate";
    let store = match CertStore::load(&settings.tls, tls::provider()) {
        Ok((_, true)) => {
            return vec![with_fix(
                check(
                    Level::Warn,
                    what,
                    "none configured: a self-signed one is generated at each start",
                ),
                "set tls.cert and tls.key (or --cert/--key) to a certificate clients trust",
            )]
        }
        Ok((store, false)) => store,
        Err(e) => {
            return vec![with_fix(
                check(Level::Fail, what, e.to_string()),
                "point tls.cert/tls.key at a readable PEM chain and its matching key",
            )]
        }
    };
    let chain = store.default_chain();
    let Some(Ok((_, cert))) = chain.first().map(|c| X509Certificate::from_der(c)) else {
        return vec![check(
            Level::Fail,
            what,
            TlsError::Config("unparsable certificate".into()).to_string(),
        )];
    };
    let mut out = Vec::new();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let not_after = cert.validity().not_after.timestamp();
    let not_before = cert.validity().not_before.timestamp();
    let subject = cert.subject().to_string();
    if now > not_after {
        out.push(with_fix(
            check(
                Level::Fail,
                what,
                format!("{subject} expired on {}", cert.validity().not_after),
            ),
            "renew it; the gateway reloads it on SIGHUP or when the file changes",
        ));
    } else if now < not_before {
        out.push(check(
            Level::Fail,
            what,
            format!(
                "{subject} is not valid before {}",
                cert.validity().not_before
            ),
        ));
    } else if not_after - now < EXPIRY_WARNING.as_secs() as i64 {
        out.push(with_fix(
            check(
                Level::Warn,
                what,
                format!("{subject} expires on {}", cert.validity().not_after),
            ),
            "renew it soon",
        ));
    } else {
        out.push(check(
            Level::Ok,
            what,
            format!("{subject}, valid until {}", cert.validity().not_after),
        ));
    }
    if let Some(host) = settings.passive.external_host() {
        let names: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                        GeneralName::IPAddress(b) => ip_from_bytes(b).map(|ip| ip.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let host = host.to_ascii_lowercase();
        let wildcard = host
            .split_once('.')
            .map(|(_, parent)| format!("*.{parent}"));
        if names.contains(&host) || wildcard.is_some_and(|w| names.contains(&w)) {
            out.push(check(Level::Ok, what, format!("names {host}")));
        } else {
            out.push(with_fix(
                check(
                    Level::Warn,
                    what,
                    if names.is_empty() {
                        format!("does not name the external address {host} (no subjectAltName)")
                    } else {
                        format!(
                            "does not name the external address {host} (it names {})",
                            names.join(", ")
                        )
                    },
                ),
                "clients that connect by that name will reject the certificate",
            ));
        }
    }
    out
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

fn fd_limit(settings: &Settings) -> Check {
    let what = "open-file limit";
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(3)
                        .and_then(|v| v.parse::<u64>().ok())
                })
        });
    let need = crate::fdlimit::needed(settings);
    match soft {
        None => check(Level::Warn, what, "unknown (no /proc/self/limits)"),
        Some(have) if have >= need => check(
            Level::Ok,
            what,
            format!("{have} (limits.max_sessions and the pool need about {need})"),
        ),
        Some(have) => with_fix(
            check(
                Level::Warn,
                what,
                format!("{have}, but limits.max_sessions and the pool need about {need}"),
            ),
            format!("raise it (systemd: LimitNOFILE={need}; shell: ulimit -n {need}) or lower limits.max_sessions; the gateway raises its soft limit to the hard one at start, and lowers max_sessions to fit if it must"),
        ),
    }
}
