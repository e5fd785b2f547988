//! The tests' and the benchmark's shared harness, one module per concern: a gateway in-process
//! and the binary's command line (`gateway`), real backends (`servers`) and scripted ones
//! (`scripted`), running peers (`process`), files by hash (`files`), loopback ports (`net`),
//! certificates (`pki`), Pebble as the ACME server (`pebble`), clamd behind c-icap as the ICAP
//! server that scans uploads (`icap`), the admin listener (`admin`), curl (`curl`), client
//! programs bounded in time and the tests' own Java and Node clients (`peers`), and talking FTP
//! by hand: one control connection (`control`), an FTPS session on it (`ftps`) and the
//! benchmark's fast transfer client (`transfer`).
//!
//! A peer that is missing makes a test skip with a loud message on a laptop, and fail when
//! `CI=true`, since CI installs every peer.
//!
//! Helpers of the tests, where a panic is the report: they unwrap and index freely (the
//! gateway's own `[lints]` deny that, and do not apply here).

pub mod admin;
pub mod control;
pub mod curl;
pub mod files;
pub mod ftps;
pub mod gateway;
pub mod icap;
pub mod net;
pub mod pebble;
pub mod peers;
pub mod pki;
pub mod process;
pub mod scripted;
pub mod servers;
pub mod transfer;

/// The user every backend logs in (a local user for vsftpd and ProFTPD, a virtual one for
/// pure-ftpd and libunftp).
pub const USER: &str = "ftpsgate-test";
pub const PASSWORD: &str = "gate-Test-pw1";

pub const MIB: usize = 1024 * 1024;
