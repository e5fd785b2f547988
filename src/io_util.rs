//! Small I/O adapters the connections share, kept here below everything that uses them: this
//! module imports nothing of the crate's own, so neither `stream` nor `tls` has to import the
//! other for them.
//!
//! [`ReadAhead`] reads a TLS data connection's socket in large chunks, with a buffer that costs
//! nothing until it is used.
//!
//! Why read ahead: rustls asks for at most 4 KiB at a time when its buffer is empty, one system
//! call each, which capped TLS uploads near 550 MiB/s; reading the socket 256 KiB at a time and
//! serving rustls from memory removes most of those calls.
//!
//! Why not tokio's `BufReader`: it zeroes its whole buffer when made, 256 KiB per data
//! connection, and a listing of a few hundred bytes paid for it in page faults and `memset`
//! (docs/ARCHITECTURE.md, "A transfer"). Here the buffer is allocated on the first read and
//! filled through its uninitialised capacity, so only the pages a connection really reads into
//! are ever touched.
//!
//! [`poll_write_rest`] finishes a write that a writer held back (the ticket gate's held records,
//! `tls::ticket_hold`).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_read_buf;

/// How much one read of the socket may take.
const READ_AHEAD: usize = 256 * 1024;

/// `inner` with reads taken [`READ_AHEAD`] bytes at a time; writes go straight through.
pub(crate) struct ReadAhead<T> {
    inner: T,
    /// What the last read of `inner` brought; `buf[pos..]` is not yet passed on.
    buf: Vec<u8>,
    pos: usize,
}

impl<T> ReadAhead<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos == this.buf.len() {
            // A read as large as the buffer gains nothing from going through it.
            if out.remaining() >= READ_AHEAD {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            this.buf.clear();
            this.pos = 0;
            this.buf.reserve_exact(READ_AHEAD);
            // Fills the spare capacity only: `buf` never grows past READ_AHEAD.
            ready!(poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buf))?;
        }
        // `pos` never passes the end, so this always finds the bytes; were it ever wrong, the
        // reader hears an error rather than an empty read it would take for the end of file.
        let unread = this.buf.get(this.pos..);
        let Some((now, _)) = unread.and_then(|u| u.split_at_checked(u.len().min(out.remaining())))
        else {
            return Poll::Ready(Err(io::Error::other("read ahead past its buffer")));
        };
        out.put_slice(now);
        this.pos += now.len();
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Writes `buf[*sent..]` to `io`, counting what is written in `sent`, until all of it is.
pub(crate) fn poll_write_rest(
    io: &mut (impl AsyncWrite + Unpin),
    cx: &mut Context<'_>,
    buf: &[u8],
    sent: &mut usize,
) -> Poll<io::Result<()>> {
    loop {
        // A writer that claimed more than it was given would leave `sent` past the end: an
        // error, not a write taken for complete.
        let Some(unsent) = buf.get(*sent..) else {
            return Poll::Ready(Err(io::Error::other("wrote past the buffer")));
        };
        if unsent.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let n = ready!(Pin::new(&mut *io).poll_write(cx, unsent))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *sent += n;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Small reads are served from one large read; a large read with nothing buffered goes
    /// straight through; every byte arrives in order, then the end.
    #[tokio::test]
    async fn every_byte_in_order_through_small_and_large_reads() {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let sent: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).await.unwrap();
        drop(peer);
        let mut reader = ReadAhead::new(ours);
        let mut got = Vec::new();
        let mut small = [0u8; 4096];
        let n = reader.read(&mut small).await.unwrap();
        got.extend_from_slice(&small[..n]);
        assert_eq!(reader.buf.len(), READ_AHEAD, "one read filled the buffer");
        assert_eq!(reader.buf.capacity(), READ_AHEAD, "and did not grow it");
        let mut large = vec![0u8; READ_AHEAD];
        loop {
            let n = reader.read(&mut large).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&large[..n]);
        }
        assert_eq!(got, sent);
    }
}
