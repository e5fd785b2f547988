//! The steps up to a logged-in session whose data connections are encrypted: connect,
//! greeting, TLS (explicit or implicit), login, PBSZ/PROT P. Each stops the walk when a client
//! could not get past it.

use super::client::Ctl;
use super::data::{dial, said, DialError};
use super::tls::ProbeTls;
use super::{Level, Probe, Stop};

impl Probe<'_> {
    pub(super) async fn connect(&mut self) -> Result<Ctl, Stop> {
        let what = "connect";
        let opts = self.opts;
        let t = &opts.target;
        let to = match tokio::net::lookup_host((t.host.as_str(), t.port)).await {
            Ok(mut addrs) => addrs.next(),
            Err(_) => None,
        };
        let Some(to) = to else {
            let detail = format!("cannot resolve {}", t.host);
            return Err(self.fail(what, detail, "check the host name"));
        };
        match dial(to, self.opts.timeout).await {
            Ok((tcp, took)) => {
                let ctl = Ctl::new(tcp, self.opts.timeout)
                    .map_err(|e| self.fail(what, e.to_string(), "retry"))?;
                self.say(
                    Level::Ok,
                    what,
                    format!("{to} in {} ms", took.as_millis()),
                    None,
                );
                Ok(ctl)
            }
            Err(e) => {
                let fix = match e {
                    DialError::Refused => format!(
                        "nothing listens on {to}: is the server running, and port {} forwarded to it?",
                        to.port()
                    ),
                    _ => e.fix(to),
                };
                Err(self.fail(what, format!("{to}: {e}"), fix))
            }
        }
    }

    pub(super) async fn greeting(&mut self, ctl: &mut Ctl) -> Result<(), Stop> {
        let what = "greeting";
        match ctl.reply().await {
            Ok(r) if r.code() == 220 => {
                self.say(Level::Ok, what, said(&r), None);
                Ok(())
            }
            Ok(r) => Err(self.fail(what, said(&r), "the server refuses sessions now")),
            Err(e) => Err(self.fail(
                what,
                e.to_string(),
                "no 220: is this an FTP server, and implicit (ftps://) or explicit (ftp://) as it expects?",
            )),
        }
    }

    pub(super) async fn auth_tls(&mut self, ctl: &mut Ctl) -> Result<(), Stop> {
        match ctl.cmd("AUTH TLS").await {
            Ok(r) if r.code() == 234 => Ok(()),
            Ok(r) => Err(self.fail(
                "TLS",
                format!("AUTH TLS answered {}: the server does not offer FTPS", said(&r)),
                "enable TLS on the server (vsftpd: ssl_enable=YES) or put ftpsgate in front of it; the probe does not send a password in clear",
            )),
            Err(e) => Err(self.fail("TLS", format!("AUTH TLS: {e}"), "check the server")),
        }
    }

    pub(super) async fn handshake(&mut self, ctl: &mut Ctl, tls: &ProbeTls) -> Result<(), Stop> {
        let what = "TLS";
        let result = ctl.secure(tls.resuming.clone(), tls.name.clone()).await;
        let seen = tls.seen();
        let names = if seen.names.is_empty() {
            "no subjectAltName".to_string()
        } else {
            format!("names {}", seen.names.join(", "))
        };
        let host = &self.opts.target.host;
        if let Err(e) = result {
            let refused = seen.refused.clone().unwrap_or_else(|| e.to_string());
            let fix = if refused.contains("not valid for name")
                || refused.contains("NotValidForName")
            {
                format!("the certificate {names}, not {host}: connect by one of those names, or give the server a certificate for {host}")
            } else if refused.contains("UnknownIssuer") {
                "the certificate is not signed by a CA this machine trusts: give --ca FILE with the issuing CA (for a self-signed server, its own certificate)".to_string()
            } else if refused.contains("xpired") {
                "the certificate has expired: renew it".to_string()
            } else {
                "is TLS offered on this port, in this mode (ftps:// for implicit, ftp:// for explicit)?".to_string()
            };
            return Err(self.fail(
                what,
                format!("handshake failed: {refused}; the certificate {names}"),
                fix,
            ));
        }
        let (version, suite) = ctl.tls_summary().unwrap_or_default();
        let days = seen.days_left.unwrap_or_default();
        let detail = format!(
            "{version}, {suite}; {}, chain of {}, {names}, expires in {days} days",
            seen.subject, seen.chain_len
        );
        if self.opts.insecure {
            self.say(
                Level::Warn,
                what,
                format!("{detail}; NOT verified (--insecure)"),
                Some("verify it: --ca FILE".into()),
            );
        } else if days < 30 {
            self.say(
                Level::Warn,
                what,
                detail,
                Some("renew the server's certificate soon".into()),
            );
        } else {
            self.say(Level::Ok, what, format!("{detail}, verified"), None);
        }
        Ok(())
    }

    pub(super) async fn login(&mut self, ctl: &mut Ctl) -> Result<(), Stop> {
        let what = "login";
        let user = self.opts.target.user.clone();
        let mut reply = ctl.cmd(&format!("USER {user}")).await;
        if matches!(&reply, Ok(r) if r.code() == 331) {
            reply = ctl.cmd(&format!("PASS {}", self.opts.password)).await;
        }
        match reply {
            Ok(r) if r.code() == 230 => {
                self.say(Level::Ok, what, format!("{user}: {}", said(&r)), None);
                Ok(())
            }
            Ok(r) => Err(self.fail(
                what,
                format!("{user}: {}", said(&r)),
                "check the user name and FTPSGATE_PROBE_PASSWORD",
            )),
            Err(e) => Err(self.fail(what, e.to_string(), "check the server")),
        }
    }

    pub(super) async fn protect(&mut self, ctl: &mut Ctl) -> Result<(), Stop> {
        for cmd in ["PBSZ 0", "PROT P", "TYPE I"] {
            match ctl.cmd(cmd).await {
                Ok(r) if r.is_success() => {}
                Ok(r) => {
                    let detail = format!("{cmd} answered {}", said(&r));
                    return Err(self.fail("protection", detail, "the server must accept PBSZ 0 and PROT P (RFC 4217) to encrypt data connections"));
                }
                Err(e) => {
                    return Err(self.fail("protection", format!("{cmd}: {e}"), "check the server"))
                }
            }
        }
        self.say(
            Level::Ok,
            "protection",
            "PBSZ 0, PROT P: data connections encrypted".into(),
            None,
        );
        Ok(())
    }
}
