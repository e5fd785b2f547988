//! Which TLS sessions a data connection may resume.
//!
//! Each FTP session has a ticketer of its own (see [`super::session_config`]), so resuming proves
//! a data connection comes from the client that holds the control connection. Real clients
//! bend that: Go's crypto/tls (rclone, jlaffaye/ftp) keeps one session cache per host, so with
//! parallel transfers a data connection offers the ticket of a *sibling* control connection of
//! the same client. The binding that serves them and stays strict: a data connection may resume
//! a session the gateway issued to a control connection from the same client address, logged in
//! as the same user on the same route, still open or closed less than [`GRACE`] ago. Another
//! user's ticket, another address's, or another gateway's never passes.
//!
//! How. Every session enters the registry under its client address as its control handshake
//! starts, before any of its tickets exists, and says who it is once the backend accepts its
//! login. A data connection's ticket is tried with the session's own ticketer, then with those
//! of the other sessions from the same address. A sibling's ticket only opens the handshake:
//! the bridge then checks that the sibling is (or, if it is still logging in, becomes) the same
//! user on the same route, and refuses the connection otherwise, before any byte moves.
//! Go's client caches whichever ticket came last, often that of a sibling still between its
//! handshake and its 230, hence the wait.
//!
//! That is at least as strong as a server whose whole process shares one session key (vsftpd
//! and ProFTPD do), where any client of the server resumes any other client's session; here the
//! set is one person's sessions from one address, and only for minutes.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rustls::server::ProducesTickets;
use tokio::sync::watch;

/// How long a closed session's tickets stay good for its siblings' data connections: clients
/// keep a ticket in their cache after the connection that got it has closed.
pub const GRACE: Duration = Duration::from_secs(300);

/// Who a logged-in session is, for the binding: the user the backend accepted and the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub route: String,
}

/// Where a session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Login {
    /// The control handshake has started; the backend has not said 230 yet.
    Pending,
    LoggedIn(Identity),
    /// Ended without logging in: its tickets never pass.
    Gone,
}

/// One session's entry.
pub struct Member {
    id: u64,
    ticketer: Arc<dyn ProducesTickets>,
    login: watch::Sender<Login>,
    /// When the session ended; `None` while it is open.
    closed: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member").field("id", &self.id).finish()
    }
}

impl Member {
    fn live(&self) -> bool {
        let closed = self.closed.lock().map(|c| *c).unwrap_or(None);
        closed.is_none_or(|c| c.elapsed() < GRACE)
    }

    /// Waits up to `limit` for the session to log in; true when it is `who`.
    pub async fn is(&self, who: &Identity, limit: Duration) -> bool {
        let mut rx = self.login.subscribe();
        let settled = tokio::time::timeout(limit, rx.wait_for(|l| *l != Login::Pending)).await;
        matches!(settled, Ok(Ok(l)) if *l == Login::LoggedIn(who.clone()))
    }
}

/// The sessions of each client address whose tickets its data connections may try. One per
/// gateway.
#[derive(Default)]
pub struct Registry {
    by_client: DashMap<IpAddr, Vec<Arc<Member>>>,
    next_id: AtomicU64,
    /// Sessions ended so far, for the occasional prune of every address.
    ended: AtomicU64,
}

/// Every this many session ends, addresses whose sessions are all past their grace go.
const PRUNE_EVERY: u64 = 256;

/// A session's place in the registry. Dropping it (the session ends) starts its grace period.
pub struct Membership {
    registry: Arc<Registry>,
    client: IpAddr,
    member: Arc<Member>,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// Enters a session from `client` whose control handshake is about to start, with its
    /// ticketer.
    pub fn join(
        self: &Arc<Self>,
        client: IpAddr,
        ticketer: Arc<dyn ProducesTickets>,
    ) -> Membership {
        let member = Arc::new(Member {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            ticketer,
            login: watch::Sender::new(Login::Pending),
            closed: Mutex::new(None),
        });
        let mut members = self.by_client.entry(client).or_default();
        members.retain(|m| m.live());
        members.push(Arc::clone(&member));
        drop(members);
        Membership {
            registry: Arc::clone(self),
            client,
            member,
        }
    }

    /// Decrypts a ticket with the ticketer of another session from `client` (not `own`, which
    /// the caller has tried) that is open or within its grace period; returns the plaintext and
    /// the session that issued it, whose identity the caller must still check.
    pub fn decrypt_sibling(
        &self,
        client: IpAddr,
        own: u64,
        cipher: &[u8],
    ) -> Option<(Vec<u8>, Arc<Member>)> {
        let members = self.by_client.get(&client)?;
        members
            .iter()
            .filter(|m| m.id != own && m.live())
            .find_map(|m| m.ticketer.decrypt(cipher).map(|p| (p, Arc::clone(m))))
    }

