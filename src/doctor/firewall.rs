//! The firewall rules `doctor` prints, ready to paste: the gateway host's own, then those of a
//! NAT router in front of it. The NAT test bed (tests/nat.rs) applies them exactly as printed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use crate::config::Settings;

/// The control ports and the passive range, opened on this host and forwarded by a NAT router.
pub fn firewall(settings: &Settings) -> String {
    let ports: Vec<String> = settings
        .listen
        .all()
        .map(|a| a.port().to_string())
        .collect();
    let range = settings.passive.range();
    let (lo, hi) = (range.start(), range.end());
    let (list, set) = (ports.join(","), ports.join(", "));
    let mut out = format!(
        "Open these TCP ports to clients (control, then the passive range):\n\
         \x20 iptables -A INPUT -p tcp -m multiport --dports {list} -j ACCEPT\n\
         \x20 iptables -A INPUT -p tcp --dport {lo}:{hi} -j ACCEPT\n\
         \x20 nft add rule inet filter input tcp dport {{ {set} }} accept\n\
         \x20 nft add rule inet filter input tcp dport {lo}-{hi} accept\n\
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
         \x20 nft add rule ip nat prerouting fib daddr type local tcp dport {lo}-{hi} dnat to {to}\n\
         \x20 iptables -t nat -A PREROUTING -m addrtype --dst-type LOCAL -p tcp -m multiport --dports {list} -j DNAT --to-destination {to}\n\
         \x20 iptables -t nat -A PREROUTING -m addrtype --dst-type LOCAL -p tcp --dport {lo}:{hi} -j DNAT --to-destination {to}\n\
         If the router's forward policy drops, let these through too (nft: `ct status dnat accept`).\n\
         Its FTP helper is not needed and cannot help: it cannot read the encrypted control channel."
    ));
    out
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
