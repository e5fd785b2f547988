//! Health checks: each address of a backend with several is dialled every
//! `routing.health_interval`; one that fails is skipped by the router until a check passes.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::ftp::Reply;

use super::router::{Endpoint, Route, Router};

impl Router {
    /// Starts a health check for each address of every backend that has several, every
    /// `interval`: the FTP greeting (over TLS for an implicit backend) within `limit`. The
    /// tasks end with the router.
    pub fn spawn_health_checks(&self, interval: Duration, limit: Duration) {
        for route in std::iter::once(&self.default).chain(&self.routes) {
            if route.endpoints.len() < 2 {
                continue;
            }
            for endpoint in &route.endpoints {
                tokio::spawn(health_loop(
                    Arc::downgrade(route),
                    Arc::clone(endpoint),
                    interval,
                    limit,
                ));
            }
        }
    }
}

impl Route {
    /// One health check: a greeting of 2xx within `limit`.
    async fn check(&self, endpoint: &Endpoint, limit: Duration) -> bool {
        let dialled = tokio::time::timeout(limit, self.dial(endpoint, None, limit, limit)).await;
        match dialled {
            Ok(Ok((mut backend, greeting))) => {
                let _ = backend.send(b"QUIT\r\n").await;
                greeting.last().is_some_and(Reply::is_success)
            }
            _ => false,
        }
    }
}

async fn health_loop(
    route: Weak<Route>,
    endpoint: Arc<Endpoint>,
    interval: Duration,
    limit: Duration,
) {
    loop {
        let Some(u) = route.upgrade() else {
            return;
        };
        let healthy = u.check(&endpoint, limit).await;
        u.mark(&endpoint, healthy);
        drop(u);
        tokio::time::sleep(interval).await;
    }
}
