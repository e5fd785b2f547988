//! One data port for every transfer (issue 30): a gateway whose passive range is a single port
//! against one with 100 ports, ProFTPD mod_proxy and direct FTPS to vsftpd, in one run so the
//! ratios hold. Three rows: the small-file rate (one session, many RETRs of 1 KiB), eight
//! downloads at once from one address, and sessions from many loopback source addresses
//! (127.0.0.2 on) at once, 1 MiB each. Every download is checked against its SHA-256, and each
//! row prints the single-port gateway's time over the 100-port one's, the median of the
//! rounds' ratios (the target: within 5 %); the two gateways run back to back in every round.
//!
//! Its own small FTPS client: a session's control and data connections come from an address
//! it chooses, which the tests' transfer client cannot do. Every step of it is bounded.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::admin::http_get;
use support::control::{epsv_port, loopback, BoxError, Control};
use support::files::sha256;
use support::net::{free_low_range, free_port};
use support::transfer::{Io, Target};
use support::USER;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

use crate::figures::stats;
use crate::rig::{target, Gateway, Rig};
use crate::{Plan, Report};

/// How much the part does.
pub(crate) struct Sizes {
    /// RETRs of 1 KiB files in the small-file row (as many files, each its own).
    pub small_files: usize,
    /// The size of each of the eight downloads at once.
    pub at_once_bytes: usize,
    /// Sessions from as many source addresses at once (at most 100: 127.0.0.2-127.0.0.101).
    pub sources: u8,
    /// Rounds of every row; each figure is their median.
    pub rounds: usize,
}

/// What one step (a login, a download, QUIT) may take before the run fails.
const STEP_LIMIT: Duration = Duration::from_secs(60);
/// Where the fixtures live on both vsftpd roots.
const DIR: &str = "ports";
const AT_ONCE: usize = 8;
/// Each source address's download.
const SOURCE_BYTES: usize = 1 << 20;
const DATA_BUF: usize = 256 * 1024;
/// Sessions logging in at once. vsftpd listens with a backlog of 32 (a constant of its
/// source), and a connection dropped from its full accept queue hangs unseen: the client's
/// side is established and waits for a greeting that never comes (FTP's server speaks
/// first). 100 logins at once did that to direct FTPS and to ftpsgate's backend connections
/// alike; 16 stay well under it.
const LOGINS_AT_ONCE: usize = 16;

