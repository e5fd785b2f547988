//! Passive-mode address encodings: RFC 959 `227 (h1,h2,h3,h4,p1,p2)` and RFC 2428
//! `229 (|||port|)`, and the `EPSV` argument.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddrError {
    #[error("no h1,h2,h3,h4,p1,p2 in 227 reply")]
    Pasv,
    #[error("no (|||port|) in 229 reply")]
    Epsv,
    #[error("port 0 is not a data port")]
    PortZero,
    #[error("PORT needs h1,h2,h3,h4,p1,p2")]
    Port,
    #[error("EPRT needs <d>proto<d>address<d>port<d>")]
    Eprt,
    #[error("EPRT network protocol {0} is not 1 (IPv4) or 2 (IPv6)")]
    EprtProtocol(String),
}

/// The text of a 227 reply advertising `addr`.
pub fn format_pasv(addr: SocketAddrV4) -> String {
    format!("Entering Passive Mode ({}).", host_port(addr))
}

/// `h1,h2,h3,h4,p1,p2`, the RFC 959 encoding shared by 227 replies and PORT.
fn host_port(addr: SocketAddrV4) -> String {
    let [a, b, c, d] = addr.ip().octets();
    let [p1, p2] = addr.port().to_be_bytes();
    format!("{a},{b},{c},{d},{p1},{p2}")
}

/// The command that tells a server to connect to `addr` for data: PORT for IPv4, EPRT for
/// IPv6 (RFC 2428 §2), without the line ending.
pub fn format_active(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) => format!("PORT {}", host_port(v4)),
        SocketAddr::V6(v6) => format!("EPRT |2|{}|{}|", v6.ip(), v6.port()),
    }
}

/// The text of a 229 reply advertising `port` (RFC 2428: no address, the client reuses the
/// control connection's).
pub fn format_epsv(port: u16) -> String {
    format!("Entering Extended Passive Mode (|||{port}|)")
}

/// Finds the address in a 227 reply text. Servers vary (with or without parentheses, text
/// before and after), so the first run of six comma-separated numbers wins, as in most clients.
pub fn parse_pasv(text: &str) -> Result<SocketAddrV4, AddrError> {
    let bytes = text.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        let here = bytes.get(start).is_some_and(u8::is_ascii_digit);
        let after_digit = start
            .checked_sub(1)
            .and_then(|i| bytes.get(i))
            .is_some_and(u8::is_ascii_digit);
        if here && !after_digit {
            if let Some(addr) = text.get(start..).and_then(six_numbers) {
                if addr.port() == 0 {
                    return Err(AddrError::PortZero);
                }
                return Ok(addr);
            }
        }
        start += 1;
    }
    Err(AddrError::Pasv)
}

fn six_numbers(s: &str) -> Option<SocketAddrV4> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == ','))
        .unwrap_or(s.len());
    let parts: Vec<u8> = s[..end]
        .split(',')
        .take(6)
        .map(str::parse::<u8>)
        .collect::<Result<_, _>>()
        .ok()?;
    let [a, b, c, d, p1, p2] = parts[..] else {
        return None;
    };
    Some(SocketAddrV4::new(
        Ipv4Addr::new(a, b, c, d),
        u16::from_be_bytes([p1, p2]),
    ))
}

/// Finds the port in a 229 reply text: `(<d><d><d>port<d>)` where `<d>` is any printable
/// delimiter, the same four times (RFC 2428 §3).
pub fn parse_epsv(text: &str) -> Result<u16, AddrError> {
    let open = text.find('(').ok_or(AddrError::Epsv)?;
    let rest = &text[open + 1..];
    let close = rest.find(')').ok_or(AddrError::Epsv)?;
    let inner = &rest[..close];
    let mut chars = inner.chars();
    let d = chars.next().ok_or(AddrError::Epsv)?;
    if !(33..=126).contains(&(d as u32)) || d.is_ascii_digit() {
        return Err(AddrError::Epsv);
    }
    let fields: Vec<&str> = inner.split(d).collect();
    // "" "" "" port ""
    let ["", "", "", port, ""] = fields[..] else {
        return Err(AddrError::Epsv);
    };
    match port.parse::<u16>() {
        Ok(0) => Err(AddrError::PortZero),
        Ok(p) => Ok(p),
        Err(_) => Err(AddrError::Epsv),
    }
}

