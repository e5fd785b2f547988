//! CPU per full TLS handshake over many sessions from one client address: the gateway's first
//! and last windows of the run, beside HAProxy terminating TLS with the same certificate in the
//! same run. What a session costs must not grow with the sessions before it (the TLS binding's
//! registry keeps every session from an address for its grace period: docs/ARCHITECTURE.md,
//! "The TLS binding"), and the gateway's memory goes back once that grace is over.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use support::control::BoxError;
use support::net::free_port;
use support::process::have;

use crate::figures::cpu_secs;
use crate::rig::Gateway;
use crate::Report;

/// How many handshakes, and how many at the start and the end are measured.
pub(crate) struct Sizes {
    pub total: usize,
    pub window: usize,
    /// Wait out the binding's grace (and a sweep) and read the gateway's memory again.
    pub wait_grace: bool,
}

/// Clients at once: enough to keep both of the gateway's threads busy.
const CONCURRENCY: usize = 8;

/// A client that makes full handshakes only: TLS 1.3, X25519 (what HAProxy's OpenSSL offers
/// too, so both servers do the same work), no session resumption.
fn fresh_handshakes(ca: &[CertificateDer<'static>]) -> Result<TlsConnector, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c.clone())?;
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `n` handshakes with `addr`, [`CONCURRENCY`] at a time, each connection closed once its
/// handshake is done.
async fn handshakes(tls: &TlsConnector, addr: SocketAddr, n: usize) -> Result<(), BoxError> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (tls, next) = (tls.clone(), Arc::clone(&next));
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let tcp = TcpStream::connect(addr).await?;
                let name = ServerName::from(addr.ip());
                let handshake = tls.connect(name, tcp);
                tokio::time::timeout(Duration::from_secs(10), handshake).await??;
            }
            Ok::<(), BoxError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// CPU milliseconds per handshake that `pid` spends over `n` handshakes with `addr`.
async fn cpu_per_handshake(
    tls: &TlsConnector,
    addr: SocketAddr,
    pid: u32,
    n: usize,
) -> Result<f64, BoxError> {
    let before = cpu_secs(pid, false).ok_or("no CPU figure")?;
    handshakes(tls, addr, n).await?;
    let after = cpu_secs(pid, false).ok_or("no CPU figure")?;
    Ok((after - before) * 1000.0 / n as f64)
}

/// HAProxy terminating TLS (TCP mode) on `port` with `cert` and `key`, to a backend with no
/// servers: the handshake and nothing else, as the gateway's greeting costs next to nothing.
struct Haproxy(Child);

impl Haproxy {
    fn start(dir: &Path, cert: &Path, key: &Path, port: u16) -> Result<Haproxy, BoxError> {
        let pem = dir.join("haproxy.pem");
        let both = [std::fs::read(cert)?, std::fs::read(key)?].concat();
        std::fs::write(&pem, both)?;
        let cfg = dir.join("haproxy-handshakes.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 4000\n  ssl-default-bind-options ssl-min-ver TLSv1.3\n\
                 defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 frontend tls\n  bind 127.0.0.1:{port} ssl crt {}\n  default_backend none\n\
                 backend none\n",
                pem.display()
            ),
        )?;
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let haproxy = Haproxy(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > end {
                return Err("haproxy did not listen".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(haproxy)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The handshake rows: the gateway's first and last windows, HAProxy's, and the gateway's
/// memory before, after and (with `wait_grace`) once the binding's grace is over.
pub(crate) async fn measure(
    sizes: &Sizes,
    backend: SocketAddr,
    (cert, key, ca): (&Path, &Path, &[CertificateDer<'static>]),
    report: &mut Report,
) -> Result<(), BoxError> {
    let tls = fresh_handshakes(ca)?;
    let implicit = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let flags = ["--implicit-listen".to_string(), implicit.to_string()];
    let gateway = Gateway::start(backend, cert, key, &flags);
    let pid = gateway.child.id();
    // One handshake first, so the baseline has the runtime and the TLS config warmed.
    handshakes(&tls, implicit, CONCURRENCY).await?;
    let rss_before = gateway.rss_kib();
    let (window, total) = (sizes.window, sizes.total);
    let first = cpu_per_handshake(&tls, implicit, pid, window).await?;
    handshakes(&tls, implicit, total.saturating_sub(2 * window)).await?;
    let last = cpu_per_handshake(&tls, implicit, pid, window).await?;
    let rss_after = gateway.rss_kib();
    let done = Instant::now();
    report.figure("handshake_cpu_first", first * 1000.0, "us");
    report.figure("handshake_cpu_last", last * 1000.0, "us");
    let mut row = format!(
        "{first:.3} ms first {window}, {last:.3} ms last {window} ({:+.0} %)",
        (last / first - 1.0) * 100.0
    );
    if have("haproxy") {
        let dir = cert.parent().ok_or("certificate directory")?;
        let port = free_port();
        let haproxy = Haproxy::start(dir, cert, key, port)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        handshakes(&tls, addr, CONCURRENCY).await?;
        let theirs = cpu_per_handshake(&tls, addr, haproxy.0.id(), window).await?;
        report.figure("handshake_cpu_haproxy", theirs * 1000.0, "us");
        row += &format!(
            "; HAProxy {theirs:.3} ms ({:.2} x HAProxy's, last window)",
            last / theirs
        );
    } else {
        row += "; HAProxy: skipped, not installed (see .ci/run)";
    }
    report.row(
        &format!("gateway CPU per full TLS 1.3 handshake, {total} sessions from one address"),
        row,
    );
    let mut memory = format!("RSS {rss_before} KiB before, {rss_after} KiB after");
    if sizes.wait_grace {
        // The grace, then a sweep (every 30 s), then a little more.
        let wait = ftpsgate::tls::binding::GRACE + ftpsgate::tls::binding::SWEEP_EVERY;
        tokio::time::sleep((wait + Duration::from_secs(5)).saturating_sub(done.elapsed())).await;
        let rss_later = gateway.rss_kib();
        report.figure("handshake_rss_after_grace", rss_later as f64, "KiB");
        memory += &format!(", {rss_later} KiB once the grace is over");
    }
    report.row(
        &format!("gateway memory around {total} sessions from one address"),
        memory,
    );
    Ok(())
}
