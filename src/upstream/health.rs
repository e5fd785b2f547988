//! Health checks: each address of a backend with several is dialled every
//! `routing.health_interval`; one that fails is skipped by the router until a check passes.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::ftp::Reply;

use super::router::{Member, Router, Upstream};

impl Router {
    /// Starts a health check for each address of every backend that has several, every
    /// `interval`: the FTP greeting (over TLS for an implicit backend) within `limit`. The
    /// tasks end with the router.
    pub fn spawn_health_checks(&self, interval: Duration, limit: Duration) {
        for upstream in std::iter::once(&self.default).chain(&self.routes) {
            if upstream.members.len() < 2 {
                continue;
            }
            for member in &upstream.members {
                tokio::spawn(health_loop(
                    Arc::downgrade(upstream),
                    Arc::clone(member),
                    interval,
                    limit,
                ));
            }
        }
    }
}

impl Upstream {
    /// One health check: a greeting of 2xx within `limit`.
    async fn check(&self, member: &Member, limit: Duration) -> bool {
        let dialled = tokio::time::timeout(limit, self.dial(member, None, limit, limit)).await;
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
    upstream: Weak<Upstream>,
    member: Arc<Member>,
    interval: Duration,
    limit: Duration,
) {
    loop {
        let Some(u) = upstream.upgrade() else {
            return;
        };
        let healthy = u.check(&member, limit).await;
        u.mark(&member, healthy);
        drop(u);
        tokio::time::sleep(interval).await;
    }
}
