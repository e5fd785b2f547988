//! `ftpsgate doctor`: the passive-mode checklist that breaks real deployments, walked against
//! a configuration from the machine the gateway runs on. Each check prints ok, warn or fail
//! with a fix; any fail makes the command exit non-zero.

mod acme;
mod backend;
mod cert;
mod firewall;
mod host;
mod scan;

use std::fmt;

use crate::config::Settings;
use crate::ftp::escaped;
use backend::backend_checks;
use cert::certificate;
pub use firewall::firewall;
use host::{external_address, fd_limit, pool_ports};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
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

/// One line of the report (`probe --json` writes them as they are).
///
/// `detail` and `fix` quote what servers said (greetings, replies, certificate names), which
/// anyone on a plaintext path can write: an escape sequence in a greeting would drive the
/// terminal of whoever reads the report. So they are only ever set through [`Check::new`]
/// and [`with_fix`], which keep them as [`crate::ftp::Escaped`] text: no control character
/// reaches the text report, the JSON, or the list of fixes.
#[derive(Debug, serde::Serialize)]
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

impl Check {
    /// A line of the report, its texts escaped (see [`Check`]).
    pub(crate) fn new(level: Level, what: &'static str, detail: &str, fix: Option<&str>) -> Check {
        Check {
            level,
            what,
            detail: escaped(detail),
            fix: fix.map(escaped),
        }
    }
}

fn check(level: Level, what: &'static str, detail: impl AsRef<str>) -> Check {
    Check::new(level, what, detail.as_ref(), None)
}

fn with_fix(mut c: Check, fix: impl AsRef<str>) -> Check {
    c.fix = Some(escaped(fix.as_ref()));
    c
}

/// Backend credentials for the passive-mode checks (they need a login).
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// Runs every check and returns them in order.
pub async fn run(settings: &Settings, login: Option<&Credentials>) -> Vec<Check> {
    let mut out = Vec::new();
    out.extend(backend_checks(settings, login).await);
    out.push(pool_ports(settings));
    out.extend(external_address(settings));
    match &settings.tls.acme {
        Some(a) => out.extend(acme::checks(a)),
        None => out.extend(certificate(settings)),
    }
    out.extend(scan::checks(settings).await);
    out.push(fd_limit(settings));
    out
}
