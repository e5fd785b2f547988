//! Listeners, accept loops, session limits, and the graceful drain on shutdown.
//!
//! Shutdown: the accept loops stop, idle sessions are told `421` at once, sessions in a
//! transfer finish it (and then hear the same `421`), and whatever is still running when the
//! grace period ends is cut when the session threads stop (`cores.rs`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;
use tracing::{field, info, info_span, warn, Instrument};

use crate::accept::{refuse, Acceptor};
use crate::access::{Access, Barred, ClientKey};
use crate::admin;
use crate::audit::{Audit, Who};
use crate::backend::{Dialer, Router};
use crate::config::Settings;
use crate::cores::Cores;
use crate::data::{self, NoPassivePort, PassivePool};
use crate::fdlimit;
use crate::metrics::Metrics;
use crate::proxy_protocol;
use crate::refusal::Refusal;
use crate::scan::Scanners;
use crate::session::{self, Context, Mode};
use crate::tls::store::CertStore;
use crate::tls::{self, TlsError};

#[derive(Debug, Error)]
pub enum StartError {
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("passive.external_address: {0}")]
    External(String),
    #[error(transparent)]
    Passive(#[from] NoPassivePort),
    #[error("{0}")]
    Descriptors(String),
    #[error("tls.acme: {0}")]
    Acme(#[from] crate::acme::AcmeError),
    #[error("scan: {0}")]
    Scan(String),
    #[error("cannot start the session threads: {0}")]
    Threads(io::Error),
    #[error("audit.log {}: {source}", file.display())]
    Audit {
        file: std::path::PathBuf,
        source: io::Error,
    },
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let bound = TcpListener::bind(addr).await;
    bound.map_err(|source| StartError::Bind { addr, source })
}

/// A gateway with its listeners bound, ready to serve.
pub struct Gateway {
    ctx: Arc<Context>,
    listeners: Vec<(TcpListener, Mode)>,
    admin: Option<TcpListener>,
    /// The passive ports' listeners, bound once at start, and the ACME client; dropping the
    /// set stops them.
    background: JoinSet<()>,
    limits: Arc<SessionLimits>,
    /// Apart from `limits`, which each session's permit holds: the threads stop when the
    /// gateway is dropped after its drain, cutting whatever outlived the grace period.
    cores: Arc<Cores>,
    draining: watch::Sender<bool>,
}

impl Gateway {
    /// Loads the certificate (or generates one, with a warning), binds every listener.
    pub async fn bind(settings: Settings) -> Result<Gateway, StartError> {
        Gateway::bind_with(settings, None).await
    }

    /// [`Gateway::bind`], with `dialer` opening the backends' control connections instead of
    /// TCP: tests put peers scripted in Rust there, over `tokio::io::duplex`.
    pub async fn bind_with(
        mut settings: Settings,
        dialer: Option<Dialer>,
    ) -> Result<Gateway, StartError> {
        fdlimit::raise_and_fit(&mut settings).map_err(StartError::Descriptors)?;
        let metrics = Metrics::new();
        let audit = Audit::open(&settings.audit, &metrics).map_err(|source| StartError::Audit {
            file: settings.audit.log.clone().unwrap_or_default(),
            source,
        })?;
        let (certs, generated) = CertStore::load(&settings.tls, tls::provider())?;
        if generated {
            warn!("no tls.cert/tls.key configured: using a generated self-signed certificate (renewed in memory); clients will not trust it: set tls.cert/tls.key or [tls.acme]");
        }
        if generated || settings.tls.watch {
            certs.watch(Arc::clone(&metrics))?;
        }
        let tls = tls::server_config(Arc::clone(&certs), &settings.tls)?;
        let external_ip = settings
            .passive
            .external_ip()
            .map_err(StartError::External)?;
        let router = Router::new(&settings, &metrics, dialer)?;
        if let Some(interval) = settings.routing.health_interval() {
            router.spawn_health_checks(interval, settings.routing.health_timeout());
        }
        let mut listeners = Vec::new();
        for (addrs, mode) in [
            (&settings.listen.explicit, Mode::Explicit),
            (&settings.listen.implicit, Mode::Implicit),
        ] {
            for &addr in addrs {
                listeners.push((bind(addr).await?, mode));
            }
        }
        let admin = match settings.admin.listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let limits = Arc::new(SessionLimits::new(
            settings.limits.max_sessions,
            settings.limits.max_sessions_per_ip,
        ));
        let pool = PassivePool::new(
            settings.passive.range(),
            settings.limits.max_passive_per_ip,
            Arc::clone(&metrics),
        );
        let listen = settings
            .listen
            .explicit
            .iter()
            .chain(&settings.listen.implicit);
        let mut background = JoinSet::new();
        data::start_ports(
            &pool,
            &data::bind_addresses(listen.map(SocketAddr::ip)),
            data::PortSettings {
                trusted: settings.proxy_protocol.trusted.clone(),
                header_timeout: settings.timeouts.tls_handshake(),
            },
            &mut background,
        )?;
        if let Some(acme) = &settings.tls.acme {
            crate::acme::start(
                acme,
                Arc::clone(&certs),
                Arc::clone(&metrics),
                &mut background,
            )
            .await?;
        }
        let scanners = Scanners::new(&settings, &metrics.spool_bytes).map_err(StartError::Scan)?;
        let (draining, draining_rx) = watch::channel(false);
        let cores = Cores::start().map_err(StartError::Threads)?;
        Ok(Gateway {
            ctx: Arc::new(Context {
                access: Access::new(&settings.access),
                audit,
                settings,
                tls,
                certs,
                pool,
                external_ip,
                router,
                bindings: tls::binding::Registry::new(),
                metrics,
                draining: draining_rx,
                scanners,
            }),
            listeners,
            admin,
            background,
            limits,
            cores: Arc::new(cores),
            draining,
        })
    }

    /// What every session shares: with [`session::serve`], a test drives a session over any
    /// connection (one end of a `tokio::io::duplex`) without the listeners.
    pub fn context(&self) -> Arc<Context> {
        Arc::clone(&self.ctx)
    }

    /// The admin listener's address, if one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// SIGHUP: reloads the certificates now, keeping the old ones if the files are bad, and
    /// reopens the audit log. Returns a handle that can do it again after `serve` has taken
    /// the gateway.
    pub fn reloader(&self) -> impl Fn() + Send + 'static {
        let ctx = Arc::clone(&self.ctx);
        move || {
            ctx.certs.sighup(&ctx.metrics);
            ctx.audit.reopen();
        }
    }

    /// The bound addresses of the listeners of one mode (useful with port 0).
    pub fn local_addrs(&self, mode: Mode) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter(|(_, m)| *m == mode)
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Accepts and serves sessions until `shutdown` resolves, then drains: no new sessions,
    /// `421` to idle ones, transfers in flight get `timeouts.shutdown_grace_secs` to finish.
    /// Returns when every session has ended or the grace period is over.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let mut tasks = JoinSet::new();
        for (listener, mode) in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                info!(%addr, ?mode, "listening");
            }
            tasks.spawn(accept_loop(
                listener,
                mode,
                Arc::clone(&self.ctx),
                Arc::clone(&self.limits),
                Arc::clone(&self.cores),
            ));
        }
        // Sessions past their TLS binding grace are forgotten even when none starts or ends.
        let bindings = Arc::clone(&self.ctx.bindings);
        tasks.spawn(async move {
            let mut every = tokio::time::interval(tls::binding::SWEEP_EVERY);
            loop {
                every.tick().await;
                bindings.expire();
            }
        });
        // The admin listener outlives the accept loops: during the drain /readyz says 503 and
        // /metrics shows the sessions winding down.
        let admin = self.admin.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                info!(%addr, "admin listening (/metrics, /healthz, /readyz)");
            }
            tokio::spawn(admin::serve(listener, Arc::clone(&self.ctx)))
        });
        shutdown.await;
        // Sessions learn of the drain before the listeners close: a client that finds the port
        // refused then finds its idle session ending too, never served one more command.
        let _ = self.draining.send(true);
        // Listeners close here, so new connections are refused by the kernel, not left queued.
        tasks.abort_all();
        let sessions = &self.limits.sessions;
        sessions.close();
        let grace = self.ctx.settings.timeouts.shutdown_grace();
        info!(
            sessions = sessions.len(),
            grace_secs = grace.as_secs(),
            "shutting down: draining sessions"
        );
        match tokio::time::timeout(grace, sessions.wait()).await {
            Ok(()) => info!("all sessions ended; stopped"),
            Err(_) => warn!(
                sessions = sessions.len(),
                "grace period over; cutting the sessions left"
            ),
        }
        if let Some(admin) = admin {
            admin.abort();
        }
        // Only now: transfers of the drain still connect to them.
        drop(self.background);
    }
}

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

