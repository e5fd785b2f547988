//! The scanner's address, `icap://host[:port]/service` (config key `scan.icap`), checked once
//! when the config is read so that every request line and `Host` header built from it later is
//! one clean line: no spaces, no control characters, no user info.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The ICAP port of RFC 3507 (section 4.2), used when the URL names none.
pub(crate) const DEFAULT_PORT: u16 = 1344;

/// An ICAP service: where to connect and which service to ask. Written back (its `Display`)
/// always with the port, so two spellings of one service compare equal once parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub(crate) struct IcapUrl {
    /// A DNS name or an IPv4 address, or an IPv6 address without its brackets.
    host: String,
    port: u16,
    /// The path after the authority, without its leading `/`; may carry a query
    /// (`virus_scan?mode=simple`, see docs/TESTING.md "ICAP test bed").
    service: String,
}

impl IcapUrl {
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    #[cfg(test)]
    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    /// `host:port` (IPv6 in brackets): the ICAP `Host` header.
    pub(crate) fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for IcapUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let scheme_end = s.find("://").ok_or_else(|| not_icap(s))?;
        let (scheme, rest) = (s.get(..scheme_end), s.get(scheme_end + 3..));
        let (Some(scheme), Some(rest)) = (scheme, rest) else {
            return Err(not_icap(s));
        };
        if scheme.eq_ignore_ascii_case("icaps") {
            return Err(format!(
                "`{s}`: ICAP over TLS (icaps://) is not supported; use icap:// to a scanner on \
                 the same host or a trusted network"
            ));
        }
        if !scheme.eq_ignore_ascii_case("icap") {
            return Err(not_icap(s));
        }
        let Some((authority, service)) = rest.split_once('/') else {
            return Err(format!(
                "`{s}` names no service (icap://host[:port]/service)"
            ));
        };
        if service.is_empty() {
            return Err(format!(
                "`{s}` names no service (icap://host[:port]/service)"
            ));
        }
        // The service goes into the request line as it is: one token, nothing that ends it.
        if service
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '#')
        {
            return Err(format!(
                "`{s}`: the service may hold no spaces, control characters or `#`"
            ));
        }
        if authority.contains('@') {
            return Err(format!("`{s}`: user info (`user@`) is not supported"));
        }
        let (host, port) = split_authority(authority).map_err(|why| format!("`{s}`: {why}"))?;
        Ok(IcapUrl {
            host,
            port,
            service: service.to_string(),
        })
    }
}

fn not_icap(s: &str) -> String {
    format!("`{s}` is not an ICAP URL (icap://host[:port]/service)")
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_authority(authority: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (v6, after) = bracketed
            .split_once(']')
            .ok_or("an IPv6 address needs its closing `]`")?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| format!("`{v6}` is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after `]`")?),
        };
        (v6, port)
    } else if authority.matches(':').count() > 1 {
        return Err("an IPv6 address goes in brackets (`[::1]:1344`)".to_string());
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".to_string());
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if !host.contains(':') && !host.chars().all(plain) {
        return Err(format!(
            "`{host}` is not a host name or address (IPv6 goes in brackets)"
        ));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => match p.parse() {
            Ok(0) | Err(_) => return Err(format!("`{p}` is not a port number")),
            Ok(port) => port,
        },
        Some(p) => return Err(format!("`{p}` is not a port number")),
    };
    Ok((host.to_string(), port))
}

impl fmt::Display for IcapUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "icap://{}/{}", self.authority(), self.service)
    }
}

impl TryFrom<String> for IcapUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<IcapUrl> for String {
    fn from(url: IcapUrl) -> String {
        url.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> IcapUrl {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parts_and_the_default_port() {
        let u = url("icap://scanner.internal/virus_scan");
        assert_eq!(
            (u.host(), u.port(), u.service()),
            ("scanner.internal", 1344, "virus_scan")
        );
        assert_eq!(u.to_string(), "icap://scanner.internal:1344/virus_scan");
        assert_eq!(u.authority(), "scanner.internal:1344");
        let u = url("ICAP://127.0.0.1:11344/srv/av?mode=simple");
        assert_eq!(
            (u.host(), u.port(), u.service()),
            ("127.0.0.1", 11344, "srv/av?mode=simple")
        );
    }

    #[test]
    fn ipv6_in_brackets() {
        let u = url("icap://[::1]:1345/avscan");
        assert_eq!((u.host(), u.port()), ("::1", 1345));
        assert_eq!(u.to_string(), "icap://[::1]:1345/avscan");
        assert_eq!(url("icap://[::1]/avscan").port(), 1344);
    }

    #[test]
    fn display_parses_back_to_the_same_url() {
        for s in [
            "icap://h/s",
            "icap://[fe80::1]:9/a/b",
            "icap://10.0.0.1:1344/virus_scan?mode=simple",
        ] {
            let u = url(s);
            assert_eq!(url(&u.to_string()), u);
        }
    }

    #[test]
    fn refusals_say_why() {
        for (s, why) in [
            ("http://h/s", "not an ICAP URL"),
            ("icaps://h/s", "not supported"),
            ("icap://h", "no service"),
            ("icap://h/", "no service"),
            ("icap://h:0/s", "not a port"),
            ("icap://h:70000/s", "not a port"),
            ("icap://h:+1/s", "not a port"),
            ("icap://h:/s", "not a port"),
            ("icap://:1344/s", "no host"),
            ("icap://u@h/s", "user info"),
            ("icap://::1/s", "IPv6 address goes in brackets"),
            ("icap://[::1/s", "closing"),
            ("icap://[nope]/s", "not an IPv6"),
            ("icap://h/a b", "no spaces"),
            ("icap://h/a\r\nX: y", "control"),
            ("icap://h a/s", "not a host"),
        ] {
            let e = s.parse::<IcapUrl>().expect_err(s);
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn deserializes_from_a_config_string() {
        #[derive(Deserialize)]
        struct Scan {
            icap: IcapUrl,
        }
        let s: Scan = toml::from_str("icap = \"icap://127.0.0.1/virus_scan\"").expect("toml");
        assert_eq!(s.icap, url("icap://127.0.0.1:1344/virus_scan"));
        let e = toml::from_str::<Scan>("icap = \"icap://h\"")
            .err()
            .expect("refused");
        assert!(e.to_string().contains("no service"), "{e}");
    }
}
