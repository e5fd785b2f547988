//! The backend checks: each address of the default backend and of every route reached, its
//! greeting and TLS, and (with a login) its passive mode as the gateway will use it.

use super::{check, with_fix, Check, Credentials, Level};
use crate::backend::{self, Backend, BackendError};
use crate::config::{BackendSettings, HostPort, Settings};
use crate::ftp::addr;
use crate::tls::backend::BackendTls;

/// Every address of the default backend and of each route.
pub(super) async fn backend_checks(settings: &Settings, login: Option<&Credentials>) -> Vec<Check> {
    let mut out = Vec::new();
    let backends = std::iter::once(("backend".to_string(), &settings.backend)).chain(
        settings
            .routes
            .iter()
            .map(|(n, b)| (format!("routes.{n}"), b)),
    );
    for (key, b) in backends {
        let tls = match BackendTls::from_settings(b) {
            Ok(t) => t,
            Err(e) => {
                out.push(with_fix(
                    check(Level::Fail, "backend", format!("[{key}] TLS settings: {e}")),
                    format!("fix the [{key}] TLS keys (ca, pin_sha256, client_cert/client_key)"),
                ));
                continue;
            }
        };
        for address in &b.addresses {
            // The default backend's lines name the address alone; a route's say which route.
            let label = if key == "backend" {
                address.to_string()
            } else {
                format!("{key} {address}")
            };
            let to = Candidate {
                settings: b,
                tls: tls.as_ref(),
                address,
                label: &label,
            };
            out.extend(address_checks(settings, to, login).await);
        }
    }
    out
}

/// One backend address to check.
struct Candidate<'a> {
    settings: &'a BackendSettings,
    tls: Option<&'a BackendTls>,
    address: &'a HostPort,
    /// How the lines name it.
    label: &'a str,
}

async fn address_checks(
    settings: &Settings,
    to: Candidate<'_>,
    login: Option<&Credentials>,
) -> Vec<Check> {
    let mut out = Vec::new();
    let what = "backend";
    let address = to.label;
    let t = &settings.timeouts;
    let timeouts = (t.backend_connect(), t.backend_reply());
    let connected = backend::dial(to.settings, to.tls, to.address, None, timeouts, None).await;
    let (mut backend, greeting) = match connected {
        Ok(b) => b,
        Err(e) => {
            out.push(with_fix(
                check(Level::Fail, what, format!("{address}: {e}")),
                "check the address and tls keys, and that the server runs and is reachable from this host",
            ));
            return out;
        }
    };
    match greeting.last() {
        Some(g) if g.is_success() => out.push(check(
            Level::Ok,
            what,
            format!("{address} answered {} {}", g.code(), g.text()),
        )),
        other => {
            let said = other.map_or("nothing".to_string(), |g| {
                format!("{} {}", g.code(), g.text())
            });
            out.push(with_fix(
                check(Level::Fail, what, format!("{address} greeted with {said}")),
                "the server refuses sessions; see its own log",
            ));
            return out;
        }
    }
    if backend.proftpd_on_tls13(&greeting) {
        out.push(with_fix(
            check(
                Level::Warn,
                "backend TLS",
                format!("{address} greets as ProFTPD and speaks TLS 1.3: it refuses a session's third data connection and every third after"),
            ),
            "set max_tls_version = \"1.2\" in its table (docs/configuration.md, \"FTPS backends\")",
        ));
    }
    if let Some(pin) = backend.certificate_pin() {
        let text = format!(
            "{address} presents a certificate with SHA-256 {pin} (`pin_sha256 = \"{pin}\"` in its table pins it)"
        );
        out.push(check(Level::Ok, "backend certificate", text));
    }
    let Some(login) = login else {
        out.push(with_fix(
            check(
                Level::Warn,
                "backend passive mode",
                "not checked: EPSV and PASV need a login",
            ),
            "run doctor with --user and FTPSGATE_DOCTOR_PASSWORD to check them",
        ));
        return out;
    };
    out.extend(passive_checks(&mut backend, login, settings).await);
    let _ = backend.send(b"QUIT\r\n").await;
    out
}

async fn passive_checks(
    backend: &mut Backend,
    login: &Credentials,
    settings: &Settings,
) -> Vec<Check> {
    let what = "backend passive mode";
    let mut out = Vec::new();
    let logged_in = async {
        backend
            .send(format!("USER {}\r\n", login.user).as_bytes())
            .await?;
        let mut reply = backend.expect_reply().await?;
        if reply.code() == 331 {
            backend
                .send(format!("PASS {}\r\n", login.password).as_bytes())
                .await?;
            reply = backend.expect_reply().await?;
        }
        if reply.code() == 230 {
            backend.protect_data().await?;
        }
        Ok::<_, BackendError>(reply)
    }
    .await;
    match logged_in {
        Ok(r) if r.code() == 230 => {}
        Ok(r) => {
            out.push(with_fix(
                check(
                    Level::Fail,
                    what,
                    format!("login refused: {} {}", r.code(), r.text()),
                ),
                "check --user and FTPSGATE_DOCTOR_PASSWORD",
            ));
            return out;
        }
        Err(e) => {
            out.push(check(Level::Fail, what, format!("login: {e}")));
            return out;
        }
    }
    let limit = settings.timeouts.backend_connect();
    for command in ["EPSV", "PASV"] {
        let asked = async {
            backend.send(format!("{command}\r\n").as_bytes()).await?;
            backend.expect_reply().await
        }
        .await;
        let reply = match asked {
            Ok(r) => r,
            Err(e) => {
                out.push(check(Level::Fail, what, format!("{command}: {e}")));
                return out;
            }
        };
        let port = match (command, reply.code()) {
            ("EPSV", 229) => addr::parse_epsv(&reply.text()).map_err(|e| e.to_string()),
            ("PASV", 227) => addr::parse_pasv(&reply.text())
                .map(|a| {
                    if a.ip() != &backend.peer().ip() {
                        out.push(check(
                            Level::Ok,
                            what,
                            format!(
                                "PASV names {}, not the control address {}; the gateway connects to the control address anyway",
                                a.ip(),
                                backend.peer().ip()
                            ),
                        ));
                    }
                    a.port()
                })
                .map_err(|e| e.to_string()),
            _ => Err(format!("{} {}", reply.code(), reply.text())),
        };
        let port = match port {
            Ok(p) => p,
            Err(e) => {
                let level = if command == "EPSV" {
                    Level::Warn
                } else {
                    Level::Fail
                };
                out.push(with_fix(
                    check(level, what, format!("{command} failed: {e}")),
                    if command == "EPSV" {
                        "the gateway falls back to PASV; enable EPSV on the server for IPv6"
                    } else {
                        "enable passive mode on the server, or set backend.data_mode = \"active\""
                    },
                ));
                continue;
            }
        };
        match backend.connect_data(port, limit).await {
            Ok(_) => out.push(check(
                Level::Ok,
                what,
                format!("{command} gave port {port}, reachable from here"),
            )),
            Err(e) => out.push(with_fix(
                check(
                    Level::Fail,
                    what,
                    format!("{command} gave port {port}, but connecting failed: {e}"),
                ),
                "open the server's passive port range between the gateway and the server",
            )),
        }
    }
    out
}