/// The rows, for every target in turn, each round; then the figures and the ratios.
pub(crate) async fn measure(plan: &Plan, rig: &Rig, report: &mut Report) -> Result<(), BoxError> {
    let sizes = &plan.ports;
    let fixtures = Fixtures::write(sizes, &[rig.plain.root.as_path(), rig.ftps.root.as_path()])?;
    // Ports below the ephemeral range, so no outgoing connection takes them meanwhile; the
    // single port outside the 100.
    let hundred = free_low_range(100);
    let single = loop {
        let p = free_port();
        if !(hundred..hundred + 100).contains(&p) {
            break p;
        }
    };
    // Each with its admin listener: how long PASV/EPSV waited for a port, per row.
    let admin = || SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let (admin_single, admin_hundred) = (admin(), admin());
    let gateway = |pool, admin: SocketAddr| {
        let flags = ["--admin-listen".to_string(), admin.to_string()];
        Gateway::with_pool(rig.plain.addr, &rig.cert, &rig.key, pool, &flags)
    };
    let gw_single = gateway((single, 1), admin_single);
    let gw_hundred = gateway((hundred, 100), admin_hundred);
    let admins = [
        ("ftpsgate_1_port", admin_single),
        ("ftpsgate_100_ports", admin_hundred),
    ];
    let mut targets = vec![
        ("ftpsgate_1_port", target(gw_single.addr, Some(&rig.gw_ca))?),
        (
            "ftpsgate_100_ports",
            target(gw_hundred.addr, Some(&rig.gw_ca))?,
        ),
    ];
    if let Some(mp) = &rig.mod_proxy {
        targets.push(("mod_proxy", mp.via_plain.clone()));
    }
    targets.push(("direct_ftps", rig.direct_ftps.clone()));

    let mib = |bytes: usize| bytes as f64 / 1048576.0;
    let rows = [
        Row {
            kind: Kind::SmallFiles,
            key: "small_files",
            label: format!("{} RETR of 1 KiB in one session", sizes.small_files),
            unit: "files/s",
            higher_is_better: true,
        },
        Row {
            kind: Kind::AtOnce,
            key: "8_at_once",
            label: format!(
                "{AT_ONCE} downloads of {:.0} MiB at once from one address",
                mib(sizes.at_once_bytes)
            ),
            unit: "MiB/s",
            higher_is_better: true,
        },
        Row {
            kind: Kind::Sources,
            key: "sources",
            label: format!(
                "{n} sessions from {n} addresses at once, 1 MiB each, wall time",
                n = sizes.sources
            ),
            unit: "ms",
            higher_is_better: false,
        },
    ];
    for row in &rows {
        let mut waits_before = Vec::new();
        for (_, admin) in admins {
            waits_before.push(Waits::scrape(admin).await?);
        }
        let mut samples: HashMap<&str, Vec<f64>> = HashMap::new();
        let mut failures: HashMap<&str, (usize, String)> = HashMap::new();
        // The single port's time over the 100 ports', per round: the two gateways run back to
        // back, first one then the other, so the machine's drift mostly cancels.
        let mut ratios = Vec::new();
        for round in 0..sizes.rounds {
            let mut order = targets.clone();
            if round % 2 == 1 {
                order.swap(0, 1);
            }
            let mut this_round = HashMap::new();
            for (name, t) in &order {
                let result = match row.kind {
                    Kind::SmallFiles => small_files(t, &fixtures).await,
                    Kind::AtOnce => at_once(t, &fixtures, sizes.at_once_bytes).await,
                    Kind::Sources => sources(t, &fixtures, sizes.sources).await,
                };
                match result {
                    Ok(v) => {
                        samples.entry(*name).or_default().push(v);
                        this_round.insert(*name, v);
                    }
                    // The peer's failures are results; ftpsgate's (or vsftpd's) are bugs.
                    Err(e) if name.starts_with("mod_proxy") => {
                        let f = failures.entry(*name).or_insert((0, e.to_string()));
                        f.0 += 1;
                    }
                    Err(e) => return Err(format!("{} {name}: {e}", row.key).into()),
                }
            }
            if let (Some(one), Some(all)) = (
                this_round.get("ftpsgate_1_port"),
                this_round.get("ftpsgate_100_ports"),
            ) {
                ratios.push(if row.higher_is_better {
                    all / one
                } else {
                    one / all
                });
            }
        }
        for (name, _) in &targets {
            let label = format!("{}, {}", row.label, name.replace('_', " "));
            let failed = failures.get(name).map_or(String::new(), |(n, e)| {
                format!("; {n} of {} rounds failed: {}", sizes.rounds, e.trim())
            });
            let Some(v) = samples.remove(name) else {
                report.row(&label, format!("no round completed{failed}"));
                continue;
            };
            let (med, min, max) = stats(v);
            report.figure(&format!("ports_{}_{name}", row.key), med, row.unit);
            report.row(
                &label,
                format!("{med:.0} {} (min {min:.0}, max {max:.0}){failed}", row.unit),
            );
        }
        for ((name, admin), before) in admins.into_iter().zip(waits_before) {
            let w = Waits::scrape(admin).await?.since(&before);
            let mean_ms = if w.leases > 0.0 {
                w.secs / w.leases * 1000.0
            } else {
                0.0
            };
            report.row(
                &format!("{}, {}: passive leases", row.label, name.replace('_', " ")),
                format!(
                    "{:.0}, waited {mean_ms:.2} ms on average, {:.0} over 1.6 ms; {:.0} \
                     connections from an address with no lease",
                    w.leases, w.long, w.unclaimed
                ),
            );
        }
        if !ratios.is_empty() {
            // As time taken: over 1 when the single port does worse, whichever way the unit
            // runs.
            let (med, min, max) = stats(ratios);
            report.figure(&format!("ports_{}_ratio", row.key), med * 100.0, "%");
            report.row(
                &format!(
                    "{}: time, 1 port / 100 ports, median of the rounds' (target 0.95-1.05)",
                    row.label
                ),
                format!(
                    "{med:.3} (min {min:.3}, max {max:.3}){}",
                    if (0.95..=1.05).contains(&med) {
                        ""
                    } else {
                        ", outside the target"
                    }
                ),
            );
        }
    }
    Ok(())
}

/// What a row measures.
#[derive(Clone, Copy)]
enum Kind {
    SmallFiles,
    AtOnce,
    Sources,
}

/// One row of the part: what it measures, what it is called and how its figure reads.
struct Row {
    kind: Kind,
    key: &'static str,
    label: String,
    unit: &'static str,
    higher_is_better: bool,
}

