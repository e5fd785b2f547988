//! Data connections' TLS, one entry each way, so the data plane handles connections and facts
//! and never rustls or the ticket hold.
//!
//! [`accept`] makes a client's data connection TLS (the gateway is the TLS server whoever
//! connected, RFC 4217 §7) and checks that it is bound to its session: under `require` it must
//! resume a TLS session, and one opened by a sibling's ticket must belong to the same user on
//! the same route (docs/ARCHITECTURE.md, "The TLS binding"). It says what it found as
//! [`Passed`] or [`Refused`]; the caller counts and logs, so its lines and metrics stay where
//! the wait for the client's connection is decided (`data::admit`).
//!
//! [`connect`] makes a backend's data connection TLS (the gateway is the TLS client, RFC 4217
//! §7, whoever connected).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::{HandshakeKind, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use super::backend::BackendSession;
use super::binding::Siblings;
use super::ticket_hold::{SignalOnTicket, TicketGate};
use super::{summary, TlsFacts};
use crate::config::ReuseMode;
use crate::io_util::ReadAhead;

/// The TLS bytes rustls may hold on a client data connection before a write waits for the
/// socket, and so what one `writev` hands it: about three full 16 KiB records. Measured on
/// loopback (docs/ARCHITECTURE.md, "A transfer"): one record per `send` cost downloads about
/// 10 % more CPU per GiB than batches of two or three, and rustls's default of 64 KiB (four
/// records and a few bytes) per `writev` a quarter more: those end 141 bytes into a second
/// 64 KiB loopback segment, and four records trimmed to fit one segment cost no more than
/// three. Toward TLS backends the same limit changed nothing measurable, so they keep
/// rustls's default.
const TLS_SEND_BATCH: usize = 48 * 1024;

/// An FTP session's TLS config for its client data connections (`SessionTls::data`): its
/// ticketer and cache are the session's, which is what binds a data connection to it. The
/// data plane passes it on to [`accept`] and looks no further into it.
pub(crate) type DataConfig = Arc<ServerConfig>;

/// What a client data connection's TLS is held to.
pub(crate) struct Policy<'a> {
    pub config: &'a DataConfig,
    pub reuse: ReuseMode,
    /// Sibling sessions whose TLS sessions the connection may resume too.
    pub siblings: Option<&'a Siblings>,
    /// For the handshake, and for a sibling still logging in to say who it is.
    pub handshake_timeout: Duration,
}

/// A client data connection that passed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Passed {
    pub resumed: bool,
    /// It resumed a sibling session's TLS session (same user, same route).
    pub sibling: bool,
}

/// Why a client data connection did not pass. The caller words it (`data::BridgeError`).
#[derive(Debug)]
pub(crate) enum Refused {
    /// The handshake failed, or did not finish in time (`TimedOut`).
    Handshake(io::Error),
    /// Under `require`, a handshake that resumed nothing; `offered` says whether the client
    /// offered a session at all.
    NotResumed { offered: bool },
    /// It resumed the TLS session of a sibling that is another user, or on another route, or
    /// that never logged in.
    ForeignSibling,
}

/// Runs the TLS handshake of a client's data connection and checks it against `policy`. The
/// handshake counts as completed (for `ftpsgate_tls_handshakes_total`) unless the error is
/// [`Refused::Handshake`].
pub(crate) async fn accept(
    tcp: TcpStream,
    policy: &Policy<'_>,
) -> Result<(ClientConn, Passed), Refused> {
    // This connection's own view of the session's config: the same ticketer and cache (so
    // resumption works), but tickets made here arm this connection's gate (`ticket_hold`).
    let mut config = (**policy.config).clone();
    let signal = SignalOnTicket::new(Arc::clone(&config.ticketer), policy.siblings.cloned());
    config.ticketer = Arc::clone(&signal) as _;
    let accept = TlsAcceptor::from(Arc::new(config)).accept(signal.gate(tcp));
    let mut tls = timeout(policy.handshake_timeout, accept)
        .await
        .map_err(|_| Refused::Handshake(io::ErrorKind::TimedOut.into()))?
        .map_err(Refused::Handshake)?;
    let (gate, conn) = tls.get_mut();
    gate.release();
    conn.set_buffer_limit(Some(TLS_SEND_BATCH));
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    if policy.reuse == ReuseMode::Require && !resumed {
        return Err(Refused::NotResumed {
            offered: signal.offered(),
        });
    }
    // A sibling's ticket opened the handshake: it passes only if the sibling is (or, still
    // logging in, becomes) the same user on the same route (see `tls::binding`).
    let mut sibling = false;
    if let (true, Some(issuer), Some(siblings)) = (resumed, signal.take_issuer(), policy.siblings) {
        if !issuer.is(&siblings.who, policy.handshake_timeout).await {
            return Err(Refused::ForeignSibling);
        }
        sibling = true;
    }
    Ok((ClientConn(tls), Passed { resumed, sibling }))
}

/// Runs the TLS handshake of a backend's data connection, within `limit` (then `TimedOut`).
/// Its socket is read ahead in large chunks (`io_util`, `ReadAhead`).
pub(crate) async fn connect(
    tcp: TcpStream,
    tls: &BackendSession,
    limit: Duration,
) -> io::Result<BackendConn> {
    let handshake = tls
        .connector
        .connect(tls.server_name.clone(), ReadAhead::new(tcp));
    timeout(limit, handshake)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
        .map(BackendConn)
}

/// A client's data connection under TLS, its tickets held until the gateway's first write
/// (`ticket_hold`).
pub(crate) struct ClientConn(tokio_rustls::server::TlsStream<TicketGate>);

/// A backend's data connection under TLS.
pub(crate) struct BackendConn(tokio_rustls::client::TlsStream<ReadAhead<TcpStream>>);

impl ClientConn {
    /// `(version, resumed)`, for logs.
    pub(crate) fn tls_info(&self) -> Option<TlsFacts> {
        summary(self.0.get_ref().1)
    }
}

impl BackendConn {
    /// `(version, resumed)`, for logs.
    pub(crate) fn tls_info(&self) -> Option<TlsFacts> {
        summary(self.0.get_ref().1)
    }
}

/// `AsyncRead` and `AsyncWrite` for a wrapper: each call goes to the TLS stream inside, vectored
/// writes included (the client side's batch of records, `TLS_SEND_BATCH`).
macro_rules! delegate_io {
    ($ty:ident) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
            }
        }

        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.0.is_write_vectored()
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().0).poll_flush(cx)
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
            }
        }
    };
}

delegate_io!(ClientConn);
delegate_io!(BackendConn);
