//! The ACME checks (`[tls.acme]`): the state directory private, each certificate issued or
//! not yet, the names resolving, and the challenge listener where a CA can reach it, as far
//! as this host can tell: the CA connects to port 80 (http-01) or 443 (tls-alpn-01) of each
//! name from the internet, which no check from inside can prove.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{check, with_fix, Check, Level};
use crate::acme;
use crate::config::{AcmeSettings, Challenge};
use crate::ftp::addr::not_public;

const WHAT: &str = "acme";

pub(super) fn checks(acme: &AcmeSettings) -> Vec<Check> {
    let mut out = vec![state_dir(acme)];
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for cert in acme.certificates() {
        let domain = cert.names.join(", ");
        out.push(match acme::on_disk(&cert) {
            Some(d) if d.not_after > now => check(
                Level::Ok,
                WHAT,
                format!(
                    "{domain}: issued (serial {}), {} days left; renewed at {} days",
                    d.serial,
                    (d.not_after - now) / 86_400,
                    acme.renew_before_days
                ),
            ),
            Some(_) => with_fix(
                check(Level::Fail, WHAT, format!("{domain}: expired on disk")),
                "the gateway orders a new one at start; check its log for `ACME order failed`",
            ),
            None => check(
                Level::Warn,
                WHAT,
                format!("{domain}: not issued yet: a temporary self-signed certificate serves (and /readyz says 503) until the order completes"),
            ),
        });
    }
    out.extend(names(acme));
    out.push(listener(acme));
    out
}

fn state_dir(acme: &AcmeSettings) -> Check {
    if !acme.state_dir.exists() {
        return check(
            Level::Ok,
            WHAT,
            format!("{} is created (0700) at start", acme.state_dir.display()),
        );
    }
    match acme::check_state(acme) {
        Ok(()) => check(
            Level::Ok,
            WHAT,
            format!("{} is private (0700, files 0600)", acme.state_dir.display()),
        ),
        Err(e) => with_fix(
            check(Level::Fail, WHAT, e.to_string()),
            "chmod -R go= the state directory and chown it to the gateway's user",
        ),
    }
}

/// Each name resolves, and to an address the internet can reach.
fn names(acme: &AcmeSettings) -> Vec<Check> {
    let mut names: Vec<&String> = acme
        .domains
        .iter()
        .chain(acme.sni.iter().flatten())
        .collect();
    names.dedup();
    names
        .into_iter()
        .map(|name| match (name.as_str(), 0).to_socket_addrs() {
            Err(e) => with_fix(
                check(Level::Warn, WHAT, format!("{name} does not resolve here: {e}")),
                "the CA looks the name up in public DNS: point an A/AAAA record at this gateway",
            ),
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                if addrs.iter().all(|a| not_public(a.ip()).is_some()) {
                    with_fix(
                        check(
                            Level::Warn,
                            WHAT,
                            format!("{name} resolves to {} only: not reachable from the internet", list.join(", ")),
                        ),
                        "public DNS must name the address the CA reaches this gateway on (behind NAT: the router's)",
                    )
                } else {
                    check(Level::Ok, WHAT, format!("{name} resolves to {}", list.join(", ")))
                }
            }
        })
        .collect()
}

/// The challenge listener: on the port the CA uses (or forwarded to), not only on loopback,
/// and free for the gateway or answered by its responder already.
fn listener(acme: &AcmeSettings) -> Check {
    let (addr, challenge, port) = match acme.challenge {
        Challenge::Http01 => (acme.http_listen, "http-01", 80),
        Challenge::TlsAlpn01 => (acme.tls_alpn_listen, "tls-alpn-01", 443),
    };
    if addr.ip().is_loopback() {
        return with_fix(
            check(
                Level::Warn,
                WHAT,
                format!("the {challenge} listener {addr} is on loopback: a CA cannot reach it"),
            ),
            "listen on the address the internet reaches (0.0.0.0), or forward to it",
        );
    }
    let bound = TcpListener::bind(addr);
    if let Err(e) = &bound {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return with_fix(
                check(Level::Warn, WHAT, format!("{addr} cannot be bound by this user: {e}")),
                "run the gateway with CAP_NET_BIND_SERVICE (the systemd unit grants it), or listen on a high port and forward the CA's port to it",
            );
        }
    }
    let held = bound.is_err();
    let state = if !held {
        "free for the gateway to bind at start".to_string()
    } else if challenge == "http-01" && answers_http01(addr) {
        "the gateway's responder answers there".to_string()
    } else {
        let what = format!(
            "{addr} is held by another process (or a running gateway not answering as one)"
        );
        return with_fix(
            check(Level::Fail, WHAT, what),
            "stop whatever holds the port, or choose another listen address and forward the CA's port to it",
        );
    };
    let c = check(
        Level::Ok,
        WHAT,
        format!("the {challenge} listener {addr}: {state}"),
    );
    if addr.port() == port {
        c
    } else {
        with_fix(
            Check {
                level: Level::Warn,
                ..c
            },
            format!(
                "a CA connects to port {port}: forward port {port} of the public address to {addr}"
            ),
        )
    }
}

/// Does a running gateway's http-01 responder answer on `addr`? It says 404 with its own text
/// for a token it does not hold.
fn answers_http01(addr: SocketAddr) -> bool {
    let ask = || -> std::io::Result<String> {
        let target = if addr.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
        } else {
            addr
        };
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"GET /.well-known/acme-challenge/ftpsgate-doctor HTTP/1.1\r\nHost: doctor\r\nConnection: close\r\n\r\n")?;
        let mut reply = String::new();
        s.take(4096).read_to_string(&mut reply)?;
        Ok(reply)
    };
    ask().is_ok_and(|r| r.contains("no such challenge"))
}
