//! A connection that is plain TCP or TLS, as the protocol state decides, on either side: the
//! gateway is the TLS server toward clients and the TLS client toward FTPS backends. An enum
//! rather than a boxed trait object keeps the data path monomorphic and allocation-free.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::{HandshakeKind, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

use crate::data::TicketGate;

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// A client data connection, whose TLS 1.3 tickets wait for the gateway's first write.
    DataTls(Box<tokio_rustls::server::TlsStream<TicketGate>>),
    /// A backend data connection, read in large chunks (see `data::gate` on why).
    BackendDataTls(Box<tokio_rustls::client::TlsStream<BufReader<TcpStream>>>),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    /// `(version, resumed)` for TLS connections, for logs.
    pub fn tls_info(&self) -> Option<(ProtocolVersion, bool)> {
        let conn: &rustls::CommonState = match self {
            Stream::Plain(_) => return None,
            Stream::Tls(s) => s.get_ref().1,
            Stream::DataTls(s) => s.get_ref().1,
            Stream::BackendDataTls(s) => s.get_ref().1,
        };
        Some((
            conn.protocol_version()?,
            conn.handshake_kind() == Some(HandshakeKind::Resumed),
        ))
    }
}

impl From<tokio_rustls::server::TlsStream<TcpStream>> for Stream {
    fn from(s: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        Stream::Tls(Box::new(TlsStream::Server(s)))
    }
}

impl From<tokio_rustls::client::TlsStream<TcpStream>> for Stream {
    fn from(s: tokio_rustls::client::TlsStream<TcpStream>) -> Self {
        Stream::Tls(Box::new(TlsStream::Client(s)))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::DataTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::BackendDataTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::DataTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::BackendDataTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::DataTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::BackendDataTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::DataTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::BackendDataTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