async fn accept_loop(
    listener: TcpListener,
    mode: Mode,
    ctx: Arc<Context>,
    limits: Arc<SessionLimits>,
    cores: Arc<Cores>,
) {
    let mut acceptor = Acceptor::new(Some(mode));
    loop {
        let (tcp, peer) = acceptor.accept(&listener, &ctx.metrics).await;
        let (ctx, limits, cores) = (Arc::clone(&ctx), Arc::clone(&limits), Arc::clone(&cores));
        if !ctx.settings.proxy_protocol.trusted.contains(peer.ip()) {
            admit(ctx, &limits, &cores, tcp, peer, None, mode);
            continue;
        }
        // A balancer: the real client is in its PROXY header, read off the loop so a slow one
        // holds up nobody else.
        tokio::spawn(async move {
            let mut tcp = tcp;
            let limit = ctx.settings.timeouts.tls_handshake();
            match proxy_protocol::read_header(&mut tcp, limit).await {
                Ok(client) => admit(
                    ctx,
                    &limits,
                    &cores,
                    tcp,
                    client.unwrap_or(peer),
                    Some(peer),
                    mode,
                ),
                Err(error) => {
                    // Counted and logged, not audited: no client is known yet.
                    let refusal = Refusal::BadProxyHeader {
                        balancer: peer,
                        error,
                    };
                    ctx.note(&refusal, None);
                }
            }
        });
    }
}

