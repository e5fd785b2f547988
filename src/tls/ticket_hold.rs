//! Holding back TLS 1.3 session tickets on client data connections until the gateway writes.
//!
//! Why. A TLS 1.3 server sends NewSessionTicket records right after the handshake. Clients that
//! use each ticket once (rustls) need a fresh one from every data connection, so tickets must be
//! sent. But an *uploading* client never reads its data connection: the ticket stays unread in
//! its socket, and a socket closed with unread data sends RST instead of FIN, which throws away
//! whatever the client's kernel had not yet sent — the end of the upload (curl does this; seen
//! here as 1 upload in 30 failing under load). Holding the ticket until the gateway's first
//! write fixes both: a download carries it ahead of the data, an upload gets it with the
//! gateway's close_notify, after the client has sent everything.
//!
//! How. rustls calls the ticketer's `encrypt` exactly when it makes a ticket, before the records
//! are written, so [`SignalOnTicket`] arms the [`TicketGate`] under the TLS stream, which then
//! keeps application-data records (content type 23, what TLS 1.3 tickets are) instead of writing
//! them, until [`TicketGate::release`] — called once the handshake is over — and the next write.
//! TLS 1.2 tickets travel inside the handshake as type 22 records and are never held.
//!
//! The gate's socket is read ahead in large chunks (see `io_util`, `ReadAhead`).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use rustls::server::ProducesTickets;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::io_util::{poll_write_rest, ReadAhead};
use crate::tls::binding::{Member, Siblings};

/// A session's ticketer, reporting each ticket it makes to one data connection's gate, and
/// whether the client offered one at all (see `data::admit::accept_client` on why that
/// matters). One per data connection: made with [`SignalOnTicket::new`], read back by
/// `tls::data` once the handshake is over.
#[derive(Debug)]
pub(super) struct SignalOnTicket {
    inner: Arc<dyn ProducesTickets>,
    /// Shared with this connection's [`TicketGate`]: set when a ticket is made.
    armed: Arc<AtomicBool>,
    /// Set when the client offers a ticket, whoever issued it.
    offered: AtomicBool,
    /// The session's siblings, whose tickets may open the handshake too (`tls::binding`).
    siblings: Option<Siblings>,
    /// The sibling whose ticket did, if one did: `tls::data` checks who it is.
    issuer: Mutex<Option<Arc<Member>>>,
}

impl SignalOnTicket {
    /// Wraps the session's ticketer `inner` for one data connection.
    pub(super) fn new(inner: Arc<dyn ProducesTickets>, siblings: Option<Siblings>) -> Arc<Self> {
        Arc::new(SignalOnTicket {
            inner,
            armed: Arc::new(AtomicBool::new(false)),
            offered: AtomicBool::new(false),
            siblings,
            issuer: Mutex::new(None),
        })
    }

    /// The gate to put under this connection's TLS: it holds what this ticketer arms it for.
    pub(super) fn gate(&self, tcp: TcpStream) -> TicketGate {
        TicketGate::new(tcp, Arc::clone(&self.armed))
    }

    /// Whether the client offered a ticket at all.
    pub(super) fn offered(&self) -> bool {
        self.offered.load(Ordering::Acquire)
    }

    /// The sibling whose ticket opened the handshake, if one did.
    pub(super) fn take_issuer(&self) -> Option<Arc<Member>> {
        self.issuer.lock().ok().and_then(|mut i| i.take())
    }
}

impl ProducesTickets for SignalOnTicket {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.armed.store(true, Ordering::Release);
        self.inner.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.offered.store(true, Ordering::Release);
        if let Some(plain) = self.inner.decrypt(cipher) {
            return Some(plain);
        }
        let (plain, issuer) = self.siblings.as_ref()?.decrypt(cipher)?;
        if let Ok(mut slot) = self.issuer.lock() {
            *slot = Some(issuer);
        }
        Some(plain)
    }
}

/// The TLS record type of application data (RFC 8446 §5.1), which TLS 1.3 tickets travel as.
const APPLICATION_DATA: u8 = 23;

/// The TCP stream under a client data connection's TLS.
pub(super) struct TicketGate {
    tcp: ReadAhead<TcpStream>,
    armed: Arc<AtomicBool>,
    /// True during the handshake: armed writes are held. False after [`Self::release`].
    holding: bool,
    held: Vec<u8>,
    sent: usize,
}

impl TicketGate {
    fn new(tcp: TcpStream, armed: Arc<AtomicBool>) -> Self {
        Self {
            tcp: ReadAhead::new(tcp),
            armed,
            holding: true,
            held: Vec::new(),
            sent: 0,
        }
    }

    /// The handshake is over: held records go out ahead of the next write.
    pub(super) fn release(&mut self) {
        self.holding = false;
    }

    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(poll_write_rest(
            &mut self.tcp,
            cx,
            &self.held,
            &mut self.sent
        ))?;
        self.held = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TicketGate {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for TicketGate {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.holding
            && this.armed.load(Ordering::Acquire)
            && buf.first() == Some(&APPLICATION_DATA)
        {
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    /// Several records per system call once the handshake is over (rustls hands over all it
    /// holds, see `tls::data::TLS_SEND_BATCH`); during it, one buffer at a time, each judged
    /// by [`Self::poll_write`].
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.holding {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return Pin::new(this).poll_write(cx, first);
        }
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.holding {
            ready!(this.poll_send_held(cx))?;
        }
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}
