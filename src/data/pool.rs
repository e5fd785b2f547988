//! The passive pool: each PASV/EPSV leases a (port, client address) pair, not a port. The
//! listeners on the pool's ports are bound once, at start (`ports`), and every connection they
//! accept goes to the pending lease of its source address: so one port serves any number of
//! clients at once, and one address may have one pending lease per port. Why that is safe and
//! enough: docs/ARCHITECTURE.md, "One data port".
//!
//! A lease is released when its [`Lease`] is dropped, so no code path can leak one. The bridge
//! drops it as soon as the client's data connection has passed its checks, so a lease lasts only
//! from PASV to accept (milliseconds), and a PASV that finds every port pending for its
//! address waits `timeouts.passive_wait_secs` for one to free rather than failing at once. One
//! client address (or IPv6 network) may hold only so many leases at once, so a client that
//! never connects cannot crowd out anyone else.

use std::io;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::time::{timeout_at, Instant};

use crate::access::ClientKey;
use crate::metrics::Metrics;

/// Connections from a lease's address queued for its bridge, and as many as the bridge checks
/// at once (`admit`); more are closed, so a flood cannot grow a buffer, and a neighbour that
/// stalls its handshake holds up nobody.
pub(super) const MAX_CANDIDATES: usize = 4;

#[derive(Debug, Error)]
pub enum PoolError {
    /// Every port of the range is pending for this client's address (or not bound), and none
    /// freed within `timeouts.passive_wait_secs`. The client gets 425.
    #[error("every passive port in {lo}-{hi} is pending for {address}; waited {waited:?}")]
    Exhausted {
        lo: u16,
        hi: u16,
        address: IpAddr,
        waited: Duration,
    },
    /// The client (its address, or its IPv6 network) holds its share of leases already.
    #[error("{0} holds {1} passive leases already")]
    PerAddress(ClientKey, usize),
}

pub struct PassivePool {
    range: RangeInclusive<u16>,
    /// Per port of the range: whether its listeners are bound now. A port that is not is
    /// never leased (its PASV would name a port nobody answers on).
    up: Box<[AtomicBool]>,
    /// The pending leases: where a connection to `port` from `address` goes. It travels as a
    /// std socket, out of the listener's reactor, so the bridge registers it with its own
    /// session thread's (docs/ARCHITECTURE.md, "Threads").
    pending: DashMap<(u16, IpAddr), mpsc::Sender<std::net::TcpStream>>,
    /// Leases held per client (keyed as the bans and session limits are), and the most one
    /// may hold.
    per_client: DashMap<ClientKey, usize>,
    max_per_client: usize,
    /// Woken whenever a lease is released, for the PASVs waiting for one.
    freed: Notify,
    metrics: Arc<Metrics>,
}

/// One pending lease: the next connections to `port` from `source`. Dropping it releases the
/// pair (connections from `source` to `port` are then closed until the next lease).
pub struct Lease {
    pool: Arc<PassivePool>,
    port: u16,
    source: IpAddr,
    client: ClientKey,
    arrivals: mpsc::Receiver<std::net::TcpStream>,
}

impl Lease {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The next connection from the lease's address, on the caller's runtime. Cancel-safe.
    pub async fn accept(&mut self) -> io::Result<TcpStream> {
        match self.arrivals.recv().await {
            Some(tcp) => TcpStream::from_std(tcp),
            // Only if the pool were gone, which it cannot be while the lease holds it.
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.pending.remove(&(self.port, self.source));
        self.pool.release_client(self.client);
        self.pool.freed.notify_waiters();
    }
}

/// What became of a connection the listeners handed over.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Delivery {
    /// Queued for the pending lease of its address.
    Queued,
    /// No lease is pending for its address on that port: closed.
    Unclaimed,
    /// The lease's queue is full: closed.
    Overflow,
    /// The socket could not be taken off the listener's reactor (it failed meanwhile).
    Lost,
}

impl PassivePool {
    pub fn new(
        range: RangeInclusive<u16>,
        max_per_client: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let up = range.clone().map(|_| AtomicBool::new(false)).collect();
        Arc::new(Self {
            range,
            up,
            pending: DashMap::new(),
            per_client: DashMap::new(),
            max_per_client,
            freed: Notify::new(),
            metrics,
        })
    }

    pub fn range(&self) -> RangeInclusive<u16> {
        self.range.clone()
    }

    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Pending leases now.
    pub fn in_use(&self) -> usize {
        self.pending.len()
    }

