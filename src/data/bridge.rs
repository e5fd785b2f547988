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
//! `timeouts.data_stall_secs` ends the transfer with 426. The pool port goes back as soon as
//! the client's connection has passed the address and TLS checks; until then, connections
//! from the right address that fail the TLS check (a neighbour behind the same NAT) are
//! logged, counted and closed, and the wait for the client's own goes on.
//!
//! Toward a TLS backend the data handshake runs alongside the client's: vsftpd, for one, only
//! starts its side after it has answered the transfer command with 150, which may be after the
//! client's handshake, or before it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{HandshakeKind, ProtocolVersion, ServerConfig};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn, Instrument};

use super::gate::{SignalOnTicket, TicketGate, READ_BUFFER};
use super::pool::Lease;
use crate::config::ReuseMode;
use crate::config::Trusted;
use crate::ftp::{Direction, Reply};
use crate::metrics::{Channel, Metrics, Reason};
use crate::proxy_protocol;
use crate::stream::Stream;
use crate::tls::backend::BackendSession;
use crate::tls::binding::Siblings;

/// Large enough for several 16 KiB TLS records per read; allocated once per transfer.
const BUF_SIZE: usize = 256 * 1024;
/// Data connections from the client's address whose TLS handshakes may run at once while the
/// bridge waits for the one that passes.
const MAX_CANDIDATES: usize = 4;

