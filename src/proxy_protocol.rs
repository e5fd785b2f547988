//! PROXY protocol v2 (HAProxy) from trusted load balancers.
//!
//! Behind an L4 balancer every connection comes from the balancer's address. With
//! `send-proxy-v2` the balancer prefixes each connection (control and data alike) with a
//! binary header naming the real client; the gateway reads it from trusted peers only, so the
//! per-address limits, the logs and the data-connection source check all see the real client.
//! From any other peer a header is not read: a client cannot claim someone else's address.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ppp::v2::{Addresses, Builder, Command, Header, Protocol, Version, PROTOCOL_PREFIX};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::ProxyVersion;

/// A v2 header is 16 bytes plus its addresses and TLVs; balancers send a few dozen bytes.
const MAX_HEADER: usize = 16 + 2048;

#[derive(Debug, Error)]
pub(crate) enum ProxyError {
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
    #[error("no PROXY header in time")]
    Timeout,
    #[error("not a PROXY protocol v2 header")]
    NotV2,
    #[error("PROXY header of {0} bytes is too long")]
    TooLong(usize),
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
}

/// The header the gateway sends a backend that wants one (`backend.proxy_protocol`), so the
/// backend logs and limits by the real client: `client` is `(client, the gateway address it
/// connected to)`; `None` (a health probe of the gateway's own) sends LOCAL / UNKNOWN.
pub(crate) fn header(
    version: ProxyVersion,
    client: Option<(SocketAddr, SocketAddr)>,
) -> Option<Vec<u8>> {
    // One family for both ends: IPv4-mapped addresses are IPv4; a real mix is unknown.
    let pair = client.and_then(|(from, to)| {
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        let to = SocketAddr::new(to.ip().to_canonical(), to.port());
        (from.is_ipv4() == to.is_ipv4()).then_some((from, to))
    });
    match version {
        ProxyVersion::Off => None,
        ProxyVersion::V1 => Some(
            match pair {
                Some((from, to)) => format!(
                    "PROXY {} {} {} {} {}\r\n",
                    if from.is_ipv4() { "TCP4" } else { "TCP6" },
                    from.ip(),
                    to.ip(),
                    from.port(),
                    to.port()
                ),
                None => "PROXY UNKNOWN\r\n".to_string(),
            }
            .into_bytes(),
        ),
        ProxyVersion::V2 => {
            let built = match pair {
                Some(addrs) => {
                    Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addrs)
                        .build()
                }
                None => Builder::with_addresses(
                    Version::Two | Command::Local,
                    Protocol::Unspecified,
                    Addresses::Unspecified,
                )
                .build(),
            };
            // Building into memory cannot fail for these address families.
            built.ok()
        }
    }
}

/// The client a header names: `Some(source)` for PROXY, `None` for LOCAL (the balancer's own
/// health check) or an address family that carries no IP.
pub(crate) fn source(header: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let header = Header::try_from(header).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    if header.command == Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        Addresses::IPv4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        Addresses::IPv6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        Addresses::Unspecified | Addresses::Unix(_) => None,
    })
}

/// Reads exactly one v2 header from the start of `stream` (nothing after it) within `limit`.
pub(crate) async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Result<Option<SocketAddr>, ProxyError> {
    let read = async {
        let mut head = [0u8; 16];
        stream.read_exact(&mut head).await?;
        let [prefix @ .., len_hi, len_lo] = head;
        if !prefix.starts_with(PROTOCOL_PREFIX) {
            return Err(ProxyError::NotV2);
        }
        let total = head.len() + usize::from(u16::from_be_bytes([len_hi, len_lo]));
        if total > MAX_HEADER {
            return Err(ProxyError::TooLong(total));
        }
        let mut all = head.to_vec();
        all.resize(total, 0);
        if let Some(rest) = all.get_mut(head.len()..) {
            stream.read_exact(rest).await?;
        }
        source(&all)
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| ProxyError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(command: Command, from: &str, to: &str) -> Vec<u8> {
        let from: SocketAddr = from.parse().expect("addr");
        let to: SocketAddr = to.parse().expect("addr");
        Builder::with_addresses(Version::Two | command, Protocol::Stream, (from, to))
            .build()
            .expect("header")
    }

    #[tokio::test]
    async fn a_header_names_the_client_and_leaves_the_rest_unread() {
        let mut wire = built(Command::Proxy, "198.51.100.7:40000", "127.0.0.1:21");
        wire.extend_from_slice(b"USER alice\r\n");
        let mut reader = &wire[..];
        let got = read_header(&mut reader, Duration::from_secs(1))
            .await
            .expect("parse");
        assert_eq!(got, Some("198.51.100.7:40000".parse().expect("addr")));
        assert_eq!(reader, b"USER alice\r\n");
        let v6 = built(Command::Proxy, "[2001:db8::1]:5000", "[::1]:21");
        assert_eq!(source(&v6).expect("v6").map(|a| a.port()), Some(5000));
        let local = built(Command::Local, "10.0.0.1:1", "10.0.0.2:2");
        assert_eq!(source(&local).expect("local"), None);
    }

    #[tokio::test]
    async fn garbage_and_v1_headers_are_refused() {
        for bad in [
            &b"USER alice\r\n\r\n\r\n\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            let mut reader = bad;
            assert!(read_header(&mut reader, Duration::from_secs(1))
                .await
                .is_err());
        }
    }

    #[test]
    fn headers_sent_to_backends_parse_back() {
        let client: SocketAddr = "198.51.100.7:40000".parse().expect("addr");
        let gateway: SocketAddr = "[::ffff:10.0.0.1]:21".parse().expect("addr");
        let v2 = super::header(ProxyVersion::V2, Some((client, gateway))).expect("v2");
        assert_eq!(source(&v2).expect("parse"), Some(client));
        let v1 = super::header(ProxyVersion::V1, Some((client, gateway))).expect("v1");
        assert_eq!(v1, b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 21\r\n");
        assert_eq!(
            header(ProxyVersion::V1, None).expect("v1"),
            b"PROXY UNKNOWN\r\n"
        );
        assert_eq!(
            source(&header(ProxyVersion::V2, None).expect("v2")).expect("local"),
            None
        );
        assert_eq!(
            super::header(ProxyVersion::Off, Some((client, gateway))),
            None
        );
    }
}
