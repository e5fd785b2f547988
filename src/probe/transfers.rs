//! The data path, as clients use it: PASV (does its address match the one reached? does its
//! port work there?) and EPSV, each with a listing, a small download checked against SIZE,
//! active mode, and whether the server insists that data connections resume the control
//! connection's TLS session. Data connections always go to the address the control connection
//! reached, whatever a 227 names.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use super::client::Ctl;
use super::data::{active_transfer, dial, passive_transfer, said, DataTls};
use super::tls::ProbeTls;
use super::{Level, Probe, Way};
use crate::ftp::addr::{self, not_public, AddrError};

/// A file larger than this is not downloaded to check it.
const MAX_DOWNLOAD: u64 = 1024 * 1024;
/// How many listed names are asked for their SIZE, looking for a file to download.
const MAX_CANDIDATES: usize = 20;

impl Probe<'_> {
    /// PASV: does the 227 name the address this client reached, and does its port work there.
    ///
    /// The data connection goes to the address the control connection reached, with the
    /// 227's port, as curl does by default (`--ftp-skip-pasv-ip`): the 227's address is only
    /// the server's word, and a hostile server (or anyone on a plaintext path) could name any
    /// host for the probe to connect to. A 227 that names another address is a failure of its
    /// own: clients that follow it go where the probe did not look.
    pub(super) async fn pasv(&mut self, ctl: &mut Ctl, tls: &ProbeTls) -> Option<Way> {
        let reached = ctl.peer.ip();
        let advertised = self
            .ask_passive(
                ctl,
                "PASV",
                227,
                addr::parse_pasv,
                "clients without EPSV cannot use passive mode",
            )
            .await
            .map(SocketAddr::V4)?;
        self.named(advertised.port());
        let to = SocketAddr::new(reached, advertised.port());
        let follows = format!("clients that use the 227's address connect to {}, which the probe does not (it connects to {to}, as curl does by default)", advertised.ip());
        let named = advertised.ip();
        if named == reached.to_canonical() {
            self.say(
                Level::Ok,
                "PASV",
                format!("227 names {advertised}, the address connected to"),
                None,
            );
        } else if reached.to_canonical().is_ipv6() {
            // A 227 cannot name an IPv6 address: not the server's fault.
            self.say(Level::Warn, "PASV", format!("227 names {advertised}; the server was reached over IPv6 at {reached}, which a 227 cannot name; {follows}"), Some("IPv6 clients need EPSV".into()));
        } else {
            let fix = format!(
                "the server must advertise the address clients reach: ftpsgate passive.external_address = \"{reached}\", vsftpd pasv_address={reached}, ProFTPD MasqueradeAddress {reached}"
            );
            let which = match not_public(named) {
                Some(kind) => format!("a {kind} address, but the server was reached at {reached}: it does not know its public address (the classic NAT fault)"),
                None => format!("another address than {reached}, where the server was reached"),
            };
            self.say(
                Level::Fail,
                "PASV",
                format!("227 names {advertised}, {which}; {follows}"),
                Some(fix),
            );
        }
        let what = "PASV data";
        let tcp = match dial(to, self.opts.timeout).await {
            Ok((tcp, took)) => {
                self.say(
                    Level::Ok,
                    what,
                    format!("connected to {to} in {} ms", took.as_millis()),
                    None,
                );
                tcp
            }
            Err(e) => {
                self.say(Level::Fail, what, format!("{to}: {e}"), Some(e.fix(to)));
                return None;
            }
        };
        self.listing(ctl, tls, tcp, "PASV data TLS")
            .await
            .then_some(Way::Pasv)
    }

    /// EPSV: a port only, at the address reached.
    pub(super) async fn epsv(&mut self, ctl: &mut Ctl, tls: &ProbeTls) -> Option<Way> {
        let port = self
            .ask_passive(
                ctl,
                "EPSV",
                229,
                addr::parse_epsv,
                "IPv6 clients need EPSV; IPv4 clients fall back to PASV",
            )
            .await?;
        self.named(port);
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

    /// Sends PASV or EPSV and parses the answer `code` with `parse`. A refusal is a warning
    /// (`refused` says what it costs clients); a malformed answer or none is a failure.
    async fn ask_passive<T>(
        &mut self,
        ctl: &mut Ctl,
        what: &'static str,
        code: u16,
        parse: impl Fn(&str) -> Result<T, AddrError>,
        refused: &str,
    ) -> Option<T> {
        let (detail, fix, level) = match ctl.cmd(what).await {
            Ok(r) if r.code() == code => match parse(&r.text()) {
                Ok(v) => return Some(v),
                Err(e) => (
                    format!("{}: {e}", said(&r)),
                    format!("the server's {code} is malformed"),
                    Level::Fail,
                ),
            },
            Ok(r) => (
                format!("refused: {}", said(&r)),
                refused.to_string(),
                Level::Warn,
            ),
            Err(e) => (e.to_string(), "check the server".to_string(), Level::Fail),
        };
        self.say(level, what, detail, Some(fix));
        None
    }

    /// A LIST over a data connection just opened, its TLS resuming the control session.
    async fn listing(
        &mut self,
        ctl: &mut Ctl,
        tls: &ProbeTls,
        tcp: TcpStream,
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
    async fn open(&mut self, ctl: &mut Ctl, way: Way) -> Result<TcpStream, String> {
        let reached = ctl.peer.ip();
        let to = match way {
            Way::Epsv => {
                let r = ctl.cmd("EPSV").await.map_err(|e| e.to_string())?;
                SocketAddr::new(
                    reached,
                    addr::parse_epsv(&r.text()).map_err(|e| e.to_string())?,
                )
            }
            // The 227's port at the address reached, as in `pasv`.
            Way::Pasv => {
                let r = ctl.cmd("PASV").await.map_err(|e| e.to_string())?;
                let a = addr::parse_pasv(&r.text()).map_err(|e| e.to_string())?;
                SocketAddr::new(reached, a.port())
            }
        };
        self.named(to.port());
        dial(to, self.opts.timeout)
            .await
            .map(|(tcp, _)| tcp)
            .map_err(|e| format!("{to}: {e}"))
    }

    /// Does the server insist that data connections resume the control connection's session?
    pub(super) async fn reuse(&mut self, ctl: &mut Ctl, tls: &ProbeTls, way: Way) {
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
    pub(super) async fn download(&mut self, ctl: &mut Ctl, tls: &ProbeTls, way: Way) {
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
    pub(super) async fn active(&mut self, ctl: &mut Ctl, tls: &ProbeTls) {
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
