//! The data bridge: one passive data connection from the client, spliced to the backend's own
//! passive data port.
//!
//! Ordering, and the race it avoids. The session connects to the backend's data port right
//! after the backend's PASV/EPSV reply ("connect eagerly, buffer nothing": docs/ARCHITECTURE.md,
//! "A transfer"), before the client has its 227/229. Servers such as vsftpd accept the data connection *before* they
//! answer the transfer command with 150, while clients such as Python's ftplib only start the
//! data TLS handshake *after* that 150: any other order deadlocks one of them. Nothing is read
//! from either side until the session says which way the transfer goes (it knows once it has
//! forwarded RETR/STOR/...), so no byte is ever buffered for a transfer that does not happen.
//!
//! Every failure resets the backend data connection (RST, not FIN) so the backend records an
//! aborted transfer, never a short file stored as complete.
//!
//! Every wait is bounded (docs/ARCHITECTURE.md, "Every wait is bounded"): the client's data
//! connection and its transfer command must both come within `timeouts.data_connection_secs`
//! of PASV/EPSV/PORT/EPRT, and once bytes flow, a read or a write that does not complete within
//! `timeouts.data_stall_secs` ends the transfer with 426. The passive lease is released as soon
//! as the client's connection has passed the address and TLS checks; until then, connections
//! from the right address that fail the TLS check (a neighbour behind the same NAT) are
//! logged, counted and closed, and the wait for the client's own goes on.
//!
//! Toward a TLS backend the data handshake runs alongside the client's: vsftpd, for one, only
//! starts its side after it has answered the transfer command with 150, which may be after the
//! client's handshake, or before it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{timeout, timeout_at};
use tracing::Instrument;

use super::admit::{accept_client, accept_from, connect_from, secure};
use super::error::BridgeError;
use super::params::BridgeParams;
use super::pool::Lease;
use super::pump::{drain, pump, receive, send, upload_read_error, Counted};
use crate::ftp::Direction;
use crate::scan::Spool;
use crate::stream::Stream;
use crate::tls::{data as data_tls, TlsFacts};

/// How the client's end of the data connection comes about.
pub(crate) enum ClientSide {
    /// PASV/EPSV: the client connects to the port of its pending lease.
    Passive(Lease),
    /// PORT/EPRT: the gateway connects to the client's (already validated) address once the
    /// transfer command is known, from `source` and, if configured, a port in `ports`.
    Active {
        target: SocketAddr,
        source: IpAddr,
        ports: Option<RangeInclusive<u16>>,
    },
}

/// The backend's end of the data connection.
pub(crate) enum BackendSide {
    /// Passive toward the backend: already connected to its data port.
    Connected(TcpStream),
    /// Active toward the backend: it will connect here, from its control address, once it has
    /// the transfer command.
    Listening(TcpListener, IpAddr),
}

/// A finished transfer, for the transfer log line.
#[derive(Debug)]
pub(crate) struct Transferred {
    pub bytes: u64,
    pub elapsed: Duration,
    /// The SHA-256 of the bytes relayed, when the audit log asks for it.
    pub sha256: Option<[u8; 32]>,
}

type Ended = Result<Transferred, BridgeError>;

/// What the bridge does once the transfer command is known.
enum Start {
    /// Relay in this direction: the backend has the command.
    Relay(Direction),
    /// Receive the upload whole, hand it to the session to be scanned, and send it to the
    /// backend once the session gives it back (the backend has the command by then).
    Spool(Spooling),
}

struct Spooling {
    spool: Spool,
    /// The most bytes the spool takes.
    limit: Option<u64>,
    received: oneshot::Sender<Received>,
    release: oneshot::Receiver<Spool>,
}

/// An upload received whole, before the backend has seen any of it.
pub(crate) struct Received {
    pub spool: Spool,
    pub bytes: u64,
    /// The SHA-256 of the bytes, when the audit log asks for it.
    pub sha256: Option<[u8; 32]>,
}

/// The session's handle on a running bridge. Dropping it cancels the bridge.
pub(crate) struct DataBridge {
    /// Bytes copied so far, for STAT during the transfer.
    progress: Arc<AtomicU64>,
    /// The client data connection's `(version, resumed)`, once its TLS handshake has passed.
    tls: Arc<OnceLock<TlsFacts>>,
    start: Option<oneshot::Sender<Start>>,
    /// A spooled upload's bytes, once received; then the way they go back to the bridge.
    received: Option<oneshot::Receiver<Received>>,
    release: Option<oneshot::Sender<Spool>>,
    done: oneshot::Receiver<Ended>,
    /// Never sent on: dropping it is the cancel signal the task watches.
    _cancel: oneshot::Sender<()>,
}

