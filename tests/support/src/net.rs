//! Loopback ports for the tests' listeners and pools.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::process::eventually;

/// A free port below Linux's ephemeral range (32768 and up), for a port that must stay free
/// until something binds it later: an outgoing connection of a test running alongside cannot
/// take it meanwhile, as it can an ephemeral one (a listener then fails with EADDRINUSE).
pub fn free_port() -> u16 {
    free_low_range(1)
}

/// The first of `n` consecutive free ports below the ephemeral range (see [`free_port`]).
/// A port is handed out once a process: tests run in parallel threads, and two that picked
/// the same free port before either bound it would race for it (CI saw Pebble lose its
/// management port that way).
pub fn free_low_range(n: u16) -> u16 {
    static HANDED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed = HANDED.lock().unwrap_or_else(PoisonError::into_inner);
    for _ in 0..1000 {
        let lo = 11000 + fastrand::u16(0..8000);
        let ports = lo..lo + n;
        if handed.range(ports.clone()).next().is_none()
            && ports
                .clone()
                .all(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok())
        {
            handed.extend(ports);
            return lo;
        }
    }
    panic!("no {n} free ports in 11000-18999");
}

pub(crate) fn wait_for_port(addr: SocketAddr, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `cmd` run inside the network namespace `ns` (`ip netns exec`), environment and all.
pub fn in_netns(ns: &str, cmd: &Command) -> Command {
    let mut wrapped = Command::new("ip");
    wrapped
        .args(["netns", "exec", ns])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    wrapped
}

/// [`wait_for_port`] from inside the network namespace `ns`.
pub fn wait_for_port_in(ns: &str, addr: SocketAddr, limit: Duration) -> bool {
    let probe = format!(": < /dev/tcp/{}/{}", addr.ip(), addr.port());
    eventually(limit, || {
        Command::new("ip")
            .args(["netns", "exec", ns, "bash", "-c", &probe])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}
