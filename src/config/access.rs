//! `[access]`: who may come in, and what failed logins cost. The rules a security team expects
//! at a front door, held in one place instead of on every backend.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Bad, ConfigError, Networks};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessSettings {
    /// Client networks let in, checked at accept before TLS (the address behind a PROXY
    /// header when the balancer is trusted). Empty: everyone not denied.
    pub allow: Networks,
    /// Client networks kept out; a deny wins over an allow. Refused with 421.
    pub deny: Networks,
    /// Failed logins (the backend's 530 to PASS, or a user the gateway refuses) from one
    /// client address within `failed_login_window_secs` that ban it. 0: no bans.
    pub max_failed_logins: u32,
    pub failed_login_window_secs: u64,
    /// How long a ban lasts: new connections get 421, and a session already open gets 421 at
    /// its next login attempt.
    pub ban_secs: u64,
    /// How long the reply to each failed login is held back (as vsftpd's
    /// delay_failed_login), so one connection cannot try passwords quickly.
    pub failed_login_delay_secs: u64,
    /// Users refused by the gateway with 530 and never sent to a backend (e.g. root,
    /// anonymous, ftp). Compared without regard to case.
    pub deny_users: Vec<String>,
    /// The bits of an IPv6 client address that name the client, for the bans, the login
    /// attempts and `limits.max_sessions_per_ip` / `max_passive_per_ip`: a site or host is
    /// usually given a whole /64, so counted per address, a banned client came back from the
    /// next one. 128: per address. IPv4 clients are always one address.
    pub ipv6_prefix: u8,
}

impl Default for AccessSettings {
    fn default() -> Self {
        Self {
            allow: Networks::default(),
            deny: Networks::default(),
            max_failed_logins: 5,
            failed_login_window_secs: 600,
            ban_secs: 900,
            failed_login_delay_secs: 1,
            deny_users: Vec::new(),
            ipv6_prefix: 64,
        }
    }
}

impl AccessSettings {
    pub fn failed_login_window(&self) -> Duration {
        Duration::from_secs(self.failed_login_window_secs)
    }

    pub fn ban(&self) -> Duration {
        Duration::from_secs(self.ban_secs)
    }

    pub fn failed_login_delay(&self) -> Duration {
        Duration::from_secs(self.failed_login_delay_secs)
    }

    pub(super) fn validate(&self, bad: Bad) -> Result<(), ConfigError> {
        if self.max_failed_logins > 0 && (self.failed_login_window_secs == 0 || self.ban_secs == 0)
        {
            return Err(bad(
                "access.failed_login_window_secs".into(),
                "with access.max_failed_logins set, the window and access.ban_secs must be at least 1 second".into(),
            ));
        }
        if self.failed_login_delay_secs > 60 {
            return Err(bad(
                "access.failed_login_delay_secs".into(),
                "at most 60 seconds".into(),
            ));
        }
        if !(1..=128).contains(&self.ipv6_prefix) {
            return Err(bad(
                "access.ipv6_prefix".into(),
                format!("{} is not a prefix length from 1 to 128", self.ipv6_prefix),
            ));
        }
        if let Some(u) = self
            .deny_users
            .iter()
            .find(|u| u.is_empty() || u.chars().any(char::is_control))
        {
            return Err(bad(
                "access.deny_users".into(),
                format!("{u:?} is not a user name"),
            ));
        }
        Ok(())
    }
}

/// `[audit]`: the record a security team keeps of who moved what.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// A file that gets one JSON object a line for each transfer, login, ban and refusal,
    /// appended and flushed as each happens, reopened on SIGHUP (for logrotate). The gateway
    /// does not start if it cannot open it, or if it is not the gateway user's own regular
    /// file or FIFO, mode 0600 or 0640 (a symbolic link is refused too).
    pub log: Option<std::path::PathBuf>,
    /// Put the SHA-256 of the bytes each transfer relayed in its record (hashed as they are
    /// copied: one pass over the data, no extra copy).
    pub sha256: bool,
    /// At most this many refusal records a second (and a burst of as many): a flood of
    /// refused connections must not fill the disk. The rest are counted, and a `dropped`
    /// record says how many.
    pub refusals_per_sec: u32,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            log: None,
            sha256: false,
            refusals_per_sec: 50,
        }
    }
}

impl AuditSettings {
    pub(super) fn validate(&self, bad: Bad) -> Result<(), ConfigError> {
        if self.refusals_per_sec == 0 {
            return Err(bad(
                "audit.refusals_per_sec".into(),
                "at least 1 (refusals are what an audit is for)".into(),
            ));
        }
        Ok(())
    }
}