    /// Marks `port`'s listeners bound (or not): only bound ports are leased. A port that comes
    /// up wakes the PASVs waiting for one.
    pub(super) fn set_up(&self, port: u16, up: bool) {
        if let Some(flag) = self.up_flag(port) {
            flag.store(up, Ordering::Release);
        }
        if up {
            self.freed.notify_waiters();
        }
    }

    pub(super) fn is_up(&self, port: u16) -> bool {
        self.up_flag(port)
            .is_some_and(|flag| flag.load(Ordering::Acquire))
    }

    /// `port`'s flag in `up`; `None` outside the range.
    fn up_flag(&self, port: u16) -> Option<&AtomicBool> {
        let slot = port.checked_sub(*self.range.start())?;
        self.up.get(usize::from(slot))
    }

    /// Hands a connection the listener on `port` accepted from `source` to its lease.
    pub(super) fn deliver(&self, port: u16, source: IpAddr, tcp: TcpStream) -> Delivery {
        // The sender is cloned so that no lock on the map is held past the lookup.
        let lease = self
            .pending
            .get(&(port, source.to_canonical()))
            .map(|l| l.clone());
        let delivery = match lease {
            None => Delivery::Unclaimed,
            Some(lease) => match tcp.into_std() {
                Err(_) => Delivery::Lost,
                Ok(tcp) => match lease.try_send(tcp) {
                    Ok(()) => Delivery::Queued,
                    Err(mpsc::error::TrySendError::Full(_)) => Delivery::Overflow,
                    // Released since the lookup.
                    Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Unclaimed,
                },
            },
        };
        // Counted here, once, whichever way it turned out unclaimed.
        if delivery == Delivery::Unclaimed {
            self.metrics.passive_unclaimed.inc();
        }
        delivery
    }

    /// Leases a port for connections from `source` (the control connection's peer), counted
    /// against `client`'s share. When every port is pending for `source`, waits up to `wait`
    /// for one to be released.
    pub async fn lease(
        self: &Arc<Self>,
        source: IpAddr,
        client: ClientKey,
        wait: Duration,
    ) -> Result<Lease, PoolError> {
        let source = source.to_canonical();
        let began = Instant::now();
        let deadline = began + wait;
        let outcome = loop {
            // Registered before the attempt, so a release between the attempt and the wait
            // is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.try_lease(source, client) {
                Ok(Some(lease)) => break Ok(lease),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            if timeout_at(deadline, freed).await.is_err() {
                let (lo, hi) = (*self.range.start(), *self.range.end());
                let waited = began.elapsed();
                break Err(PoolError::Exhausted {
                    lo,
                    hi,
                    address: source,
                    waited,
                });
            }
        };
        self.metrics
            .passive_wait
            .observe(began.elapsed().as_secs_f64());
        outcome
    }

    /// One attempt: a lease on a bound port with no lease pending for `source`, walking the
    /// range once from a random start (spreading leases over the range); `None` if there is
    /// none now.
    fn try_lease(
        self: &Arc<Self>,
        source: IpAddr,
        client: ClientKey,
    ) -> Result<Option<Lease>, PoolError> {
        {
            let mut held = self.per_client.entry(client).or_insert(0);
            if *held >= self.max_per_client {
                return Err(PoolError::PerAddress(client, *held));
            }
            *held += 1;
        }
        let (lo, hi) = (*self.range.start(), *self.range.end());
        let size = u32::from(hi - lo) + 1;
        let start = fastrand::u32(0..size);
        for i in 0..size {
            let port = lo + ((start + i) % size) as u16;
            if !self.is_up(port) {
                continue;
            }
            if let Entry::Vacant(slot) = self.pending.entry((port, source)) {
                let (tx, arrivals) = mpsc::channel(MAX_CANDIDATES);
                slot.insert(tx);
                let pool = Arc::clone(self);
                return Ok(Some(Lease {
                    pool,
                    port,
                    source,
                    client,
                    arrivals,
                }));
            }
        }
        self.release_client(client);
        Ok(None)
    }

