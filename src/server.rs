//! Listeners, accept loops and session limits.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, info_span, warn, Instrument};

use crate::config::Settings;
use crate::data::PassivePool;
use crate::session::{self, Context, Mode};
use crate::tls::backend::BackendTls;
use crate::tls::{self, TlsError};

#[derive(Debug, Error)]
pub enum StartError {
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("passive.external_address: {0}")]
    External(String),
}

/// A gateway with its listeners bound, ready to serve.
pub struct Gateway {
    ctx: Arc<Context>,
    listeners: Vec<(TcpListener, Mode)>,
    limits: Arc<SessionLimits>,
}

impl Gateway {
    /// Loads the certificate (or generates one, with a warning), binds every listener.
    pub async fn bind(settings: Settings) -> Result<Gateway, StartError> {
        let (identity, generated) = tls::identity_for(&settings.tls)?;
        if generated {
            warn!("no tls.cert/tls.key configured: using a generated self-signed certificate; clients will not trust it");
        }
        let tls = tls::server_config(identity, &settings.tls)?;
        let external_ip = settings.external_ip().map_err(StartError::External)?;
        let backend_tls = BackendTls::from_settings(&settings.backend)?;
        if settings.backend.insecure_skip_verify && backend_tls.is_some() {
            warn!("backend.insecure_skip_verify: the backend's certificate is NOT verified; anyone between the gateway and the backend can read and change the traffic");
        }
        let mut listeners = Vec::new();
        for (addrs, mode) in [
            (&settings.listen.explicit, Mode::Explicit),
            (&settings.listen.implicit, Mode::Implicit),
        ] {
            for &addr in addrs {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?;
                listeners.push((l, mode));
            }
        }
        let limits = Arc::new(SessionLimits::new(
            settings.limits.max_sessions,
            settings.limits.max_sessions_per_ip,
        ));
        let pool = PassivePool::new(settings.passive.ports.0.clone());
        Ok(Gateway {
            ctx: Arc::new(Context {
                settings,
                tls,
                pool,
                external_ip,
                backend_tls,
            }),
            listeners,
            limits,
        })
    }

    /// The bound addresses of the listeners of one mode (useful with port 0).
    pub fn local_addrs(&self, mode: Mode) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter(|(_, m)| *m == mode)
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Accepts and serves sessions until the task is dropped.
    pub async fn serve(self) {
        let mut tasks = tokio::task::JoinSet::new();
        for (listener, mode) in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                info!(%addr, ?mode, "listening");
            }
            tasks.spawn(accept_loop(
                listener,
                mode,
                Arc::clone(&self.ctx),
                Arc::clone(&self.limits),
            ));
        }
        while tasks.join_next().await.is_some() {}
    }
}

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

async fn accept_loop(
    listener: TcpListener,
    mode: Mode,
    ctx: Arc<Context>,
    limits: Arc<SessionLimits>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("session", id, client = %peer);
        match limits.admit(peer.ip()) {
            Ok(permit) => {
                let ctx = Arc::clone(&ctx);
                tokio::spawn(
                    async move {
                        session::serve(ctx, tcp, mode).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Err(why) => {
                let _enter = span.enter();
                info!(reason = why, "connection refused");
                tokio::spawn(refuse(tcp, mode, why));
            }
        }
    }
}

/// Tells a refused explicit-mode client why (`421`); an implicit-mode client only gets a close,
/// since a reply would need a TLS handshake the gateway will not spend on it.
async fn refuse(mut tcp: TcpStream, mode: Mode, why: &'static str) {
    if mode == Mode::Explicit {
        let line = format!("421 {why}; try again later.\r\n");
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(line.as_bytes())).await;
    }
}

/// Session counts, in total and per client address.
struct SessionLimits {
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
    max_total: usize,
    max_per_ip: usize,
}

/// A session slot; dropping it frees the slot.
struct Permit {
    limits: Arc<SessionLimits>,
    ip: IpAddr,
}

impl SessionLimits {
    fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            total: AtomicUsize::new(0),
            per_ip: DashMap::new(),
            max_total,
            max_per_ip,
        }
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, &'static str> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err("Too many sessions");
        }
        let mut count = self.per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            drop(count);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err("Too many sessions from your address");
        }
        *count += 1;
        Ok(Permit {
            limits: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
        if let Entry::Occupied(mut e) = self.limits.per_ip.entry(self.ip) {
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

    #[test]
    fn per_ip_and_total_limits_hold_and_free_on_drop() {
        let limits = Arc::new(SessionLimits::new(3, 2));
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let p1 = limits.admit(a).expect("1st");
        let _p2 = limits.admit(a).expect("2nd");
        assert!(limits.admit(a).is_err(), "per-ip limit");
        let _p3 = limits.admit(b).expect("other ip");
        assert!(limits.admit(b).is_err(), "total limit");
        drop(p1);
        assert!(limits.admit(a).is_ok());
    }
}