impl DataBridge {
    /// Starts the bridge task on an already-leased listener and an already-connected backend
    /// data connection.
    pub(crate) fn spawn(
        client: ClientSide,
        backend: BackendSide,
        params: BridgeParams,
    ) -> DataBridge {
        let client = match client {
            ClientSide::Passive(lease) => Side::Listen(lease),
            ClientSide::Active {
                target,
                source,
                ports,
            } => Side::Connect(target, source, ports),
        };
        let params = Arc::new(params);
        let (start_tx, start_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
        let progress = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&progress);
        let tls = Arc::new(OnceLock::new());
        let facts = Arc::clone(&tls);
        tokio::spawn(
            async move {
                // Both data connections are owned by `run` and closed when it returns or is
                // cancelled; the backend's resets (see `Backend::connect_data`).
                // The lease, inside `client`, is dropped once the client's connection is in (or
                // with `run`): always before the session can relay 226, so a client may PASV
                // again at once, and the port is free for its address's next PASV.
                let outcome = tokio::select! {
                    r = run(client, backend, &params, start_rx, &counter, &facts) => r,
                    _ = cancel_rx => Err(BridgeError::Cancelled),
                };
                let _ = done_tx.send(outcome);
            }
            // The session's span: the bridge's lines carry its id, client and user.
            .instrument(tracing::Span::current()),
        );
        DataBridge {
            progress,
            tls,
            start: Some(start_tx),
            received: None,
            release: None,
            done: done_rx,
            _cancel: cancel_tx,
        }
    }

    /// Bytes copied so far.
    pub(crate) fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// The count behind [`DataBridge::progress`], for whoever reports it while the bridge is
    /// borrowed (a scanned upload's STAT while it waits for the spool).
    pub(crate) fn progress_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.progress)
    }

    /// The client data connection's TLS `(version, resumed)`, once its handshake has passed:
    /// kept here rather than in the outcome, so a transfer that fails after the handshake (a
    /// client gone without close_notify, ABOR, a backend lost) is logged with them too.
    pub(crate) fn tls(&self) -> Option<TlsFacts> {
        self.tls.get().copied()
    }

    /// The transfer command has been forwarded: bytes may flow in `direction`.
    pub(crate) fn start(&mut self, direction: Direction) {
        if let Some(tx) = self.start.take() {
            let _ = tx.send(Start::Relay(direction));
        }
    }

    /// An upload to be scanned: receive it whole into `spool` (at most `limit` bytes) before
    /// the backend hears of it. [`DataBridge::received`] hands it over.
    pub(crate) fn spool(&mut self, spool: Spool, limit: Option<u64>) {
        let (received, received_rx) = oneshot::channel();
        let (release_tx, release) = oneshot::channel();
        if let Some(tx) = self.start.take() {
            let spooling = Spooling {
                spool,
                limit,
                received,
                release,
            };
            let _ = tx.send(Start::Spool(spooling));
        }
        self.received = Some(received_rx);
        self.release = Some(release_tx);
    }

    /// The spooled upload, once the client has sent it whole, or why it did not. Cancel-safe.
    pub(crate) async fn received(&mut self) -> Result<Received, BridgeError> {
        let Some(rx) = &mut self.received else {
            return Err(BridgeError::Cancelled);
        };
        match rx.await {
            Ok(received) => Ok(received),
            Err(_) => Err(self
                .finished()
                .await
                .err()
                .unwrap_or(BridgeError::Cancelled)),
        }
    }

    /// The backend has the transfer command: send it the spooled upload.
    pub(crate) fn release(&mut self, spool: Spool) {
        if let Some(tx) = self.release.take() {
            let _ = tx.send(spool);
        }
    }

    /// Stops the bridge and waits until its lease is released, so a PASV that replaces this one
    /// can lease the same port again at once (on a one-port pool it must).
    pub(crate) async fn cancel(self) {
        let DataBridge { done, _cancel, .. } = self;
        drop(_cancel);
        let _ = done.await;
    }

    /// The outcome, if the bridge has already ended (it failed before the transfer command: the
    /// client never connected in time, say), so the command need not reach the backend.
    pub(crate) fn ended(&mut self) -> Option<Ended> {
        self.done.try_recv().ok()
    }

    /// Resolves once both data connections are closed. Cancel-safe.
    pub(crate) async fn finished(&mut self) -> Ended {
        (&mut self.done)
            .await
            .unwrap_or(Err(BridgeError::Cancelled))
    }
}

