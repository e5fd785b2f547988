//! The front door's rules at run time (docs/ARCHITECTURE.md, "Access policy"): address rules
//! checked at accept, before TLS, and again per route once the route is known; bans earned by
//! failed logins; users the gateway refuses itself. Every replica keeps its own bans, so a
//! balancer in front of several should send one client address to one replica.

mod bans;

use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use bans::BanEntry;
use bans::Bans;

use crate::config::{AccessSettings, Networks};

/// Why a client address is turned away at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Barred {
    /// Outside `allow`, or inside `deny`.
    Denied,
    /// Banned after failed logins, for this much longer.
    Banned(Duration),
}

impl Barred {
    /// The text of the 421 for an address kept out by `allow`/`deny` (at the door or a route).
    pub const DENIED_TEXT: &'static str = "Access denied.";
    /// The text of the 421 for a banned address (at the door or at a login).
    pub const BANNED_TEXT: &'static str =
        "Too many failed logins from your address; try again later.";
}

pub struct Access {
    allow: Networks,
    deny: Networks,
    deny_users: Vec<String>,
    delay: Duration,
    bans: Bans,
}

impl Access {
    pub fn new(settings: &AccessSettings) -> Access {
        Access {
            allow: settings.allow.clone(),
            deny: settings.deny.clone(),
            deny_users: settings
                .deny_users
                .iter()
                .map(|u| u.to_lowercase())
                .collect(),
            delay: settings.failed_login_delay(),
            bans: Bans::new(
                settings.max_failed_logins,
                settings.failed_login_window(),
                settings.ban(),
            ),
        }
    }

    /// The check at accept.
    pub fn at_door(&self, ip: IpAddr) -> Result<(), Barred> {
        if !Networks::admits(&self.allow, &self.deny, ip) {
            return Err(Barred::Denied);
        }
        self.not_banned(ip)
    }

    /// The check at each login attempt of a session already open.
    pub fn not_banned(&self, ip: IpAddr) -> Result<(), Barred> {
        match self.bans.remaining(ip, Instant::now()) {
            Some(left) => Err(Barred::Banned(left)),
            None => Ok(()),
        }
    }

    /// Records a failed login; true when it bans the address.
    pub fn failed_login(&self, ip: IpAddr) -> bool {
        self.bans.failed(ip, Instant::now())
    }

    /// How long the reply to a failed login is held back.
    pub fn failed_login_delay(&self) -> Duration {
        self.delay
    }

    pub fn denies_user(&self, user: &str) -> bool {
        let user = user.to_lowercase();
        self.deny_users.contains(&user)
    }

    /// The bans in force, for `/bans` and the `ftpsgate_bans_active` gauge.
    pub fn bans(&self) -> Vec<BanEntry> {
        let now = Instant::now();
        self.bans.sweep(now);
        self.bans.list(now)
    }
}
