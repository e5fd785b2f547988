//! Bans after failed logins: per client ([`ClientKey`]: an IPv4 address, an IPv6 network), the
//! failures within the window, and the ban they earn. Time is passed in, so the rules are
//! unit-tested without sleeping.
//!
//! A password counts before the backend checks it: each PASS takes one of the address's
//! remaining attempts ([`Bans::reserve`]) on its way to the backend, and gives it back when the
//! backend accepts it. Counted only at the backend's 530, ten sessions sending a wrong password
//! at once all reached the backend before the first failure was on record.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::ClientKey;

/// Past this many addresses on record, each new one sweeps out those with nothing left to
/// remember: an attacker spread over many addresses cannot grow the table without bound.
const SWEEP_ABOVE: usize = 10_000;

pub(super) struct Bans {
    max_failures: u32,
    window: Duration,
    ban: Duration,
    table: DashMap<ClientKey, Record>,
    /// Addresses recorded since the last sweep.
    added: AtomicUsize,
}

#[derive(Default)]
struct Record {
    failures: VecDeque<Instant>,
    until: Option<Instant>,
    /// Passwords on their way to a backend, each holding one of the remaining attempts.
    in_flight: u32,
}

/// What [`Bans::reserve`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reserved {
    /// One attempt is held for this password; settle it with [`Bans::settle`].
    Held,
    /// Every remaining attempt is held by a password still at a backend: wait for one.
    Full,
    /// Banned, for this much longer.
    Banned(Duration),
}

impl Record {
    /// How much longer the ban lasts, if one is in force at `now`.
    fn banned_for(&self, now: Instant) -> Option<Duration> {
        self.until?
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
    }

    fn forget_before(&mut self, since: Option<Instant>) {
        while self
            .failures
            .front()
            .is_some_and(|&t| since.is_some_and(|s| t < s))
        {
            self.failures.pop_front();
        }
    }
}

/// One ban, for `/bans`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BanEntry {
    /// An IPv4 address, or the IPv6 network of `access.ipv6_prefix` (`2001:db8:1:2::/64`).
    pub address: ClientKey,
    pub remaining_secs: u64,
}

impl Bans {
    /// `max_failures` = 0: nothing is ever banned.
    pub(super) fn new(max_failures: u32, window: Duration, ban: Duration) -> Bans {
        Bans {
            max_failures,
            window,
            ban,
            table: DashMap::new(),
            added: AtomicUsize::new(0),
        }
    }

    /// How long `client` stays banned, if it is.
    pub(super) fn remaining(&self, client: ClientKey, now: Instant) -> Option<Duration> {
        self.table.get(&client)?.banned_for(now)
    }

