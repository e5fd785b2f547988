//! The front door's rules at run time (docs/ARCHITECTURE.md, "Access policy"): address rules
//! checked at accept, before TLS, and again per route once the route is known; bans earned by
//! failed logins; users the gateway refuses itself. Every replica keeps its own bans, so a
//! balancer in front of several should send one client address to one replica. Bans, login
//! attempts and the per-client limits count a client as one [`ClientKey`].

mod bans;
mod key;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use bans::BanEntry;
use bans::{Bans, Reserved};
pub(crate) use key::ClientKey;
use tokio::sync::Notify;

use crate::config::{AccessSettings, Networks};

/// Why a client address is turned away at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Barred {
    /// Outside `allow`, or inside `deny`.
    Denied,
    /// Banned after failed logins, for this much longer.
    Banned(Duration),
}

/// Why a password is not sent to a backend (see [`Access::attempt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAttempt {
    /// Banned after failed logins, for this much longer.
    Banned(Duration),
    /// Every login attempt the address has left is a password still at a backend, and none
    /// came back within the wait.
    Busy,
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
    ipv6_prefix: u8,
    bans: Arc<Bans>,
    /// Woken whenever a held attempt is settled: PASS commands waiting for one try again.
    settled: Arc<Notify>,
}

/// One password on its way to a backend, holding one of its address's remaining login
/// attempts (see `bans`). [`Attempt::refused`] spends it at the backend's 530; dropped
/// otherwise (any other answer, or none: a failure of the backend's is not the client's), it
/// gives the attempt back uncounted.
pub struct Attempt {
    bans: Arc<Bans>,
    settled: Arc<Notify>,
    client: ClientKey,
    open: bool,
}

impl Attempt {
    /// The backend refused the password (530); true when this bans the address.
    pub fn refused(mut self) -> bool {
        self.settle(true)
    }

    fn settle(&mut self, failed: bool) -> bool {
        self.open = false;
        let banned = self.bans.settle(self.client, failed, Instant::now());
        self.settled.notify_waiters();
        banned
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.open {
            self.settle(false);
        }
    }
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
            ipv6_prefix: settings.ipv6_prefix,
            bans: Arc::new(Bans::new(
                settings.max_failed_logins,
                settings.failed_login_window(),
                settings.ban(),
            )),
            settled: Arc::new(Notify::new()),
        }
    }

    /// Who `ip` is to the bans and the per-client limits: its IPv4 address, or its IPv6
    /// network of `access.ipv6_prefix` bits.
    pub fn client_key(&self, ip: IpAddr) -> ClientKey {
        ClientKey::of(ip, self.ipv6_prefix)
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
        match self.bans.remaining(self.client_key(ip), Instant::now()) {
            Some(left) => Err(Barred::Banned(left)),
            None => Ok(()),
        }
    }

    /// Takes one of `ip`'s remaining login attempts for a password about to go to a backend,
    /// waiting up to `wait` while every one left is held by a password still there.
    pub async fn attempt(&self, ip: IpAddr, wait: Duration) -> Result<Attempt, NoAttempt> {
        let client = self.client_key(ip);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the check, so a settle between the two is not missed.
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            match self.bans.reserve(client, Instant::now()) {
                Reserved::Held => {
                    return Ok(Attempt {
                        bans: Arc::clone(&self.bans),
                        settled: Arc::clone(&self.settled),
                        client,
                        open: true,
                    })
                }
                Reserved::Banned(left) => return Err(NoAttempt::Banned(left)),
                Reserved::Full => {}
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return Err(NoAttempt::Busy);
            }
        }
    }

    /// Records a failed login; true when it bans the address (and its IPv6 network).
    pub fn failed_login(&self, ip: IpAddr) -> bool {
        self.bans.failed(self.client_key(ip), Instant::now())
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
