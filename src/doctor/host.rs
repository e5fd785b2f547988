//! The checks of the machine the gateway runs on: the passive pool's ports free, the external
//! address right for PASV, the open-file limit fit for the sessions allowed.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::ops::RangeInclusive;

use super::{check, with_fix, Check, Level};
use crate::config::Settings;
use crate::ftp::addr::not_public;

pub(super) fn pool_ports(settings: &Settings) -> Check {
    let range = settings.passive.range();
    let ip = settings
        .listen
        .all()
        .map(SocketAddr::ip)
        .next()
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let busy: Vec<u16> = range
        .clone()
        .filter(|&p| TcpListener::bind(SocketAddr::new(ip, p)).is_err())
        .collect();
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().filter_map(|v| v.parse::<u16>().ok());
            Some((it.next()?, it.next()?))
        });
    pool_verdict(ip, &range, &busy, ephemeral)
}

/// What the pool check says, given the ports of `range` that could not be bound on `ip` and
/// the kernel's ephemeral port range. One port (`passive.ports = "50000"`, or a replica's
/// one-port slice) is named as such, not as a range of one.
fn pool_verdict(
    ip: IpAddr,
    range: &RangeInclusive<u16>,
    busy: &[u16],
    ephemeral: Option<(u16, u16)>,
) -> Check {
    let what = "passive pool";
    let overlap = ephemeral.filter(|&(lo, hi)| *range.start() <= hi && *range.end() >= lo);
    if range.start() == range.end() {
        let port = range.start();
        return match (busy.is_empty(), overlap) {
            (true, None) => check(Level::Ok, what, format!("port {port} can be bound on {ip}")),
            (true, Some((lo, hi))) => with_fix(
                check(
                    Level::Warn,
                    what,
                    format!("port {port} is free now; it is among the kernel's ephemeral ports {lo}-{hi}"),
                ),
                format!("the gateway holds it from its start, but an outgoing connection may take it before then: reserve it (sysctl net.ipv4.ip_local_reserved_ports={port}) or pick a port outside {lo}-{hi}"),
            ),
            (false, _) => with_fix(
                check(Level::Fail, what, format!("port {port} cannot be bound on {ip}")),
                "another program holds it (a running ftpsgate holds its passive ports from its start; find the holder with `ss -ltnp`), or it needs privileges",
            ),
        };
    }
    let size = range.clone().count();
    let overlap =
        overlap.map(|(lo, hi)| format!("; it overlaps the kernel's ephemeral ports {lo}-{hi}"));
    let range_text = format!("{}-{}", range.start(), range.end());
    match (busy.len(), overlap) {
        (0, None) => check(
            Level::Ok,
            what,
            format!("all {size} ports of {range_text} can be bound on {ip}"),
        ),
        (0, Some(o)) => with_fix(
            check(
                Level::Warn,
                what,
                format!("all {size} ports of {range_text} are free now{o}"),
            ),
            "outgoing connections may take pool ports: pick a range outside ip_local_port_range",
        ),
        (n, _) if n == size => with_fix(
            check(
                Level::Fail,
                what,
                format!("none of the {size} ports of {range_text} can be bound on {ip}"),
            ),
            "another program holds them (a running ftpsgate holds all its passive ports from its start) or the range needs privileges",
        ),
        (n, _) => with_fix(
            check(
                Level::Warn,
                what,
                format!(
                    "{n} of {size} ports of {range_text} are in use (first: {}): the gateway would serve on the others and retry these in the background",
                    busy.first().map_or(0, |p| *p)
                ),
            ),
            "find the holder with `ss -ltnp`, or take these ports out of passive.ports",
        ),
    }
}