/// [`ClientSide`] as the task holds it.
enum Side {
    Listen(Lease),
    Connect(SocketAddr, IpAddr, Option<RangeInclusive<u16>>),
}

async fn run(
    client: Side,
    backend: BackendSide,
    params: &Arc<BridgeParams>,
    start: oneshot::Receiver<Start>,
    progress: &AtomicU64,
    tls: &OnceLock<TlsFacts>,
) -> Ended {
    // Recorded as soon as the client's connection has passed, whatever happens after.
    let passed = |client: Stream| {
        if let Some(facts) = client.tls_info() {
            let _ = tls.set(facts);
        }
        client
    };
    let deadline = tokio::time::Instant::now() + params.accept_timeout;
    let counted = |direction, hash, limit| Counted {
        progress,
        total: params.metrics.bytes(direction),
        hash,
        limit,
    };
    let stall = params.stall;
    // The backend's side goes ahead once the backend has the transfer command: at once for a
    // relayed transfer, after the scan for a spooled upload.
    let (open_gate, gate) = oneshot::channel::<()>();
    let client_path = async {
        let mut open_gate = Some(open_gate);
        // The transfer command, which the session forwards once the client sends it.
        let command = async {
            let start = timeout_at(deadline, start)
                .await
                .map_err(|_| BridgeError::NoTransfer)?
                .map_err(|_| BridgeError::Cancelled)?;
            if matches!(start, Start::Relay(_)) {
                if let Some(open) = open_gate.take() {
                    let _ = open.send(());
                }
            }
            Ok(start)
        };
        let (mut client, start) = match client {
            Side::Listen(mut lease) => {
                let client_side = async {
                    let client = passed(accept_client(&mut lease, params, deadline).await?);
                    // Released now: the next connection from this address to this port is for
                    // its next PASV.
                    drop(lease);
                    Ok(client)
                };
                tokio::try_join!(client_side, command)?
            }
            Side::Connect(target, source, ports) => {
                // The client expects the connection once its transfer command is answered.
                let start = command.await?;
                let tcp = timeout(params.accept_timeout, connect_from(source, ports, target))
                    .await
                    .map_err(|_| BridgeError::AcceptTimeout)?
                    .map_err(BridgeError::Accept)?;
                (passed(secure(tcp, params).await?), start)
            }
        };
        let spooling = match start {
            Start::Relay(direction) => return Ok((client, direction, None)),
            Start::Spool(spooling) => spooling,
        };
        let Spooling {
            mut spool,
            limit,
            received,
            release,
        } = spooling;
        let began = Instant::now();
        let got = receive(
            &mut client,
            &mut spool,
            &counted(Direction::Upload, params.hash, limit),
            stall,
        )
        .await?;
        // Answer the client's close_notify with ours; it may already be gone.
        let _ = timeout(Duration::from_secs(1), client.shutdown()).await;
        // The receiving's own figures: the session's scan does not count in the transfer.
        let done = Transferred {
            bytes: got.bytes,
            elapsed: began.elapsed(),
            sha256: got.sha256,
        };
        let got = Received {
            spool,
            bytes: got.bytes,
            sha256: got.sha256,
        };
        received.send(got).map_err(|_| BridgeError::Cancelled)?;
        let spool = release.await.map_err(|_| BridgeError::Cancelled)?;
        if let Some(open) = open_gate.take() {
            let _ = open.send(());
        }
        Ok((client, Direction::Upload, Some((spool, done))))
    };
    let backend_side = async {
        gate.await.map_err(|_| BridgeError::Cancelled)?;
        // The backend acts only once it has the transfer command, so its side may wait as long
        // as the client's accept and handshake together.
        let limit = params.accept_timeout + params.handshake_timeout;
        let backend = match backend {
            BackendSide::Connected(tcp) => tcp,
            BackendSide::Listening(listener, backend_ip) => {
                let tcp = timeout(limit, accept_from(&listener, backend_ip, &params.metrics))
                    .await
                    .map_err(|_| BridgeError::Backend(io::ErrorKind::TimedOut.into()))?
                    .map_err(BridgeError::Backend)?;
                // As for passive connections (see `Backend::connect_data`): any drop that is
                // not after a clean end resets.
                tcp.set_zero_linger().map_err(BridgeError::Backend)?;
                tcp
            }
        };
        backend.set_nodelay(true).map_err(BridgeError::Backend)?;
        // RFC 4217 §7: toward the backend the gateway is the FTP client, so the TLS client,
        // whichever side connected.
        let Some(tls) = &params.backend_tls else {
            return Ok(Stream::Plain(backend));
        };
        data_tls::connect(backend, tls, limit)
            .await
            .map(|s| Stream::BackendDataTls(Box::new(s)))
            .map_err(BridgeError::BackendHandshake)
    };
    let ((mut client, direction, spooled), mut backend) =
        tokio::try_join!(client_path, backend_side)?;
    let began = Instant::now();
    let copied = match (direction, spooled) {
        (Direction::Upload, Some((mut spool, received))) => {
            // The client's bytes were counted as they came; these are the same bytes again.
            let resend = Counted {
                total: Default::default(),
                ..counted(direction, false, None)
            };
            let from = spool.reader().await.map_err(BridgeError::Spool)?;
            send(from, &mut backend, &resend, stall)
                .await
                .map_err(|e| {
                    e.into_bridge(
                        stall,
                        ("spool", BridgeError::Spool),
                        ("backend", BridgeError::Backend),
                    )
                })?;
            backend_closed(&mut backend, params).await?;
            return Ok(Transferred {
                elapsed: received.elapsed + began.elapsed(),
                ..received
            });
        }
        (Direction::Download, _) => {
            let counted = counted(direction, params.hash, None);
            let (copied, _backend) = pump(backend, &mut client, &counted, stall).await;
            let done = copied.map_err(|e| {
                e.into_bridge(
                    stall,
                    ("backend", BridgeError::Backend),
                    ("client", BridgeError::Client),
                )
            })?;
            linger(client);
            done
        }
        (Direction::Upload, None) => {
            let counted = counted(direction, params.hash, params.max_upload);
            let (copied, client_back) = pump(client, &mut backend, &counted, stall).await;
            let done = copied.map_err(|e| {
                e.into_bridge(
                    stall,
                    ("client", upload_read_error),
                    ("backend", BridgeError::Backend),
                )
            })?;
            client = client_back.ok_or(BridgeError::Cancelled)?;
            backend_closed(&mut backend, params).await?;
            // Answer the client's close_notify with ours; it may already be gone.
            let _ = timeout(Duration::from_secs(1), client.shutdown()).await;
            done
        }
    };
    Ok(Transferred {
        bytes: copied.bytes,
        elapsed: began.elapsed(),
        sha256: copied.sha256,
    })
}

