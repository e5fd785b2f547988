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
//! How. Every session enters the registry as its control handshake starts, before any of its
//! tickets exists, and says who it is once the backend accepts its login. Its tickets carry a
//! random tag in front ([`Tagged`]), which names its entry: a data connection's ticket is tried
//! with the session's own ticketer, and a sibling's goes straight to the one session that made
//! it, which must be from the same client address and open or in its grace. A sibling's ticket
//! only opens the handshake: the bridge then checks that the sibling is (or, if it is still
//! logging in, becomes) the same user on the same route, and refuses the connection otherwise,
//! before any byte moves. Go's client caches whichever ticket came last, often that of a
//! sibling still between its handshake and its 230, hence the wait.
//!
//! What it costs does not grow with history: a lookup by tag per sibling ticket, an insert per
//! session and a removal when its grace ends, found at the front of a queue in closing order.
//! One address keeps at most [`CLOSED_PER_CLIENT`] closed sessions, so a client (or everyone
//! behind one NAT) opening and closing sessions as fast as it can holds bounded memory.
//!
//! That is at least as strong as a server whose whole process shares one session key (vsftpd
//! and ProFTPD do), where any client of the server resumes any other client's session; here the
//! set is one person's sessions from one address, and only for minutes.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rustls::server::ProducesTickets;
use tokio::sync::watch;

/// How long a closed session's tickets stay good for its siblings' data connections: clients
/// keep a ticket in their cache after the connection that got it has closed.
pub const GRACE: Duration = Duration::from_secs(300);

/// Closed sessions one client address may keep in their grace period; past it the oldest go
/// first. Open sessions are bounded by `limits.max_sessions_per_ip`; this bounds what an
/// address that opens and closes sessions as fast as it can leaves behind (a client's cache
/// holds a few recent tickets, never thousands).
pub const CLOSED_PER_CLIENT: usize = 1024;

/// How often sessions past their grace are forgotten when no session starts or ends to do it.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Who a logged-in session is, for the binding: the user the backend accepted and the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub route: String,
}

/// Where a session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Standing {
    /// The control handshake has started; the backend has not said 230 yet.
    Pending,
    LoggedIn(Identity),
    /// Ended without logging in: its tickets never pass.
    Gone,
}

/// The length of the tag in front of each ticket.
const TAG_LEN: usize = 8;

/// A session's ticketer, whose tickets start with the session's tag in clear, so a sibling's
/// ticket leads straight to the one ticketer that can open it instead of a trial of every
/// session from the address. The tag is random, names nothing but the session's entry, and is
/// not trusted: only the ticketer behind it can open (authenticate) the rest.
pub struct Tagged {
    tag: u64,
    inner: Arc<dyn ProducesTickets>,
}

impl Tagged {
    pub fn new(inner: Arc<dyn ProducesTickets>) -> Arc<Self> {
        Arc::new(Self {
            tag: fastrand::u64(..),
            inner,
        })
    }

    /// The tag a ticket names, if it is long enough to carry one.
    fn tag_of(cipher: &[u8]) -> Option<(u64, &[u8])> {
        let (tag, rest) = cipher.split_first_chunk::<TAG_LEN>()?;
        Some((u64::from_be_bytes(*tag), rest))
    }
}

impl std::fmt::Debug for Tagged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tagged").finish_non_exhaustive()
    }
}

impl ProducesTickets for Tagged {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let sealed = self.inner.encrypt(plain)?;
        let mut ticket = Vec::with_capacity(TAG_LEN + sealed.len());
        ticket.extend_from_slice(&self.tag.to_be_bytes());
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    /// Opens this session's own tickets only.
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let (tag, sealed) = Tagged::tag_of(cipher)?;
        if tag != self.tag {
            return None;
        }
        self.inner.decrypt(sealed)
    }
}

/// One session's entry.
pub struct Member {
    client: IpAddr,
    ticketer: Arc<Tagged>,
    login: watch::Sender<Standing>,
    /// When the session ended; unset while it is open.
    closed: OnceLock<Instant>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Member {
    /// Waits up to `limit` for the session to log in; true when it is `who`.
    pub async fn is(&self, who: &Identity, limit: Duration) -> bool {
        let mut rx = self.login.subscribe();
        let settled = tokio::time::timeout(limit, rx.wait_for(|l| *l != Standing::Pending)).await;
        matches!(settled, Ok(Ok(l)) if *l == Standing::LoggedIn(who.clone()))
    }
}

/// Sessions closed in the order they closed, all addresses together, and per address.
#[derive(Default)]
struct Closed {
    /// Oldest first: the front is the next to pass its grace.
    by_time: VecDeque<(Instant, u64)>,
    /// Oldest first, per address, for [`CLOSED_PER_CLIENT`].
    by_client: std::collections::HashMap<IpAddr, VecDeque<u64>>,
}

/// The sessions whose tickets data connections may try, by tag. One per gateway.
///
/// Every operation costs the same whatever the history: a session joins and leaves with one
/// insert and one removal, a data connection's sibling ticket is looked up by its tag, and the
/// sessions past their grace leave from the front of a queue in the order they closed (what a
/// join, a drop or the sweep finds there, each once).
pub struct Registry {
    members: DashMap<u64, Arc<Member>>,
    closed: Mutex<Closed>,
    grace: Duration,
}

/// A session's place in the registry. Dropping it (the session ends) starts its grace period.
pub struct Membership {
    registry: Arc<Registry>,
    member: Arc<Member>,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Registry::with_grace(GRACE)
    }