    /// The record of `client`, made if need be; a new client may sweep the table.
    fn record(
        &self,
        client: ClientKey,
        now: Instant,
    ) -> dashmap::mapref::one::RefMut<'_, ClientKey, Record> {
        if !self.table.contains_key(&client)
            && self.added.fetch_add(1, Ordering::Relaxed) >= SWEEP_ABOVE
        {
            self.sweep(now);
        }
        self.table.entry(client).or_default()
    }

    /// Records a failed login from `client`; true when this one bans it.
    pub(super) fn failed(&self, client: ClientKey, now: Instant) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let mut record = self.record(client, now);
        self.fail(&mut record, now)
    }

    fn fail(&self, record: &mut Record, now: Instant) -> bool {
        if record.until.is_some_and(|u| u > now) {
            return false; // banned already: the ban is not stretched by further tries
        }
        record.until = None;
        record.forget_before(now.checked_sub(self.window));
        record.failures.push_back(now);
        if record.failures.len() < self.max_failures as usize {
            return false;
        }
        record.failures.clear();
        record.until = Some(now + self.ban);
        true
    }

    /// Takes one of `client`'s remaining attempts for a password about to go to a backend: the
    /// failures in the window and the passwords still in flight together stay below the
    /// limit, so however many sessions send one at once, no more reach a backend than the
    /// client has attempts left.
    pub(super) fn reserve(&self, client: ClientKey, now: Instant) -> Reserved {
        if self.max_failures == 0 {
            return Reserved::Held;
        }
        let mut record = self.record(client, now);
        if let Some(left) = record.banned_for(now) {
            return Reserved::Banned(left);
        }
        record.forget_before(now.checked_sub(self.window));
        let held = record.failures.len() + record.in_flight as usize;
        if held >= self.max_failures as usize {
            return Reserved::Full;
        }
        record.in_flight += 1;
        Reserved::Held
    }

    /// Gives back an attempt [`Self::reserve`] held: as a failure when `failed` (true when it
    /// bans the client), or as nothing when the backend accepted the password.
    pub(super) fn settle(&self, client: ClientKey, failed: bool, now: Instant) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let mut record = self.record(client, now);
        record.in_flight = record.in_flight.saturating_sub(1);
        failed && self.fail(&mut record, now)
    }

    /// The bans in force.
    pub(super) fn list(&self, now: Instant) -> Vec<BanEntry> {
        let mut out: Vec<BanEntry> = self
            .table
            .iter()
            .filter_map(|r| {
                let left = r.banned_for(now)?;
                Some(BanEntry {
                    address: *r.key(),
                    remaining_secs: left.as_secs().max(1),
                })
            })
            .collect();
        out.sort_by_key(|b| b.address);
        out
    }

    /// Forgets failures older than the window and bans that ended.
    pub(super) fn sweep(&self, now: Instant) {
        let since = now.checked_sub(self.window);
        self.table.retain(|_, r| {
            r.forget_before(since);
            if r.until.is_some_and(|u| u <= now) {
                r.until = None;
            }
            r.until.is_some() || !r.failures.is_empty() || r.in_flight > 0
        });
        self.added.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    /// The key of `s` with IPv6 counted per /64.
    fn ip(s: &str) -> ClientKey {
        ClientKey::of(s.parse().expect("ip"), 64)
    }

    #[test]
    fn the_nth_failure_within_the_window_bans_and_the_ban_ends() {
        let bans = Bans::new(3, 10 * MIN, 15 * MIN);
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        assert!(!bans.failed(a, t0));
        assert!(!bans.failed(a, t0 + MIN));
        assert_eq!(bans.remaining(a, t0 + MIN), None);
        assert!(bans.failed(a, t0 + 2 * MIN), "third failure bans");
        assert_eq!(bans.remaining(a, t0 + 2 * MIN), Some(15 * MIN));
        assert_eq!(
            bans.remaining(ip("192.0.2.8"), t0 + 2 * MIN),
            None,
            "others unaffected"
        );
        assert!(!bans.failed(a, t0 + 3 * MIN), "no new ban while banned");
        assert_eq!(bans.remaining(a, t0 + 3 * MIN), Some(14 * MIN));
        assert_eq!(
            bans.list(t0 + 3 * MIN),
            vec![BanEntry {
                address: a,
                remaining_secs: 14 * 60
            }]
        );
        assert_eq!(bans.remaining(a, t0 + 17 * MIN), None, "lifted");
        assert!(bans.list(t0 + 17 * MIN).is_empty());
        bans.sweep(t0 + 17 * MIN);
        assert!(bans.table.is_empty());
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let bans = Bans::new(3, 10 * MIN, 15 * MIN);
        let t0 = Instant::now();
        let a = ip("::ffff:192.0.2.7");
        assert!(!bans.failed(a, t0));
        assert!(!bans.failed(a, t0 + MIN));
        assert!(
            !bans.failed(a, t0 + 12 * MIN),
            "the first two fell out of the window"
        );
        assert!(
            !bans.failed(ip("192.0.2.7"), t0 + 13 * MIN),
            "mapped and plain are one"
        );
        assert!(bans.failed(a, t0 + 14 * MIN));
    }

    #[test]
    fn passwords_in_flight_hold_the_attempts_left() {
        let bans = Bans::new(3, 10 * MIN, 15 * MIN);
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        assert!(!bans.failed(a, t0));
        // Two attempts left: two passwords may be at the backend at once, not a third.
        assert_eq!(bans.reserve(a, t0), Reserved::Held);
        assert_eq!(bans.reserve(ip("::ffff:192.0.2.7"), t0), Reserved::Held);
        assert_eq!(bans.reserve(a, t0), Reserved::Full);
        assert_eq!(bans.reserve(ip("192.0.2.8"), t0), Reserved::Held, "others");
        // An accepted password gives its attempt back ...
        assert!(!bans.settle(a, false, t0));
        assert_eq!(bans.reserve(a, t0), Reserved::Held);
        // ... a refused one spends it, and the last bans.
        assert!(!bans.settle(a, true, t0));
        assert!(bans.settle(a, true, t0), "the third failure bans");
        assert_eq!(bans.reserve(a, t0), Reserved::Banned(15 * MIN));
        // A sweep keeps an address whose passwords are in flight.
        assert_eq!(bans.reserve(ip("192.0.2.9"), t0), Reserved::Held);
        bans.sweep(t0 + 60 * MIN);
        assert!(bans.table.contains_key(&ip("192.0.2.9")));
    }

    #[test]
    fn an_ipv6_ban_covers_the_prefix() {
        let bans = Bans::new(2, 10 * MIN, 15 * MIN);
        let t0 = Instant::now();
        assert!(!bans.failed(ip("2001:db8:1:2::1"), t0));
        assert_eq!(bans.reserve(ip("2001:db8:1:2::3"), t0), Reserved::Held);
        assert_eq!(
            bans.reserve(ip("2001:db8:1:2::4"), t0),
            Reserved::Full,
            "the /64's last attempt is in flight"
        );
        assert!(bans.settle(ip("2001:db8:1:2::3"), true, t0), "bans the /64");
        assert_eq!(bans.remaining(ip("2001:db8:1:2::2"), t0), Some(15 * MIN));
        assert_eq!(bans.remaining(ip("2001:db8:1:3::1"), t0), None, "next /64");
        let listed = serde_json::to_string(&bans.list(t0)).expect("json");
        assert_eq!(
            listed,
            r#"[{"address":"2001:db8:1:2::/64","remaining_secs":900}]"#
        );
    }

    #[test]
    fn zero_means_off() {
        let bans = Bans::new(0, MIN, MIN);
        let t0 = Instant::now();
        for i in 0..100 {
            assert!(!bans.failed(ip("192.0.2.7"), t0 + Duration::from_secs(i)));
        }
        assert!(bans.table.is_empty());
    }
}