/// A gateway's passive-port counters, from its /metrics.
struct Waits {
    /// Leases given (each PASV/EPSV's wait is observed), the seconds they waited in all, how
    /// many waited over 1.6 ms (for another transfer's data connection), and connections
    /// from an address with no lease pending, closed.
    leases: f64,
    secs: f64,
    long: f64,
    unclaimed: f64,
}

impl Waits {
    async fn scrape(admin: SocketAddr) -> Result<Waits, BoxError> {
        let (code, body) = tokio::task::spawn_blocking(move || http_get(admin, "/metrics")).await?;
        if code != 200 {
            return Err(format!("/metrics: {code}").into());
        }
        let value = |name: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        let leases = value("ftpsgate_passive_wait_seconds_count");
        Ok(Waits {
            leases,
            secs: value("ftpsgate_passive_wait_seconds_sum"),
            long: leases - value("ftpsgate_passive_wait_seconds_bucket{le=\"0.0016\"}"),
            unclaimed: value("ftpsgate_passive_unclaimed_connections_total"),
        })
    }

    fn since(&self, before: &Waits) -> Waits {
        Waits {
            leases: self.leases - before.leases,
            secs: self.secs - before.secs,
            long: self.long - before.long,
            unclaimed: self.unclaimed - before.unclaimed,
        }
    }
}

/// The files the rows download, the same bytes on both vsftpd roots: each its path and its
/// SHA-256.
struct Fixtures {
    small: Vec<(String, String)>,
    at_once: (String, String),
    source: (String, String),
}

impl Fixtures {
    fn write(sizes: &Sizes, roots: &[&Path]) -> Result<Fixtures, BoxError> {
        let make = |name: String, size: usize, seed: u64| -> Result<_, BoxError> {
            let mut data = vec![0u8; size];
            fastrand::Rng::with_seed(seed).fill(&mut data);
            for root in roots {
                std::fs::create_dir_all(root.join(DIR))?;
                std::fs::write(root.join(DIR).join(&name), &data)?;
            }
            Ok((format!("{DIR}/{name}"), sha256(&data)))
        };
        let small = (0..sizes.small_files)
            .map(|i| make(format!("small-{i:04}.bin"), 1024, i as u64))
            .collect::<Result<_, _>>()?;
        let at_once = make("at-once.bin".into(), sizes.at_once_bytes, 1 << 32)?;
        let source = make("source.bin".into(), SOURCE_BYTES, 1 << 33)?;
        for root in roots {
            let _ = Command::new("chown")
                .arg("-R")
                .arg(USER)
                .arg(root.join(DIR))
                .status();
        }
        Ok(Fixtures {
            small,
            at_once,
            source,
        })
    }
}

/// The small-file rate: one session from 127.0.0.1, every small file once; files per second.
async fn small_files(t: &Target, fixtures: &Fixtures) -> Result<f64, BoxError> {
    let mut s = Client::open(t, Ipv4Addr::LOCALHOST.into()).await?;
    let began = Instant::now();
    for (name, hash) in &fixtures.small {
        s.retr_checked(name, hash).await?;
    }
    let rate = fixtures.small.len() as f64 / began.elapsed().as_secs_f64();
    s.quit().await?;
    Ok(rate)
}

/// Eight sessions from 127.0.0.1 at once, each downloading the same file: MiB/s in all, from
/// the first connect to the last QUIT.
async fn at_once(t: &Target, fixtures: &Fixtures, bytes: usize) -> Result<f64, BoxError> {
    let sources = vec![IpAddr::from(Ipv4Addr::LOCALHOST); AT_ONCE];
    let secs = all_at_once(t, &fixtures.at_once, sources).await?;
    Ok((AT_ONCE * bytes) as f64 / 1048576.0 / secs)
}

/// `n` sessions at once, each from an address of its own (127.0.0.2 on), each downloading
/// 1 MiB: the wall time in ms, from the first connect to the last QUIT.
async fn sources(t: &Target, fixtures: &Fixtures, n: u8) -> Result<f64, BoxError> {
    let sources = (0..n.min(100))
        .map(|i| IpAddr::from(Ipv4Addr::new(127, 0, 0, 2 + i)))
        .collect();
    Ok(all_at_once(t, &fixtures.source, sources).await? * 1000.0)
}

