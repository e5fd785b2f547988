//! TLS 1.3 KeyUpdate on a download's data connection: rustls keeps the gateway's record layer,
//! so a client that asks for new keys (RFC 8446 §4.6.3), in the flight of its Finished or in
//! the middle of the transfer, gets every byte under keys it can open, and a 226.
//!
//! The client is rustls driven by hand, which is the only way to put a KeyUpdate into the
//! same flight as the Finished: every FTP client library finishes the handshake first.

// Helpers of the tests, where a panic is the report.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use support::files::{random_file, sha256};
use support::ftps::Ftps;
use support::gateway::{BackendKind, TestGateway};
use support::MIB;

/// When the client asks the gateway for new keys.
#[derive(Debug, Clone, Copy)]
enum Update {
    /// KeyUpdate(update_requested) in the same flight as the client's Finished.
    WithFinished,
    /// After this many bytes of the download have arrived.
    After(usize),
}

/// Downloads over a data connection that resumes the control connection's TLS session (as
/// `data_session_reuse = "require"` wants) and sends KeyUpdate(update_requested) at `update`.
/// Blocking: the handshake is driven record by record.
fn download(
    config: Arc<rustls::ClientConfig>,
    port: u16,
    update: Update,
) -> std::io::Result<Vec<u8>> {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(60)))?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut conn = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    // complete_io returns once the server's Finished is read, before the client's own
    // Finished is written: a KeyUpdate queued now travels in the same flight.
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the data connection resumes the control connection's session"
    );
    let mut pending = Some(update);
    if let Some(Update::WithFinished) = pending {
        conn.refresh_traffic_keys().map_err(std::io::Error::other)?;
        pending = None;
    }
    while conn.wants_write() {
        conn.write_tls(&mut tcp)?;
    }
    let mut data = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
    loop {
        if let Some(Update::After(n)) = pending {
            if data.len() >= n {
                stream
                    .conn
                    .refresh_traffic_keys()
                    .map_err(std::io::Error::other)?;
                stream.flush()?;
                pending = None;
            }
        }
        match stream.read(&mut buf)? {
            0 => break,
            n => data.extend_from_slice(&buf[..n]),
        }
    }
    assert!(pending.is_none(), "the KeyUpdate was sent ({update:?})");
    Ok(data)
}

#[test]
fn downloads_whole_when_the_client_asks_for_new_keys_with_its_finished_or_mid_transfer() {
    let gw = TestGateway::start(BackendKind::Unftp, |_| {});
    let size = 3 * MIB;
    let want = random_file(&gw.root.join("keyupdate.bin"), size);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut ftp = Ftps::login(gw.explicit, &gw.ca).await;
        for update in [
            Update::WithFinished,
            Update::After(MIB),
            Update::WithFinished,
        ] {
            let port = ftp.epsv().await;
            let config = Arc::clone(&ftp.config);
            let data = tokio::task::spawn_blocking(move || download(config, port, update));
            let first = ftp.cmd("RETR keyupdate.bin").await;
            assert!(first.starts_with("150"), "{first}");
            let got = data
                .await
                .expect("join")
                .unwrap_or_else(|e| panic!("{update:?}: {e}"));
            let done = ftp.reply().await;
            assert!(done.starts_with("226"), "{update:?}: {done}");
            assert_eq!(got.len(), size, "{update:?}");
            assert_eq!(sha256(&got), want, "{update:?}");
        }
        assert!(ftp.cmd("NOOP").await.starts_with("200"));
    });
}
