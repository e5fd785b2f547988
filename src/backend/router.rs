//! Where a session goes. A route (a named backend) is chosen, in order, by the client's SNI
//! name, by its `HOST` command (RFC 7151), by `USER name@route`, else the default backend.
//! Within a backend, one of its addresses is picked by round-robin or least connections,
//! skipping the addresses the health checks found down; a failed connect falls over to the
//! next address. All down: the session gets 421.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tracing::{info, warn};

use crate::config::{BackendSettings, Balance, HostPort, Settings, Timeouts};
use crate::ftp::Reply;
use crate::metrics::Metrics;
use crate::stream::Io;
use crate::tls::backend::BackendTls;
use crate::tls::TlsError;

use super::control::{Backend, BackendError};

/// The name the default backend goes by in logs and metrics.
pub const DEFAULT_ROUTE: &str = "default";

#[derive(Debug, Error)]
pub enum RouteError {
    #[error("no address of backend `{0}` is up")]
    AllDown(String),
    #[error("{0}")]
    Backend(#[from] BackendError),
}

/// Opens a control connection to a backend address instead of TCP: what tests use to put a
/// peer scripted in Rust on the other end of a `tokio::io::duplex`. Returns the connection and
/// the (backend, gateway) addresses it stands for: data connections still go, over TCP, to the
/// backend address's IP.
pub type Dialer =
    Arc<dyn Fn(&str) -> std::io::Result<(Box<dyn Io>, SocketAddr, SocketAddr)> + Send + Sync>;

/// All backends and the rules that choose among them. Built once at start.
pub struct Router {
    pub(super) default: Arc<Route>,
    pub(super) routes: Vec<Arc<Route>>,
    user_suffix: bool,
}

/// One backend: its settings, its TLS, and the state of each of its addresses.
pub struct Route {
    pub name: String,
    pub settings: BackendSettings,
    tls: Option<BackendTls>,
    pub(super) endpoints: Vec<Arc<Endpoint>>,
    /// Round-robin position, and the tie-break for least connections.
    next: AtomicUsize,
    /// Health checks run: an address that fails is marked down until a check passes.
    checked: bool,
    metrics: Arc<Metrics>,
    /// `None`: TCP.
    dialer: Option<Dialer>,
    /// The warning that a ProFTPD backend speaks TLS 1.3 was logged (once a route).
    warned_tls13: AtomicBool,
}

pub(super) struct Endpoint {
    address: HostPort,
    up: AtomicBool,
    sessions: AtomicUsize,
}

/// A session's hold on one address of an route (counted for least connections).
pub struct Slot {
    route: Arc<Route>,
    endpoint: Arc<Endpoint>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.endpoint.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Slot {
    pub fn route(&self) -> &Arc<Route> {
        &self.route
    }
}

impl Router {
    /// The router of `settings`; `dialer` replaces TCP toward the backends (tests).
    pub fn new(
        settings: &Settings,
        metrics: &Arc<Metrics>,
        dialer: Option<Dialer>,
    ) -> Result<Router, TlsError> {
        let checked = settings.routing.health_interval().is_some();
        let route = |name: &str, b| Route::new(name, b, checked, metrics, dialer.clone());
        let default = route(DEFAULT_ROUTE, &settings.backend)?;
        let routes = settings
            .routes
            .iter()
            .map(|(name, b)| route(name, b))
            .collect::<Result<_, _>>()?;
        Ok(Router {
            default,
            routes,
            user_suffix: settings.routing.user_suffix,
        })
    }