    fn release_client(&self, client: ClientKey) {
        if let Entry::Occupied(mut e) = self.per_client.entry(client) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::net::TcpListener;

    const WAIT: Duration = Duration::from_millis(200);

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// The client `s`, IPv6 counted per /64.
    fn key(s: &str) -> ClientKey {
        ClientKey::of(ip(s), 64)
    }

    /// A pool on ports 1000.. of which every port counts as bound (no listener needed to
    /// lease).
    fn pool(ports: u16, max_per_client: usize) -> Arc<PassivePool> {
        let pool = PassivePool::new(1000..=999 + ports, max_per_client, Metrics::new());
        for port in pool.range() {
            pool.set_up(port, true);
        }
        pool
    }

    async fn lease(pool: &Arc<PassivePool>, s: &str) -> Result<Lease, PoolError> {
        pool.lease(ip(s), key(s), WAIT).await
    }

    /// A connected TCP stream, to deliver.
    async fn stream() -> TcpStream {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, _) = tokio::join!(TcpStream::connect(addr), l.accept());
        c.expect("connect")
    }

    #[tokio::test]
    async fn one_port_serves_many_addresses_and_each_address_once() {
        let pool = pool(1, 10);
        let a = lease(&pool, "127.0.0.1").await.expect("first address");
        let _b = lease(&pool, "127.0.0.2").await.expect("another address");
        assert_eq!(a.port(), 1000);
        assert_eq!(pool.in_use(), 2);
        let err = lease(&pool, "127.0.0.1").await.map(|l| l.port());
        assert!(matches!(err, Err(PoolError::Exhausted { waited, .. }) if waited >= WAIT));
        drop(a);
        lease(&pool, "::ffff:127.0.0.1")
            .await
            .expect("freed, and a mapped address is its IPv4 one");
    }

    #[tokio::test]
    async fn a_pasv_waits_for_its_addresss_lease_to_free() {
        let pool = pool(1, 10);
        let held = lease(&pool, "127.0.0.1").await.expect("first");
        let waiter = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                pool.lease(ip("127.0.0.1"), key("127.0.0.1"), Duration::from_secs(10))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "waits while the port is pending");
        drop(held);
        let next = waiter.await.expect("task").expect("leased once freed");
        assert_eq!(next.port(), 1000);
    }

    #[tokio::test]
    async fn ports_not_bound_are_never_leased() {
        let pool = pool(2, 10);
        pool.set_up(1000, false);
        for _ in 0..5 {
            assert_eq!(lease(&pool, "127.0.0.1").await.expect("up").port(), 1001);
        }
        pool.set_up(1001, false);
        assert!(lease(&pool, "127.0.0.1").await.is_err());
    }

    #[tokio::test]
    async fn connections_go_to_their_addresss_lease_and_others_are_unclaimed() {
        let pool = pool(1, 10);
        let mut a = lease(&pool, "127.0.0.1").await.expect("lease");
        let delivered = pool.deliver(1000, ip("::ffff:127.0.0.1"), stream().await);
        assert_eq!(delivered, Delivery::Queued);
        a.accept().await.expect("handed over");
        let stranger = pool.deliver(1000, ip("127.0.0.9"), stream().await);
        assert_eq!(stranger, Delivery::Unclaimed);
        assert_eq!(pool.metrics.passive_unclaimed.get(), 1);
        for _ in 0..MAX_CANDIDATES {
            let queued = pool.deliver(1000, ip("127.0.0.1"), stream().await);
            assert_eq!(queued, Delivery::Queued);
        }
        let flood = pool.deliver(1000, ip("127.0.0.1"), stream().await);
        assert_eq!(flood, Delivery::Overflow);
        drop(a);
        let late = pool.deliver(1000, ip("127.0.0.1"), stream().await);
        assert_eq!(late, Delivery::Unclaimed);
    }

    #[tokio::test]
    async fn one_address_holds_at_most_its_share_and_gets_it_back() {
        let pool = pool(3, 2);
        let a = lease(&pool, "127.0.0.1").await.expect("first");
        let _b = lease(&pool, "127.0.0.1").await.expect("second");
        assert!(matches!(
            lease(&pool, "127.0.0.1").await,
            Err(PoolError::PerAddress(_, 2))
        ));
        let other = lease(&pool, "192.0.2.7").await.expect("another address");
        drop(a);
        let _c = lease(&pool, "127.0.0.1").await.expect("share back");
        drop(other);
        assert_eq!(pool.per_client.get(&key("192.0.2.7")).map(|c| *c), None);
    }

    #[tokio::test]
    async fn an_ipv6_network_shares_its_share_and_addresses_their_ports() {
        let pool = pool(3, 1);
        let _v6 = lease(&pool, "2001:db8:1:2::1").await.expect("v6");
        assert!(
            matches!(
                lease(&pool, "2001:db8:1:2::2").await,
                Err(PoolError::PerAddress(..))
            ),
            "the same /64"
        );
        lease(&pool, "2001:db8:1:3::1").await.expect("the next /64");
    }
}
