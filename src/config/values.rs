//! Values that several tables share, each parsed and checked in one place: port ranges, on/off
//! switches, trusted networks, SHA-256 fingerprints, `host:port`.

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

/// An inclusive port range written `LO-HI`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange(pub RangeInclusive<u16>);

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (lo, hi) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not LO-HI"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("`{p}` is not a port number"))
        };
        let (lo, hi) = (port(lo)?, port(hi)?);
        if lo == 0 || lo > hi {
            return Err(format!("`{s}`: need 1 <= LO <= HI"));
        }
        Ok(PortRange(lo..=hi))
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<PortRange> for String {
    fn from(r: PortRange) -> String {
        r.to_string()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0.start(), self.0.end())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    #[default]
    On,
    Off,
}

/// The load balancers whose PROXY headers are believed: CIDR networks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Trusted(Vec<ipnet::IpNet>);

impl Trusted {
    pub fn new(nets: Vec<ipnet::IpNet>) -> Self {
        Trusted(nets)
    }

    /// An IPv4-mapped IPv6 address counts as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// Parses a SHA-256 fingerprint written as 64 hex digits, optionally separated by colons.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "`{s}` is not a SHA-256 fingerprint (64 hex digits)"
        ));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("`{s}` is not hex"))?;
    }
    Ok(out)
}

/// Splits `host:port` (or `[v6]:port`) and checks the port.
pub fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}` is not HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{s}`: `{port}` is not a port number")),
        Ok(p) => Ok((host, p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_networks_are_trusted() {
        let t = Trusted::new(vec!["10.0.0.0/8".parse().expect("net")]);
        assert!(t.contains("10.1.2.3".parse().expect("ip")));
        assert!(
            t.contains("::ffff:10.1.2.3".parse().expect("ip")),
            "mapped IPv4"
        );
        assert!(!t.contains("192.0.2.1".parse().expect("ip")));
        assert!(!Trusted::default().contains("10.1.2.3".parse().expect("ip")));
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("ftp.internal:21"), Ok(("ftp.internal", 21)));
        assert_eq!(split_host_port("[::1]:2121"), Ok(("::1", 2121)));
        assert!(split_host_port("host:0").is_err());
    }

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_fingerprint(&hex), Ok([0xab; 32]));
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons), Ok([0xab; 32]));
        assert!(parse_fingerprint("abcd").is_err());
    }
}