/// Admits a session from `client` (reached through the balancer `via`, if any) or refuses it.
fn admit(
    ctx: Arc<Context>,
    limits: &Arc<SessionLimits>,
    cores: &Cores,
    tcp: TcpStream,
    client: SocketAddr,
    via: Option<SocketAddr>,
    mode: Mode,
) {
    let id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
    // `user` and `backend` are filled in once known, so every line of the session carries them.
    let span = info_span!(
        "session",
        id,
        client = %client,
        via = field::Empty,
        user = field::Empty,
        backend = field::Empty,
        route = field::Empty,
        client_cert = field::Empty
    );
    if let Some(via) = via {
        span.record("via", field::display(via));
    }
    let admitted = match ctx.access.at_door(client.ip()) {
        Ok(()) => limits.admit(ctx.access.client_key(client.ip())),
        Err(Barred::Denied) => Err(Refusal::AddressDenied),
        Err(Barred::Banned(_)) => Err(Refusal::AddressBanned),
    };
    match admitted {
        Ok(permit) => {
            // The socket moves to the session's thread, registered with that runtime's
            // reactor, so its wakes stay there (docs/ARCHITECTURE.md, "Threads").
            let handed = tcp
                .local_addr()
                .and_then(|local| Ok((tcp.into_std()?, local)));
            let (tcp, local) = match handed {
                Ok(handed) => handed,
                Err(e) => return warn!(parent: &span, error = %e, "connection lost at admission"),
            };
            let (core, seat) = cores.seat();
            limits.sessions.spawn_on(
                async move {
                    ctx.metrics.sessions.inc();
                    ctx.metrics.sessions_active.inc();
                    match TcpStream::from_std(tcp) {
                        Ok(tcp) => {
                            let _ = tcp.set_nodelay(true);
                            let io = Box::new(tcp);
                            session::serve(Arc::clone(&ctx), io, local, mode, client, id).await;
                        }
                        Err(e) => warn!(error = %e, "connection lost at admission"),
                    }
                    ctx.metrics.sessions_active.dec();
                    drop((permit, seat));
                }
                .instrument(span),
                core,
            );
        }
        Err(refusal) => {
            let _enter = span.enter();
            let who = Who {
                session: id,
                client: client.ip(),
                user: None,
                route: None,
            };
            ctx.note(&refusal, Some(who));
            tokio::spawn(refuse(tcp, mode, refusal));
        }
    }
}

