//! `ftpsgate probe`: the client's side of `doctor`, for any FTPS server, ftpsgate or not. It
//! walks what a client does (connect, TLS, login, PROT P, PASV, EPSV, a listing, a small
//! download, active mode on request) and says at each step what worked, what did not, and what
//! to change: above all the classic NAT fault, a 227 naming an address the client cannot reach.
//! docs/ARCHITECTURE.md ("probe") has the order of the steps and why.

mod client;
mod data;
mod target;
mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;

use crate::doctor::{Check, Level};
use crate::ftp::addr::{self, not_public};
use client::Ctl;
use data::{active_transfer, dial, passive_transfer, said, DataTls};
pub use target::Target;
use tls::ProbeTls;

/// A file larger than this is not downloaded to check it.
const MAX_DOWNLOAD: u64 = 1024 * 1024;
/// How many listed names are asked for their SIZE, looking for a file to download.
const MAX_CANDIDATES: usize = 20;

pub struct Options {
    pub target: Target,
    pub password: String,
    pub ca: Option<PathBuf>,
    pub insecure: bool,
    pub active: bool,
    /// Each wait: connect, a reply, a handshake, a data connection.
    pub timeout: Duration,
}

/// Walks the steps; each gives one line, and a step a client cannot get past ends the walk.
pub async fn run(opts: &Options) -> Vec<Check> {
    let mut probe = Probe {
        opts,
        out: Vec::new(),
    };
    let _ = probe.walk().await;
    probe.out
}

/// The report for scripts and monitoring (`--json`).
#[derive(Serialize)]
pub struct Report<'a> {
    pub target: String,
    pub ok: bool,
    pub checks: &'a [Check],
    pub fixes: Vec<&'a str>,
}

impl<'a> Report<'a> {
    pub fn new(target: &Target, checks: &'a [Check]) -> Report<'a> {
        Report {
            target: target.to_string(),
            ok: !checks.iter().any(|c| c.level == Level::Fail),
            checks,
            fixes: fixes(checks),
        }
    }
}

/// The fixes, in the order of the steps that need them, failures first, then warnings; each
/// once.
pub fn fixes(checks: &[Check]) -> Vec<&str> {
    let of = |level| {
        checks
            .iter()
            .filter(move |c| c.level == level)
            .filter_map(|c| c.fix.as_deref())
    };
    let mut out: Vec<&str> = Vec::new();
    for fix in of(Level::Fail).chain(of(Level::Warn)) {
        if !out.contains(&fix) {
            out.push(fix);
        }
    }
    out
}

/// How a passive data connection was reached: by PASV at the address it named or at the
/// address the control connection reached, or by EPSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Pasv { at_reached: bool },
    Epsv,
}

/// A step a client cannot get past: the walk stops there.
struct Stop;

struct Probe<'a> {
    opts: &'a Options,
    out: Vec<Check>,
}

