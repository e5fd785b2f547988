//! Accepting connections: back-off on failure, and a reserve descriptor so a client that
//! cannot be accepted for want of descriptors hears 421 instead of waiting in the backlog.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use crate::metrics::{Metrics, Reason};
use crate::refusal::Refusal;
use crate::session::Mode;

/// Accepts connections on one listener, never spinning and never giving up.
///
/// A failed accept (out of descriptors, most often) is counted and logged, and the next try
/// waits a pause that doubles up to a second. Out of descriptors, the connection that could not
/// be accepted would sit in the backlog until its client gave up, so the acceptor keeps one
/// descriptor in reserve: it lets go of it, accepts that connection, tells it 421 (explicit
/// mode) and closes it, then takes the reserve again.
pub(crate) struct Acceptor {
    reserve: Option<std::fs::File>,
    pause: Duration,
    /// Explicit listeners tell a client refused for want of descriptors why.
    mode: Option<Mode>,
}

const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// Linux's "too many open files" errors, for the process and for the system.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

impl Acceptor {
    pub(crate) fn new(mode: Option<Mode>) -> Self {
        Acceptor {
            reserve: std::fs::File::open("/dev/null").ok(),
            pause: FIRST_PAUSE,
            mode,
        }
    }

    pub(crate) async fn accept(
        &mut self,
        listener: &TcpListener,
        metrics: &Metrics,
    ) -> (TcpStream, SocketAddr) {
        loop {
            match listener.accept().await {
                Ok(c) => {
                    self.pause = FIRST_PAUSE;
                    if self.reserve.is_none() {
                        self.reserve = std::fs::File::open("/dev/null").ok();
                    }
                    return c;
                }
                Err(e) => {
                    metrics.refused(Reason::accept_failed);
                    let pause_ms = self.pause.as_millis() as u64;
                    warn!(error = %e, pause_ms, "accept failed");
                    if matches!(e.raw_os_error(), Some(EMFILE | ENFILE)) {
                        self.shed(listener).await;
                    }
                    tokio::time::sleep(self.pause).await;
                    self.pause = (self.pause * 2).min(LONGEST_PAUSE);
                }
            }
        }
    }

    /// Out of descriptors (EMFILE, ENFILE): spends the reserve on refusing the waiting client.
    async fn shed(&mut self, listener: &TcpListener) {
        let Some(reserve) = self.reserve.take() else {
            return;
        };
        drop(reserve);
        if let Ok(Ok((tcp, peer))) =
            tokio::time::timeout(Duration::from_millis(50), listener.accept()).await
        {
            let refusal = Refusal::OutOfDescriptors { peer };
            refusal.log();
            match self.mode {
                Some(mode) => refuse(tcp, mode, refusal).await,
                None => drop(tcp),
            }
        }
        self.reserve = std::fs::File::open("/dev/null").ok();
    }
}

/// Tells a refused explicit-mode client why (the refusal's 421); an implicit-mode client only
/// gets a close, since a reply would need a TLS handshake the gateway will not spend on it.
pub(crate) async fn refuse(mut tcp: TcpStream, mode: Mode, refusal: Refusal) {
    if mode == Mode::Explicit {
        let reply = refusal.reply();
        let write = tcp.write_all(reply.as_bytes());
        let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
    }
}
