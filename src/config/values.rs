//! Values that several tables share, each parsed and checked in one place: port ranges, on/off
//! switches, trusted networks, SHA-256 fingerprints, `host:port`.

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

/// An inclusive port range written `LO-HI`, or one port written `PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange(pub RangeInclusive<u16>);

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // One port (`50000`) is a range of one: the recommended set-up.
        let (lo, hi) = s.split_once('-').unwrap_or((s, s));
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("`{p}` is not a port number"))
        };
        let (lo, hi) = (port(lo)?, port(hi)?);
        if lo == 0 || lo > hi {
            return Err(format!("`{s}`: need PORT or LO-HI with 1 <= LO <= HI"));
        }
        Ok(PortRange(lo..=hi))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0.start(), self.0.end()) {
            (lo, hi) if lo == hi => write!(f, "{lo}"),
            (lo, hi) => write!(f, "{lo}-{hi}"),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    #[default]
    On,
    Off,
}

/// A list of CIDR networks: the load balancers whose PROXY headers are believed, the clients
/// let in or kept out.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Networks(Vec<ipnet::IpNet>);

impl Networks {
    pub fn new(nets: Vec<ipnet::IpNet>) -> Self {
        Networks(nets)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a client at `ip` passes `allow` (empty: everyone) and `deny` (wins): the rule
    /// of `[access]` and of each route.
    pub fn admits(allow: &Networks, deny: &Networks, ip: IpAddr) -> bool {
        !deny.contains(ip) && (allow.is_empty() || allow.contains(ip))
    }

    /// An IPv4-mapped IPv6 address counts as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// A SHA-256 certificate fingerprint, written as 64 hex digits, colons allowed between them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint(pub [u8; 32]);

impl std::str::FromStr for Fingerprint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let digits: Vec<u8> = s
            .chars()
            .filter(|c| *c != ':')
            .map(|c| c.to_digit(16).and_then(|d| u8::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("`{s}` is not a SHA-256 fingerprint (hex digits)"))?;
        let mut out = [0u8; 32];
        if digits.len() != 2 * out.len() {
            return Err(format!(
                "`{s}` is not a SHA-256 fingerprint (64 hex digits)"
            ));
        }
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            if let [hi, lo] = pair {
                *byte = hi << 4 | lo;
            }
        }
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `host:port` (or `[v6]:port`), checked when the settings are read. The host stays a name:
/// it is resolved at each connect, so a Kubernetes Service's address changes are followed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    /// `127.0.0.1:21`, the default backend: an FTP server on the same host.
    pub fn loopback_ftp() -> HostPort {
        HostPort {
            host: "127.0.0.1".into(),
            port: 21,
        }
    }

    /// The host without brackets: a DNS name, or an IP address.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl std::str::FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is not HOST:PORT"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        match port.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("`{s}`: `{port}` is not a port number")),
            Ok(port) => Ok(HostPort {
                host: host.to_string(),
                port,
            }),
        }
    }
}

impl From<std::net::SocketAddr> for HostPort {
    fn from(a: std::net::SocketAddr) -> HostPort {
        HostPort {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A backend's addresses, written `address = "HOST:PORT"` or `addresses = ["HOST:PORT", ...]`:
/// one key, either form.
pub(super) fn one_or_more<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<HostPort>, D::Error> {
    struct Addresses;
    impl<'de> serde::de::Visitor<'de> for Addresses {
        type Value = Vec<HostPort>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("HOST:PORT, or a list of them")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            s.parse().map(|a| vec![a]).map_err(E::custom)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut all = Vec::new();
            while let Some(a) = seq.next_element()? {
                all.push(a);
            }
            Ok(all)
        }
    }
    d.deserialize_any(Addresses)
}

/// The serde glue of a value written as a string in the file: parsed with its `FromStr` (so
/// a bad one fails with the reason, at its line), written back with its `Display`.
macro_rules! string_value {
    ($($ty:ident),+) => {$(
        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }

        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.to_string()
            }
        }
    )+};
}

string_value!(PortRange, Fingerprint, HostPort);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_networks_are_trusted() {
        let t = Networks::new(vec!["10.0.0.0/8".parse().expect("net")]);
        assert!(t.contains("10.1.2.3".parse().expect("ip")));
        assert!(
            t.contains("::ffff:10.1.2.3".parse().expect("ip")),
            "mapped IPv4"
        );
        assert!(!t.contains("192.0.2.1".parse().expect("ip")));
        assert!(!Networks::default().contains("10.1.2.3".parse().expect("ip")));
    }

    #[test]
    fn deny_wins_and_an_empty_allow_lets_everyone_in() {
        let nets =
            |list: &[&str]| Networks::new(list.iter().map(|n| n.parse().expect("net")).collect());
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let (none, lan) = (nets(&[]), nets(&["10.0.0.0/8"]));
        assert!(Networks::admits(&none, &none, ip("192.0.2.1")));
        assert!(!Networks::admits(&lan, &none, ip("192.0.2.1")));
        assert!(Networks::admits(&lan, &none, ip("10.9.9.9")));
        assert!(!Networks::admits(
            &lan,
            &nets(&["10.9.0.0/16"]),
            ip("10.9.9.9")
        ));
        assert!(!Networks::admits(
            &none,
            &nets(&["::/0", "0.0.0.0/0"]),
            ip("::ffff:10.0.0.1")
        ));
    }

    #[test]
    fn host_port_forms() {
        let a: HostPort = "ftp.internal:21".parse().expect("name");
        assert_eq!((a.host(), a.port()), ("ftp.internal", 21));
        let v6: HostPort = "[::1]:2121".parse().expect("v6");
        assert_eq!((v6.host(), v6.to_string().as_str()), ("::1", "[::1]:2121"));
        assert!("host:0".parse::<HostPort>().is_err());
        assert!("nohostport".parse::<HostPort>().is_err());
    }

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hex = "ab".repeat(32);
        assert_eq!(hex.parse::<Fingerprint>().map(|f| f.0), Ok([0xab; 32]));
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(colons.parse::<Fingerprint>().map(|f| f.0), Ok([0xab; 32]));
        assert_eq!(
            colons.parse::<Fingerprint>().map(|f| f.to_string()),
            Ok(hex)
        );
        assert!("abcd".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }
}
