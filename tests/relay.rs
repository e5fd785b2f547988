//! The relay pinned without real servers: a session served over one end of a
//! `tokio::io::duplex`, whose backends are peers scripted in Rust on duplex pipes too (through
//! `Gateway::bind_with`'s dialer). Data connections are loopback TCP, as in production. Fast,
//! and exact about orderings real servers only show now and then: ABOR answered in each
//! server's order, the final 226 held until the data connections are closed, route precedence.

// A test, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ftpsgate::backend::Dialer;
use ftpsgate::config::Settings;
use ftpsgate::server::Gateway;
use ftpsgate::session::{self, Mode};
use support::control::Control;
use support::net::free_low_range;
use tokio::io::{
    AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf,
};
use tokio::net::{TcpListener, TcpStream};

/// How a scripted backend answers ABOR during a download, chosen by the user name.
#[derive(Clone, Copy, Debug)]
enum Abor {
    /// 426 for the transfer, then 225.
    Vsftpd,
    /// 426, then a multi-line 226.
    PureFtpd,
    /// 226 for ABOR at once, the transfer's 426 after it.
    Libunftp,
    /// Resets the data connection and says 426 before it reads ABOR; then 226.
    ResetFirst,
    /// Nothing at all: neither the transfer's reply nor ABOR's.
    Silent,
}

impl Abor {
    fn from_user(user: &str) -> Abor {
        match user {
            "pure-ftpd" => Abor::PureFtpd,
            "libunftp" => Abor::Libunftp,
            "reset-first" => Abor::ResetFirst,
            "silent" => Abor::Silent,
            _ => Abor::Vsftpd,
        }
    }
}

/// What every scripted backend saw: (backend name, command line).
type Seen = Arc<Mutex<Vec<(String, String)>>>;

const BLOB: usize = 8 << 20;

