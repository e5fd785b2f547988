//! The listeners on the passive pool's ports: bound once, at start, on every address the
//! control listeners use, and rebound in the background if a bind fails (another program held
//! the port) or a listener stops accepting. Each accepted connection is handed to the pending
//! lease of its source address (`pool`), after its PROXY header when it comes from a trusted
//! balancer; anything else is closed there and counted.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::pool::{Delivery, PassivePool};
use crate::config::Networks;
use crate::metrics::Reason;
use crate::proxy_protocol;

/// How long a port whose bind failed waits before the next try.
const REBIND_EVERY: Duration = Duration::from_secs(5);

/// How long an accept error other than a connection's own (out of descriptors, say) pauses its
/// listener, so a persistent one does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Accept errors in a row after which a listener is closed and bound again.
const REBIND_AFTER_ERRORS: u32 = 50;

#[derive(Debug, Error)]
#[error("no port of passive.ports {lo}-{hi} could be bound on {ips:?}: {last}")]
pub struct NoPassivePort {
    lo: u16,
    hi: u16,
    ips: Vec<IpAddr>,
    last: io::Error,
}

/// What the listeners need to hand a connection on: the pool, the balancers whose PROXY
/// headers name the client, and how long a header may take.
#[derive(Clone)]
pub(crate) struct PortSettings {
    pub(crate) trusted: Networks,
    pub(crate) header_timeout: Duration,
}

