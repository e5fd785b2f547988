//! The gateway's side toward the backends: its control connection to a backend server
//! ([`control`]), the router that picks a backend and one of its addresses for a session
//! ([`router`]), and the health checks that mark addresses down and up again ([`health`]).
//! Sessions and `ftpsgate doctor` both stand on it; it knows nothing of clients.

mod control;
mod health;
mod router;

pub use control::{Backend, BackendError, NoDataPort};
pub use router::{dial, Dialer, Route, RouteError, Router, Slot, DEFAULT_ROUTE};
