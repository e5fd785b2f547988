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
    /// Walk what an FTPS client does against any server (ftpsgate or not) and say what fails
    /// and how to fix it: connect, TLS, login, PROT P, PASV and EPSV (does the 227 name the
    /// address reached? does its port work there?), TLS reuse, a listing and a small download,
    /// active mode with --active. The password comes from FTPSGATE_PROBE_PASSWORD or a prompt.
    /// Exits non-zero on any failure.
    Probe(ProbeArgs),
    /// Write a self-signed ECDSA certificate and key (cert.pem, key.pem) for testing.
    Cert {
        /// Directory to write cert.pem and key.pem into.
        #[arg(long)]
        out: PathBuf,
        /// DNS name or IP address for the certificate (repeatable).
        #[arg(long = "name", default_values = ["localhost", "127.0.0.1"])]
        names: Vec<String>,
        /// Days it stays valid (at most 3650; public CAs issue 397 at most).
        #[arg(long, default_value_t = tls::CERT_DAYS, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
    /// Start an in-process FTP server behind the gateway on loopback, check a transfer, and
    /// print how to connect with curl and lftp. Needs nothing installed.
    #[cfg(feature = "demo")]
    Demo(demo::DemoOptions),
}

#[derive(Args)]
struct ProbeArgs {
    /// ftp://USER@HOST[:PORT]/ (explicit FTPS, port 21) or ftps://USER@HOST[:PORT]/ (implicit,
    /// port 990).
    url: String,
    /// Accept any certificate (still reported, marked as not verified).
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
    /// PEM file of the CA that signed the server's certificate (added to the system's roots).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Also check active mode: can the server connect back to this machine?
    #[arg(long)]
    active: bool,
    /// Seconds each step may wait (a connection, a reply, a handshake).
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// One JSON object (target, ok, checks, fixes) instead of the text report.
    #[arg(long)]
    json: bool,
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
            Some(Cmd::Probe(args)) => probe(args).await,
            Some(Cmd::Cert { out, names, days }) => cert(&out, &names, days),
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
    let login = user.map(|user| ftpsgate::doctor::Credentials {
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

async fn probe(args: ProbeArgs) -> Result<(), String> {
    use ftpsgate::probe::{self, Options, Report, Target};
    let target = Target::parse(&args.url)?;
    // Never from the command line, where every user of the machine can read it.
    let password = match std::env::var("FTPSGATE_PROBE_PASSWORD") {
        Ok(p) => p,
        Err(_) if std::io::stdin().is_terminal() => {
            rpassword::prompt_password(format!("password for {}: ", target.user))
                .map_err(|e| format!("reading the password: {e}"))?
        }
        Err(_) => return Err("set FTPSGATE_PROBE_PASSWORD (no terminal to prompt on)".into()),
    };
    let opts = Options {
        target,
        password,
        ca: args.ca,
        insecure: args.insecure,
        active: args.active,
        timeout: std::time::Duration::from_secs(args.timeout.max(1)),
    };
    let checks = probe::run(&opts).await;
    let report = Report::new(&opts.target, &checks);
    if args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        println!("{json}");
    } else {
        println!("probe {}", opts.target);
        for c in &checks {
            println!("{c}");
        }
        let failed = checks
            .iter()
            .filter(|c| c.level == ftpsgate::doctor::Level::Fail)
            .count();
        let warned = checks
            .iter()
            .filter(|c| c.level == ftpsgate::doctor::Level::Warn)
            .count();
        println!("\nsummary: {failed} failed, {warned} warned");
        for (i, fix) in report.fixes.iter().enumerate() {
            println!("  {}. {fix}", i + 1);
        }
    }
    if report.ok {
        Ok(())
    } else {
        Err("probe: a step failed".into())
    }
}

fn cert(out: &std::path::Path, names: &[String], days: u32) -> Result<(), String> {
    let pair = tls::self_signed_for(names, days).map_err(|e| e.to_string())?;
    let (cert, key) = pair
        .write_to(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    println!(
        "wrote {} and {} for {}, valid for {days} days",
        cert.display(),
        key.display(),
        names.join(", ")
    );
    // For a gateway in front of a server that presents this certificate.
    let pin = tls::backend::fingerprint(&cert).map_err(|e| e.to_string())?;
    println!("SHA-256 {pin}\n  (to pin it toward a backend: pin_sha256 = \"{pin}\")");
    Ok(())
}
