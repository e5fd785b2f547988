//! `ftpsgate demo`: a real FTP server (libunftp, in-process, over a temporary directory) behind
//! the gateway on loopback, a self-check transfer through it with a real FTPS client (suppaftp),
//! then instructions for curl and lftp. Nothing to install first.
//!
//! The in-process backend is also what the integration tests use when no Debian FTP server is
//! wanted.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream};
use suppaftp::types::FileType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use unftp_core::auth::{AuthenticationError, Authenticator, Credentials, Principal};
use unftp_sbe_fs::Filesystem;

use crate::config::{Overrides, Settings};
use crate::server::{Gateway, StartError};
use crate::session::Mode;
use crate::tls;

pub const DEMO_USER: &str = "demo";
pub const DEMO_PASSWORD: &str = "demo";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One fixed user, so the demo shows a real login.
#[derive(Debug)]
struct OneUser {
    user: String,
    password: String,
}

#[async_trait]
impl Authenticator for OneUser {
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        if username == self.user && creds.password.as_deref() == Some(self.password.as_str()) {
            Ok(Principal {
                username: username.to_string(),
            })
        } else {
            Err(AuthenticationError::BadPassword)
        }
    }
}

/// Starts a plaintext libunftp server serving `root` on a free loopback port and returns its
/// address. It runs until the runtime stops.
pub async fn start_backend(
    root: &Path,
    user: &str,
    password: &str,
) -> Result<SocketAddr, BoxError> {
    // Fail now, with the reason, rather than inside libunftp's per-session generator.
    Filesystem::new(root)?;
    let root = root.to_path_buf();
    let auth = Arc::new(OneUser {
        user: user.into(),
        password: password.into(),
    });
    let server = libunftp::ServerBuilder::with_authenticator(
        Box::new(move || {
            #[expect(
                clippy::panic,
                reason = "libunftp's generator cannot fail; this ends one demo session's task"
            )]
            Filesystem::new(root.clone()).unwrap_or_else(|e| {
                // Checked above, so only a directory removed since, or a process out of file
                // descriptors (each session holds the root open), gets here; libunftp's
                // generator cannot return an error. This ends that one session's task.
                panic!("cannot open the demo backend's root: {e}")
            })
        }),
        auth,
    )
    .greeting("Welcome to the in-process demo FTP server")
    .passive_ports(30000..=39999)
    .build()?;
    let addr = free_loopback_addr()?;
    tokio::spawn(async move {
        if let Err(e) = server.listen(addr.to_string()).await {
            tracing::error!(error = %e, "demo backend stopped");
        }
    });
    // Wait until it accepts, so callers can connect at once.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(addr);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Err(format!("demo backend did not start on {addr}").into())
}

fn free_loopback_addr() -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    l.local_addr()
}

/// What `ftpsgate demo` takes from the command line.
#[derive(clap::Args)]
pub struct DemoOptions {
    /// Explicit FTPS listener of the demo.
    #[arg(long, default_value = "127.0.0.1:2121")]
    pub listen: SocketAddr,
    /// Implicit FTPS listener of the demo.
    #[arg(long, default_value = "127.0.0.1:2990")]
    pub implicit_listen: SocketAddr,
    /// Passive data port of the demo (or a range, LO-HI).
    #[arg(long, default_value = "50000")]
    pub passive_ports: String,
}

