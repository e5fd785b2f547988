//! A download's client data connection, its TLS records sealed by the gateway (`tls::seal`):
//! the pump's buffer is encrypted straight into the buffer the socket is written from.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rustls::ProtocolVersion;
use tokio::io::AsyncWrite;
use tracing::debug;

use crate::stream::Stream;
use crate::tls::seal::{SealError, Sealer, MAX_FRAGMENT};
use crate::tls::ticket_hold::{poll_write_rest, TicketGate};

/// Plaintext sealed per write to the socket: three full records, the batch measured best for
/// rustls's writes too (docs/ARCHITECTURE.md, "A transfer").
const SEAL_BATCH: usize = 3 * MAX_FRAGMENT;

/// Where a download writes: the client's data connection as it is (plain, or TLS that cannot
/// be sealed here), or sealed.
pub(super) enum Sink {
    Stream(Stream),
    Sealed(Box<Sealed>),
}

/// Takes a TLS client data connection over from rustls for a download. What rustls would
/// refuse to hand over stays with it, and is logged: a connection with records still to send
/// (the handshake's are sent; TLS 1.3 tickets wait in the gate, which writes them first), or
/// a TLS 1.3 one whose traffic secret the key log did not catch (no next key at the limit).
/// A cipher the sealer does not know fails the transfer; the gateway's provider offers none.
pub(super) fn sink(client: Stream) -> io::Result<Sink> {
    let Stream::DataTls(tls) = client else {
        return Ok(Sink::Stream(client));
    };
    let (gate, conn) = tls.get_ref();
    let secret = gate.key_log.take();
    let ready = match (conn.protocol_version(), conn.negotiated_cipher_suite()) {
        (Some(ProtocolVersion::TLSv1_3), Some(_)) if secret.is_none() => None,
        (Some(version), Some(suite)) if !conn.wants_write() && !conn.is_handshaking() => {
            Some((version, suite))
        }
        _ => None,
    };
    let Some((version, suite)) = ready else {
        debug!("download keeps rustls's records: the connection cannot be handed over");
        return Ok(Sink::Stream(Stream::DataTls(tls)));
    };
    let (gate, conn) = tls.into_inner();
    let unsealable = |why: String| io::Error::other(format!("cannot seal TLS records: {why}"));
    let secrets = conn
        .dangerous_extract_secrets()
        .map_err(|e| unsealable(e.to_string()))?;
    let sealer = Sealer::new(version, suite, secrets.tx, secret)
        .ok_or_else(|| unsealable(format!("{version:?} {:?}", suite.suite())))?;
    Ok(Sink::Sealed(Box::new(Sealed {
        gate,
        sealer,
        out: Vec::new(),
        filled: 0,
        sent: 0,
        closed: false,
    })))
}

/// A client data connection whose records the gateway seals.
pub(super) struct Sealed {
    gate: TicketGate,
    sealer: Sealer,
    /// Sealed records; `out[sent..filled]` is still to be written. Grown (and zeroed) only
    /// when a write needs more than it has, so a transfer zeroes it once.
    out: Vec<u8>,
    filled: usize,
    sent: usize,
    /// close_notify is sealed.
    closed: bool,
}

impl Sealed {
    /// Writes what is sealed and unsent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let sealed = self.out.get(..self.filled).unwrap_or_default();
        poll_write_rest(&mut self.gate, cx, sealed, &mut self.sent)
    }

    /// Seals with `seal` into `out`, grown to [`Sealer::sealed_len`]`(plain)` bytes.
    fn seal(
        &mut self,
        plain: usize,
        seal: impl FnOnce(&mut Sealer, &mut [u8]) -> Result<usize, SealError>,
    ) -> io::Result<()> {
        let room = Sealer::sealed_len(plain);
        if self.out.len() < room {
            self.out.resize(room, 0);
        }
        self.filled = seal(&mut self.sealer, &mut self.out).map_err(|e| match e {
            SealError::Exhausted => io::Error::other("TLS record limit reached, no next key"),
            SealError::Failed => io::Error::other("sealing a TLS record failed"),
        })?;
        self.sent = 0;
        Ok(())
    }
}

impl AsyncWrite for Sealed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(this.poll_send(cx))?;
        let plain = buf.get(..SEAL_BATCH).unwrap_or(buf);
        this.seal(plain.len(), |s, out| s.seal(plain, out))?;
        // Start the write now; what the socket does not take goes out on the next call.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(plain.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.gate).poll_flush(cx)
    }

    /// close_notify, then FIN.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        if !this.closed {
            this.seal(0, Sealer::close_notify)?;
            this.closed = true;
            ready!(this.poll_send(cx))?;
        }
        Pin::new(&mut this.gate).poll_shutdown(cx)
    }
}