    /// Client addresses with sessions open or in their grace period.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// Sessions open or in their grace period, all addresses together.
    pub fn members(&self) -> usize {
        self.by_client.iter().map(|m| m.len()).sum()
    }
}

impl Membership {
    /// The backend accepted the login: the session is `who` from now on.
    pub fn logged_in(&self, who: Identity) {
        self.member.login.send_replace(Login::LoggedIn(who));
    }

    /// What a data connection of this session needs to try its siblings' tickets.
    pub fn siblings(&self, who: Identity) -> Siblings {
        Siblings {
            registry: Arc::clone(&self.registry),
            client: self.client,
            own: self.member.id,
            who,
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.member.login.send_if_modified(|l| {
            let pending = *l == Login::Pending;
            if pending {
                *l = Login::Gone;
            }
            pending
        });
        if let Ok(mut closed) = self.member.closed.lock() {
            *closed = Some(Instant::now());
        }
        // Sessions past their grace are forgotten: this address's now, every address's once in
        // a while (an address that never comes back must not stay forever), so a session's end
        // costs a scan of the whole registry only rarely.
        let prune = |members: &mut Vec<Arc<Member>>| {
            members.retain(|m| m.live());
            !members.is_empty()
        };
        self.registry
            .by_client
            .remove_if_mut(&self.client, |_, m| !prune(m));
        let ended = self.registry.ended.fetch_add(1, Ordering::Relaxed);
        if ended % PRUNE_EVERY == 0 {
            self.registry.by_client.retain(|_, m| prune(m));
        }
    }
}

/// A data connection's view of its session's siblings.
#[derive(Clone)]
pub struct Siblings {
    registry: Arc<Registry>,
    client: IpAddr,
    own: u64,
    /// The session's own identity, which a sibling must share.
    pub who: Identity,
}

impl Siblings {
    pub fn decrypt(&self, cipher: &[u8]) -> Option<(Vec<u8>, Arc<Member>)> {
        self.registry.decrypt_sibling(self.client, self.own, cipher)
    }
}

impl std::fmt::Debug for Siblings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Siblings").field("own", &self.own).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticketer() -> Arc<dyn ProducesTickets> {
        rustls::crypto::aws_lc_rs::Ticketer::new().expect("ticketer")
    }

    fn who(user: &str) -> Identity {
        Identity {
            user: user.into(),
            route: "default".into(),
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));
    const SOON: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn only_siblings_of_one_address_user_and_route_pass() {
        let registry = Registry::new();
        let t1 = ticketer();
        let first = registry.join(A, Arc::clone(&t1));
        let second = registry.join(A, ticketer());
        let ticket = t1.encrypt(b"state").expect("ticket");
        let data = second.siblings(who("alice"));
        // The first session's ticket opens the handshake while it is still logging in ...
        let (plain, issuer) = data.decrypt(&ticket).expect("sibling ticket");
        assert_eq!(plain, b"state");
        assert!(!issuer.is(&data.who, SOON).await, "not logged in yet");
        // ... and passes once it is alice on the same route; as bob, or elsewhere, it fails.
        first.logged_in(who("alice"));
        assert!(issuer.is(&data.who, SOON).await);
        assert!(!issuer.is(&who("bob"), SOON).await);
        let other_route = Identity {
            route: "sales".into(),
            ..who("alice")
        };
        assert!(!issuer.is(&other_route, SOON).await);
        // Another address never even decrypts it.
        let elsewhere = registry.join(B, ticketer());
        assert!(elsewhere.siblings(who("alice")).decrypt(&ticket).is_none());
        // Closed, the first session's tickets still serve its sibling for the grace period.
        drop(first);
        assert!(data.decrypt(&ticket).is_some());
    }

    #[tokio::test]
    async fn a_session_that_ends_before_logging_in_never_passes() {
        let registry = Registry::new();
        let t1 = ticketer();
        let first = registry.join(A, Arc::clone(&t1));
        let second = registry.join(A, ticketer());
        let ticket = t1.encrypt(b"state").expect("ticket");
        let (_, issuer) = second
            .siblings(who("alice"))
            .decrypt(&ticket)
            .expect("decrypts");
        drop(first);
        assert!(!issuer.is(&who("alice"), Duration::from_secs(5)).await);
    }
}
