//! The open-file budget: at start the soft limit on descriptors is raised to the hard one, and
//! the configured sessions must fit in it; if they cannot, the gateway says so with the numbers
//! and lowers `limits.max_sessions` to what fits, or refuses to start when not even one session
//! would. Without this, a gateway started at `ulimit -n 128` with room for a thousand sessions
//! accepts until the descriptors run out, and then new clients wait in the backlog for nothing.

use crate::config::Settings;

/// Descriptors one session may hold at once: the client's and the backend's control
/// connections, and during a transfer a data connection on each side. A pending passive lease
/// holds none: the pool's listeners are counted once, apart.
pub(crate) const PER_SESSION: u64 = 4;
/// Descriptors the process needs besides sessions: the runtime, logs, certificates and their
/// watcher, health checks, the admin listener, slack for refusals.
pub(crate) const RESERVED: u64 = 64;

/// Descriptors `settings` may need at once.
pub(crate) fn needed(settings: &Settings) -> u64 {
    let listeners = settings.listen.all().count() as u64;
    // One listener per passive port on each address the control listeners use.
    let ips = crate::data::bind_addresses(settings.listen.all().map(|a| a.ip())).len();
    let passive = settings.passive.range().len() * ips;
    RESERVED + listeners + passive as u64 + PER_SESSION * settings.limits.max_sessions as u64
}

/// Raises the soft limit to the hard one and returns the soft limit now in force (`None` where
/// it cannot be read).
pub(crate) fn raise() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// [`raise`], then [`fit`], with a warning naming the numbers when the sessions were lowered.
pub(crate) fn raise_and_fit(settings: &mut Settings) -> Result<(), String> {
    let Some(limit) = raise() else {
        return Ok(());
    };
    if let Fit::Lowered {
        limit,
        need,
        was,
        now,
    } = fit(settings, limit)?
    {
        tracing::warn!(
            open_file_limit = limit,
            needed = need,
            max_sessions = now,
            configured = was,
            "the open-file limit cannot hold limits.max_sessions; lowered it to fit \
             (raise LimitNOFILE / ulimit -n to serve more)"
        );
    }
    Ok(())
}

/// What [`fit`] had to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fit {
    /// Everything fits in `limit`.
    Fits,
    /// `max_sessions` was lowered from `was` to `now` to fit in `limit`.
    Lowered {
        limit: u64,
        need: u64,
        was: usize,
        now: usize,
    },
}

/// Fits the session limits into `limit` descriptors. `Err` says why not even one session fits.
pub(crate) fn fit(settings: &mut Settings, limit: u64) -> Result<Fit, String> {
    let need = needed(settings);
    if need <= limit {
        return Ok(Fit::Fits);
    }
    let fixed = needed(settings) - PER_SESSION * settings.limits.max_sessions as u64;
    let sessions = limit.saturating_sub(fixed) / PER_SESSION;
    if sessions == 0 {
        return Err(format!(
            "the open-file limit is {limit}, but the gateway needs {fixed} descriptors before its \
             first session and {PER_SESSION} per session: raise it (systemd: LimitNOFILE; shell: \
             ulimit -n)"
        ));
    }
    let was = settings.limits.max_sessions;
    let now = usize::try_from(sessions).unwrap_or(usize::MAX);
    settings.limits.max_sessions = now;
    settings.limits.max_sessions_per_ip = settings.limits.max_sessions_per_ip.min(now);
    Ok(Fit::Lowered {
        limit,
        need,
        was,
        now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_lowered_to_what_the_limit_holds_or_start_is_refused() {
        let mut s = Settings::default();
        s.limits.max_sessions = 1000;
        assert_eq!(fit(&mut s, 1_000_000), Ok(Fit::Fits));
        let fixed = RESERVED + 1;
        let fitted = fit(&mut s, fixed + 10 * PER_SESSION + 3).expect("ten fit");
        assert!(
            matches!(
                fitted,
                Fit::Lowered {
                    was: 1000,
                    now: 10,
                    ..
                }
            ),
            "{fitted:?}"
        );
        assert_eq!(s.limits.max_sessions, 10);
        assert_eq!(s.limits.max_sessions_per_ip, 10);
        assert!(fit(&mut s, fixed + 1).is_err());
    }
}