    /// A registry whose closed sessions stay `grace` (tests shorten it).
    pub fn with_grace(grace: Duration) -> Arc<Registry> {
        Arc::new(Registry {
            members: DashMap::new(),
            closed: Mutex::new(Closed::default()),
            grace,
        })
    }

    /// Enters a session from `client` whose control handshake is about to start, with its
    /// ticketer. `None` in the (2^-64) case of a tag already taken: the session's data
    /// connections still resume its own tickets, only its siblings cannot.
    pub fn join(self: &Arc<Self>, client: IpAddr, ticketer: Arc<Tagged>) -> Option<Membership> {
        self.expire();
        let member = Arc::new(Member {
            client,
            ticketer,
            login: watch::Sender::new(Standing::Pending),
            closed: OnceLock::new(),
        });
        match self.members.entry(member.ticketer.tag) {
            dashmap::Entry::Occupied(_) => return None,
            dashmap::Entry::Vacant(slot) => slot.insert(Arc::clone(&member)),
        };
        Some(Membership {
            registry: Arc::clone(self),
            member,
        })
    }

    /// Opens a ticket a session from `client` other than `own` issued, if that session is
    /// open or within its grace period; returns the plaintext and the session that issued it,
    /// whose identity the caller must still check.
    fn decrypt_sibling(
        &self,
        client: IpAddr,
        own: u64,
        cipher: &[u8],
    ) -> Option<(Vec<u8>, Arc<Member>)> {
        let (tag, _) = Tagged::tag_of(cipher)?;
        if tag == own {
            return None;
        }
        let member = Arc::clone(self.members.get(&tag)?.value());
        let live = member.closed.get().is_none_or(|c| c.elapsed() < self.grace);
        if member.client != client || !live {
            return None;
        }
        let plain = member.ticketer.decrypt(cipher)?;
        Some((plain, member))
    }

    /// A session ended: it stays for its grace, unless its address already keeps
    /// [`CLOSED_PER_CLIENT`] closed sessions, in which case that address's oldest goes now.
    fn close(&self, member: &Member) {
        let now = Instant::now();
        if member.closed.set(now).is_err() {
            return;
        }
        let tag = member.ticketer.tag;
        let Ok(mut closed) = self.closed.lock() else {
            self.members.remove(&tag);
            return;
        };
        closed.by_time.push_back((now, tag));
        let mine = closed.by_client.entry(member.client).or_default();
        mine.push_back(tag);
        if mine.len() > CLOSED_PER_CLIENT {
            if let Some(oldest) = mine.pop_front() {
                self.members.remove(&oldest);
            }
        }
        self.expire_locked(&mut closed, now);
    }

    /// Forgets the sessions past their grace. Each closed session is found here once, so the
    /// cost over a gateway's life is one step per session.
    pub fn expire(&self) {
        if let Ok(mut closed) = self.closed.lock() {
            self.expire_locked(&mut closed, Instant::now());
        }
    }

    fn expire_locked(&self, closed: &mut Closed, now: Instant) {
        let mut forgot = false;
        while let Some(&(at, tag)) = closed.by_time.front() {
            if now.saturating_duration_since(at) < self.grace {
                break;
            }
            closed.by_time.pop_front();
            forgot = true;
            // Already gone if its address's cap pushed it out first.
            let Some((_, member)) = self.members.remove(&tag) else {
                continue;
            };
            if let Some(mine) = closed.by_client.get_mut(&member.client) {
                if mine.front() == Some(&tag) {
                    mine.pop_front();
                }
                if mine.is_empty() {
                    closed.by_client.remove(&member.client);
                }
            }
        }
        if forgot && closed.by_time.is_empty() {
            // A burst's queues give their memory back once it is all forgotten.
            closed.by_time.shrink_to_fit();
            closed.by_client.shrink_to_fit();
            self.members.shrink_to_fit();
        }
    }