    /// One backend and no rules: sessions connect at once and relay the backend's greeting.
    pub fn is_static(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn default_route(&self) -> &Arc<Route> {
        &self.default
    }

    /// The route for a TLS server name, else the default.
    pub fn by_sni(&self, name: Option<&str>) -> &Arc<Route> {
        self.sni_route(name).unwrap_or(&self.default)
    }

    /// The route a TLS server name selects, if any.
    pub fn sni_route(&self, name: Option<&str>) -> Option<&Arc<Route>> {
        name.and_then(|n| find(&self.routes, |r| &r.settings.sni, n))
    }

    /// The route a `HOST` name selects, if any.
    pub fn by_host(&self, host: &str) -> Option<&Arc<Route>> {
        find(&self.routes, |r| &r.settings.hosts, host)
    }

    /// With `routing.user_suffix` on, `name@route` names a route: returns it and `name`.
    /// The last `@` counts (user names may hold one); a suffix that names no route is left
    /// alone.
    pub fn by_user<'u>(&self, user: &'u str) -> Option<(&Arc<Route>, &'u str)> {
        if !self.user_suffix {
            return None;
        }
        let (name, suffix) = user.rsplit_once('@')?;
        let route = self.routes.iter().find(|r| r.name == suffix)?;
        (!name.is_empty()).then_some((route, name))
    }
}

/// Opens a control connection to one address of a backend configured as `b`, with a PROXY
/// header if it wants one; `timeouts` = (connect, reply).
pub async fn dial(
    b: &BackendSettings,
    tls: Option<&BackendTls>,
    address: &HostPort,
    client: Option<(SocketAddr, SocketAddr)>,
    timeouts: (Duration, Duration),
    dialer: Option<&Dialer>,
) -> Result<(Backend, Vec<Reply>), BackendError> {
    let header = crate::proxy_protocol::header(b.proxy_protocol, client);
    let session = tls
        .map(|t| t.session(address))
        .transpose()
        .map_err(|e| BackendError::Handshake(std::io::Error::other(e.to_string())))?;
    let address = address.to_string();
    match dialer {
        None => {
            Backend::connect(&address, session, header.as_deref(), timeouts.0, timeouts.1).await
        }
        Some(dial) => {
            let (io, peer, local) =
                dial(&address).map_err(|e| BackendError::Connect(address.clone(), e))?;
            Backend::over(io, (peer, local), session, header.as_deref(), timeouts).await
        }
    }
}

/// The first route one of whose `names` matches `wanted`: an exact name first, then a
/// wildcard (`*.example.com`, one label, as in certificates), so `a.example.com` goes to the
/// route that names it even when another claims `*.example.com`.
fn find<'r>(
    routes: &'r [Arc<Route>],
    names: impl Fn(&Route) -> &Vec<String>,
    wanted: &str,
) -> Option<&'r Arc<Route>> {
    let claiming = |name: &str| {
        routes
            .iter()
            .find(|r| names(r).iter().any(|n| n.eq_ignore_ascii_case(name)))
    };
    claiming(wanted).or_else(|| claiming(&crate::tls::wildcard_of(wanted)?))
}

impl Route {
    fn new(
        name: &str,
        settings: &BackendSettings,
        checked: bool,
        metrics: &Arc<Metrics>,
        dialer: Option<Dialer>,
    ) -> Result<Arc<Route>, TlsError> {
        let tls = BackendTls::from_settings(settings)?;
        if settings.insecure_skip_verify && tls.is_some() {
            warn!(route = name, "insecure_skip_verify: the backend's certificate is NOT verified; anyone between the gateway and the backend can read and change the traffic");
        }
        let endpoints: Vec<Arc<Endpoint>> = settings
            .addresses
            .iter()
            .map(|address| {
                Arc::new(Endpoint {
                    address: address.clone(),
                    up: AtomicBool::new(true),
                    sessions: AtomicUsize::new(0),
                })
            })
            .collect();
        for m in &endpoints {
            metrics.backend_up(name, &m.address.to_string(), true);
        }
        Ok(Arc::new(Route {
            name: name.to_string(),
            settings: settings.clone(),
            tls,
            checked: checked && endpoints.len() > 1,
            endpoints,
            next: AtomicUsize::new(0),
            metrics: Arc::clone(metrics),
            dialer,
            warned_tls13: AtomicBool::new(false),
        }))
    }

