//! The passive port pool: each PASV/EPSV leases one port from the configured range and binds a
//! listener on it. A lease is released when its [`Lease`] is dropped, so no code path can leak
//! a port. The bridge drops it as soon as its data connection is accepted (the connection keeps
//! the port as its own local port; the next lease binds beside it), so a lease lasts only from
//! PASV to accept, and one client address may hold only so many of them at once: a client that
//! never connects cannot drain the pool for anyone else.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::{DashMap, DashSet};
use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket};

use crate::access::ClientKey;

#[derive(Debug, Error)]
pub enum PoolError {
    /// Every port is leased or bound by something else. The client gets 425 at once.
    #[error("no free passive port in {0}-{1}")]
    Exhausted(u16, u16),
    /// The client (its address, or its IPv6 network) holds its share of leases already.
    #[error("{0} holds {1} passive ports already")]
    PerAddress(ClientKey, usize),
}

#[derive(Debug)]
pub struct PassivePool {
    range: RangeInclusive<u16>,
    leased: DashSet<u16>,
    /// Leases held per client (keyed as the bans and session limits are), and the most one
    /// may hold.
    per_client: DashMap<ClientKey, usize>,
    max_per_client: usize,
}

/// One leased port. Dropping it returns the port to the pool.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<PassivePool>,
    port: u16,
    client: ClientKey,
}

impl Lease {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.leased.remove(&self.port);
        self.pool.release_client(self.client);
    }
}

impl PassivePool {
    pub fn new(range: RangeInclusive<u16>, max_per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            range,
            leased: DashSet::new(),
            per_client: DashMap::new(),
            max_per_client,
        })
    }

    fn release_client(&self, client: ClientKey) {
        if let Entry::Occupied(mut e) = self.per_client.entry(client) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    pub fn in_use(&self) -> usize {
        self.leased.len()
    }

    /// Leases a port for `client` and binds a listener on `ip` there. The search starts at a
    /// random port so that the next data port cannot be guessed from the last (port theft,
    /// docs/ARCHITECTURE.md), then walks the range once; ports bound by other programs are
    /// skipped.
    pub fn lease(
        self: &Arc<Self>,
        ip: IpAddr,
        client: ClientKey,
    ) -> Result<(Lease, TcpListener), PoolError> {
        {
            let mut held = self.per_client.entry(client).or_insert(0);
            if *held >= self.max_per_client {
                return Err(PoolError::PerAddress(client, *held));
            }
            *held += 1;
        }
        match self.free_port(ip) {
            Some((port, listener)) => {
                let pool = Arc::clone(self);
                Ok((Lease { pool, port, client }, listener))
            }
            None => {
                self.release_client(client);
                let (lo, hi) = (*self.range.start(), *self.range.end());
                Err(PoolError::Exhausted(lo, hi))
            }
        }
    }

    /// Marks a free port of the range leased and binds it, walking the range once from a
    /// random start.
    fn free_port(&self, ip: IpAddr) -> Option<(u16, TcpListener)> {
        let (lo, hi) = (*self.range.start(), *self.range.end());
        let size = u32::from(hi - lo) + 1;
        let start = fastrand::u32(0..size);
        for i in 0..size {
            let port = lo + ((start + i) % size) as u16;
            if !self.leased.insert(port) {
                continue;
            }
            match bind(SocketAddr::new(ip, port)) {
                Ok(listener) => return Some((port, listener)),
                Err(_) => {
                    self.leased.remove(&port);
                }
            }
        }
        None
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A port whose last data connection sits in TIME_WAIT can be leased again at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // One data connection is expected; a short backlog limits what a port thief can queue.
    socket.listen(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// The client `s`, IPv6 counted per /64.
    fn key(s: &str) -> ClientKey {
        ClientKey::of(s.parse().expect("ip"), 64)
    }

    fn free_range(n: u16) -> RangeInclusive<u16> {
        // Below Linux's ephemeral range (32768 and up), so no outgoing connection can take a
        // probed port before the test binds it; nothing else here binds ports 11000-19999.
        let start = 11000 + fastrand::u16(0..4000);
        for lo in (start..19000).step_by(usize::from(n) * 7 + 13) {
            let free =
                (lo..lo + n).all(|p| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok());
            if free {
                return lo..=lo + n - 1;
            }
        }
        panic!("no free port run");
    }

    #[tokio::test]
    async fn exhausted_pool_refuses_and_recovers_when_a_lease_is_dropped() {
        let pool = PassivePool::new(free_range(2), 10);
        let a = pool.lease(LOCAL, key("127.0.0.1")).expect("first");
        let b = pool.lease(LOCAL, key("127.0.0.1")).expect("second");
        assert_ne!(a.0.port(), b.0.port());
        assert!(matches!(
            pool.lease(LOCAL, key("127.0.0.1")),
            Err(PoolError::Exhausted(..))
        ));
        assert_eq!(pool.in_use(), 2);
        drop(a);
        let c = pool
            .lease(LOCAL, key("127.0.0.1"))
            .expect("freed port is leased again");
        assert_ne!(c.0.port(), b.0.port());
    }

    #[tokio::test]
    async fn ports_bound_elsewhere_are_skipped() {
        let range = free_range(2);
        let _squatter =
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, *range.start())).expect("squat");
        let pool = PassivePool::new(range.clone(), 10);
        let (lease, _l) = pool.lease(LOCAL, key("127.0.0.1")).expect("the other port");
        assert_eq!(lease.port(), *range.end());
        assert!(pool.lease(LOCAL, key("127.0.0.1")).is_err());
    }

    #[tokio::test]
    async fn one_address_holds_at_most_its_share_and_gets_it_back() {
        let pool = PassivePool::new(free_range(3), 2);
        let a = pool.lease(LOCAL, key("127.0.0.1")).expect("first");
        let _b = pool.lease(LOCAL, key("127.0.0.1")).expect("second");
        assert!(matches!(
            pool.lease(LOCAL, key("127.0.0.1")),
            Err(PoolError::PerAddress(_, 2))
        ));
        let _other = pool
            .lease(LOCAL, key("192.0.2.7"))
            .expect("another address");
        drop(a);
        let _c = pool.lease(LOCAL, key("127.0.0.1")).expect("share back");
        drop(_other);
        assert_eq!(pool.per_client.get(&key("192.0.2.7")).map(|c| *c), None);
    }

    #[tokio::test]
    async fn a_mapped_address_shares_its_ipv4_ones_leases_and_an_ipv6_network_its_own() {
        let pool = PassivePool::new(free_range(3), 1);
        let held = pool.lease(LOCAL, key("127.0.0.1")).expect("first");
        assert!(matches!(
            pool.lease(LOCAL, key("::ffff:127.0.0.1")),
            Err(PoolError::PerAddress(_, 1))
        ));
        drop(held);
        let _again = pool
            .lease(LOCAL, key("::ffff:127.0.0.1"))
            .expect("share back");
        assert!(pool.lease(LOCAL, key("127.0.0.1")).is_err());
        let _v6 = pool.lease(LOCAL, key("2001:db8:1:2::1")).expect("v6");
        assert!(
            pool.lease(LOCAL, key("2001:db8:1:2::2")).is_err(),
            "the same /64"
        );
        let _next = pool
            .lease(LOCAL, key("2001:db8:1:3::1"))
            .expect("the next /64");
    }
}