/// One scripted backend session on `io`. RETR of "held" sends its bytes, says 226 at once and
/// keeps the data connection open 300 ms more; any other RETR sends bytes slowly until ABOR.
async fn scripted(name: String, io: DuplexStream, seen: Seen) {
    let (r, mut w): (ReadHalf<DuplexStream>, WriteHalf<DuplexStream>) = tokio::io::split(io);
    let mut lines = BufReader::new(r).lines();
    say(&mut w, "220 scripted\r\n").await;
    let mut abor = Abor::Vsftpd;
    let mut data: Option<TcpListener> = None;
    while let Ok(Some(line)) = lines.next_line().await {
        seen.lock()
            .expect("seen")
            .push((name.clone(), line.clone()));
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let arg = line
            .split_once(' ')
            .map(|(_, a)| a.to_string())
            .unwrap_or_default();
        match verb.as_str() {
            "USER" => {
                abor = Abor::from_user(&arg);
                say(&mut w, "331 password please\r\n").await;
            }
            "PASS" => say(&mut w, "230 in\r\n").await,
            "TYPE" | "HOST" => say(&mut w, "200 ok\r\n").await,
            "NOOP" => say(&mut w, "200 NOOP ok\r\n").await,
            "QUIT" => {
                say(&mut w, "221 bye\r\n").await;
                return;
            }
            "EPSV" => {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("data port");
                let port = listener.local_addr().expect("addr").port();
                data = Some(listener);
                let _ = w
                    .write_all(
                        format!("229 Entering Extended Passive Mode (|||{port}|)\r\n").as_bytes(),
                    )
                    .await;
            }
            "RETR" => {
                let Some(listener) = data.take() else {
                    say(&mut w, "425 no EPSV\r\n").await;
                    continue;
                };
                say(&mut w, "150 here it comes\r\n").await;
                let Ok((mut conn, _)) = listener.accept().await else {
                    continue;
                };
                if arg == "held" {
                    let _ = conn.write_all(&vec![7u8; 1 << 20]).await;
                    say(&mut w, "226 done\r\n").await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    drop(conn);
                    continue;
                }
                // Slowly, until ABOR (or, for ResetFirst, a reset after the first chunks).
                let writer = tokio::spawn(async move {
                    let chunk = vec![1u8; 64 << 10];
                    for i in 0..BLOB / chunk.len() {
                        if abor_reset(abor) && i == 4 {
                            let _ = conn.set_zero_linger();
                            return;
                        }
                        if conn.write_all(&chunk).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
                if abor_reset(abor) {
                    let _ = writer.await;
                    say(&mut w, "426 data connection reset\r\n").await;
                }
                // The next line is ABOR.
                let Ok(Some(next)) = lines.next_line().await else {
                    return;
                };
                seen.lock()
                    .expect("seen")
                    .push((name.clone(), next.clone()));
                assert_eq!(next, "ABOR", "expected ABOR");
                match abor {
                    Abor::Vsftpd => say(&mut w, "426 Failure writing network stream.\r\n225 ABOR ok\r\n").await,
                    Abor::PureFtpd => {
                        say(&mut w, "426 ABORT\r\n226-Transfer aborted\r\n226 Since you see this ABOR must've succeeded\r\n").await
                    }
                    Abor::Libunftp => {
                        say(&mut w, "226 Closed data channel\r\n").await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        say(&mut w, "426 Connection closed; transfer aborted.\r\n").await;
                    }
                    Abor::ResetFirst => say(&mut w, "226 ABOR ok\r\n").await,
                    Abor::Silent => {}
                }
            }
            _ => say(&mut w, "502 not scripted\r\n").await,
        }
    }
}

async fn say(w: &mut WriteHalf<DuplexStream>, text: &str) {
    let _ = w.write_all(text.as_bytes()).await;
}

fn abor_reset(abor: Abor) -> bool {
    matches!(abor, Abor::ResetFirst)
}

/// A gateway whose backends are scripted peers on duplex pipes, named after their address's
/// host; and what they saw.
async fn gateway(tweak: impl FnOnce(&mut Settings)) -> (Gateway, Seen) {
    let mut s = Settings::default();
    s.listen.explicit = vec!["127.0.0.1:0".parse().expect("addr")];
    let lo = free_low_range(8);
    s.passive.ports = format!("{lo}-{}", lo + 7).parse().expect("range");
    s.tls.required = false;
    s.timeouts.backend_reply_secs = 10;
    tweak(&mut s);
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let dialer: Dialer = Arc::new(move |address: &str| {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let name = address.split(':').next().unwrap_or("").to_string();
        tokio::spawn(scripted(name, theirs, Arc::clone(&record)));
        let backend: SocketAddr = "127.0.0.1:21".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        Ok((Box::new(ours) as Box<dyn session::Io>, backend, local))
    });
    let gw = Gateway::bind_with(s, Some(dialer)).await.expect("gateway");
    (gw, seen)
}

/// A plain control connection to a session served over a duplex pipe.
fn open(gw: &Gateway) -> Control<DuplexStream> {
    open_as(gw, Mode::Explicit)
}

fn open_as(gw: &Gateway, mode: Mode) -> Control<DuplexStream> {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let local: SocketAddr = "127.0.0.1:2121".parse().expect("addr");
    tokio::spawn(session::serve(
        gw.context(),
        Box::new(theirs),
        local,
        mode,
        peer,
        0,
    ));
    Control::new(ours).with_limit(Duration::from_secs(15))
}

async fn login(c: &mut Control<DuplexStream>, user: &str) {
    assert!(c.reply().await.starts_with("220"));
    assert!(c.cmd(&format!("USER {user}")).await.starts_with("331"));
    assert!(c.cmd("PASS pw").await.starts_with("230"));
    assert!(c.cmd("TYPE I").await.starts_with("200"));
}

/// EPSV and the data connection to the port it names.
async fn open_data(c: &mut Control<DuplexStream>) -> TcpStream {
    let port = c.epsv().await.unwrap_or_else(|r| panic!("229: {r}"));
    TcpStream::connect(("127.0.0.1", port)).await.expect("data")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abor_is_answered_426_then_2xx_whatever_order_the_server_uses() {
    let (gw, seen) = gateway(|_| {}).await;
    for (server, abor_code) in [
        ("vsftpd", "225"),
        ("pure-ftpd", "226"),
        ("libunftp", "226"),
        ("reset-first", "226"),
        ("silent", "226"),
    ] {
        let mut c = open(&gw);
        login(&mut c, server).await;
        let mut data = open_data(&mut c).await;
        c.send("RETR blob").await;
        assert!(c.reply().await.starts_with("150"), "{server}");
        let mut first = vec![0u8; 64 << 10];
        data.read_exact(&mut first).await.expect("some data");
        let began = Instant::now();
        c.send("ABOR").await;
        drop(data);
        let transfer = c.reply().await;
        let abor = c.reply().await;
        let took = began.elapsed();
        assert!(
            transfer.starts_with("426 "),
            "{server}: transfer reply {transfer:?}"
        );
        assert!(abor.starts_with(abor_code), "{server}: ABOR reply {abor:?}");
        assert!(took < Duration::from_secs(6), "{server}: {took:?}");
        // In step: the next command gets its own answer.
        assert!(
            c.cmd("NOOP").await.starts_with("200"),
            "{server}: out of step"
        );
        assert!(c.cmd("QUIT").await.starts_with("221"), "{server}");
        println!(
            "{server}: {} / {} after {took:?}",
            transfer.trim(),
            abor.trim()
        );
    }
    let aborts = seen
        .lock()
        .expect("seen")
        .iter()
        .filter(|(_, l)| l == "ABOR")
        .count();
    assert_eq!(aborts, 5, "every ABOR reached its backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_final_226_waits_until_the_data_connections_are_closed() {
    let (gw, _) = gateway(|_| {}).await;
    let mut c = open(&gw);
    login(&mut c, "vsftpd").await;
    let mut data = open_data(&mut c).await;
    c.send("RETR held").await;
    assert!(c.reply().await.starts_with("150"));
    // The backend said 226 the moment it had written, and holds its data connection 300 ms
    // more: the client must have the whole file, and its end, before it hears 226.
    let mut got = Vec::new();
    data.read_to_end(&mut got).await.expect("data");
    let eof = Instant::now();
    let done = c.reply().await;
    assert!(done.starts_with("226"), "{done}");
    assert_eq!(got.len(), 1 << 20);
    assert!(
        eof.elapsed() < Duration::from_millis(250),
        "226 long after the end of data"
    );
    assert!(c.cmd("QUIT").await.starts_with("221"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_rules_apply_in_order_host_before_the_user_suffix() {
    let (gw, seen) = gateway(|s| {
        s.routing.user_suffix = true;
        for name in ["a", "b"] {
            let route = ftpsgate::config::BackendSettings {
                addresses: vec![format!("{name}.test:21").parse().expect("address")],
                hosts: vec![format!("{name}.example")],
                ..Default::default()
            };
            s.routes.insert(name.into(), route);
        }
    })
    .await;
    let mut c = open(&gw);
    assert!(c.reply().await.starts_with("220"));
    // Before TLS the gateway answers HOST itself and chooses route b; the suffix naming a is
    // then refused; the plain name goes to b, which hears the HOST first.
    assert!(c.cmd("HOST b.example").await.starts_with("220"));
    let refused = c.cmd("USER alice@a").await;
    assert!(refused.starts_with("530"), "{refused}");
    assert!(c.cmd("USER alice").await.starts_with("331"));
    assert!(c.cmd("PASS pw").await.starts_with("230"));
    assert!(c.cmd("QUIT").await.starts_with("221"));
    let seen = seen.lock().expect("seen").clone();
    let at = |backend: &str| -> Vec<String> {
        seen.iter()
            .filter(|(b, _)| b == backend)
            .map(|(_, l)| l.clone())
            .collect()
    };
    assert!(at("a.test").is_empty(), "route a was reached: {seen:?}");
    assert_eq!(
        at("b.test")[..3],
        ["HOST b.example", "USER alice", "PASS pw"],
        "{seen:?}"
    );
}

/// A session enters the TLS binding registry before its control handshake, not after: the
/// client may hand that handshake's ticket to a sibling's data connection the moment it has it
/// (rclone did, and the data connection failed to resume). Here the handshake never even
/// starts, and the session is there all the same, explicit and implicit alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_joins_the_binding_registry_before_its_control_handshake() {
    let (gw, _) = gateway(|_| {}).await;
    let bindings = &gw.context().bindings;
    let mut explicit = open(&gw);
    assert!(explicit.reply().await.starts_with("220"));
    assert!(bindings.is_empty(), "joined before AUTH TLS");
    assert!(explicit.cmd("AUTH TLS").await.starts_with("234"));
    let joined = |n: usize| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while bindings.members() != n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bindings.members()
    };
    assert_eq!(
        joined(1).await,
        1,
        "explicit: not joined before the handshake"
    );
    let _implicit = open_as(&gw, Mode::Implicit);
    assert_eq!(
        joined(2).await,
        2,
        "implicit: not joined before the handshake"
    );
}
