//! The `ftpsgate` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ftpsgate::config::{Overrides, Settings};
#[cfg(feature = "demo")]
use ftpsgate::demo;
use ftpsgate::server::Gateway;
use ftpsgate::tls;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

/// FTPS reverse proxy: terminates TLS in front of a plain FTP server and answers passive mode
/// (PASV/EPSV) itself from a pooled port range, so clients behind NAT and firewalls can reach an
/// internal FTP server safely.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
    /// Log lines for people (`text`) or for collectors (`json`, one object per line). The
    /// FTPSGATE_LOG variable filters them, e.g. `debug` or `info,ftpsgate::data=debug`.
    #[arg(long, global = true, env = "FTPSGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (the default when no command is given).
    Run(RunArgs),
    /// Validate a configuration and print the effective settings; exits non-zero on error.
    Check(RunArgs),
    /// Walk the deployment checklist (backend, its passive mode, pool ports, external address,
    /// certificate, open-file limit) and print firewall rules; exits non-zero on a failure.
    Doctor {
        #[command(flatten)]
        run: RunArgs,
        /// Backend user for the passive-mode checks (they need a login); the password comes from
        /// FTPSGATE_DOCTOR_PASSWORD, so it stays out of the process list.
        #[arg(long)]
        user: Option<String>,
    },
    /// Write a self-signed ECDSA certificate and key (cert.pem, key.pem) for testing.
    Cert {
        /// Directory to write cert.pem and key.pem into.
        #[arg(long)]
        out: PathBuf,
        /// DNS name or IP address for the certificate (repeatable).
        #[arg(long = "name", default_values = ["localhost", "127.0.0.1"])]
        names: Vec<String>,
    },
    /// Start an in-process FTP server behind the gateway on loopback, check a transfer, and
    /// print how to connect with curl and lftp. Needs nothing installed.
    #[cfg(feature = "demo")]
    Demo(demo::DemoOptions),
}

/// Settings for `run`, `check` and `doctor`: the file, and the overrides on top of it (each can
/// also be set with the FTPSGATE_* environment variable shown).
#[derive(Args, Clone, Default)]
struct RunArgs {
    /// TOML configuration file (see config/ftpsgate.toml).
    #[arg(long, short, env = "FTPSGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

impl RunArgs {
    fn settings(&self) -> Result<Settings, ftpsgate::config::ConfigError> {
        Settings::load(self.config.as_deref(), &self.overrides)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FTPSGATE_LOG")
                // rustls warns on every handshake whose SNI is an IP address (lftp sends
                // one when it connects by IP): ignored by rustls as RFC 6066 says, and no
                // news to an operator, so that module speaks only of errors by default.
                .unwrap_or_else(|_| "info,libunftp=warn,rustls::msgs::handshake=error".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: in a file they are control characters, which the
        // log must not carry (client fields are escaped for the same reason).
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Text => logs.init(),
        // Span fields (session id, client, user, backend) go into every line.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            None => run(cli.run).await,
            Some(Cmd::Run(args)) => run(args).await,
            Some(Cmd::Check(args)) => check(args),
            Some(Cmd::Doctor { run, user }) => doctor(run, user).await,
            Some(Cmd::Cert { out, names }) => cert(&out, &names),
            #[cfg(feature = "demo")]
            Some(Cmd::Demo(opts)) => demo::run(opts).await.map_err(|e| e.to_string()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ftpsgate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> Result<(), String> {
    let settings = args.settings().map_err(|e| e.to_string())?;
    let gateway = Gateway::bind(settings).await.map_err(|e| e.to_string())?;
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let reload = gateway.reloader();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            reload();
        }
    });
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM received"),
            _ = interrupt.recv() => info!("SIGINT received"),
        }
    };
    gateway.serve(shutdown).await;
    Ok(())
}

fn check(args: RunArgs) -> Result<(), String> {
    let settings = args.settings().map_err(|e| e.to_string())?;
    // Load the certificates too: a config that names an unreadable key is not valid.
    tls::store::CertStore::load(&settings.tls, tls::provider()).map_err(|e| format!("tls: {e}"))?;
    let text = toml::to_string_pretty(&settings).map_err(|e| e.to_string())?;
    println!("# effective settings\n{text}");
    Ok(())
}

async fn doctor(args: RunArgs, user: Option<String>) -> Result<(), String> {
    let settings = args.settings().map_err(|e| e.to_string())?;
    let login = user.map(|user| ftpsgate::doctor::Login {
        user,
        password: std::env::var("FTPSGATE_DOCTOR_PASSWORD").unwrap_or_default(),
    });
    let checks = ftpsgate::doctor::run(&settings, login.as_ref()).await;
    for c in &checks {
        println!("{c}");
    }
    println!("\n{}", ftpsgate::doctor::firewall(&settings));
    let failed = checks
        .iter()
        .filter(|c| c.level == ftpsgate::doctor::Level::Fail)
        .count();
    match failed {
        0 => Ok(()),
        n => Err(format!("doctor: {n} check(s) failed")),
    }
}

fn cert(out: &std::path::Path, names: &[String]) -> Result<(), String> {
    let pair = tls::self_signed(names).map_err(|e| e.to_string())?;
    let (cert, key) = pair
        .write_to(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    println!(
        "wrote {} and {} for {}",
        cert.display(),
        key.display(),
        names.join(", ")
    );
    // For a gateway in front of a server that presents this certificate.
    let pin = tls::backend::fingerprint(&cert).map_err(|e| e.to_string())?;
    println!("SHA-256 {pin}\n  (to pin it toward a backend: pin_sha256 = \"{pin}\")");
    Ok(())
}
