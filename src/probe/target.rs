//! What `ftpsgate probe` is pointed at: `ftp://USER@HOST:PORT/` (explicit FTPS, port 21 by
//! default) or `ftps://USER@HOST:PORT/` (implicit FTPS, port 990). Pure, so it is unit-tested.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub implicit: bool,
    pub user: String,
    /// A DNS name or an IP address (without brackets): what the certificate must name.
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let bad =
            |why: &str| format!("`{url}`: {why} (want ftp://USER@HOST[:PORT]/ or ftps://...)");
        let (implicit, rest) = if let Some(r) = url.strip_prefix("ftp://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("ftps://") {
            (true, r)
        } else {
            return Err(bad("not an ftp:// or ftps:// URL"));
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let Some((user, hostport)) = authority.rsplit_once('@') else {
            return Err(bad("no USER@"));
        };
        if user.is_empty() {
            return Err(bad("empty user"));
        }
        if user.contains(':') {
            return Err(bad(
                "a password in the URL; use FTPSGATE_PROBE_PASSWORD or the prompt",
            ));
        }
        let default_port = if implicit { 990 } else { 21 };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return Err(bad("unclosed ["));
            };
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("bad port"))?,
        };
        Ok(Target {
            implicit,
            user: user.to_string(),
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.implicit { "ftps" } else { "ftp" };
        if self.host.contains(':') {
            write!(f, "{scheme}://{}@[{}]:{}/", self.user, self.host, self.port)
        } else {
            write!(f, "{scheme}://{}@{}:{}/", self.user, self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_mode_user_host_and_port() {
        let t = Target::parse("ftp://alice@ftp.example.com/").unwrap();
        assert_eq!(
            (t.implicit, t.user.as_str(), t.host.as_str(), t.port),
            (false, "alice", "ftp.example.com", 21)
        );
        let t = Target::parse("ftps://bob@203.0.113.1:2990").unwrap();
        assert_eq!((t.implicit, t.port), (true, 2990));
        let t = Target::parse("ftps://carol@[::1]/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 990));
        assert_eq!(t.to_string(), "ftps://carol@[::1]:990/");
        let t = Target::parse("ftp://dave@example.com@[2001:db8::1]:21/dir").unwrap();
        assert_eq!(
            (t.user.as_str(), t.host.as_str()),
            ("dave@example.com", "2001:db8::1")
        );
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, why) in [
            ("http://a@b/", "not an ftp"),
            ("ftp://host/", "no USER@"),
            ("ftp://a:secret@host/", "a password in the URL"),
            ("ftp://a@host:0/", "bad port"),
            ("ftp://a@host:99999/", "bad port"),
            ("ftp://a@/", "no host"),
            ("ftp://a@[::1/", "unclosed"),
        ] {
            let e = Target::parse(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
