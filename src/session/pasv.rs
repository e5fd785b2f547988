//! Setting up a data connection: PASV and EPSV (a leased pool port), PORT and EPRT (the
//! gateway connects out to the client). Toward the backend the mode is the gateway's choice,
//! whatever the client's: passive by default (it asks for the backend's data port and connects
//! at once), or active for backends that only do that (`backend.data_mode`).

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use super::refusal::{Halt, Refusal};
use super::{Pending, Protection, Session};
use crate::config::{BackendDataMode, Switch};
use crate::data::{BackendSide, BridgeParams, ClientSide, DataBridge, PoolError};
use crate::ftp::addr::{self, EpsvArg};
use crate::ftp::{Command, Verb};

impl Session {
    pub(super) async fn pasv(&mut self) -> Result<(), Halt> {
        if self.epsv_all {
            let command = "PASV".into();
            return Err(Refusal::AfterEpsvAll { command }.into());
        }
        let ip = match self.ctx.external_ip.unwrap_or(self.client.local.ip()) {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        // RFC 2428 §4: PASV has no IPv6 form; EPSV is the command for this connection.
        let ip = ip.ok_or(Refusal::PasvNotIpv4)?;
        let port = self.open_passive().await?;
        let text = addr::format_pasv(SocketAddrV4::new(ip, port));
        Ok(self.reply(227, &text).await?)
    }

    pub(super) async fn epsv(&mut self, cmd: &Command) -> Result<(), Halt> {
        let family = addr::family_number(self.client.local.ip().to_canonical());
        match EpsvArg::parse(&cmd.arg_text()) {
            None => return Err(Refusal::BadEpsvArgument.into()),
            Some(EpsvArg::All) => {
                self.epsv_all = true;
                return Ok(self.reply(200, "EPSV ALL ok.").await?);
            }
            Some(EpsvArg::Family(f)) if f != family => {
                return Err(Refusal::WrongFamily { family }.into());
            }
            Some(_) => {}
        }
        let port = self.open_passive().await?;
        Ok(self.reply(229, &addr::format_epsv(port)).await?)
    }

    /// PORT and EPRT. The address must be the control connection's own peer and the port at
    /// least 1024: anything else would let a client aim the gateway at a third party (the FTP
    /// bounce attack, RFC 2577).
    pub(super) async fn active(&mut self, cmd: &Command) -> Result<(), Halt> {
        let command = cmd.name().to_string();
        if self.ctx.settings.active.mode == Switch::Off {
            return Err(Refusal::ActiveDisabled { command }.into());
        }
        if self.epsv_all {
            return Err(Refusal::AfterEpsvAll { command }.into());
        }
        let parsed = match cmd.verb() {
            Verb::Eprt => addr::parse_eprt(&cmd.arg_text()),
            _ => addr::parse_port(&cmd.arg_text()),
        };
        let target = match parsed {
            Ok(t) => t,
            Err(addr::AddrError::EprtProtocol(_)) => {
                let family = addr::family_number(self.client.peer.ip().to_canonical());
                return Err(Refusal::WrongFamily { family }.into());
            }
            Err(error) => return Err(Refusal::BadActiveAddress { command, error }.into()),
        };
        let peer = self.client.peer.ip().to_canonical();
        if target.ip().to_canonical() != peer {
            return Err(Refusal::Bounce {
                command,
                target,
                peer,
            }
            .into());
        }
        if target.port() < 1024 {
            return Err(Refusal::LowPort { command, target }.into());
        }
        self.prepare_data().await?;
        let client = ClientSide::Active {
            target: SocketAddr::new(target.ip().to_canonical(), target.port()),
            source: self.client.local.ip(),
            ports: self.ctx.settings.active.source_ports.clone().map(|r| r.0),
        };
        self.start_bridge(client).await?;
        Ok(self
            .reply(200, &format!("{command} command successful."))
            .await?)
    }

    /// PASV and EPSV: lease a pool port and start the bridge.
    async fn open_passive(&mut self) -> Result<u16, Halt> {
        self.prepare_data().await?;
        let client = self.ctx.access.client_key(self.client.peer.ip());
        let (lease, listener) = match self.ctx.pool.lease(self.client.local.ip(), client) {
            Ok(l) => l,
            Err(e @ PoolError::Exhausted(..)) => return Err(Refusal::PoolFull(e).into()),
            Err(e @ PoolError::PerAddress(..)) => return Err(Refusal::PassivePerAddress(e).into()),
        };
        let port = lease.port();
        self.start_bridge(ClientSide::Passive { lease, listener })
            .await?;
        Ok(port)
    }

    /// Checks the client may set up a data connection and drops any earlier one: one data
    /// connection (and so at most one pool port) per session.
    async fn prepare_data(&mut self) -> Result<(), Refusal> {
        if !self.phase.is_logged_in() {
            // No pool port for a client that has not logged in: the pool is a shared resource.
            return Err(Refusal::NotLoggedIn);
        }
        if let Some(old) = self.pending.take() {
            old.bridge.cancel().await;
        }
        Ok(())
    }

    /// Gets the backend's end of the data connection and starts the bridge.
    async fn start_bridge(&mut self, client: ClientSide) -> Result<(), Halt> {
        let backend = self.backend_data().await?;
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
            hash: self.ctx.audit.hashes(),
        };
        self.pending = Some(Pending {
            bridge: DataBridge::spawn(client, backend, params),
            protection: self.prot,
        });
        Ok(())
    }

    /// The backend's end of the next data connection, as `backend.data_mode` says.
    async fn backend_data(&mut self) -> Result<BackendSide, Halt> {
        let limit = self.ctx.settings.timeouts.backend_connect();
        let link = self.link().await?;
        let backend = &mut link.backend;
        if link.lease.upstream().settings.data_mode == BackendDataMode::Active {
            let ip = backend.peer().ip();
            let listener = backend.listen_active().await?.map_err(Refusal::Backend)?;
            return Ok(BackendSide::Listening(listener, ip));
        }
        let port = backend.open_passive().await?.map_err(Refusal::from)?;
        match backend.connect_data(port, limit).await {
            Ok(tcp) => Ok(BackendSide::Connected(tcp)),
            Err(error) => Err(Refusal::BackendDataPort { port, error }.into()),
        }
    }
}