    /// The addresses that are up, in the order to try them.
    fn candidates(&self) -> Vec<Arc<Endpoint>> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let mut order: Vec<Arc<Endpoint>> = self
            .endpoints
            .iter()
            .cycle()
            .skip(start)
            .take(n)
            .filter(|m| m.up.load(Ordering::Relaxed))
            .cloned()
            .collect();
        if self.settings.balance == Balance::LeastConnections {
            // Stable: equal loads keep the round-robin order.
            order.sort_by_key(|m| m.sessions.load(Ordering::Relaxed));
        }
        order
    }

    /// Opens a control connection to one of the addresses that are up, falling over to the
    /// next when one fails. `client` = (client address, gateway address it reached), for a
    /// PROXY header; `None` is the gateway's own probe.
    pub async fn connect(
        self: &Arc<Self>,
        client: Option<(SocketAddr, SocketAddr)>,
        t: &Timeouts,
    ) -> Result<(Backend, Vec<Reply>, Slot), RouteError> {
        let mut last = None;
        for endpoint in self.candidates() {
            endpoint.sessions.fetch_add(1, Ordering::Relaxed);
            let slot = Slot {
                route: Arc::clone(self),
                endpoint: Arc::clone(&endpoint),
            };
            match self
                .dial(&endpoint, client, t.backend_connect(), t.backend_reply())
                .await
            {
                Ok((backend, greeting)) => {
                    if backend.proftpd_on_tls13(&greeting)
                        && !self.warned_tls13.swap(true, Ordering::Relaxed)
                    {
                        warn!(route = %self.name, "the backend greets as ProFTPD and speaks TLS 1.3: it refuses a session's third data connection and every third after (425); set max_tls_version = \"1.2\" in this route's table (docs/configuration.md, \"FTPS backends\")");
                    }
                    return Ok((backend, greeting, slot));
                }
                Err(e) => {
                    let address = &endpoint.address;
                    warn!(route = %self.name, %address, error = %e, "backend address failed");
                    if self.checked {
                        self.mark(&endpoint, false);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.map_or_else(|| RouteError::AllDown(self.name.clone()), RouteError::from))
    }

    pub(super) async fn dial(
        &self,
        endpoint: &Endpoint,
        client: Option<(SocketAddr, SocketAddr)>,
        connect: Duration,
        reply: Duration,
    ) -> Result<(Backend, Vec<Reply>), BackendError> {
        let address = &endpoint.address;
        let t = (connect, reply);
        let dialer = self.dialer.as_ref();
        dial(
            &self.settings,
            self.tls.as_ref(),
            address,
            client,
            t,
            dialer,
        )
        .await
    }

    /// Records an address's health, logging each change.
    pub(super) fn mark(&self, m: &Endpoint, up: bool) {
        if m.up.swap(up, Ordering::Relaxed) != up {
            self.metrics
                .backend_up(&self.name, &m.address.to_string(), up);
            if up {
                info!(route = %self.name, address = %m.address, "backend address is up again");
            } else {
                warn!(route = %self.name, address = %m.address, "backend address is down; skipped until a health check passes");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(toml: &str) -> Router {
        let settings: Settings = toml::from_str(toml).expect("settings");
        Router::new(&settings, &Metrics::new(), None).expect("router")
    }

    const ROUTES: &str = r#"
        [backend]
        address = "127.0.0.1:21"
        [routes.sales]
        address = "127.0.0.1:2101"
        sni = ["sales.example.test"]
        [routes.any]
        address = "127.0.0.1:2104"
        sni = ["*.example.test"]
        hosts = ["ftp.sales.example.test"]
        [routes.ops]
        addresses = ["127.0.0.1:2102", "127.0.0.1:2103"]
        hosts = ["OPS.example.test"]
        [routing]
        user_suffix = true
    "#;

    #[test]
    fn rules_pick_routes_by_sni_host_and_user() {
        let r = router(ROUTES);
        assert!(!r.is_static());
        assert_eq!(r.by_sni(Some("SALES.example.test")).name, "sales");
        assert_eq!(r.by_sni(Some("other.example.test")).name, "any");
        assert_eq!(r.by_sni(Some("a.b.example.test")).name, DEFAULT_ROUTE);
        assert_eq!(r.by_sni(Some("example.test")).name, DEFAULT_ROUTE);
        assert_eq!(r.by_sni(Some("other.example.org")).name, DEFAULT_ROUTE);
        assert_eq!(r.by_sni(None).name, DEFAULT_ROUTE);
        assert_eq!(
            r.by_host("ops.example.test").map(|u| u.name.as_str()),
            Some("ops")
        );
        assert!(r.by_host("sales.example.test").is_none());
        let (u, name) = r.by_user("alice@example.com@ops").expect("route");
        assert_eq!((u.name.as_str(), name), ("ops", "alice@example.com"));
        assert!(r.by_user("alice@example.com").is_none());
        assert!(r.by_user("@ops").is_none());
    }

    #[test]
    fn user_suffix_is_off_by_default() {
        let r = router(&ROUTES.replace("user_suffix = true", ""));
        assert!(r.by_user("alice@ops").is_none());
    }

    #[test]
    fn balancing_rotates_and_prefers_the_least_loaded() {
        let r = router(ROUTES);
        let ops = r.by_host("ops.example.test").expect("ops");
        let order = |u: &Route| -> Vec<String> {
            u.candidates()
                .iter()
                .map(|m| m.address.to_string())
                .collect()
        };
        let (a, b) = ("127.0.0.1:2102", "127.0.0.1:2103");
        let firsts: Vec<String> = (0..4).map(|_| order(ops)[0].clone()).collect();
        assert_eq!(firsts, [a, b, a, b]);
        ops.endpoints[0].sessions.store(3, Ordering::Relaxed);
        let lc = router(&ROUTES.replace(
            "hosts = [\"OPS.example.test\"]",
            "hosts = [\"OPS.example.test\"]\nbalance = \"least-connections\"",
        ));
        let ops = lc.by_host("ops.example.test").expect("ops");
        ops.endpoints[0].sessions.store(3, Ordering::Relaxed);
        assert_eq!(order(ops), [b, a]);
        assert_eq!(order(ops), [b, a]);
        ops.mark(&ops.endpoints[1], false);
        assert_eq!(order(ops), [a]);
        ops.mark(&ops.endpoints[0], false);
        assert!(ops.candidates().is_empty());
    }
}
