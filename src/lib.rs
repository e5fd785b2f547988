//! ftpsgate: an FTPS reverse proxy.
//!
//! Clients speak FTPS (explicit `AUTH TLS` or implicit) to the gateway; the gateway speaks FTP to
//! an unmodified internal server, answers passive mode itself from a pooled port range, and
//! splices data connections through. See `README.md` and `docs/ARCHITECTURE.md` for the whole picture.
//!
//! Layers, outermost first: [`server`] (listeners, limits) → [`session`] (the control relay) →
//! [`data`] (passive pool, data bridges) → [`ftp`] (pure protocol, no I/O).

mod accept;
pub(crate) mod access;
pub(crate) mod admin;
pub(crate) mod audit;
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
pub mod probe;
pub(crate) mod proxy_protocol;
pub mod server;
pub mod session;
mod stream;
pub mod tls;
pub mod upstream;
