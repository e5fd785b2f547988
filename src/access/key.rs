//! Who a per-client count or ban is kept for. One client is one IPv4 address, but an IPv6
//! client is usually given a whole /64 (or more): counted per /128, a banned
//! `2001:db8:1:2::1` came straight back as `::2`, and one host could hold the session and
//! passive limits many times over. Every per-client table (the bans and login attempts, the
//! session limit, the passive per-address limit) keys by [`ClientKey`], so they cannot
//! disagree on who a client is. The TLS binding registry and the data connection's address
//! check do not: they ask "is this the very address of the control connection", not "is
//! this the same client".

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// A client address as the per-client limits and bans count it: an IPv4 address (an
/// IPv4-mapped IPv6 address, as a dual-stack listener sees an IPv4 client, is that IPv4
/// address), or the IPv6 network of `access.ipv6_prefix` bits around an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey {
    /// The address, its host bits cleared for IPv6.
    net: IpAddr,
    /// The IPv6 prefix length kept; 32 for IPv4.
    prefix: u8,
}

impl ClientKey {
    /// The key of `ip`, with IPv6 clients counted per `ipv6_prefix` bits (above 128: 128).
    pub fn of(ip: IpAddr, ipv6_prefix: u8) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey {
                net: IpAddr::V4(v4),
                prefix: 32,
            },
            IpAddr::V6(v6) => {
                let prefix = ipv6_prefix.min(128);
                // A shift by 128 (prefix 0) is no shift in u128: it clears everything.
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                ClientKey {
                    net: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)),
                    prefix,
                }
            }
        }
    }
}

/// An IPv4 address or a whole IPv6 address as it is (`192.0.2.7`, `2001:db8::1`); a network
/// with its prefix (`2001:db8:1:2::/64`): what `/bans` lists.
impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.net {
            IpAddr::V6(v6) if self.prefix < 128 => write!(f, "{v6}/{}", self.prefix),
            ip => write!(f, "{ip}"),
        }
    }
}

impl serde::Serialize for ClientKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str, prefix: u8) -> ClientKey {
        ClientKey::of(ip.parse().expect("ip"), prefix)
    }

    #[test]
    fn ipv4_is_one_address_mapped_or_not() {
        assert_eq!(key("192.0.2.7", 64), key("::ffff:192.0.2.7", 64));
        assert_eq!(key("192.0.2.7", 1), key("::ffff:192.0.2.7", 128));
        assert_ne!(key("192.0.2.7", 64), key("192.0.2.8", 64));
        assert_eq!(key("::ffff:192.0.2.7", 64).to_string(), "192.0.2.7");
    }

    #[test]
    fn ipv6_is_counted_per_prefix() {
        let a = key("2001:db8:1:2::1", 64);
        assert_eq!(a, key("2001:db8:1:2::2", 64));
        assert_eq!(a, key("2001:db8:1:2:ffff:ffff:ffff:ffff", 64));
        assert_ne!(a, key("2001:db8:1:3::1", 64));
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2::1", 48), key("2001:db8:1:ff::1", 48));
        assert_eq!(key("2001:db8:1:2::1", 48).to_string(), "2001:db8:1::/48");
        assert_eq!(key("2001:db8:1:2::1", 56), key("2001:db8:1:ff::1", 56));
        assert_ne!(key("2001:db8:1:2::1", 56), key("2001:db8:1:100::1", 56));
    }

    #[test]
    fn the_ends_of_the_range() {
        assert_ne!(key("2001:db8::1", 128), key("2001:db8::2", 128));
        assert_eq!(key("2001:db8::1", 128).to_string(), "2001:db8::1");
        assert_eq!(key("::1", 128).to_string(), "::1");
        assert_eq!(key("2001:db8::1", 200), key("2001:db8::1", 128));
        assert_eq!(key("8001::1", 1), key("ffff::1", 1));
        assert_ne!(key("8001::1", 1), key("7fff::1", 1));
        assert_eq!(key("8001::1", 1).to_string(), "8000::/1");
        assert_eq!(key("8001::1", 0), key("::1", 0), "0 would be one client");
    }
}
