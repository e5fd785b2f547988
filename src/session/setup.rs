//! Setting up a data connection: PASV and EPSV (a leased pool port), PORT and EPRT (the
//! gateway connects out to the client). Toward the backend the mode is the gateway's choice,
//! whatever the client's: passive by default (it asks for the backend's data port and connects
//! at once), or active for backends that only do that (`backend.data_mode`).

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use tracing::{info, warn};

use super::{Fatal, Pending, Protection, Session};
use crate::config::{BackendDataMode, Switch};
use crate::data::{BackendSide, BridgeParams, ClientSide, DataBridge, PoolError};
use crate::ftp::addr::{self, EpsvArg};
use crate::ftp::{Command, Reply, Verb};
use crate::metrics::Reason;

impl Session {
    pub(super) async fn pasv(&mut self) -> Result<(), Fatal> {
        if self.epsv_all {
            return Ok(self.reply(501, "PASV not allowed after EPSV ALL.").await?);
        }
        let ip = match self.ctx.external_ip.unwrap_or(self.client.local.ip()) {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        let Some(ip) = ip else {
            // RFC 2428 §4: PASV has no IPv6 form; EPSV is the command for this connection.
            return Ok(self
                .reply(522, "Network protocol not supported, use EPSV (2).")
                .await?);
        };
        if let Some(port) = self.open_passive().await? {
            let text = addr::format_pasv(SocketAddrV4::new(ip, port));
            self.reply(227, &text).await?;
        }
        Ok(())
    }

    pub(super) async fn epsv(&mut self, cmd: &Command) -> Result<(), Fatal> {
        let family = addr::family_number(self.client.local.ip().to_canonical());
        match EpsvArg::parse(&cmd.arg_text()) {
            None => return Ok(self.reply(501, "Bad EPSV argument.").await?),
            Some(EpsvArg::All) => {
                self.epsv_all = true;
                return Ok(self.reply(200, "EPSV ALL ok.").await?);
            }
            Some(EpsvArg::Family(f)) if f != family => {
                let text = format!("Network protocol not supported, use ({family})");
                return Ok(self.reply(522, &text).await?);
            }
            Some(_) => {}
        }
        if let Some(port) = self.open_passive().await? {
            self.reply(229, &addr::format_epsv(port)).await?;
        }
        Ok(())
    }

    /// PORT and EPRT. The address must be the control connection's own peer and the port at
    /// least 1024: anything else would let a client aim the gateway at a third party (the FTP
    /// bounce attack, RFC 2577).
    pub(super) async fn active(&mut self, cmd: &Command) -> Result<(), Fatal> {
        let name = cmd.name();
        if self.ctx.settings.active.mode == Switch::Off {
            self.ctx.metrics.refused(Reason::port_refused);
            info!(command = %name, "active mode refused: disabled");
            return Ok(self
                .reply(502, "Active mode is disabled here; use PASV or EPSV.")
                .await?);
        }
        if self.epsv_all {
            return Ok(self
                .reply(501, &format!("{name} not allowed after EPSV ALL."))
                .await?);
        }
        let parsed = match cmd.verb() {
            Verb::Eprt => addr::parse_eprt(&cmd.arg_text()),
            _ => addr::parse_port(&cmd.arg_text()),
        };
        let target = match parsed {
            Ok(t) => t,
            Err(addr::AddrError::EprtProtocol(_)) => {
                let family = addr::family_number(self.client.peer.ip().to_canonical());
                let text = format!("Network protocol not supported, use ({family})");
                return Ok(self.reply(522, &text).await?);
            }
            Err(e) => {
                info!(command = %name, error = %e, "refused malformed active-mode address");
                return Ok(self
                    .reply(501, &format!("Syntax error in {name}: {e}."))
                    .await?);
            }
        };
        let peer = self.client.peer.ip().to_canonical();
        if target.ip().to_canonical() != peer {
            self.ctx.metrics.refused(Reason::port_refused);
            warn!(command = %name, %target, %peer, "refused active-mode address: not the client's own (FTP bounce)");
            return Ok(self
                .reply(
                    500,
                    "Illegal address: data connections go to your own address only.",
                )
                .await?);
        }
        if target.port() < 1024 {
            self.ctx.metrics.refused(Reason::port_refused);
            warn!(command = %name, %target, "refused active-mode port below 1024 (FTP bounce)");
            return Ok(self
                .reply(
                    504,
                    "Command not implemented for that parameter: port below 1024.",
                )
                .await?);
        }
        if !self.prepare_data().await? {
            return Ok(());
        }
        let client = ClientSide::Active {
            target: SocketAddr::new(target.ip().to_canonical(), target.port()),
            source: self.client.local.ip(),
            ports: self.ctx.settings.active.source_ports.clone().map(|r| r.0),
        };
        if self.start_bridge(client).await? {
            self.reply(200, &format!("{name} command successful."))
                .await?;
        }
        Ok(())
    }

    /// PASV and EPSV: lease a pool port and start the bridge. `None` when a refusal was sent.
    async fn open_passive(&mut self) -> Result<Option<u16>, Fatal> {
        if !self.prepare_data().await? {
            return Ok(None);
        }
        let client = self.client.peer.ip().to_canonical();
        let (lease, listener) = match self.ctx.pool.lease(self.client.local.ip(), client) {
            Ok(l) => l,
            Err(e @ PoolError::Exhausted(..)) => {
                warn!(error = %e, "passive pool exhausted");
                self.ctx.metrics.refused(Reason::pool_full);
                self.reply(425, "No passive port available; try again later.")
                    .await?;
                return Ok(None);
            }
            Err(e @ PoolError::PerAddress(..)) => {
                warn!(error = %e, "passive port refused: per-address limit");
                self.ctx.metrics.refused(Reason::passive_per_ip);
                self.reply(
                    425,
                    "Too many passive ports held from your address; try again later.",
                )
                .await?;
                return Ok(None);
            }
        };
        let port = lease.port();
        let started = self
            .start_bridge(ClientSide::Passive { lease, listener })
            .await?;
        Ok(started.then_some(port))
    }

    /// Checks the client may set up a data connection and drops any earlier one: one data
    /// connection (and so at most one pool port) per session. False when a refusal was sent.
    async fn prepare_data(&mut self) -> Result<bool, Fatal> {
        if !self.phase.is_logged_in() {
            // No pool port for a client that has not logged in: the pool is a shared resource.
            self.reply(530, "Please log in with USER and PASS first.")
                .await?;
            return Ok(false);
        }
        if let Some(old) = self.pending.take() {
            old.bridge.cancel().await;
        }
        Ok(true)
    }

    /// Gets the backend's passive data port, connects to it, and starts the bridge. False when
    /// a refusal was sent.
    async fn start_bridge(&mut self, client: ClientSide) -> Result<bool, Fatal> {
        let Some(backend) = self.backend_data().await? else {
            return Ok(false);
        };
        let t = &self.ctx.settings.timeouts;
        let params = BridgeParams {
            client_ip: self.client.peer.ip(),
            tls: (self.prot == Protection::Private).then(|| Arc::clone(&self.tls.data)),
            reuse: self.ctx.settings.tls.data_session_reuse,
            accept_timeout: t.data_connection(),
            handshake_timeout: t.tls_handshake(),
            stall: t.data_stall(),
            siblings: self.siblings(),
            backend_tls: self.backend().await?.data_tls(),
            metrics: Arc::clone(&self.ctx.metrics),
            trusted: self.ctx.settings.proxy_protocol.trusted.clone(),
        };
        self.pending = Some(Pending {
            bridge: DataBridge::spawn(client, backend, params),
            protection: self.prot,
        });
        Ok(true)
    }

    /// The backend's end of the next data connection, as `backend.data_mode` says. `None` when
    /// a refusal was sent.
    async fn backend_data(&mut self) -> Result<Option<BackendSide>, Fatal> {
        let limit = self.ctx.settings.timeouts.backend_connect();
        let link = self.link().await?;
        let active = link.lease.upstream().settings.data_mode == BackendDataMode::Active;
        let backend = &mut link.backend;
        let opened = if active {
            let ip = backend.peer().ip();
            backend
                .listen_active()
                .await?
                .map(|listener| BackendSide::Listening(listener, ip))
        } else {
            match backend.open_passive().await? {
                Err(refusal) => Err(refusal),
                Ok(port) => match backend.connect_data(port, limit).await {
                    Ok(tcp) => Ok(BackendSide::Connected(tcp)),
                    Err(e) => {
                        warn!(error = %e, port, "cannot reach the backend's data port");
                        Err(Reply::new(425, "Can't open data connection to the server."))
                    }
                },
            }
        };
        match opened {
            Ok(side) => Ok(Some(side)),
            Err(refusal) => {
                self.client.send(&refusal).await?;
                Ok(None)
            }
        }
    }
}
