//! Shared test harness, one file per concern: a gateway in-process (`gateway`), real backends
//! (`servers`) and scripted ones (`scripted`), running peers (`process`), files by hash
//! (`files`), loopback ports (`net`), the admin listener (`admin`).
//!
//! A peer that is missing makes a test skip with a loud message on a laptop, and fail when
//! `CI=true`, since CI installs every peer.

// Each test binary uses a different part of the harness.
#![allow(dead_code, unused_imports)]
// Helpers of the tests, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod admin;
mod control;
mod files;
mod gateway;
mod net;
mod pki;
mod process;
mod scripted;
mod servers;

pub use admin::*;
pub use control::*;
pub use files::*;
pub use gateway::*;
pub use net::*;
pub use pki::*;
pub use process::*;
pub use scripted::*;
pub use servers::*;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use ftpsgate::config::{Overrides, Settings};
use ftpsgate::server::Gateway;
use ftpsgate::session::Mode;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

pub const USER: &str = "ftpsgate-test";
pub const PASSWORD: &str = "gate-Test-pw1";

pub const MIB: usize = 1024 * 1024;
