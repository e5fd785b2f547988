//! What a command's handling comes to: an [`Answer`] for the loop to send, or a [`Halt`]: a
//! refusal (the session carries on unless it says otherwise) or a [`Fatal`] error (it ends).
//! One return type for every handler, so the loop treats every command alike.

use thiserror::Error;

use crate::backend::{BackendError, RouteError};
use crate::ftp::Reply;
use crate::refusal::Refusal;

/// Why a session ended early. Logged once; the client gets the reply where one still fits.
#[derive(Debug, Error)]
pub(super) enum Fatal {
    #[error("client connection: {0}")]
    Client(#[from] std::io::Error),
    #[error("backend {0}")]
    Backend(#[from] BackendError),
    /// No backend could be reached when the session needed one.
    #[error("{0}")]
    Unreachable(RouteError),
    /// The backend turned the session away in its greeting (421 too many users, ...): the
    /// client hears that reply.
    #[error("backend refused the session: {}", .0.code())]
    Greeting(Reply),
}

impl From<RouteError> for Fatal {
    fn from(e: RouteError) -> Self {
        Fatal::Unreachable(e)
    }
}

/// What stops a command short: a refusal, after which the session carries on (unless the
/// refusal says otherwise), or a fatal error, after which it ends.
#[derive(Debug)]
pub(super) enum Halt {
    Refused(Refusal),
    Fatal(Fatal),
}

impl From<Refusal> for Halt {
    fn from(r: Refusal) -> Self {
        Halt::Refused(r)
    }
}

impl From<Fatal> for Halt {
    fn from(f: Fatal) -> Self {
        Halt::Fatal(f)
    }
}

impl From<std::io::Error> for Halt {
    fn from(e: std::io::Error) -> Self {
        Halt::Fatal(e.into())
    }
}

impl From<BackendError> for Halt {
    fn from(e: BackendError) -> Self {
        Halt::Fatal(e.into())
    }
}

impl From<RouteError> for Halt {
    fn from(e: RouteError) -> Self {
        Halt::Fatal(e.into())
    }
}

/// What a command leaves for the loop to do.
pub(super) enum Answer {
    /// Send this reply; the session carries on.
    Reply(Reply),
    /// The handler has sent its replies itself (AUTH's 234 before the handshake, a transfer's
    /// 1xx and final reply, ABOR's pair); the session carries on.
    Sent,
    /// The session ends, after this reply if there is one.
    Close(Option<Reply>),
}

impl From<Reply> for Answer {
    fn from(reply: Reply) -> Self {
        Answer::Reply(reply)
    }
}