impl Probe<'_> {
    fn say(&mut self, level: Level, what: &'static str, detail: String, fix: Option<String>) {
        self.out.push(Check {
            level,
            what,
            detail,
            fix,
        });
    }

    fn fail(&mut self, what: &'static str, detail: String, fix: impl Into<String>) -> Stop {
        self.say(Level::Fail, what, detail, Some(fix.into()));
        Stop
    }

    async fn walk(&mut self) -> Result<(), Stop> {
        let opts = self.opts;
        let t = &opts.target;
        let tls = ProbeTls::new(&t.host, opts.ca.as_deref(), opts.insecure)
            .map_err(|e| self.fail("TLS", e, "give --ca FILE with the server's CA"))?;
        let mut ctl = self.connect().await?;
        if t.implicit {
            self.handshake(&mut ctl, &tls).await?;
            self.greeting(&mut ctl).await?;
        } else {
            self.greeting(&mut ctl).await?;
            self.auth_tls(&mut ctl).await?;
            self.handshake(&mut ctl, &tls).await?;
        }
        self.login(&mut ctl).await?;
        self.protect(&mut ctl).await?;
        let pasv = self.pasv(&mut ctl, &tls).await;
        let epsv = self.epsv(&mut ctl, &tls).await;
        let way = epsv.or(pasv);
        if let Some(way) = way {
            self.download(&mut ctl, &tls, way).await;
        }
        if self.opts.active {
            self.active(&mut ctl, &tls).await;
        }
        // Last: a server that requires reuse may end the whole session when refusing (vsftpd).
        if let Some(way) = way {
            self.reuse(&mut ctl, &tls, way).await;
        }
        let _ = ctl.cmd("QUIT").await;
        Ok(())
    }

    async fn connect(&mut self) -> Result<Ctl, Stop> {
        let what = "connect";
        let opts = self.opts;
        let t = &opts.target;
        let to = match tokio::net::lookup_host((t.host.as_str(), t.port)).await {
            Ok(mut addrs) => addrs.next(),
            Err(_) => None,
        };
        let Some(to) = to else {
            let detail = format!("cannot resolve {}", t.host);
            return Err(self.fail(what, detail, "check the host name"));
        };
        match dial(to, self.opts.timeout).await {
            Ok((tcp, took)) => {
                let ctl = Ctl::new(tcp, self.opts.timeout)
                    .map_err(|e| self.fail(what, e.to_string(), "retry"))?;
                self.say(
                    Level::Ok,
                    what,
                    format!("{to} in {} ms", took.as_millis()),
                    None,
                );
                Ok(ctl)
            }
            Err(e) => {
                let fix = match e {
                    data::DialError::Refused => format!(
                        "nothing listens on {to}: is the server running, and port {} forwarded to it?",
                        to.port()
                    ),
                    _ => e.fix(to),
                };
                Err(self.fail(what, format!("{to}: {e}"), fix))
            }
        }
    }

    async fn greeting(&mut self, ctl: &mut Ctl) -> Result<(), Stop> {
        let what = "greeting";
        match ctl.reply().await {
            Ok(r) if r.code() == 220 => {
                self.say(Level::Ok, what, said(&r), None);
                Ok(())
            }
            Ok(r) => Err(self.fail(what, said(&r), "the server refuses sessions now")),
            Err(e) => Err(self.fail(
                what,
                e.to_string(),
                "no 220: is this an FTP server, and implicit (ftps://) or explicit (ftp://) as it expects?",
            )),
        }
    }

    async fn auth_tls(&mut self, ctl: &mut Ctl) -> Result<(), Stop> {
        match ctl.cmd("AUTH TLS").await {
            Ok(r) if r.code() == 234 => Ok(()),
            Ok(r) => Err(self.fail(
                "TLS",
                format!("AUTH TLS answered {}: the server does not offer FTPS", said(&r)),
                "enable TLS on the server (vsftpd: ssl_enable=YES) or put ftpsgate in front of it; the probe does not send a password in clear",
            )),
            Err(e) => Err(self.fail("TLS", format!("AUTH TLS: {e}"), "check the server")),
        }
    }

    async fn handshake(&mut self, ctl: &mut Ctl, tls: &ProbeTls) -> Result<(), Stop> {
        let what = "TLS";
        let result = ctl.secure(tls.resuming.clone(), tls.name.clone()).await;
        let seen = tls.seen();
        let names = if seen.names.is_empty() {
            "no subjectAltName".to_string()
        } else {
            format!("names {}", seen.names.join(", "))
        };
        let host = &self.opts.target.host;
        if let Err(e) = result {
            let refused = seen.refused.clone().unwrap_or_else(|| e.to_string());
            let fix = if refused.contains("not valid for name")
                || refused.contains("NotValidForName")
            {
                format!("the certificate {names}, not {host}: connect by one of those names, or give the server a certificate for {host}")
            } else if refused.contains("UnknownIssuer") {
                "the certificate is not signed by a CA this machine trusts: give --ca FILE with the issuing CA (for a self-signed server, its own certificate)".to_string()
            } else if refused.contains("xpired") {
                "the certificate has expired: renew it".to_string()
            } else {
                "is TLS offered on this port, in this mode (ftps:// for implicit, ftp:// for explicit)?".to_string()
            };
            return Err(self.fail(
                what,
                format!("handshake failed: {refused}; the certificate {names}"),
                fix,
            ));
        }
        let (version, suite) = ctl.tls_summary().unwrap_or_default();
        let days = seen.days_left.unwrap_or_default();
        let detail = format!(
            "{version}, {suite}; {}, chain of {}, {names}, expires in {days} days",
            seen.subject, seen.chain_len
        );
        if self.opts.insecure {
            self.say(
                Level::Warn,
                what,
                format!("{detail}; NOT verified (--insecure)"),
                Some("verify it: --ca FILE".into()),
            );
        } else if days < 30 {
            self.say(
                Level::Warn,
                what,
                detail,
                Some("renew the server's certificate soon".into()),
            );
        } else {
            self.say(Level::Ok, what, format!("{detail}, verified"), None);
        }
        Ok(())
    }

    async fn login(&mut self, ctl: &mut Ctl) -> Result<(), Stop> {
        let what = "login";
        let user = self.opts.target.user.clone();
        let mut reply = ctl.cmd(&format!("USER {user}")).await;
        if matches!(&reply, Ok(r) if r.code() == 331) {
            reply = ctl.cmd(&format!("PASS {}", self.opts.password)).await;
        }
        match reply {
            Ok(r) if r.code() == 230 => {
                self.say(Level::Ok, what, format!("{user}: {}", said(&r)), None);
                Ok(())
            }
            Ok(r) => Err(self.fail(
                what,
                format!("{user}: {}", said(&r)),
                "check the user name and FTPSGATE_PROBE_PASSWORD",
            )),
            Err(e) => Err(self.fail(what, e.to_string(), "check the server")),
        }
    }

    async fn protect(&mut self, ctl: &mut Ctl) -> Result<(), Stop> {
        for cmd in ["PBSZ 0", "PROT P", "TYPE I"] {
            match ctl.cmd(cmd).await {
                Ok(r) if r.is_success() => {}
                Ok(r) => {
                    let detail = format!("{cmd} answered {}", said(&r));
                    return Err(self.fail("protection", detail, "the server must accept PBSZ 0 and PROT P (RFC 4217) to encrypt data connections"));
                }
                Err(e) => {
                    return Err(self.fail("protection", format!("{cmd}: {e}"), "check the server"))
                }
            }
        }
        self.say(
            Level::Ok,
            "protection",
            "PBSZ 0, PROT P: data connections encrypted".into(),
            None,
        );
        Ok(())
    }

    /// PASV: does the 227 name the address this client reached, and which address works.
    async fn pasv(&mut self, ctl: &mut Ctl, tls: &ProbeTls) -> Option<Way> {
        let reached = ctl.peer.ip();
        let advertised = match ctl.cmd("PASV").await {
            Ok(r) if r.code() == 227 => match addr::parse_pasv(&r.text()) {
                Ok(a) => SocketAddr::V4(a),
                Err(e) => {
                    self.say(
                        Level::Fail,
                        "PASV",
                        format!("{}: {e}", said(&r)),
                        Some("the server's 227 is malformed".into()),
                    );
                    return None;
                }
            },
            Ok(r) => {
                self.say(
                    Level::Warn,
                    "PASV",
                    format!("refused: {}", said(&r)),
                    Some("clients without EPSV cannot use passive mode".into()),
                );
                return None;
            }
            Err(e) => {
                self.say(
                    Level::Fail,
                    "PASV",
                    e.to_string(),
                    Some("check the server".into()),
                );
                return None;
            }
        };
        let wrong = advertised.ip() != reached;
        let fix = format!(
            "the server must advertise the address clients reach: ftpsgate passive.external_address = \"{reached}\", vsftpd pasv_address={reached}, ProFTPD MasqueradeAddress {reached}"
        );
        if !wrong {
            self.say(
                Level::Ok,
                "PASV",
                format!("227 names {advertised}, the address connected to"),
                None,
            );
        } else if let Some(kind) = not_public(advertised.ip()) {
            self.say(Level::Warn, "PASV", format!("227 names {advertised}, a {kind} address, but the server was reached at {reached}: it does not know its public address (the classic NAT fault)"), Some(fix.clone()));
        } else {
            self.say(Level::Warn, "PASV", format!("227 names {advertised}, another address than {reached}, where the server was reached"), Some(fix.clone()));
        }
        let what = "PASV data";
        let tcp = match dial(advertised, self.opts.timeout).await {
            Ok((tcp, took)) => {
                self.say(
                    Level::Ok,
                    what,
                    format!("connected to {advertised} in {} ms", took.as_millis()),
                    None,
                );
                (tcp, false)
            }
            Err(first) if wrong => {
                let fallback = SocketAddr::new(reached, advertised.port());
                match dial(fallback, self.opts.timeout).await {
                    Ok((tcp, _)) => {
                        self.say(Level::Fail, what, format!("{advertised}: {first}; {fallback}, the address connected to with the 227's port (curl's default, --ftp-skip-pasv-ip), works: clients that use the 227's address fail"), Some(fix));
                        (tcp, true)
                    }
                    Err(second) => {
                        self.say(
                            Level::Fail,
                            what,
                            format!("{advertised}: {first}; {fallback}: {second}"),
                            Some(second.fix(fallback)),
                        );
                        return None;
                    }
                }
            }
            Err(e) => {
                self.say(
                    Level::Fail,
                    what,
                    format!("{advertised}: {e}"),
                    Some(e.fix(advertised)),
                );
                return None;
            }
        };
        let way = Way::Pasv { at_reached: tcp.1 };
        self.listing(ctl, tls, tcp.0, "PASV data TLS")
            .await
            .then_some(way)
    }

    /// EPSV: a port only, at the address reached.
    async fn epsv(&mut self, ctl: &mut Ctl, tls: &ProbeTls) -> Option<Way> {
        let port = match ctl.cmd("EPSV").await {
            Ok(r) if r.code() == 229 => match addr::parse_epsv(&r.text()) {
                Ok(p) => p,
                Err(e) => {
                    self.say(
                        Level::Fail,
                        "EPSV",
                        format!("{}: {e}", said(&r)),
                        Some("the server's 229 is malformed".into()),
                    );
                    return None;
                }
            },
            Ok(r) => {
                self.say(
                    Level::Warn,
                    "EPSV",
                    format!("refused: {}", said(&r)),
                    Some("IPv6 clients need EPSV; IPv4 clients fall back to PASV".into()),
                );
                return None;
            }
            Err(e) => {
                self.say(
                    Level::Fail,
                    "EPSV",
                    e.to_string(),
                    Some("check the server".into()),
                );
                return None;
            }
        };
        let to = SocketAddr::new(ctl.peer.ip(), port);
        match dial(to, self.opts.timeout).await {
            Ok((tcp, took)) => {
                self.say(
                    Level::Ok,
                    "EPSV data",
                    format!(
                        "229 port {port}: connected to {to} in {} ms",
                        took.as_millis()
                    ),
                    None,
                );
                self.listing(ctl, tls, tcp, "EPSV data TLS")
                    .await
                    .then_some(Way::Epsv)
            }
            Err(e) => {
                self.say(
                    Level::Fail,
                    "EPSV data",
                    format!("{to}: {e}"),
                    Some(e.fix(to)),
                );
                None
            }
        }
    }

    /// A LIST over a data connection just opened, its TLS resuming the control session.
    async fn listing(
        &mut self,
        ctl: &mut Ctl,
        tls: &ProbeTls,
        tcp: tokio::net::TcpStream,
        what: &'static str,
    ) -> bool {
        let data_tls: DataTls = Some((&tls.resuming, &tls.name));
        match passive_transfer(ctl, tcp, "LIST", data_tls, self.opts.timeout).await {
            Ok(got) => {
                let how = if got.resumed {
                    "resumed the control connection's TLS session"
                } else {
                    "full TLS handshake (not resumed)"
                };
                self.say(
                    Level::Ok,
                    what,
                    format!("{how}; LIST gave {} bytes", got.bytes.len()),
                    None,
                );
                true
            }
            Err(e) => {
                self.say(
                    Level::Fail,
                    what,
                    format!("LIST: {e}"),
                    Some(
                        "the data connection opened but the transfer failed: see the server's log"
                            .into(),
                    ),
                );
                false
            }
        }
    }

    /// Opens a passive data connection the way that worked.
    async fn open(&mut self, ctl: &mut Ctl, way: Way) -> Result<tokio::net::TcpStream, String> {
        let reached = ctl.peer.ip();
        let to = match way {
            Way::Epsv => {
                let r = ctl.cmd("EPSV").await.map_err(|e| e.to_string())?;
                SocketAddr::new(
                    reached,
                    addr::parse_epsv(&r.text()).map_err(|e| e.to_string())?,
                )
            }
            Way::Pasv { at_reached } => {
                let r = ctl.cmd("PASV").await.map_err(|e| e.to_string())?;
                let a = addr::parse_pasv(&r.text()).map_err(|e| e.to_string())?;
                SocketAddr::new(
                    if at_reached {
                        reached
                    } else {
                        IpAddr::V4(*a.ip())
                    },
                    a.port(),
                )
            }
        };
        dial(to, self.opts.timeout)
            .await
            .map(|(tcp, _)| tcp)
            .map_err(|e| format!("{to}: {e}"))
    }

    /// Does the server insist that data connections resume the control connection's session?
    async fn reuse(&mut self, ctl: &mut Ctl, tls: &ProbeTls, way: Way) {
        let what = "TLS reuse";
        let tcp = match self.open(ctl, way).await {
            Ok(tcp) => tcp,
            Err(e) => {
                self.say(Level::Warn, what, format!("not checked: {e}"), None);
                return;
            }
        };
        let fresh: DataTls = Some((&tls.fresh, &tls.name));
        let detail = match passive_transfer(ctl, tcp, "LIST", fresh, self.opts.timeout).await {
            Ok(_) => "a data connection that does not resume the control session is accepted (the server does not tie data to control by TLS)".to_string(),
            Err(e) => format!("a data connection that does not resume the control session is refused ({e}): the server requires reuse, as vsftpd's require_ssl_reuse and ftpsgate do; clients that never resume (Python's ftplib) cannot transfer"),
        };
        self.say(Level::Ok, what, detail, None);
    }

    /// NLST, then SIZE until a small file turns up, then RETR it and compare.
    async fn download(&mut self, ctl: &mut Ctl, tls: &ProbeTls, way: Way) {
        let what = "download";
        let data_tls: DataTls = Some((&tls.resuming, &tls.name));
        let names = match self.open(ctl, way).await {
            Ok(tcp) => passive_transfer(ctl, tcp, "NLST", data_tls, self.opts.timeout).await,
            Err(e) => Err(e),
        };
        let names = match names {
            Ok(got) => String::from_utf8_lossy(&got.bytes).into_owned(),
            Err(e) => {
                self.say(
                    Level::Fail,
                    what,
                    format!("NLST: {e}"),
                    Some("see the server's log".into()),
                );
                return;
            }
        };
        let mut pick = None;
        for name in names
            .lines()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .take(MAX_CANDIDATES)
        {
            let Ok(r) = ctl.cmd(&format!("SIZE {name}")).await else {
                break;
            };
            let size = (r.code() == 213)
                .then(|| r.text().trim().parse::<u64>().ok())
                .flatten();
            if let Some(size) = size.filter(|&s| s <= MAX_DOWNLOAD) {
                pick = Some((name.to_string(), size));
                break;
            }
        }
        let Some((name, size)) = pick else {
            self.say(
                Level::Warn,
                what,
                "no file of at most 1 MiB among the first names listed: not checked".into(),
                Some("put a small file in the login directory to have it checked".into()),
            );
            return;
        };
        let got = match self.open(ctl, way).await {
            Ok(tcp) => {
                passive_transfer(
                    ctl,
                    tcp,
                    &format!("RETR {name}"),
                    data_tls,
                    self.opts.timeout,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match got {
            Ok(got) if got.bytes.len() as u64 == size => self.say(
                Level::Ok,
                what,
                format!("RETR {name}: {size} bytes, as SIZE said"),
                None,
            ),
            Ok(got) => self.say(
                Level::Fail,
                what,
                format!(
                    "RETR {name}: {} bytes, but SIZE said {size}",
                    got.bytes.len()
                ),
                Some("the data connection loses bytes: see the server's log".into()),
            ),
            Err(e) => self.say(
                Level::Fail,
                what,
                format!("RETR {name}: {e}"),
                Some("see the server's log".into()),
            ),
        }
    }

    /// Active mode: PORT/EPRT to this end, and whether the server connects back.
    async fn active(&mut self, ctl: &mut Ctl, tls: &ProbeTls) {
        let what = "active";
        let listener = match TcpListener::bind(SocketAddr::new(ctl.local.ip(), 0)).await {
            Ok(l) => l,
            Err(e) => {
                self.say(
                    Level::Fail,
                    what,
                    format!("cannot listen on {}: {e}", ctl.local.ip()),
                    None,
                );
                return;
            }
        };
        let Ok(here) = listener.local_addr() else {
            return;
        };
        match ctl.cmd(&addr::format_active(here)).await {
            Ok(r) if r.code() == 200 => {}
            Ok(r) => {
                self.say(
                    Level::Warn,
                    what,
                    format!(
                        "{} refused: {}",
                        if here.is_ipv4() { "PORT" } else { "EPRT" },
                        said(&r)
                    ),
                    Some("the server does not offer active mode: use passive".into()),
                );
                return;
            }
            Err(e) => {
                self.say(Level::Fail, what, e.to_string(), None);
                return;
            }
        }
        let data_tls: DataTls = Some((&tls.resuming, &tls.name));
        match active_transfer(ctl, &listener, "LIST", data_tls, self.opts.timeout).await {
            Ok((_, from)) => self.say(Level::Ok, what, format!("the server connected back from {from} to {here}"), None),
            Err(e) => self.say(Level::Fail, what, format!("to {here}: {e}"), Some(format!("the server could not connect back to {here}: a NAT or firewall in front of this client drops incoming connections, or the server cannot reach {}; use passive mode", here.ip()))),
        }
    }
}