/// The address in a `PORT h1,h2,h3,h4,p1,p2` argument (RFC 959 §4.1.2).
pub fn parse_port(arg: &str) -> Result<SocketAddr, AddrError> {
    let arg = arg.trim();
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit() || b == b',') {
        return Err(AddrError::Port);
    }
    match six_numbers(arg) {
        Some(a) if arg.split(',').count() == 6 => match a.port() {
            0 => Err(AddrError::PortZero),
            _ => Ok(SocketAddr::V4(a)),
        },
        _ => Err(AddrError::Port),
    }
}

/// The address in an `EPRT |proto|address|port|` argument (RFC 2428 §2); any printable
/// delimiter, the same four times.
pub fn parse_eprt(arg: &str) -> Result<SocketAddr, AddrError> {
    let arg = arg.trim();
    let d = arg.chars().next().ok_or(AddrError::Eprt)?;
    if !(33..=126).contains(&(d as u32)) || d.is_ascii_alphanumeric() || d == '.' || d == ':' {
        return Err(AddrError::Eprt);
    }
    let fields: Vec<&str> = arg.split(d).collect();
    let ["", proto, host, port, ""] = fields[..] else {
        return Err(AddrError::Eprt);
    };
    let ip: IpAddr = match proto {
        "1" => host.parse::<Ipv4Addr>().map(IpAddr::V4),
        "2" => host.parse::<std::net::Ipv6Addr>().map(IpAddr::V6),
        other => return Err(AddrError::EprtProtocol(other.to_string())),
    }
    .map_err(|_| AddrError::Eprt)?;
    match port.parse::<u16>() {
        Ok(0) => Err(AddrError::PortZero),
        Ok(p) => Ok(SocketAddr::new(ip, p)),
        Err(_) => Err(AddrError::Eprt),
    }
}

/// What a client asked for with `EPSV` (RFC 2428 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpsvArg {
    /// No argument: the control connection's protocol.
    Default,
    /// `EPSV 1` (IPv4) or `EPSV 2` (IPv6).
    Family(u8),
    /// `EPSV ALL`: from now on only EPSV sets up data connections.
    All,
}

impl EpsvArg {
    pub fn parse(arg: &str) -> Option<EpsvArg> {
        match arg.trim() {
            "" => Some(EpsvArg::Default),
            a if a.eq_ignore_ascii_case("ALL") => Some(EpsvArg::All),
            a => a.parse::<u8>().ok().map(EpsvArg::Family),
        }
    }
}

/// RFC 2428 network protocol number of an address.
pub fn family_number(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 1,
        IpAddr::V6(_) => 2,
    }
}