/// One session per source, all at once, each downloading `file` (hash checked); the seconds
/// from the first connect to the last QUIT. At most [`LOGINS_AT_ONCE`] of them log in at a
/// time; their transfers overlap freely.
async fn all_at_once(
    t: &Target,
    (name, hash): &(String, String),
    sources: Vec<IpAddr>,
) -> Result<f64, BoxError> {
    let logins = Arc::new(Semaphore::new(LOGINS_AT_ONCE));
    let began = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for source in sources {
        let (t, name, hash) = (t.clone(), name.clone(), hash.clone());
        let logins = Arc::clone(&logins);
        tasks.spawn(async move {
            let login = logins.acquire_owned().await?;
            let mut s = Client::open(&t, source).await?;
            drop(login);
            s.retr_checked(&name, &hash).await?;
            s.quit().await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(began.elapsed().as_secs_f64())
}

/// `step`, or an error once it has taken [`STEP_LIMIT`].
async fn bounded<T>(
    what: &str,
    step: impl Future<Output = Result<T, BoxError>>,
) -> Result<T, BoxError> {
    tokio::time::timeout(STEP_LIMIT, step)
        .await
        .map_err(|_| format!("{what}: no end within {STEP_LIMIT:?}"))?
}

/// A TCP connection to `to` from `source` (any port).
async fn connect(source: IpAddr, to: SocketAddr) -> Result<TcpStream, BoxError> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(to).await?;
    // As curl does: no Nagle, so a TLS handshake's last flight never waits for a delayed ACK.
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// An explicit FTPS session (PROT P, EPSV) whose connections all come from one address.
struct Client {
    control: Control<Box<dyn Io>>,
    tls: TlsConnector,
    source: IpAddr,
    server: IpAddr,
}

impl Client {
    /// Connects from `source`, secures the session and logs in.
    async fn open(t: &Target, source: IpAddr) -> Result<Client, BoxError> {
        // A session store of its own: one shared by concurrent sessions would offer one's
        // ticket on another's data connection, which vsftpd and ftpsgate rightly refuse.
        let mut config = (**t.tls.as_ref().ok_or("FTPS targets only")?).clone();
        config.resumption = rustls::client::Resumption::in_memory_sessions(8);
        let tls = TlsConnector::from(Arc::new(config));
        bounded("login", async {
            let mut plain = Control::new(connect(source, t.addr).await?).with_limit(STEP_LIMIT);
            plain.expect_reply(220).await?;
            let secured = plain.auth_tls(&tls, loopback()).await?.into_inner();
            let mut control = Control::new(Box::new(secured) as Box<dyn Io>).with_limit(STEP_LIMIT);
            for (line, want) in [
                (format!("USER {}", t.user), 331),
                (format!("PASS {}", t.password), 230),
                ("PBSZ 0".into(), 200),
                ("PROT P".into(), 200),
                ("TYPE I".into(), 200),
            ] {
                control.expect(&line, want).await?;
            }
            Ok(Client {
                control,
                tls: tls.clone(),
                source,
                server: t.addr.ip(),
            })
        })
        .await
    }

    /// Downloads `name` whole and checks it against `hash`.
    async fn retr_checked(&mut self, name: &str, hash: &str) -> Result<(), BoxError> {
        let got = bounded("RETR", self.retr(name)).await?;
        if sha256(&got) != hash {
            return Err(format!("{name}: {} bytes arrived, not the file's", got.len()).into());
        }
        Ok(())
    }

    async fn retr(&mut self, name: &str) -> Result<Vec<u8>, BoxError> {
        let reply = self.control.expect("EPSV", 229).await?;
        let port = epsv_port(&reply).ok_or_else(|| format!("bad 229: {}", reply.trim()))?;
        let tcp = connect(self.source, SocketAddr::new(self.server, port)).await?;
        self.control.expect(&format!("RETR {name}"), 150).await?;
        // rustls reads 4 KiB per call on its own; a large buffer under it saves the syscalls.
        let tcp = BufReader::with_capacity(DATA_BUF, tcp);
        let mut data = self.tls.connect(loopback(), tcp).await?;
        let mut all = Vec::new();
        match data.read_to_end(&mut all).await {
            Ok(_) => {}
            // Servers that close without close_notify after a download.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(e.into()),
        }
        drop(data);
        self.control.expect_reply(226).await?;
        Ok(all)
    }

    async fn quit(mut self) -> Result<(), BoxError> {
        bounded("QUIT", async {
            self.control.expect("QUIT", 221).await?;
            Ok(())
        })
        .await
    }
}
