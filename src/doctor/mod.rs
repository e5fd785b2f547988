//! `ftpsgate doctor`: the passive-mode checklist that breaks real deployments, walked against
//! a configuration from the machine the gateway runs on. Each check prints ok, warn or fail
//! with a fix; any fail makes the command exit non-zero.

mod backend;
mod cert;
mod firewall;
mod host;

use std::fmt;

use crate::config::Settings;
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
