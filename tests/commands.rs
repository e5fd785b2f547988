//! The command set beyond plain transfers, with Python's ftplib against both backends:
//! REST, APPE, STOU, LIST/NLST/MLSD, ABOR then another transfer, FEAT, QUIT mid-session.

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

#[test]
fn rest_resumes_a_download_at_the_offset() {
    let gw = TestGateway::start(BackendKind::Unftp, |_| {});
    py_scenario(&gw, "rest", &[]);
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    py_scenario(&gw, "rest", &[]);
}

#[test]
fn appe_appends_and_stou_stores_uniquely() {
    let gw = TestGateway::start(BackendKind::Unftp, |_| {});
    py_scenario(&gw, "appe", &[]);
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    py_scenario(&gw, "appe", &[]);
    py_scenario(&gw, "stou", &[]);
}

#[test]
fn list_nlst_and_mlsd_listings_arrive() {
    let gw = TestGateway::start(BackendKind::Unftp, |_| {});
    py_scenario(&gw, "listings", &["--mlsd"]);
    // vsftpd 3.0.3 has no MLSD.
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    py_scenario(&gw, "listings", &[]);
}

#[test]
fn abor_during_download_then_another_transfer() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    py_scenario(&gw, "abort", &[]);
    let gw = TestGateway::start(BackendKind::Unftp, |_| {});
    py_scenario(&gw, "abort", &[]);
}

#[test]
fn feat_lists_gateway_tls_features_and_backend_features() {
    let Some(vs) = FtpServer::vsftpd(VsTls::None) else {
        return;
    };
    let gw = TestGateway::start(vs.backend(), |_| {});
    py_scenario(
        &gw,
        "feat",
        &[
            "--expect-feat",
            "MDTM",
            "--expect-feat",
            "SIZE",
            "--expect-feat",
            "REST STREAM",
        ],
    );
}

#[test]
fn quit_mid_session_closes_and_next_session_works() {
    let gw = TestGateway::start(BackendKind::Unftp, |_| {});
    py_scenario(&gw, "quit-midway", &[]);
}
