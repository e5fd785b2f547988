//! Who may open a data connection. The address check is the pool's: a lease is handed only
//! connections from the control connection's address (or from the client a trusted balancer's
//! PROXY header names), so a port thief elsewhere reaches no transfer. The TLS check, here:
//! under PROT P the data connection must resume its session's TLS session, or a sibling's
//! (`tls::binding`). And active mode's connection out to the client.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn, Instrument};

use super::error::BridgeError;
use super::params::BridgeParams;
use super::pool::{Lease, MAX_CANDIDATES};
use crate::metrics::{Channel, Metrics, Reason};
use crate::stream::Stream;
use crate::tls::data::{self as data_tls, Policy, Refused};

/// How long a completed handshake that offered no session at all leaves the client's own
/// connection to arrive, before the wait ends with 522. Long enough for a client's connection
/// that trails a neighbour's by a round trip or a scheduler hiccup; short enough that a client
/// that never resumes hears its 522 within seconds rather than at `data_connection_secs`.
const FRESH_HANDSHAKE_GRACE: Duration = Duration::from_secs(3);

/// The client's passive data connection: the first from the control connection's address that
/// also passes the TLS check, by `deadline`. A connection that fails the check is logged,
/// counted and closed, and the wait goes on: behind one NAT a neighbour connecting across the
/// pool has the client's address, and must not fail the client's transfer. Up to
/// [`MAX_CANDIDATES`] handshakes run at once, so a neighbour that stalls its handshake holds
/// up nobody. At the deadline the client hears why the last candidate failed, if one did.
///
/// A completed handshake that offered no session to resume at all, under `require`, shortens
/// the wait to [`FRESH_HANDSHAKE_GRACE`]: that is what a client that never resumes (Apache
/// Commons Net, plain ftplib) does, its own connection will not do better, and it deserves a
/// prompt 522 rather than one at the deadline. But a neighbour can make the same handshake
/// with any TLS library, so it does not end the wait at once: connections accepted before the
/// grace is over still get their handshake, and the client's own, resuming, wins. Only the
/// first such handshake starts the grace; later ones neither end nor lengthen it.
pub(super) async fn accept_client(
    lease: &mut Lease,
    params: &Arc<BridgeParams>,
    deadline: Instant,
) -> Result<Stream, BridgeError> {
    let mut candidates = JoinSet::new();
    let mut failed = None;
    // Set by the first handshake that offered no session: when the wait ends with 522.
    let mut grace: Option<Instant> = None;
    loop {
        let closing = grace.is_some_and(|g| Instant::now() >= g);
        if closing && candidates.is_empty() {
            return Err(BridgeError::NotResumed { offered: false });
        }
        tokio::select! {
            accepted = lease.accept(), if candidates.len() < MAX_CANDIDATES && !closing => {
                let tcp = accepted.map_err(BridgeError::Accept)?;
                let params = Arc::clone(params);
                let check = async move { secure(tcp, &params).await };
                candidates.spawn(check.instrument(tracing::Span::current()));
            }
            Some(done) = candidates.join_next() => match done {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(e @ BridgeError::NotResumed { offered: false })) => {
                    if grace.is_none() {
                        let secs = FRESH_HANDSHAKE_GRACE.as_secs();
                        info!(secs, "data connection offered no TLS session: 522 unless one that resumes arrives within the grace");
                        grace = Some((Instant::now() + FRESH_HANDSHAKE_GRACE).min(deadline));
                    }
                    failed = Some(e);
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "data connection from the client's address failed the TLS check; waiting on for the client's own");
                    failed = Some(e);
                }
                Err(e) => warn!(error = %e, "data connection check ended abnormally"),
            },
            // Once the grace is over, only handshakes already under way may still pass.
            () = sleep_until(grace.unwrap_or(deadline)), if grace.is_some() && !closing => {}
            () = sleep_until(deadline) => return Err(failed.unwrap_or(BridgeError::AcceptTimeout)),
        }
    }
}

/// The client's data connection made ready: TLS when the session is at PROT P.
pub(super) async fn secure(tcp: TcpStream, params: &BridgeParams) -> Result<Stream, BridgeError> {
    // Writes are large, so Nagle saves nothing here; but the last small records (the end of
    // a short listing, close_notify) would wait on the client's delayed ACK, tens of
    // milliseconds per transfer.
    tcp.set_nodelay(true).map_err(BridgeError::Accept)?;
    match &params.tls {
        None => Ok(Stream::Plain(tcp)),
        // RFC 4217 §7: the FTP client is the TLS client whoever connects, so the gateway is
        // the TLS server on an active-mode connection too.
        Some(config) => {
            let policy = Policy {
                config,
                reuse: params.reuse,
                siblings: params.siblings.as_ref(),
                handshake_timeout: params.handshake_timeout,
            };
            handshake(tcp, &policy, &params.metrics).await
        }
    }
}

/// Accepts the first connection from `allowed` (the backend, in active mode toward it); others
/// are logged and closed, and the wait goes on, so a port thief cannot take a transfer away.
pub(super) async fn accept_from(
    listener: &TcpListener,
    allowed: IpAddr,
    metrics: &Metrics,
) -> io::Result<TcpStream> {
    loop {
        let (tcp, peer) = listener.accept().await?;
        if peer.ip().to_canonical() == allowed.to_canonical() {
            return Ok(tcp);
        }
        metrics.refused(Reason::data_from_other_address);
        warn!(peer = %peer.ip(), expected = %allowed, "refused data connection: not from the backend's address");
    }
}

/// Connects to an active-mode client from `source`, on a random port of `ports` if given.
pub(super) async fn connect_from(
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
    let source = match (source.to_canonical(), target) {
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

/// The client's data connection under TLS, checked by `tls::data` against the session's
/// binding; counted and logged here, where the wait for the client's connection is decided.
async fn handshake(
    tcp: TcpStream,
    policy: &Policy<'_>,
    metrics: &Metrics,
) -> Result<Stream, BridgeError> {
    match data_tls::accept(tcp, policy).await {
        Ok((tls, passed)) => {
            metrics.handshake(Channel::data, Some(passed.resumed));
            if passed.sibling {
                debug!("data connection resumed a sibling session's TLS session");
            }
            Ok(Stream::DataTls(Box::new(tls)))
        }
        Err(Refused::Handshake(e)) => {
            metrics.handshake(Channel::data, None);
            Err(BridgeError::Handshake(e))
        }
        Err(Refused::NotResumed { offered }) => {
            metrics.handshake(Channel::data, Some(false));
            metrics.refused(Reason::data_not_resumed);
            info!(
                "data connection refused: TLS session not resumed (data_session_reuse = require)"
            );
            Err(BridgeError::NotResumed { offered })
        }
        Err(Refused::ForeignSibling) => {
            metrics.handshake(Channel::data, Some(true));
            metrics.refused(Reason::data_not_resumed);
            warn!("data connection refused: it resumed the TLS session of another user's or route's session from the same address");
            Err(BridgeError::NotResumed { offered: true })
        }
    }
}