/// Why a data transfer failed. Each maps to the reply the client gets instead of the backend's.
#[derive(Debug, Error)]
pub enum BridgeError {
    #[error("the data connection with the client was not up in time")]
    AcceptTimeout,
    #[error("opening the data connection with the client: {0}")]
    Accept(io::Error),
    #[error("TLS handshake on the data connection failed: {0}")]
    Handshake(io::Error),
    #[error("TLS handshake on the backend's data connection failed: {0}")]
    BackendHandshake(io::Error),
    /// `offered`: the client offered a session to resume, only not this one's.
    #[error("data connection did not resume the control connection's TLS session (offered one: {offered})")]
    NotResumed { offered: bool },
    #[error("no transfer command came within the data connection timeout")]
    NoTransfer,
    #[error("no byte moved for {secs} s: the {peer} stopped")]
    Stalled { peer: &'static str, secs: u64 },
    #[error("client data connection failed: {0}")]
    Client(io::Error),
    #[error("backend data connection failed: {0}")]
    Backend(io::Error),
    #[error("upload ended without TLS close_notify (truncated)")]
    Truncated,
    #[error("transfer cancelled")]
    Cancelled,
}

impl BridgeError {
    pub fn reply(&self) -> Reply {
        match self {
            BridgeError::AcceptTimeout | BridgeError::Accept(_) | BridgeError::NoTransfer => {
                Reply::new(425, "Can't open data connection.")
            }
            BridgeError::Stalled { .. } => {
                Reply::new(426, "Data connection stalled; transfer aborted.")
            }
            BridgeError::Handshake(_) => {
                Reply::new(522, "TLS handshake on the data connection failed.")
            }
            BridgeError::BackendHandshake(_) => {
                Reply::new(425, "Can't open data connection: TLS to the server failed.")
            }
            BridgeError::NotResumed { .. } => Reply::new(
                522,
                "Data connection must resume the TLS session of the control connection.",
            ),
            BridgeError::Client(_) | BridgeError::Backend(_) | BridgeError::Truncated => {
                Reply::new(426, "Connection closed; transfer aborted.")
            }
            BridgeError::Cancelled => Reply::new(426, "Transfer aborted."),
        }
    }
}

/// How the client's end of the data connection comes about.
pub enum ClientSide {
    /// PASV/EPSV: the client connects to a leased pool port.
    Passive { lease: Lease, listener: TcpListener },
    /// PORT/EPRT: the gateway connects to the client's (already validated) address once the
    /// transfer command is known, from `source` and, if configured, a port in `ports`.
    Active {
        target: SocketAddr,
        source: IpAddr,
        ports: Option<RangeInclusive<u16>>,
    },
}

/// The backend's end of the data connection.
pub enum BackendSide {
    /// Passive toward the backend: already connected to its data port.
    Connected(TcpStream),
    /// Active toward the backend: it will connect here, from its control address, once it has
    /// the transfer command.
    Listening(TcpListener, IpAddr),
}

/// What the session tells a bridge when it is created.
pub struct BridgeParams {
    /// Only this address may connect (the control connection's peer).
    pub client_ip: IpAddr,
    /// `Some` for PROT P: this FTP session's own TLS config.
    pub tls: Option<Arc<ServerConfig>>,
    pub reuse: ReuseMode,
    /// From the bridge's start until the client's data connection is up and the transfer
    /// command has come.
    pub accept_timeout: Duration,
    pub handshake_timeout: Duration,
    /// A read or a write that moves nothing for this long ends the transfer.
    pub stall: Duration,
    /// Sibling sessions whose TLS sessions the data connection may resume too.
    pub siblings: Option<Siblings>,
    /// `Some` when the backend's data connections are TLS (backend PROT P).
    pub backend_tls: Option<BackendSession>,
    pub metrics: Arc<Metrics>,
    /// Balancers whose PROXY headers name the client on a data connection.
    pub trusted: Trusted,
}

/// A finished transfer, for the transfer log line.
#[derive(Debug)]
pub struct Transferred {
    pub direction: Direction,
    pub bytes: u64,
    pub elapsed: Duration,
    pub tls: Option<(ProtocolVersion, bool)>,
}

type Outcome = Result<Transferred, BridgeError>;

/// The session's handle on a running bridge. Dropping it cancels the bridge.
pub struct DataBridge {
    /// Bytes copied so far, for STAT during the transfer.
    progress: Arc<AtomicU64>,
    start: Option<oneshot::Sender<Direction>>,
    done: oneshot::Receiver<Outcome>,
    /// Never sent on: dropping it is the cancel signal the task watches.
    _cancel: oneshot::Sender<()>,
}

impl DataBridge {
    /// Starts the bridge task on an already-leased listener and an already-connected backend
    /// data connection.
    pub fn spawn(client: ClientSide, backend: BackendSide, params: BridgeParams) -> DataBridge {
        let client = match client {
            ClientSide::Passive { lease, listener } => Side::Listen(listener, lease),
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
        tokio::spawn(
            async move {
                // Both data connections are owned by `run` and closed when it returns or is
                // cancelled; the backend's resets (see `Backend::connect_data`).
                // The lease, inside `client`, is dropped once the client's connection is in (or
                // with `run`): always before the session can relay 226, so a client may PASV
                // again at once.
                let outcome = tokio::select! {
                    r = run(client, backend, &params, start_rx, &counter) => r,
                    _ = cancel_rx => Err(BridgeError::Cancelled),
                };
                let _ = done_tx.send(outcome);
            }
            // The session's span: the bridge's lines carry its id, client and user.
            .instrument(tracing::Span::current()),
        );
        DataBridge {
            progress,
            start: Some(start_tx),
            done: done_rx,
            _cancel: cancel_tx,
        }
    }

    /// Bytes copied so far.
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// The transfer command has been forwarded: bytes may flow in `direction`.
    pub fn start(&mut self, direction: Direction) {
        if let Some(tx) = self.start.take() {
            let _ = tx.send(direction);
        }
    }

    /// Stops the bridge and waits until its port is back in the pool, so a PASV that replaces
    /// this one can lease it again at once (a one-port pool must not report itself full).
    pub async fn cancel(self) {
        let DataBridge { done, _cancel, .. } = self;
        drop(_cancel);
        let _ = done.await;
    }

    /// The outcome, if the bridge has already ended (it failed before the transfer command: the
    /// client never connected in time, say), so the command need not reach the backend.
    pub fn ended(&mut self) -> Option<Outcome> {
        self.done.try_recv().ok()
    }

    /// Resolves once both data connections are closed. Cancel-safe.
    pub async fn finished(&mut self) -> Outcome {
        (&mut self.done)
            .await
            .unwrap_or(Err(BridgeError::Cancelled))
    }
}

/// [`ClientSide`] as the task holds it.
enum Side {
    Listen(TcpListener, Lease),
    Connect(SocketAddr, IpAddr, Option<RangeInclusive<u16>>),
}

async fn run(
    client: Side,
    backend: BackendSide,
    params: &Arc<BridgeParams>,
    start: oneshot::Receiver<Direction>,
    progress: &AtomicU64,
) -> Outcome {
    let deadline = tokio::time::Instant::now() + params.accept_timeout;
    // The transfer command, which the session forwards once the client sends it.
    let command = async {
        timeout_at(deadline, start)
            .await
            .map_err(|_| BridgeError::NoTransfer)?
            .map_err(|_| BridgeError::Cancelled)
    };
    let backend_side = async {
        // The backend acts only once it has the transfer command, so its side may wait as long
        // as the client's accept and handshake together.
        let limit = params.accept_timeout + params.handshake_timeout;
        let backend = match backend {
            BackendSide::Connected(tcp) => tcp,
            BackendSide::Listening(listener, backend_ip) => {
                let tcp = timeout(limit, accept_from(&listener, backend_ip, None, params))
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
        let buffered = BufReader::with_capacity(READ_BUFFER, backend);
        let handshake = tls.connector.connect(tls.server_name.clone(), buffered);
        timeout(limit, handshake)
            .await
            .map_err(|_| BridgeError::BackendHandshake(io::ErrorKind::TimedOut.into()))?
            .map(|s| Stream::BackendDataTls(Box::new(s)))
            .map_err(BridgeError::BackendHandshake)
    };
    let (mut client, mut backend, direction) = match client {
        Side::Listen(listener, lease) => {
            let client_side = async {
                let client = accept_client(&listener, params, deadline).await?;
                // The port goes back now: this connection keeps it as its own local port, and
                // the next lease binds beside it.
                drop(listener);
                drop(lease);
                Ok(client)
            };
            let (client, backend) = tokio::try_join!(client_side, backend_side)?;
            (client, backend, command.await?)
        }
        Side::Connect(target, source, ports) => {
            // The client expects the connection once its transfer command is answered.
            let direction = command.await?;
            let client_side = async {
                let tcp = timeout(params.accept_timeout, connect_from(source, ports, target))
                    .await
                    .map_err(|_| BridgeError::AcceptTimeout)?
                    .map_err(BridgeError::Accept)?;
                secure(tcp, params).await
            };
            let (client, backend) = tokio::try_join!(client_side, backend_side)?;
            (client, backend, direction)
        }
    };
    let began = Instant::now();
    let counted = Counted {
        progress,
        total: params.metrics.bytes(direction),
    };
    let stall = params.stall;
    let bytes = match direction {
        Direction::Download => {
            let (copied, _backend) = pump(backend, &mut client, &counted, stall).await;
            copied.map_err(|e| {
                e.into_bridge(
                    stall,
                    ("backend", BridgeError::Backend),
                    ("client", BridgeError::Client),
                )
            })?
        }
        Direction::Upload => {
            let (copied, client_back) = pump(client, &mut backend, &counted, stall).await;
            let n = copied.map_err(|e| {
                e.into_bridge(
                    stall,
                    ("client", upload_read_error),
                    ("backend", BridgeError::Backend),
                )
            })?;
            client = client_back.ok_or(BridgeError::Cancelled)?;
            // Wait for the backend to close its side: then it has read every byte (so closing
            // ours cannot cut the file short) and any TLS 1.3 tickets it sent on this
            // connection are stored for the next data connection.
            let drained = timeout(params.handshake_timeout, drain(&mut backend)).await;
            if !matches!(drained, Ok(Ok(()))) {
                return Err(BridgeError::Backend(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "backend did not close the data connection after the upload",
                )));
            }
            // Answer the client's close_notify with ours; it may already be gone.
            let _ = timeout(Duration::from_secs(1), client.shutdown()).await;
            n
        }
    };
    Ok(Transferred {
        direction,
        bytes,
        elapsed: began.elapsed(),
        tls: client.tls_info(),
    })
}

/// Reads until end of file, discarding: after an upload the backend sends no data, only
/// (for TLS) session tickets and close_notify.
async fn drain(stream: &mut Stream) -> io::Result<()> {
    let mut sink = [0u8; 1024];
    loop {
        match stream.read(&mut sink).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // A server that closes without close_notify after an upload has still read it all.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// A TLS upload whose TCP stream ends without close_notify was cut short: rustls reports it as
/// `UnexpectedEof`, and it must not reach the backend as a clean end of file.
fn upload_read_error(e: io::Error) -> BridgeError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        BridgeError::Truncated
    } else {
        BridgeError::Client(e)
    }
}

/// The client's passive data connection: the first from the control connection's address that
/// also passes the TLS check, by `deadline`. A connection that fails the check is logged,
/// counted and closed, and the wait goes on: behind one NAT a neighbour connecting across the
/// pool has the client's address, and must not fail the client's transfer. Up to
/// [`MAX_CANDIDATES`] handshakes run at once, so a neighbour that stalls its handshake holds
/// up nobody. At the deadline the client hears why the last candidate failed, if one did.
///
/// One failure ends the wait at once: a completed handshake that offered no session to resume
/// at all, under `require`. That is a client that never resumes (Apache Commons Net, plain
/// ftplib): its own connection will not do better, and it deserves a prompt 522 rather than
/// one at the deadline. A neighbour's client that never resumes cannot hold a transfer under
/// `require` in the first place, so it is not the neighbour this wait protects against; a
/// neighbour's resuming client offers its own session, which keeps the wait going.
async fn accept_client(
    listener: &TcpListener,
    params: &Arc<BridgeParams>,
    deadline: tokio::time::Instant,
) -> Result<Stream, BridgeError> {
    let mut candidates = JoinSet::new();
    let mut failed = None;
    loop {
        tokio::select! {
            accepted = accept_from(listener, params.client_ip, Some(&params.trusted), params),
                if candidates.len() < MAX_CANDIDATES =>
            {
                let tcp = accepted.map_err(BridgeError::Accept)?;
                let params = Arc::clone(params);
                let check = async move { secure(tcp, &params).await };
                candidates.spawn(check.instrument(tracing::Span::current()));
            }
            Some(done) = candidates.join_next() => match done {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(e @ BridgeError::NotResumed { offered: false })) => return Err(e),
                Ok(Err(e)) => {
                    warn!(error = %e, "data connection from the client's address failed the TLS check; waiting on for the client's own");
                    failed = Some(e);
                }
                Err(e) => warn!(error = %e, "data connection check ended abnormally"),
            },
            () = sleep_until(deadline) => return Err(failed.unwrap_or(BridgeError::AcceptTimeout)),
        }
    }
}

/// The client's data connection made ready: TLS when the session is at PROT P.
async fn secure(tcp: TcpStream, params: &BridgeParams) -> Result<Stream, BridgeError> {
    // Writes are large, so Nagle saves nothing here; but the last small records (the end of
    // a short listing, close_notify) would wait on the client's delayed ACK, tens of
    // milliseconds per transfer.
    tcp.set_nodelay(true).map_err(BridgeError::Accept)?;
    match &params.tls {
        None => Ok(Stream::Plain(tcp)),
        // RFC 4217 §7: the FTP client is the TLS client whoever connects, so the gateway is
        // the TLS server on an active-mode connection too.
        Some(config) => handshake(tcp, config, params).await,
    }
}

/// Accepts the first connection from `allowed`; others are logged and closed, and the wait goes
/// on, so a port thief cannot take a transfer away from its client. A connection from a
/// `trusted` balancer counts as coming from the client its PROXY header names.
async fn accept_from(
    listener: &TcpListener,
    allowed: IpAddr,
    trusted: Option<&Trusted>,
    params: &BridgeParams,
) -> io::Result<TcpStream> {
    loop {
        let (mut tcp, peer) = listener.accept().await?;
        let mut source = peer.ip();
        if trusted.is_some_and(|t| t.contains(peer.ip())) {
            match proxy_protocol::read_header(&mut tcp, params.handshake_timeout).await {
                Ok(Some(client)) => source = client.ip(),
                Ok(None) => {}
                Err(e) => {
                    params.metrics.refused(Reason::bad_proxy_header);
                    warn!(balancer = %peer, error = %e, "refused data connection: bad PROXY header");
                    continue;
                }
            }
        }
        if canonical(source) == canonical(allowed) {
            return Ok(tcp);
        }
        params.metrics.refused(Reason::data_from_other_address);
        warn!(peer = %source, expected = %allowed, "refused data connection: not from the control connection's address");
    }
}

/// Connects to an active-mode client from `source`, on a random port of `ports` if given.
async fn connect_from(
    source: IpAddr,
    ports: Option<RangeInclusive<u16>>,
    target: SocketAddr,
) -> io::Result<TcpStream> {
    let socket = || match target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    };
    // The source must be of the target's family; the control connection's address may be an
    // IPv4-mapped IPv6 one.
    let source = match (canonical(source), target) {
        (IpAddr::V4(v4), SocketAddr::V6(_)) => IpAddr::V6(v4.to_ipv6_mapped()),
        (ip, _) => ip,
    };
    let Some(range) = ports else {
        let s = socket()?;
        s.bind(SocketAddr::new(source, 0))?;
        return s.connect(target).await;
    };
    let (lo, hi) = (*range.start(), *range.end());
    let size = u32::from(hi - lo) + 1;
    let first = fastrand::u32(0..size);
    for i in 0..size.min(64) {
        let port = lo + ((first + i) % size) as u16;
        let s = socket()?;
        s.set_reuseaddr(true)?;
        if s.bind(SocketAddr::new(source, port)).is_ok() {
            return s.connect(target).await;
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free active-mode source port",
    ))
}

/// IPv4-mapped IPv6 addresses compare as the IPv4 address they carry.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

async fn handshake(
    tcp: TcpStream,
    config: &Arc<ServerConfig>,
    params: &BridgeParams,
) -> Result<Stream, BridgeError> {
    // This connection's own view of the session's config: the same ticketer and cache (so
    // resumption works), but tickets made here arm this connection's gate (see `gate`).
    let armed = Arc::new(AtomicBool::new(false));
    let offered = Arc::new(AtomicBool::new(false));
    let issuer = Arc::new(std::sync::Mutex::new(None));
    let mut config = (**config).clone();
    config.ticketer = Arc::new(SignalOnTicket {
        inner: Arc::clone(&config.ticketer),
        armed: Arc::clone(&armed),
        offered: Arc::clone(&offered),
        siblings: params.siblings.clone(),
        issuer: Arc::clone(&issuer),
    });
    let accept = TlsAcceptor::from(Arc::new(config)).accept(TicketGate::new(tcp, armed));
    let accepted = timeout(params.handshake_timeout, accept)
        .await
        .map_err(|_| BridgeError::Handshake(io::ErrorKind::TimedOut.into()))
        .and_then(|r| r.map_err(BridgeError::Handshake));
    let mut tls = match accepted {
        Ok(tls) => tls,
        Err(e) => {
            params.metrics.handshake(Channel::data, None);
            return Err(e);
        }
    };
    tls.get_mut().0.release();
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    params.metrics.handshake(Channel::data, Some(resumed));
    if params.reuse == ReuseMode::Require && !resumed {
        params.metrics.refused(Reason::data_not_resumed);
        info!("data connection refused: TLS session not resumed (data_session_reuse = require)");
        return Err(BridgeError::NotResumed {
            offered: offered.load(Ordering::Acquire),
        });
    }
    // A sibling's ticket opened the handshake: it passes only if the sibling is (or, still
    // logging in, becomes) the same user on the same route (see `tls::binding`).
    let issuer = issuer.lock().ok().and_then(|mut i| i.take());
    if let (true, Some(issuer), Some(siblings)) = (resumed, issuer, &params.siblings) {
        if !issuer.is(&siblings.who, params.handshake_timeout).await {
            params.metrics.refused(Reason::data_not_resumed);
            warn!("data connection refused: it resumed the TLS session of another user's or route's session from the same address");
            return Err(BridgeError::NotResumed { offered: true });
        }
        debug!("data connection resumed a sibling session's TLS session");
    }
    Ok(Stream::DataTls(Box::new(tls)))
}

enum PumpError {
    Read(io::Error),
    Write(io::Error),
    /// A read (`true`) or a write (`false`) moved nothing within the stall limit.
    Stalled {
        reading: bool,
    },
}

impl PumpError {
    /// The bridge's error, given each side's name and the error its I/O failures become.
    fn into_bridge(
        self,
        stall: Duration,
        read: (&'static str, impl FnOnce(io::Error) -> BridgeError),
        write: (&'static str, impl FnOnce(io::Error) -> BridgeError),
    ) -> BridgeError {
        let secs = stall.as_secs();
        match self {
            PumpError::Read(e) => (read.1)(e),
            PumpError::Write(e) => (write.1)(e),
            PumpError::Stalled { reading: true } => BridgeError::Stalled { peer: read.0, secs },
            PumpError::Stalled { reading: false } => BridgeError::Stalled {
                peer: write.0,
                secs,
            },
        }
    }
}

/// Where a transfer's bytes are counted: its own progress (for STAT) and the gateway's total.
struct Counted<'a> {
    progress: &'a AtomicU64,
    total: prometheus_client::metrics::counter::Counter,
}

/// Copies `from` to `to` until a clean end of file, then ends `to` cleanly (FIN, or
/// close_notify then FIN for TLS). Returns the count and, after a clean end, `from` again.
///
/// The reading runs in a task of its own, two buffers going back and forth: on a machine with
/// more than one core, one side's work (a socket read, or TLS decryption) overlaps the other's
/// (TLS encryption, or a socket write) instead of taking turns with it. Buffers are allocated
/// once per transfer; a dropped pump (a cancelled transfer) aborts the reader, which drops
/// `from` with it.
///
/// Each read and each write must complete within `stall`: a peer that stops sending, or stops
/// reading, ends the copy with [`PumpError::Stalled`].
async fn pump(
    mut from: Stream,
    to: &mut Stream,
    counted: &Counted<'_>,
    stall: Duration,
) -> (Result<u64, PumpError>, Option<Stream>) {
    let (full_tx, mut full) = mpsc::channel::<Result<(Vec<u8>, usize), PumpError>>(2);
    let (empty, mut empty_rx) = mpsc::channel::<Vec<u8>>(2);
    for _ in 0..2 {
        let _ = empty.try_send(vec![0u8; BUF_SIZE]);
    }
    let reader = tokio::spawn(async move {
        while let Some(mut buf) = empty_rx.recv().await {
            let read = match timeout(stall, from.read(&mut buf)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => Ok((buf, n)),
                Ok(Err(e)) => Err(PumpError::Read(e)),
                Err(_) => Err(PumpError::Stalled { reading: true }),
            };
            let failed = read.is_err();
            if full_tx.send(read).await.is_err() || failed {
                break;
            }
        }
        from
    });
    let reader = AbortOnDrop(reader);
    let mut total = 0u64;
    // `None`: the reader has stopped, at the end of the stream.
    while let Some(read) = full.recv().await {
        let (buf, n) = match read {
            Ok(chunk) => chunk,
            Err(e) => return (Err(e), None),
        };
        match timeout(stall, to.write_all(&buf[..n])).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return (Err(PumpError::Write(e)), None),
            Err(_) => return (Err(PumpError::Stalled { reading: false }), None),
        }
        total += n as u64;
        counted.progress.store(total, Ordering::Relaxed);
        counted.total.inc_by(n as u64);
        let _ = empty.send(buf).await;
    }
    let from = reader.join().await;
    let ended = async {
        to.flush().await?;
        to.shutdown().await
    };
    match timeout(stall, ended).await {
        Ok(Ok(())) => (Ok(total), from),
        Ok(Err(e)) => (Err(PumpError::Write(e)), None),
        Err(_) => (Err(PumpError::Stalled { reading: false }), None),
    }
}

/// A spawned task that is aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    /// Waits for the task; `None` if it panicked or was aborted.
    async fn join(mut self) -> Option<T> {
        (&mut self.0).await.ok()
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