/// After an upload, waits for the backend to close its side: then it has read every byte (so
/// closing ours cannot cut the file short) and any TLS 1.3 tickets it sent on this connection
/// are stored for the next data connection.
async fn backend_closed(backend: &mut Stream, params: &BridgeParams) -> Result<(), BridgeError> {
    let drained = timeout(params.handshake_timeout, drain(backend)).await;
    if !matches!(drained, Ok(Ok(()))) {
        return Err(BridgeError::Backend(io::Error::new(
            io::ErrorKind::TimedOut,
            "backend did not close the data connection after the upload",
        )));
    }
    Ok(())
}

/// How long a download's client connection is read after the gateway's close_notify and FIN.
const LINGER: Duration = Duration::from_secs(2);

/// Reads a finished download's client connection until the client closes it, for at most
/// [`LINGER`], off the transfer's path (its 226 does not wait). A client may have sent
/// records the download never read (a TLS 1.3 KeyUpdate, in the flight of its Finished or
/// mid-transfer; its close_notify): a socket closed with unread bytes sends RST, and a RST can
/// throw away the end of the download still in the client's receive buffer. Read, they are
/// processed by rustls and dropped.
fn linger(mut client: Stream) {
    let read = async move {
        let _ = timeout(LINGER, drain(&mut client)).await;
    };
    tokio::spawn(read.instrument(tracing::Span::current()));
}
