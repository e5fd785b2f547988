//! `ftpsgate probe`: the client's side of `doctor`, for any FTPS server, ftpsgate or not. It
//! walks what a client does (connect, TLS, login, PROT P, PASV, EPSV, a listing, a small
//! download, active mode on request) and says at each step what worked, what did not, and what
//! to change: above all the classic NAT fault, a 227 naming an address the client cannot reach;
//! and at the end, whether every passive reply named one port or several (`ports`).
//! docs/ARCHITECTURE.md ("probe") has the order of the steps and why.

mod client;
mod data;
mod ports;
mod session;
mod target;
mod tls;
mod transfers;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::doctor::{Check, Level};
pub use target::Target;
use tls::ProbeTls;

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
        ports: Vec::new(),
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

/// How a passive data connection was reached: by PASV's port or EPSV's, either way at the
/// address the control connection reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Pasv,
    Epsv,
}

/// A step a client cannot get past: the walk stops there.
struct Stop;

struct Probe<'a> {
    opts: &'a Options,
    out: Vec<Check>,
    /// The port of every PASV and EPSV reply, in order (see `ports`).
    ports: Vec<u16>,
}

impl Probe<'_> {
    /// Adds a line to the report. `detail` and `fix` may quote the server (its greeting, its
    /// replies, its certificate's names): [`Check::new`] escapes them.
    fn say(&mut self, level: Level, what: &'static str, detail: String, fix: Option<String>) {
        self.out
            .push(Check::new(level, what, &detail, fix.as_deref()));
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
        self.passive_ports();
        let _ = ctl.cmd("QUIT").await;
        Ok(())
    }
}
