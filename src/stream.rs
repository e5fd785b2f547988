//! Data connections, and what control connections run over.
//!
//! Data connections are [`Stream`], an enum over TCP, so the data path stays monomorphic and
//! allocation-free; their TLS is made in `tls::data`. Control connections (`control`) run over
//! any [`Io`]: a TCP socket in production, one end of a `tokio::io::duplex` in tests, so the
//! relay's behaviour (reply orderings, routing) can be pinned by peers scripted in Rust without
//! sockets. A vtable call per control read or write costs nothing next to a round trip.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::tls::data::{BackendConn, ClientConn};
use crate::tls::TlsFacts;

/// What a control connection runs over.
pub trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}

/// A data connection.
pub(crate) enum Stream {
    Plain(TcpStream),
    /// A client data connection, whose TLS 1.3 tickets wait for the gateway's first write.
    DataTls(Box<ClientConn>),
    /// A backend data connection, read in large chunks (see `io_util`, `ReadAhead`, on why).
    BackendDataTls(Box<BackendConn>),
}

impl Stream {
    /// `(version, resumed)` for TLS connections, for logs.
    pub(crate) fn tls_info(&self) -> Option<TlsFacts> {
        match self {
            Stream::Plain(_) => None,
            Stream::DataTls(s) => s.tls_info(),
            Stream::BackendDataTls(s) => s.tls_info(),
        }
    }
}

/// `AsyncRead` and `AsyncWrite` for an enum of connections: each call goes to the variant's own
/// (every variant holds one that is `Unpin`, boxed or not). Control connections use it too.
macro_rules! delegate_io {
    ($ty:ident { $($variant:ident),+ }) => {
        impl ::tokio::io::AsyncRead for $ty {
            fn poll_read(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                buf: &mut ::tokio::io::ReadBuf<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => ::std::pin::Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }

        impl ::tokio::io::AsyncWrite for $ty {
            fn poll_write(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                buf: &[u8],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(s) => ::std::pin::Pin::new(s).poll_write(cx, buf),)+
                }
            }

            fn poll_flush(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => ::std::pin::Pin::new(s).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => ::std::pin::Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}
pub(crate) use delegate_io;

delegate_io!(Stream {
    Plain,
    DataTls,
    BackendDataTls
});
