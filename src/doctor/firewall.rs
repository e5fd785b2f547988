//! The firewall rules `doctor` prints, ready to paste: the gateway host's own, then those of a
//! NAT router in front of it. The NAT test bed (tests/nat.rs) applies them exactly as printed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;

use crate::config::Settings;

/// The control ports and the passive ports (one, or a range), opened on this host and forwarded
/// by a NAT router.
pub fn firewall(settings: &Settings) -> String {
    let ports: Vec<String> = settings
        .listen
        .all()
        .map(|a| a.port().to_string())
        .collect();
    let data = DataPorts::of(&settings.passive.range());
    let (list, set) = (ports.join(","), ports.join(", "));
    let (ipt, nft, what) = (&data.iptables, &data.nft, &data.what);
    let mut out = format!(
        "Open these TCP ports to clients (control, then {what}):\n\
         \x20 iptables -A INPUT -p tcp -m multiport --dports {list} -j ACCEPT\n\
         \x20 iptables -A INPUT -p tcp --dport {ipt} -j ACCEPT\n\
         \x20 nft add rule inet filter input tcp dport {{ {set} }} accept\n\
         \x20 nft add rule inet filter input tcp dport {nft} accept\n\
         No FTP helper (nf_conntrack_ftp) is needed: the control channel is encrypted, and the\n\
         gateway answers PASV with these ports itself."
    );
    let external = settings.passive.external_ip().ok().flatten();
    let host = host_address(settings, external);
    if host.is_some() && host == external {
        return out; // the gateway holds the public address itself: no NAT to cross
    }
    let (to, whence) = match (host, external) {
        (Some(h), Some(e)) => (h.to_string(), format!("this host's address toward {e}")),
        (Some(h), None) => (h.to_string(), "this host's listening address".to_string()),
        (None, _) => (
            "HOST".to_string(),
            "replace HOST with this host's address as the router reaches it".to_string(),
        ),
    };
    out.push_str(&format!(
        "\n\nBehind NAT, each router in front of this host forwards the same ports, unchanged, one\n\
         hop inward (here: {to}, {whence}); passive.external_address is the outermost public one:\n\
         \x20 nft add table ip nat\n\
         \x20 nft 'add chain ip nat prerouting {{ type nat hook prerouting priority dstnat; }}'\n\
         \x20 nft add rule ip nat prerouting fib daddr type local tcp dport {{ {set} }} dnat to {to}\n\
         \x20 nft add rule ip nat prerouting fib daddr type local tcp dport {nft} dnat to {to}\n\
         \x20 iptables -t nat -A PREROUTING -m addrtype --dst-type LOCAL -p tcp -m multiport --dports {list} -j DNAT --to-destination {to}\n\
         \x20 iptables -t nat -A PREROUTING -m addrtype --dst-type LOCAL -p tcp --dport {ipt} -j DNAT --to-destination {to}\n\
         If the router's forward policy drops, let these through too (nft: `ct status dnat accept`).\n\
         Its FTP helper is not needed and cannot help: it cannot read the encrypted control channel."
    ));
    out
}

/// The passive ports as each rule names them: one port is a plain destination port (`50000`),
/// never a range of one (`50000-50000`), which reads as a mistake.
struct DataPorts {
    iptables: String,
    nft: String,
    /// How the heading names them.
    what: String,
}

impl DataPorts {
    fn of(range: &RangeInclusive<u16>) -> DataPorts {
        let (lo, hi) = (range.start(), range.end());
        if lo == hi {
            DataPorts {
                iptables: lo.to_string(),
                nft: lo.to_string(),
                what: format!("the data port {lo}"),
            }
        } else {
            DataPorts {
                iptables: format!("{lo}:{hi}"),
                nft: format!("{lo}-{hi}"),
                what: format!("the passive range {lo}-{hi}"),
            }
        }
    }
}

/// The address a router reaches this host at: the listeners' own when they name one, else the
/// one this host's routing table picks toward the external address (a UDP `connect` sends no
/// packet; it only asks the kernel for a route).
fn host_address(settings: &Settings, external: Option<IpAddr>) -> Option<IpAddr> {
    if let Some(ip) = settings
        .listen
        .all()
        .map(SocketAddr::ip)
        .find(|ip| !ip.is_unspecified())
    {
        return Some(ip);
    }
    let external = external.filter(IpAddr::is_ipv4)?;
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect((external, 9)).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PortRange;

    /// Listeners on 127.0.0.1 (so the NAT rules name it, with no route looked up) and the
    /// passive ports `ports`, `replicas` sharing them, this being replica `index`.
    fn settings(ports: std::ops::RangeInclusive<u16>, replicas: u16, index: u16) -> Settings {
        let mut s = Settings::default();
        s.listen.explicit = vec![SocketAddr::from(([127, 0, 0, 1], 2121))];
        s.listen.implicit = vec![SocketAddr::from(([127, 0, 0, 1], 2990))];
        s.passive.ports = PortRange(ports);
        s.passive.replicas = replicas;
        s.passive.replica_index = index;
        s
    }

    /// The lines of `rules` that name the data ports (not the control ports' set or list).
    fn data_rules(rules: &str) -> Vec<&str> {
        rules
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("dport ") && !l.contains('{') && !l.contains("multiport"))
            .collect()
    }

    #[test]
    fn one_data_port_is_a_plain_dport_in_every_rule() {
        let rules = firewall(&settings(50000..=50000, 1, 0));
        assert!(
            rules.contains("(control, then the data port 50000)"),
            "{rules}"
        );
        assert_eq!(
            data_rules(&rules),
            [
                "iptables -A INPUT -p tcp --dport 50000 -j ACCEPT",
                "nft add rule inet filter input tcp dport 50000 accept",
                "nft add rule ip nat prerouting fib daddr type local tcp dport 50000 dnat to 127.0.0.1",
                "iptables -t nat -A PREROUTING -m addrtype --dst-type LOCAL -p tcp --dport 50000 -j DNAT --to-destination 127.0.0.1",
            ],
            "{rules}"
        );
        assert!(
            !rules.contains("50000-") && !rules.contains("50000:"),
            "{rules}"
        );
        // The control ports keep their own rules.
        assert!(rules.contains("--dports 2121,2990 -j ACCEPT"), "{rules}");
        assert!(rules.contains("tcp dport { 2121, 2990 } accept"), "{rules}");
    }

    #[test]
    fn a_replicas_one_port_slice_is_a_plain_dport_too() {
        // passive.ports = "50000-50002", replicas = 3: replica 1 owns 50001 alone.
        let rules = firewall(&settings(50000..=50002, 3, 1));
        assert!(
            rules.contains("(control, then the data port 50001)"),
            "{rules}"
        );
        let data = data_rules(&rules);
        assert_eq!(data.len(), 4, "{rules}");
        for rule in data {
            assert!(
                rule.contains("--dport 50001 ") || rule.contains("tcp dport 50001 "),
                "{rule}"
            );
        }
    }

    #[test]
    fn a_range_is_still_a_range() {
        let rules = firewall(&settings(50000..=50019, 1, 0));
        assert!(
            rules.contains("(control, then the passive range 50000-50019)"),
            "{rules}"
        );
        let data = data_rules(&rules);
        assert_eq!(data.len(), 4, "{rules}");
        for rule in data {
            assert!(
                rule.contains("--dport 50000:50019 ") || rule.contains("tcp dport 50000-50019 "),
                "{rule}"
            );
        }
    }
}