    /// Sessions open or in their grace period, all addresses together.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

impl Membership {
    /// The backend accepted the login: the session is `who` from now on.
    pub fn logged_in(&self, who: Identity) {
        self.member.login.send_replace(Standing::LoggedIn(who));
    }

    /// What a data connection of this session needs to try its siblings' tickets.
    pub fn siblings(&self, who: Identity) -> Siblings {
        Siblings {
            registry: Arc::clone(&self.registry),
            client: self.member.client,
            own: self.member.ticketer.tag,
            who,
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.member.login.send_if_modified(|l| {
            let pending = *l == Standing::Pending;
            if pending {
                *l = Standing::Gone;
            }
            pending
        });
        self.registry.close(&self.member);
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
        f.debug_struct("Siblings")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticketer() -> Arc<Tagged> {
        Tagged::new(rustls::crypto::aws_lc_rs::Ticketer::new().expect("ticketer"))
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

    fn join(registry: &Arc<Registry>, client: IpAddr, t: &Arc<Tagged>) -> Membership {
        registry.join(client, Arc::clone(t)).expect("joined")
    }

    #[tokio::test]
    async fn only_siblings_of_one_address_user_and_route_pass() {
        let registry = Registry::new();
        let t1 = ticketer();
        let first = join(&registry, A, &t1);
        let second = join(&registry, A, &ticketer());
        let ticket = t1.encrypt(b"state").expect("ticket");
        // A session opens its own tickets, and no other session's.
        assert_eq!(t1.decrypt(&ticket).as_deref(), Some(&b"state"[..]));
        assert!(ticketer().decrypt(&ticket).is_none());
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
        let elsewhere = join(&registry, B, &ticketer());
        assert!(elsewhere.siblings(who("alice")).decrypt(&ticket).is_none());
        // A session's own ticket is not a sibling's.
        assert!(first.siblings(who("alice")).decrypt(&ticket).is_none());
        // Closed, the first session's tickets still serve its sibling for the grace period.
        drop(first);
        assert!(data.decrypt(&ticket).is_some());
    }

    #[tokio::test]
    async fn a_session_that_ends_before_logging_in_never_passes() {
        let registry = Registry::new();
        let t1 = ticketer();
        let first = join(&registry, A, &t1);
        let second = join(&registry, A, &ticketer());
        let ticket = t1.encrypt(b"state").expect("ticket");
        let (_, issuer) = second
            .siblings(who("alice"))
            .decrypt(&ticket)
            .expect("decrypts");
        drop(first);
        assert!(!issuer.is(&who("alice"), Duration::from_secs(5)).await);
    }

    /// A forged or cut tag never reaches a ticketer that could be tricked: a ticket whose tag
    /// is changed to a sibling's fails that sibling's authentication.
    #[test]
    fn a_changed_tag_opens_nothing() {
        let registry = Registry::new();
        let (t1, t2) = (ticketer(), ticketer());
        let _first = join(&registry, A, &t1);
        let second = join(&registry, A, &t2);
        let mut ticket = t1.encrypt(b"state").expect("ticket");
        ticket[..TAG_LEN].copy_from_slice(&t2.tag.to_be_bytes());
        let third = join(&registry, A, &ticketer());
        assert!(third.siblings(who("a")).decrypt(&ticket).is_none());
        assert!(second.siblings(who("a")).decrypt(&[1, 2, 3]).is_none());
    }

    /// Past their grace, closed sessions are forgotten, whoever calls; an address keeps at
    /// most [`CLOSED_PER_CLIENT`], its oldest going first; open ones stay.
    #[test]
    fn closed_sessions_leave_after_their_grace_and_past_the_cap_oldest_first() {
        let registry = Registry::with_grace(Duration::from_millis(200));
        let open = join(&registry, A, &ticketer());
        let oldest = ticketer();
        let ticket = oldest.encrypt(b"old").expect("ticket");
        drop(join(&registry, A, &oldest));
        let reader = open.siblings(who("a"));
        assert!(reader.decrypt(&ticket).is_some(), "within its grace");
        for _ in 0..CLOSED_PER_CLIENT {
            drop(join(&registry, A, &ticketer()));
        }
        assert_eq!(registry.members(), 1 + CLOSED_PER_CLIENT);
        assert!(reader.decrypt(&ticket).is_none(), "the oldest went first");
        // Another address's closed sessions are not counted against A's.
        drop(join(&registry, B, &ticketer()));
        assert_eq!(registry.members(), 2 + CLOSED_PER_CLIENT);
        std::thread::sleep(Duration::from_millis(250));
        registry.expire();
        assert_eq!(registry.members(), 1, "only the open session is left");
        drop(open);
        std::thread::sleep(Duration::from_millis(250));
        registry.expire();
        assert!(registry.is_empty());
    }
}