/// The sessions: their tasks (which the drain waits for), their slots in total and per client
/// (an IPv4 address or an IPv6 network, see [`ClientKey`]).
struct SessionLimits {
    sessions: TaskTracker,
    total: Arc<Semaphore>,
    per_ip: DashMap<ClientKey, usize>,
    max_per_ip: usize,
}

/// A session slot; dropping it frees the slot.
struct Permit {
    limits: Arc<SessionLimits>,
    client: ClientKey,
    _total: OwnedSemaphorePermit,
}

impl SessionLimits {
    fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            sessions: TaskTracker::new(),
            total: Arc::new(Semaphore::new(max_total.min(Semaphore::MAX_PERMITS))),
            per_ip: DashMap::new(),
            max_per_ip,
        }
    }

    /// Takes a slot for a session from `client`, keyed as the bans are: a dual-stack listener
    /// sees an IPv4 client as `::ffff:a.b.c.d`, and counted as written, one client reaching
    /// both a v4 and a `[::]` listener had the limit twice over.
    fn admit(self: &Arc<Self>, client: ClientKey) -> Result<Permit, Refusal> {
        let total = Arc::clone(&self.total)
            .try_acquire_owned()
            .map_err(|_| Refusal::TooManySessions)?;
        let mut count = self.per_ip.entry(client).or_insert(0);
        if *count >= self.max_per_ip {
            return Err(Refusal::TooManyFromAddress);
        }
        *count += 1;
        Ok(Permit {
            limits: Arc::clone(self),
            client,
            _total: total,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Entry::Occupied(mut e) = self.limits.per_ip.entry(self.client) {
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

    /// The key of `s`, IPv6 counted per /64.
    fn key(s: &str) -> ClientKey {
        ClientKey::of(s.parse().expect("ip"), 64)
    }

    #[test]
    fn per_ip_and_total_limits_hold_and_free_on_drop() {
        let limits = Arc::new(SessionLimits::new(3, 2));
        let (a, b) = (key("192.0.2.1"), key("192.0.2.2"));
        let p1 = limits.admit(a).expect("1st");
        let _p2 = limits.admit(a).expect("2nd");
        assert!(limits.admit(a).is_err(), "per-ip limit");
        let _p3 = limits.admit(b).expect("other ip");
        assert!(limits.admit(b).is_err(), "total limit");
        drop(p1);
        assert!(limits.admit(a).is_ok());
    }

    #[test]
    fn a_mapped_address_counts_as_its_ipv4_one_and_an_ipv6_network_as_one() {
        let limits = Arc::new(SessionLimits::new(10, 1));
        let held = limits.admit(key("192.0.2.1")).expect("1st");
        assert!(
            limits.admit(key("::ffff:192.0.2.1")).is_err(),
            "the same client, mapped"
        );
        drop(held);
        let _held = limits.admit(key("::ffff:192.0.2.1")).expect("freed");
        assert!(limits.admit(key("192.0.2.1")).is_err());
        let _v6 = limits.admit(key("2001:db8:1:2::1")).expect("v6");
        assert!(limits.admit(key("2001:db8:1:2::2")).is_err(), "same /64");
        let _next = limits.admit(key("2001:db8:1:3::1")).expect("next /64");
    }
}
