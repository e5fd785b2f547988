//! ftpsgate: an FTPS reverse proxy.
//!
//! Clients speak FTPS (explicit `AUTH TLS` or implicit) to the gateway; the gateway speaks FTP to
//! an unmodified internal server, answers passive mode itself from a pooled port range, and
//! splices data connections through. `README.md` says what it is for; `docs/ARCHITECTURE.md`
//! has the whole picture.
//!
//! What each module does is in the module table of `docs/ARCHITECTURE.md` ("The shape"), not
//! here: a second list beside it went stale as modules were added, and each module's own doc
//! comment says the rest.

mod accept;
pub(crate) mod access;
pub mod acme;
pub(crate) mod admin;
pub(crate) mod audit;
pub mod backend;
pub mod config;
mod control;
mod cores;
pub(crate) mod data;
#[cfg(feature = "demo")]
pub mod demo;
pub mod doctor;
pub(crate) mod fdlimit;
pub mod ftp;
mod io_util;
pub(crate) mod metrics;
mod policy;
mod private;
pub mod probe;
pub(crate) mod proxy_protocol;
mod refusal;
pub mod scan;
pub mod server;
pub mod session;
mod stream;
pub mod tls;
