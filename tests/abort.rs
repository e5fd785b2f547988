//! ABOR against every backend the tests run, at random points of downloads and uploads: each
//! answered with the transfer's reply and then ABOR's 2xx within a few seconds, whatever order
//! the server writes them in (vsftpd: 426, 225; pure-ftpd: 426, multi-line 226; libunftp: 226,
//! 426), and a whole transfer after each. Python's ftplib is the client.

// A test, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use support::gateway::{BackendKind, TestGateway};
use support::process::py_scenario;
use support::servers::{FtpServer, VsTls};

/// ABORs per direction per backend.
const ROUNDS: &str = "50";

fn storm(backend: BackendKind, seed: u64) {
    let gw = TestGateway::start(backend, |_| {});
    py_scenario(
        &gw,
        "abort-storm",
        &["--count", ROUNDS, "--seed", &seed.to_string()],
    );
}

#[test]
fn abor_at_random_points_against_vsftpd() {
    if let Some(ftpd) = FtpServer::vsftpd(VsTls::None) {
        storm(ftpd.backend(), 1);
    }
}

#[test]
fn abor_at_random_points_against_pure_ftpd() {
    if let Some(ftpd) = FtpServer::pure_ftpd(VsTls::None) {
        storm(ftpd.backend(), 2);
    }
}

#[test]
fn abor_at_random_points_against_proftpd() {
    if let Some(ftpd) = FtpServer::proftpd(VsTls::None) {
        storm(ftpd.backend(), 3);
    }
}

#[test]
fn abor_at_random_points_against_libunftp() {
    storm(BackendKind::Unftp, 4);
}
