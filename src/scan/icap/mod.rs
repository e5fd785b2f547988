//! Placeholder for the ICAP client (being written on its own branch): it refuses every scan,
//! so nothing passes unscanned until the real client replaces this file.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tokio::io::AsyncRead;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IcapUrl {
    host: String,
    port: u16,
    service: String,
}

impl FromStr for IcapUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("icap://")
            .ok_or("icap://host[:port]/service")?;
        let (hostport, service) = rest.split_once('/').ok_or("icap://host[:port]/service")?;
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| "bad port")?),
            None => (hostport, 1344),
        };
        Ok(IcapUrl {
            host: host.into(),
            port,
            service: service.into(),
        })
    }
}

impl fmt::Display for IcapUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "icap://{}:{}/{}", self.host, self.port, self.service)
    }
}

impl<'de> Deserialize<'de> for IcapUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for IcapUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug)]
pub(crate) enum Verdict {
    Clean,
    Infected { threat: String },
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ScanError {
    #[error("the ICAP server cannot be reached")]
    Unreachable,
}

#[derive(Debug)]
pub(crate) struct IcapClient {
    url: IcapUrl,
}

impl IcapClient {
    pub(crate) fn new(url: IcapUrl, _timeout: Duration) -> IcapClient {
        IcapClient { url }
    }
    pub(crate) async fn scan<R: AsyncRead + Unpin>(
        &self,
        _name: &str,
        _len: u64,
        _body: R,
    ) -> Result<Verdict, ScanError> {
        Err(ScanError::Unreachable)
    }
    pub(crate) fn url(&self) -> &IcapUrl {
        &self.url
    }
}