pub(super) fn external_address(settings: &Settings) -> Vec<Check> {
    let what = "external address";
    let exposed = settings
        .listen
        .all()
        .any(|a| a.ip().is_unspecified() || not_public(a.ip()).is_none());
    let Some(host) = settings.passive.external_host() else {
        let level = if exposed { Level::Warn } else { Level::Ok };
        let c = check(
            level,
            what,
            "unset: PASV replies carry the address each client connected to",
        );
        return vec![if exposed {
            with_fix(
                c,
                "behind NAT or a load balancer set passive.external_address to the public address or name",
            )
        } else {
            c
        }];
    };
    let ip = match settings.passive.external_ip() {
        Ok(ip) => ip,
        Err(e) => {
            return vec![with_fix(
                check(Level::Fail, what, e),
                "use an IP address, or a DNS name that resolves from this host",
            )]
        }
    };
    let named = match ip.filter(|ip| ip.to_string() != host) {
        Some(ip) => format!("{host} resolves to {ip}"),
        None => host.clone(),
    };
    match ip.and_then(not_public) {
        Some(kind) => vec![with_fix(
            check(
                Level::Warn,
                what,
                format!("{named}, a {kind} address: clients on the internet cannot reach it"),
            ),
            "set passive.external_address to the address clients connect to (behind NAT: the \
             router's public one); a private one suits only clients on the same network",
        )],
        None => vec![check(Level::Ok, what, named)],
    }
}

pub(super) fn fd_limit(settings: &Settings) -> Check {
    let what = "open-file limit";
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(3)
                        .and_then(|v| v.parse::<u64>().ok())
                })
        });
    let need = crate::fdlimit::needed(settings);
    match soft {
        None => check(Level::Warn, what, "unknown (no /proc/self/limits)"),
        Some(have) if have >= need => check(
            Level::Ok,
            what,
            format!("{have} (limits.max_sessions and the pool need about {need})"),
        ),
        Some(have) => with_fix(
            check(
                Level::Warn,
                what,
                format!("{have}, but limits.max_sessions and the pool need about {need}"),
            ),
            format!("raise it (systemd: LimitNOFILE={need}; shell: ulimit -n {need}) or lower limits.max_sessions; the gateway raises its soft limit to the hard one at start, and lowers max_sessions to fit if it must"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PortRange;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn one_port_is_named_as_a_port_not_a_range_of_one() {
        let one = 50000..=50000;
        let c = pool_verdict(LOOPBACK, &one, &[], Some((32768, 60999)));
        assert_eq!(c.level, Level::Warn);
        assert_eq!(
            c.detail,
            "port 50000 is free now; it is among the kernel's ephemeral ports 32768-60999"
        );
        assert!(c
            .fix
            .is_some_and(|f| f.contains("net.ipv4.ip_local_reserved_ports=50000")));
        let c = pool_verdict(LOOPBACK, &one, &[], Some((32768, 49999)));
        assert_eq!(
            (c.level, c.detail.as_str()),
            (Level::Ok, "port 50000 can be bound on 127.0.0.1")
        );
        let c = pool_verdict(LOOPBACK, &one, &[50000], None);
        assert_eq!(
            (c.level, c.detail.as_str()),
            (Level::Fail, "port 50000 cannot be bound on 127.0.0.1")
        );
        assert!(c.fix.is_some_and(|f| f.contains("ss -ltnp")));
    }

    #[test]
    fn a_range_keeps_its_counts() {
        let range = 50000..=50019;
        let c = pool_verdict(LOOPBACK, &range, &[], None);
        assert_eq!(
            c.detail,
            "all 20 ports of 50000-50019 can be bound on 127.0.0.1"
        );
        let c = pool_verdict(LOOPBACK, &range, &[50003, 50007], None);
        assert_eq!(c.level, Level::Warn);
        assert!(c
            .detail
            .starts_with("2 of 20 ports of 50000-50019 are in use (first: 50003)"));
        let all: Vec<u16> = range.clone().collect();
        let c = pool_verdict(LOOPBACK, &range, &all, None);
        assert_eq!(c.level, Level::Fail);
    }

    /// The check as doctor runs it, on a port this test holds and then lets go.
    #[test]
    fn a_held_single_port_fails_and_a_free_one_does_not() {
        let held = TcpListener::bind((LOOPBACK, 0)).expect("bind");
        let port = held.local_addr().expect("port").port();
        let mut settings = Settings::default();
        settings.listen.explicit = vec![SocketAddr::new(LOOPBACK, 2121)];
        settings.passive.ports = PortRange(port..=port);
        let c = pool_ports(&settings);
        assert_eq!(c.level, Level::Fail, "{c}");
        assert_eq!(
            c.detail,
            format!("port {port} cannot be bound on 127.0.0.1")
        );
        drop(held);
        // Free now (a kernel-given port is an ephemeral one: a warning, not a failure).
        let c = pool_ports(&settings);
        assert_ne!(c.level, Level::Fail, "{c}");
        assert!(c.detail.starts_with(&format!("port {port} ")), "{c}");
    }
}