/// Why a client on the internet cannot reach `ip`, or `None` when it can: what `doctor` says
/// of an external address and `probe` of the address in a 227.
pub fn not_public(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private (RFC 1918)")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if a == 100 && (64..128).contains(&b) {
                Some("carrier-grade NAT (RFC 6598)")
            } else if v4.is_unspecified() {
                Some("unspecified")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let [first, ..] = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique local (fc00::/7)")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pasv_round_trips() {
        let addr = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 7), 50123);
        assert_eq!(parse_pasv(&format_pasv(addr)), Ok(addr));
    }

    #[test]
    fn pasv_variants_from_real_servers_parse() {
        let want = SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 4 * 256 + 1);
        for text in [
            "Entering Passive Mode (10,1,2,3,4,1).",
            "Entering Passive Mode 10,1,2,3,4,1",
            "=10,1,2,3,4,1",
            "Passive 2 go (10,1,2,3,4,1)",
        ] {
            assert_eq!(parse_pasv(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn pasv_garbage_is_refused() {
        assert_eq!(parse_pasv("Entering Passive Mode"), Err(AddrError::Pasv));
        assert_eq!(parse_pasv("(300,1,2,3,4,1)"), Err(AddrError::Pasv));
        assert_eq!(parse_pasv("(1,2,3,4,0,0)"), Err(AddrError::PortZero));
    }

    #[test]
    fn epsv_round_trips_and_accepts_other_delimiters() {
        assert_eq!(parse_epsv(&format_epsv(6446)), Ok(6446));
        assert_eq!(parse_epsv("Extended (!!!1234!)"), Ok(1234));
    }

    #[test]
    fn epsv_garbage_is_refused() {
        for bad in [
            "(||1234|)",
            "(|||abc|)",
            "no parens",
            "(|||70000|)",
            "(1112)",
        ] {
            assert_eq!(parse_epsv(bad), Err(AddrError::Epsv), "{bad}");
        }
        assert_eq!(parse_epsv("(|||0|)"), Err(AddrError::PortZero));
    }

    #[test]
    fn active_commands_round_trip() {
        let v4: SocketAddr = "10.1.2.3:50123".parse().expect("addr");
        let port = format_active(v4);
        assert_eq!(port, "PORT 10,1,2,3,195,203");
        assert_eq!(parse_port(&port["PORT ".len()..]), Ok(v4));
        let v6: SocketAddr = "[2001:db8::7]:2121".parse().expect("addr");
        let eprt = format_active(v6);
        assert_eq!(eprt, "EPRT |2|2001:db8::7|2121|");
        assert_eq!(parse_eprt(&eprt["EPRT ".len()..]), Ok(v6));
    }

    #[test]
    fn port_arguments() {
        assert_eq!(
            parse_port("127,0,0,1,4,1"),
            Ok("127.0.0.1:1025".parse().expect("addr"))
        );
        for bad in [
            "",
            "127,0,0,1,4",
            "127,0,0,1,4,1,9",
            "1,2,3,4,x,1",
            "300,0,0,1,4,1",
        ] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_port("127,0,0,1,0,0"), Err(AddrError::PortZero));
    }

    #[test]
    fn eprt_arguments() {
        assert_eq!(
            parse_eprt("|1|132.235.1.2|6275|"),
            Ok("132.235.1.2:6275".parse().expect("a"))
        );
        assert_eq!(
            parse_eprt("|2|::1|5282|"),
            Ok("[::1]:5282".parse().expect("a"))
        );
        assert_eq!(
            parse_eprt("!2!1080::8:800:200C:417A!5282!"),
            Ok("[1080::8:800:200c:417a]:5282".parse().expect("a"))
        );
        assert_eq!(
            parse_eprt("|3|x|1|"),
            Err(AddrError::EprtProtocol("3".into()))
        );
        for bad in [
            "",
            "|1|1.2.3.4|",
            "|1|::1|80|",
            "|2|1.2.3.4|80|",
            "|1|1.2.3.4|99999|",
            "1|1.2.3.4|80|",
        ] {
            assert!(parse_eprt(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn epsv_arguments() {
        assert_eq!(EpsvArg::parse(""), Some(EpsvArg::Default));
        assert_eq!(EpsvArg::parse("all"), Some(EpsvArg::All));
        assert_eq!(EpsvArg::parse("2"), Some(EpsvArg::Family(2)));
        assert_eq!(EpsvArg::parse("x"), None);
    }

    #[test]
    fn addresses_the_internet_cannot_reach_are_named() {
        for (ip, kind) in [
            ("127.0.0.99", Some("loopback")),
            ("192.0.2.10", None), // documentation range: routable as far as a client knows
            ("10.1.2.3", Some("private (RFC 1918)")),
            ("172.16.0.1", Some("private (RFC 1918)")),
            ("192.168.1.1", Some("private (RFC 1918)")),
            ("169.254.1.1", Some("link-local")),
            ("100.64.0.1", Some("carrier-grade NAT (RFC 6598)")),
            ("100.128.0.1", None),
            ("203.0.113.1", None),
            ("::ffff:10.0.0.1", Some("private (RFC 1918)")),
            ("fd00::1", Some("unique local (fc00::/7)")),
            ("fe80::1", Some("link-local")),
            ("::1", Some("loopback")),
            ("2001:db8::1", None),
        ] {
            assert_eq!(not_public(ip.parse().unwrap()), kind, "{ip}");
        }
    }
}
