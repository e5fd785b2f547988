//! When to order: the renewal point of a certificate, the back-off after a failed order, and
//! how long a renewal loop sleeps between looks. Pure arithmetic on times, apart from the I/O.

use std::time::Duration;

/// A loop never sleeps longer than this between looks at its certificate, so a clock change,
/// a suspended host or a certificate replaced on disk is noticed within the half day.
pub(crate) const LOOK_EVERY: Duration = Duration::from_secs(12 * 3600);

/// After an issuance, the next order waits at least this long even when the new certificate
/// is already inside its renewal window (`renew_before_days` longer than the CA's lifetime):
/// a CA's rate limits are not a place to find a configuration mistake. SIGHUP orders at once.
pub(crate) const REORDER_FLOOR: Duration = Duration::from_secs(3600);

/// The longest wait between retries of a failed order.
pub(crate) const RETRY_CAP: Duration = Duration::from_secs(6 * 3600);

/// How long until a certificate expiring at `not_after` (Unix seconds) should be renewed, at
/// `now`: zero when it is due already.
pub(crate) fn until_due(not_after: i64, now: i64, renew_before_days: u32) -> Duration {
    let due = not_after.saturating_sub(i64::from(renew_before_days) * 86_400);
    Duration::from_secs(u64::try_from(due.saturating_sub(now)).unwrap_or(0))
}

/// The wait after the `failures`-th failed order in a row (1 for the first): `first` doubled
/// each time, capped at [`RETRY_CAP`], then moved by up to ±20 % (`jitter` in `[0, 1)`), so
/// several gateways that failed together do not retry together.
pub(crate) fn backoff(first: Duration, failures: u32, jitter: f64) -> Duration {
    let doubled = first.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    doubled
        .min(RETRY_CAP)
        .mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_due_inside_its_window_and_not_before() {
        let day = 86_400;
        assert_eq!(
            until_due(100 * day, 50 * day, 30),
            Duration::from_secs(20 * 86_400)
        );
        assert_eq!(until_due(100 * day, 80 * day, 30), Duration::ZERO);
        assert_eq!(until_due(100 * day, 200 * day, 30), Duration::ZERO);
        // A threshold longer than the whole lifetime: due from the start.
        assert_eq!(until_due(100 * day, 10 * day, 3000), Duration::ZERO);
    }

    #[test]
    fn retries_double_are_capped_and_spread() {
        let first = Duration::from_secs(60);
        let mid = |n| backoff(first, n, 0.5);
        assert_eq!(mid(1), Duration::from_secs(60));
        assert_eq!(mid(2), Duration::from_secs(120));
        assert_eq!(mid(4), Duration::from_secs(480));
        assert_eq!(mid(30), RETRY_CAP);
        assert_eq!(backoff(first, 1, 0.0), Duration::from_secs(48));
        assert_eq!(backoff(first, 1, 0.999_999).as_secs(), 71);
        assert!(backoff(first, 0, 0.5) >= Duration::from_secs(60));
    }
}