/// Runs the demo until Ctrl-C.
pub async fn run(opts: DemoOptions) -> Result<(), BoxError> {
    let work = tempfile::Builder::new()
        .prefix("ftpsgate-demo-")
        .tempdir()?;
    let root = work.path().join("files");
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("hello.txt"), "Hello through ftpsgate!\n")?;
    let backend = start_backend(&root, DEMO_USER, DEMO_PASSWORD).await?;

    // It lives as long as the demo at most, as the in-memory one of `run` does.
    let pair = tls::self_signed_for(
        &["localhost".into(), "127.0.0.1".into()],
        tls::GENERATED_DAYS,
    )?;
    let (cert, key) = pair.write_to(&work.path().join("certs"))?;
    let overrides = Overrides {
        listen: vec![opts.listen],
        implicit_listen: vec![opts.implicit_listen],
        backend: Some(backend.into()),
        passive_ports: Some(opts.passive_ports.parse()?),
        cert: Some(cert.clone()),
        key: Some(key),
        ..Default::default()
    };
    let settings = Settings::load(None, &overrides)?;
    let gateway = Gateway::bind(settings).await.map_err(|e| match e {
        StartError::Bind { .. } => format!(
            "{e}; the demo's ports are chosen with --listen, --implicit-listen and \
             --passive-ports (see `ftpsgate demo --help`)"
        )
        .into(),
        e => BoxError::from(e),
    })?;
    let explicit = first(&gateway, Mode::Explicit)?;
    let implicit = first(&gateway, Mode::Implicit)?;
    tokio::spawn(gateway.serve(std::future::pending()));

    let bytes = self_check(explicit, &cert).await?;
    println!();
    println!("ftpsgate demo is up.");
    println!("  self-check: uploaded and downloaded {bytes} bytes through the gateway over FTPS: identical");
    println!(
        "  backend:    in-process FTP server on {backend} serving {}",
        root.display()
    );
    println!("  explicit:   ftp://{explicit}  (AUTH TLS)");
    println!("  implicit:   ftps://{implicit}");
    println!("  user:       {DEMO_USER} / password {DEMO_PASSWORD}");
    println!("  CA:         {}", cert.display());
    println!();
    println!("Try:");
    println!(
        "  curl --ssl-reqd --cacert {} ftp://{DEMO_USER}:{DEMO_PASSWORD}@{explicit}/hello.txt",
        cert.display()
    );
    println!(
        "  curl --cacert {} ftps://{DEMO_USER}:{DEMO_PASSWORD}@{implicit}/",
        cert.display()
    );
    println!(
        "  lftp -e 'set ssl:ca-file {}; set ftp:ssl-force true; ls; bye' -u {DEMO_USER},{DEMO_PASSWORD} -p {} {}",
        cert.display(),
        explicit.port(),
        explicit.ip()
    );
    println!();
    println!("Ctrl-C stops the demo and removes its files.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn first(gateway: &Gateway, mode: Mode) -> Result<SocketAddr, BoxError> {
    gateway
        .local_addrs(mode)
        .first()
        .copied()
        .ok_or_else(|| "listener missing".into())
}

/// Uploads a pattern through the gateway, downloads it again and compares.
pub async fn self_check(gateway: SocketAddr, ca: &Path) -> Result<usize, BoxError> {
    let mut ftp = connect(gateway, ca).await?;
    ftp.login(DEMO_USER, DEMO_PASSWORD).await?;
    ftp.transfer_type(FileType::Binary).await?;
    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut up = ftp.put_with_stream("selfcheck.bin").await?;
    up.write_all(&data).await?;
    up.finish().await?;
    let mut down = ftp.retr_as_stream("selfcheck.bin").await?;
    let mut back = Vec::new();
    down.read_to_end(&mut back).await?;
    down.finish().await?;
    ftp.rm("selfcheck.bin").await?;
    ftp.quit().await?;
    if back != data {
        return Err(format!(
            "self-check failed: sent {} bytes, got {} back",
            data.len(),
            back.len()
        )
        .into());
    }
    Ok(data.len())
}

/// An explicit-FTPS suppaftp client trusting `ca`.
pub async fn connect(gateway: SocketAddr, ca: &Path) -> Result<AsyncRustlsFtpStream, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(Arc::new(config)));
    let ftp = AsyncRustlsFtpStream::connect(gateway).await?;
    Ok(ftp.into_secure(connector, "localhost").await?)
}