/// The addresses the pool's ports are bound on: those of the control listeners, so data and
/// control share an interface. A wildcard covers its family (`::` both, on a dual-stack host).
pub(crate) fn bind_addresses(listen: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = listen.into_iter().collect();
    ips.sort();
    ips.dedup();
    if ips.contains(&IpAddr::V6(Ipv6Addr::UNSPECIFIED)) {
        return vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)];
    }
    if ips.contains(&IpAddr::V4(Ipv4Addr::UNSPECIFIED)) {
        ips.retain(|ip| ip.is_ipv6() || ip.is_unspecified());
    }
    if ips.is_empty() {
        ips.push(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    ips
}

/// Binds every port of the pool on `ips` and starts their accept loops in `tasks` (dropping
/// the set closes them). A port that cannot be bound now is logged and retried every
/// [`REBIND_EVERY`]; if none can, the gateway does not start.
pub(crate) fn start(
    pool: &Arc<PassivePool>,
    ips: &[IpAddr],
    settings: PortSettings,
    tasks: &mut JoinSet<()>,
) -> Result<(), NoPassivePort> {
    let mut last = None;
    let mut bound = 0usize;
    for port in pool.range() {
        let listeners = match bind_port(ips, port) {
            Ok(l) => {
                // Up before `start` returns, so the first PASV has it.
                pool.set_up(port, true);
                bound += 1;
                Some(l)
            }
            Err(e) => {
                warn!(port, error = %e, "passive port not bound; retrying every {}s", REBIND_EVERY.as_secs());
                last = Some(e);
                None
            }
        };
        let (pool, settings) = (Arc::clone(pool), settings.clone());
        let ips = ips.to_vec();
        tasks.spawn(serve_port(pool, port, ips, listeners, settings));
    }
    match last {
        Some(last) if bound == 0 => {
            let range = pool.range();
            Err(NoPassivePort {
                lo: *range.start(),
                hi: *range.end(),
                ips: ips.to_vec(),
                last,
            })
        }
        _ => {
            info!(range = ?pool.range(), bound, ?ips, "passive ports listening");
            Ok(())
        }
    }
}

/// One port, for the gateway's life: bind (again) when needed, accept, hand over.
async fn serve_port(
    pool: Arc<PassivePool>,
    port: u16,
    ips: Vec<IpAddr>,
    mut listeners: Option<Vec<TcpListener>>,
    settings: PortSettings,
) {
    loop {
        let Some(bound) = listeners.take() else {
            tokio::time::sleep(REBIND_EVERY).await;
            match bind_port(&ips, port) {
                Ok(l) => {
                    info!(port, "passive port bound");
                    listeners = Some(l);
                }
                Err(e) => debug!(port, error = %e, "passive port still not bound"),
            }
            continue;
        };
        pool.set_up(port, true);
        let mut accepting = JoinSet::new();
        for listener in bound {
            let (pool, settings) = (Arc::clone(&pool), settings.clone());
            accepting.spawn(accept_loop(listener, port, pool, settings));
        }
        // An accept loop returns only when its listener has failed for good.
        if let Some(Ok(e)) = accepting.join_next().await {
            warn!(port, error = %e, "passive listener failed; binding it again");
        }
        pool.set_up(port, false);
        drop(accepting);
    }
}

fn bind_port(ips: &[IpAddr], port: u16) -> io::Result<Vec<TcpListener>> {
    ips.iter()
        .map(|&ip| {
            let addr = SocketAddr::new(ip, port);
            let socket = match addr {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            // A restart binds at once, whatever data connections of the last run linger in
            // TIME_WAIT on the port.
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            // Every client's data connections arrive here: the backlog of a busy listener.
            socket.listen(1024)
        })
        .collect()
}

/// Accepts until the listener fails for good; returns why.
async fn accept_loop(
    listener: TcpListener,
    port: u16,
    pool: Arc<PassivePool>,
    settings: PortSettings,
) -> io::Error {
    let mut errors = 0;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // The connection's own trouble (it was reset before the accept): not the port's.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                errors += 1;
                if errors >= REBIND_AFTER_ERRORS {
                    return e;
                }
                warn!(port, error = %e, "passive accept failed");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        errors = 0;
        if settings.trusted.contains(peer.ip()) {
            // The header is read off the accept loop, so a balancer that stalls holds up
            // nobody; the read is bounded by the handshake timeout.
            let (pool, settings) = (Arc::clone(&pool), settings.clone());
            tokio::spawn(async move {
                let mut tcp = tcp;
                match proxy_protocol::read_header(&mut tcp, settings.header_timeout).await {
                    Ok(Some(client)) => hand_over(&pool, port, client.ip(), tcp),
                    Ok(None) => hand_over(&pool, port, peer.ip(), tcp),
                    Err(e) => {
                        pool.metrics().refused(Reason::bad_proxy_header);
                        warn!(balancer = %peer, error = %e, "refused data connection: bad PROXY header");
                    }
                }
            });
        } else {
            hand_over(&pool, port, peer.ip(), tcp);
        }
    }
}

fn hand_over(pool: &PassivePool, port: u16, source: IpAddr, tcp: TcpStream) {
    match pool.deliver(port, source, tcp) {
        Delivery::Queued => {}
        Delivery::Unclaimed => {
            info!(port, peer = %source, "data connection closed: no PASV pending for its address on this port");
        }
        Delivery::Overflow => {
            warn!(port, peer = %source, "data connection closed: its address has too many connections waiting on this port");
        }
        Delivery::Lost => debug!(port, peer = %source, "data connection lost at hand-over"),
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::ClientKey;
    use crate::config::ProxyVersion;
    use crate::metrics::Metrics;
    use std::ops::RangeInclusive;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// `n` consecutive free loopback ports below Linux's ephemeral range (32768 and up), so no
    /// outgoing connection takes one before the test binds it; nothing else here binds ports
    /// 11000-19999.
    fn free_ports(n: u16) -> RangeInclusive<u16> {
        for _ in 0..200 {
            let lo = 11000 + fastrand::u16(0..8000);
            if (lo..lo + n).all(|p| std::net::TcpListener::bind((LOCAL, p)).is_ok()) {
                return lo..=lo + n - 1;
            }
        }
        panic!("no {n} free ports");
    }

    fn settings() -> PortSettings {
        PortSettings {
            trusted: Networks::default(),
            header_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn a_connection_reaches_its_addresss_lease_and_a_strangers_is_closed() {
        let pool = PassivePool::new(free_ports(1), 10, Metrics::new());
        let mut tasks = JoinSet::new();
        start(&pool, &[LOCAL], settings(), &mut tasks).expect("bound");
        let port = *pool.range().start();
        let key = ClientKey::of(LOCAL, 64);
        let mut lease = pool
            .lease(LOCAL, key, Duration::from_secs(1))
            .await
            .expect("lease");
        let stranger = TcpSocket::new_v4().expect("socket");
        stranger
            .bind("127.0.0.2:0".parse().expect("addr"))
            .expect("bind");
        let mut stranger = stranger
            .connect(SocketAddr::new(LOCAL, port))
            .await
            .expect("the port accepts anyone");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stranger.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the stranger is closed: {read:?}"
        );
        assert_eq!(pool.metrics().passive_unclaimed.get(), 1);
        let _client = TcpStream::connect(SocketAddr::new(LOCAL, port))
            .await
            .expect("client");
        let accepted = tokio::time::timeout(Duration::from_secs(5), lease.accept()).await;
        let accepted = accepted.expect("in time").expect("handed over");
        assert_eq!(accepted.local_addr().expect("local").port(), port);
    }

    #[tokio::test]
    async fn a_balancers_header_names_whose_lease_a_connection_is_and_a_stalled_one_is_dropped() {
        let pool = PassivePool::new(free_ports(1), 10, Metrics::new());
        let mut tasks = JoinSet::new();
        let trusted = PortSettings {
            trusted: Networks::new(vec!["127.0.0.0/8".parse().expect("net")]),
            header_timeout: Duration::from_millis(500),
        };
        start(&pool, &[LOCAL], trusted, &mut tasks).expect("bound");
        let port = *pool.range().start();
        let gateway = SocketAddr::new(LOCAL, port);
        let client: SocketAddr = "192.0.2.7:40000".parse().expect("addr");
        let key = ClientKey::of(client.ip(), 64);
        let wait = Duration::from_secs(1);
        let mut lease = pool.lease(client.ip(), key, wait).await.expect("lease");
        // A balancer that sends no header is dropped once the header's time is up, counted as
        // a bad header, and holds up nobody: the client's connection behind it still arrives.
        let mut stalled = TcpStream::connect(gateway).await.expect("stalled");
        let header = proxy_protocol::header(ProxyVersion::V2, Some((client, gateway)));
        let mut balanced = TcpStream::connect(gateway).await.expect("balancer");
        balanced
            .write_all(&header.expect("a v2 header"))
            .await
            .expect("header");
        let accepted = tokio::time::timeout(Duration::from_secs(5), lease.accept()).await;
        accepted
            .expect("in time")
            .expect("the header's client's lease");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "dropped: {read:?}");
        let bad = pool.metrics().render();
        assert!(bad.contains("reason=\"bad_proxy_header\"} 1"), "{bad}");
        assert_eq!(pool.metrics().passive_unclaimed.get(), 0);
    }

    #[tokio::test]
    async fn a_port_held_elsewhere_is_skipped_then_bound_once_free() {
        let range = free_ports(2);
        let (held, other) = (*range.start(), *range.end());
        let squatter = std::net::TcpListener::bind((LOCAL, held)).expect("squat");
        let pool = PassivePool::new(range, 10, Metrics::new());
        let mut tasks = JoinSet::new();
        start(&pool, &[LOCAL], settings(), &mut tasks).expect("one port is enough");
        assert!(!pool.is_up(held) && pool.is_up(other));
        drop(squatter);
        let until = tokio::time::Instant::now() + REBIND_EVERY * 3;
        while !pool.is_up(held) && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(pool.is_up(held), "rebound once its holder let go");
    }

    #[tokio::test]
    async fn no_port_bound_at_all_is_an_error_at_start() {
        let range = free_ports(1);
        let _squatter = std::net::TcpListener::bind((LOCAL, *range.start())).expect("squat");
        let pool = PassivePool::new(range, 10, Metrics::new());
        let mut tasks = JoinSet::new();
        let err = start(&pool, &[LOCAL], settings(), &mut tasks).expect_err("nothing bound");
        assert!(err.to_string().contains("could be bound"), "{err}");
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn the_ports_are_bound_where_the_control_listeners_are() {
        let same = bind_addresses(ips(&["127.0.0.1", "::1", "127.0.0.1"]));
        assert_eq!(same, ips(&["127.0.0.1", "::1"]));
        let v4_wild = bind_addresses(ips(&["0.0.0.0", "127.0.0.1", "::1"]));
        assert_eq!(v4_wild, ips(&["0.0.0.0", "::1"]));
        assert_eq!(bind_addresses(ips(&["::", "10.0.0.1"])), ips(&["::"]));
        assert_eq!(bind_addresses(Vec::new()), ips(&["0.0.0.0"]));
    }
}
