//! Bans after failed logins: per client address, the failures within the window, and the ban
//! they earn. Time is passed in, so the rules are unit-tested without sleeping.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Past this many addresses on record, each new one sweeps out those with nothing left to
/// remember: an attacker spread over many addresses cannot grow the table without bound.
const SWEEP_ABOVE: usize = 10_000;

pub struct Bans {
    max_failures: u32,
    window: Duration,
    ban: Duration,
    table: DashMap<IpAddr, Record>,
    /// Addresses recorded since the last sweep.
    added: AtomicUsize,
}

#[derive(Default)]
struct Record {
    failures: VecDeque<Instant>,
    until: Option<Instant>,
}

impl Record {
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
    pub address: IpAddr,
    pub remaining_secs: u64,
}

impl Bans {
    /// `max_failures` = 0: nothing is ever banned.
    pub fn new(max_failures: u32, window: Duration, ban: Duration) -> Bans {
        Bans {
            max_failures,
            window,
            ban,
            table: DashMap::new(),
            added: AtomicUsize::new(0),
        }
    }

    /// How long `ip` stays banned, if it is.
    pub fn remaining(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let until = self.table.get(&ip.to_canonical())?.until?;
        until.checked_duration_since(now).filter(|d| !d.is_zero())
    }

    /// Records a failed login from `ip`; true when this one bans it.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let ip = ip.to_canonical();
        if !self.table.contains_key(&ip)
            && self.added.fetch_add(1, Ordering::Relaxed) >= SWEEP_ABOVE
        {
            self.sweep(now);
        }
        let mut record = self.table.entry(ip).or_default();
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

    /// The bans in force.
    pub fn list(&self, now: Instant) -> Vec<BanEntry> {
        let mut out: Vec<BanEntry> = self
            .table
            .iter()
            .filter_map(|r| {
                let left = r.until?.checked_duration_since(now)?;
                (!left.is_zero()).then(|| BanEntry {
                    address: *r.key(),
                    remaining_secs: left.as_secs().max(1),
                })
            })
            .collect();
        out.sort_by_key(|b| b.address);
        out
    }

    /// Forgets failures older than the window and bans that ended.
    pub fn sweep(&self, now: Instant) {
        let since = now.checked_sub(self.window);
        self.table.retain(|_, r| {
            r.forget_before(since);
            if r.until.is_some_and(|u| u <= now) {
                r.until = None;
            }
            r.until.is_some() || !r.failures.is_empty()
        });
        self.added.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
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
    fn zero_means_off() {
        let bans = Bans::new(0, MIN, MIN);
        let t0 = Instant::now();
        for i in 0..100 {
            assert!(!bans.failed(ip("192.0.2.7"), t0 + Duration::from_secs(i)));
        }
        assert!(bans.table.is_empty());
    }
}
