//! Where a session stands, as a type: before login it may or may not be connected to a backend
//! and may have chosen a route; once the backend has said 230 it is connected for good, as the
//! user the backend accepted. What only makes sense in one phase lives in that phase, so no
//! code can ask a logged-in session for its login deadline or a session without a backend for
//! its link.

use std::sync::Arc;

use tokio::time::Instant;

use crate::backend::{Backend, Route, Slot};
use crate::ftp::Line;

/// The session's control connection to its backend, and its place in that backend's count.
pub(super) struct Link {
    pub backend: Backend,
    pub slot: Slot,
}

/// Which route HOST or `USER name@route` chose, and which of the two: the route rules apply in
/// order (the SNI name, then HOST, then the user suffix), a later one never overriding an
/// earlier one, and only the suffix's choice is given back when its login is refused. The SNI
/// name's route is not a choice the session makes: it is read off the TLS session when needed.
#[derive(Clone, Default)]
pub(super) enum RouteChoice {
    /// Neither HOST nor a user suffix has chosen: the SNI name's route, else the default.
    #[default]
    Open,
    /// HOST chose it, for good.
    Host(Arc<Route>),
    /// `USER name@route` chose it; a refused login gives the choice back.
    User(Arc<Route>),
}

impl RouteChoice {
    pub(super) fn route(&self) -> Option<&Arc<Route>> {
        match self {
            RouteChoice::Open => None,
            RouteChoice::Host(route) | RouteChoice::User(route) => Some(route),
        }
    }
}

pub(super) enum Phase {
    LoggingIn(LoggingIn),
    LoggedIn(LoggedIn),
}

/// Before the backend's 230.
pub(super) struct LoggingIn {
    /// The login must have succeeded by then (`timeouts.login_secs`).
    pub deadline: Instant,
    /// `None` until a command needs the backend (with routes: once HOST or USER may have
    /// chosen it), or after HOST or USER moved the session to another route.
    pub link: Option<Link>,
    pub route: RouteChoice,
    /// A HOST the gateway answered before the backend was connected; sent to it on connect,
    /// for virtual hosts of its own.
    pub host_pending: Option<Line>,
}

/// After the backend's 230.
pub(super) struct LoggedIn {
    pub link: Link,
    /// The user the backend accepted, for logs, routing and the TLS binding; never a name it
    /// refused.
    pub user: String,
}

/// A logged-in session's backend, with who the session is there: what the data channel needs.
pub(super) struct Account<'a> {
    pub backend: &'a mut Backend,
    pub route: &'a Arc<Route>,
    pub user: &'a str,
}

impl Phase {
    pub(super) fn new(deadline: Instant, link: Option<Link>) -> Phase {
        Phase::LoggingIn(LoggingIn {
            deadline,
            link,
            route: RouteChoice::Open,
            host_pending: None,
        })
    }

    pub(super) fn is_logged_in(&self) -> bool {
        matches!(self, Phase::LoggedIn(_))
    }

    pub(super) fn link(&self) -> Option<&Link> {
        match self {
            Phase::LoggingIn(l) => l.link.as_ref(),
            Phase::LoggedIn(s) => Some(&s.link),
        }
    }

    pub(super) fn link_mut(&mut self) -> Option<&mut Link> {
        match self {
            Phase::LoggingIn(l) => l.link.as_mut(),
            Phase::LoggedIn(s) => Some(&mut s.link),
        }
    }

    pub(super) fn user(&self) -> Option<&str> {
        match self {
            Phase::LoggingIn(_) => None,
            Phase::LoggedIn(s) => Some(&s.user),
        }
    }

    /// The backend the session is on, or has chosen; `None` while only the default applies.
    pub(super) fn route(&self) -> Option<&Arc<Route>> {
        match self {
            Phase::LoggingIn(l) => l.link.as_ref().map(|k| k.slot.route()).or(l.route.route()),
            Phase::LoggedIn(s) => Some(s.link.slot.route()),
        }
    }

    /// The logged-in session's backend; `None` before login.
    pub(super) fn account(&mut self) -> Option<Account<'_>> {
        match self {
            Phase::LoggingIn(_) => None,
            Phase::LoggedIn(s) => Some(Account {
                backend: &mut s.link.backend,
                route: s.link.slot.route(),
                user: &s.user,
            }),
        }
    }

    /// The backend said 230 to `user`. Logged in only with a backend to be logged in at, which
    /// the 230 came from; logged in already (a backend that lets USER change the user), the
    /// user changes.
    pub(super) fn log_in(&mut self, user: String) {
        match self {
            Phase::LoggedIn(s) => s.user = user,
            Phase::LoggingIn(l) => {
                if let Some(link) = l.link.take() {
                    *self = Phase::LoggedIn(LoggedIn { link, user });
                }
            }
        }
    }
}
