//! Connections that are plain or TLS, as the protocol state decides, on either side: the
//! gateway is the TLS server toward clients and the TLS client toward FTPS backends.
//!
//! Data connections are [`Stream`], an enum over TCP, so the data path stays monomorphic and
//! allocation-free; their TLS is made in `tls::data`. Control connections are [`Control`], over
//! any [`Io`]: a TCP socket in production, one end of a `tokio::io::duplex` in tests, so the
//! relay's behaviour (reply orderings, routing) can be pinned by peers scripted in Rust without
//! sockets. A vtable call per control read or write costs nothing next to a round trip.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

use crate::tls::data::{BackendConn, ClientConn};
use crate::tls::{summary, TlsFacts};

/// What a control connection runs over.
pub trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}

/// A control connection: plain until `AUTH TLS` (or TLS from the start), then TLS over the same
/// transport.
pub enum Control {
    Plain(Box<dyn Io>),
    Tls(Box<TlsStream<Box<dyn Io>>>),
}

impl Control {
    pub fn is_tls(&self) -> bool {
        matches!(self, Control::Tls(_))
    }

    /// `(version, resumed)` once TLS is up.
    pub fn tls_info(&self) -> Option<TlsFacts> {
        let Control::Tls(s) = self else {
            return None;
        };
        summary(match &**s {
            TlsStream::Server(s) => s.get_ref().1,
            TlsStream::Client(c) => c.get_ref().1,
        })
    }

    /// The gateway's side of a TLS session with a backend.
    pub fn tls_client(&self) -> Option<&rustls::ClientConnection> {
        match self {
            Control::Tls(s) => match &**s {
                TlsStream::Client(c) => Some(c.get_ref().1),
                TlsStream::Server(_) => None,
            },
            Control::Plain(_) => None,
        }
    }

    /// The gateway's side of a client's TLS session.
    pub fn tls_server(&self) -> Option<&rustls::ServerConnection> {
        match self {
            Control::Tls(s) => match &**s {
                TlsStream::Server(s) => Some(s.get_ref().1),
                TlsStream::Client(_) => None,
            },
            Control::Plain(_) => None,
        }
    }
}

/// A data connection.
pub enum Stream {
    Plain(TcpStream),
    /// A client data connection, whose TLS 1.3 tickets wait for the gateway's first write.
    DataTls(Box<ClientConn>),
    /// A backend data connection, read in large chunks (see `io_util`, `ReadAhead`, on why).
    BackendDataTls(Box<BackendConn>),
}

impl Stream {
    /// `(version, resumed)` for TLS connections, for logs.
    pub fn tls_info(&self) -> Option<TlsFacts> {
        match self {
            Stream::Plain(_) => None,
            Stream::DataTls(s) => s.tls_info(),
            Stream::BackendDataTls(s) => s.tls_info(),
        }
    }
}

/// `AsyncRead` and `AsyncWrite` for an enum of connections: each call goes to the variant's own
/// (every variant holds one that is `Unpin`, boxed or not).
macro_rules! delegate_io {
    ($ty:ident { $($variant:ident),+ }) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }

        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

delegate_io!(Control { Plain, Tls });
delegate_io!(Stream {
    Plain,
    DataTls,
    BackendDataTls
});
