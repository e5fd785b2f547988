//! The data channel, as one machine: PASV and EPSV (a leased pool port), PORT and EPRT (the
//! gateway connects out to the client), EPSV ALL, and the transfer that uses the connection they
//! set up (`transfer`). Toward the backend the mode is the gateway's choice, whatever the
//! client's: passive by default (it asks for the backend's data port and connects at once), or
//! active for backends that only do that (`backend.data_mode`).
//!
//! It owns what only it uses (EPSV ALL, the connection set up and not yet used) and borrows the
//! rest: the client's connection, the login (for the backend), the security (for PROT).

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use super::client::ClientControl;
use super::login::Login;
use super::phase::Account;
use super::scanned::{Shape, Upload};
use super::secure::{Protection, Security};
use super::transfer::InFlight;
use super::Halt;
use super::{Answer, Context};
use crate::config::{BackendDataMode, Switch};
use crate::data::{BackendSide, BridgeParams, ClientSide, DataBridge, PoolError};
use crate::ftp::addr::{self, AddrError, EpsvArg};
use crate::ftp::{Direction, Line, Reply};
use crate::refusal::Refusal;

/// A passive data connection set up by PASV/EPSV (or an active one by PORT/EPRT) and not yet
/// used.
struct Pending {
    bridge: DataBridge,
    protection: Protection,
}

#[derive(Default)]
pub(super) struct DataChannel {
    /// After EPSV ALL only EPSV sets up data connections (RFC 2428 §4).
    epsv_all: bool,
    /// One data connection (and so at most one pool port) per session.
    pending: Option<Pending>,
    /// What the client set that changes the bytes a backend stores: a scanned upload must be
    /// stored as it was scanned (`session/scanned.rs`).
    shape: Shape,
}

/// What setting up a data connection borrows from the rest of the session.
pub(super) struct Parts<'a> {
    pub ctx: &'a Context,
    pub client: &'a mut ClientControl,
    pub login: &'a mut Login,
    pub security: &'a Security,
}

impl DataChannel {
    /// Each command, as it comes: what a scanned upload must know of REST, TYPE and MODE.
    pub(super) fn note(&mut self, line: &Line) {
        let arg = line.arg().trim_ascii();
        match line.name().as_str() {
            "REST" => self.shape.rest = arg != b"0",
            "TYPE" => {
                self.shape.binary = Some(matches!(arg.first(), Some(b'I' | b'i' | b'L' | b'l')))
            }
            "MODE" => self.shape.not_stream = !arg.eq_ignore_ascii_case(b"S"),
            _ => {}
        }
    }

    /// The connection set up and not used goes (QUIT).
    pub(super) fn close(&mut self) {
        self.pending = None;
    }

    pub(super) async fn pasv(&mut self, s: Parts<'_>) -> Result<Answer, Halt> {
        if self.epsv_all {
            let command = "PASV".into();
            return Err(Refusal::AfterEpsvAll { command }.into());
        }
        let ip = match s.ctx.external_ip.unwrap_or(s.client.local.ip()) {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        // RFC 2428 §4: PASV has no IPv6 form; EPSV is the command for this connection.
        let ip = ip.ok_or(Refusal::PasvNotIpv4)?;
        let port = self.open_passive(s).await?;
        let text = addr::format_pasv(SocketAddrV4::new(ip, port));
        Ok(Reply::new(227, &text).into())
    }

    pub(super) async fn epsv(
        &mut self,
        arg: Option<EpsvArg>,
        s: Parts<'_>,
    ) -> Result<Answer, Halt> {
        let family = addr::family_number(s.client.local.ip().to_canonical());
        match arg {
            None => return Err(Refusal::BadEpsvArgument.into()),
            Some(EpsvArg::All) => {
                self.epsv_all = true;
                return Ok(Reply::new(200, "EPSV ALL ok.").into());
            }
            Some(EpsvArg::Family(f)) if f != family => {
                return Err(Refusal::WrongFamily { family }.into());
            }
            Some(_) => {}
        }
        let port = self.open_passive(s).await?;
        Ok(Reply::new(229, &addr::format_epsv(port)).into())
    }

    /// PORT and EPRT (`command`, for replies and logs). The address must be the control
    /// connection's own peer and the port at least 1024: anything else would let a client aim
    /// the gateway at a third party (the FTP bounce attack, RFC 2577).
    pub(super) async fn active(
        &mut self,
        command: String,
        target: Result<SocketAddr, AddrError>,
        s: Parts<'_>,
    ) -> Result<Answer, Halt> {
        if s.ctx.settings.active.mode == Switch::Off {
            return Err(Refusal::ActiveDisabled { command }.into());
        }
        if self.epsv_all {
            return Err(Refusal::AfterEpsvAll { command }.into());
        }
        let target = match target {
            Ok(t) => t,
            Err(AddrError::EprtProtocol(_)) => {
                let family = addr::family_number(s.client.peer.ip().to_canonical());
                return Err(Refusal::WrongFamily { family }.into());
            }
            Err(error) => return Err(Refusal::BadActiveAddress { command, error }.into()),
        };
        let peer = s.client.peer.ip().to_canonical();
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
        self.prepare(&s).await?;
        let client = ClientSide::Active {
            target: SocketAddr::new(target.ip().to_canonical(), target.port()),
            source: s.client.local.ip(),
            ports: s.ctx.settings.active.source_ports.clone().map(|r| r.0),
        };
        self.start_bridge(client, s).await?;
        Ok(Reply::new(200, &format!("{command} command successful.")).into())
    }

    /// PASV and EPSV: lease a pool port for the client's address (waiting, bounded, while
    /// every port is pending for it) and start the bridge.
    async fn open_passive(&mut self, s: Parts<'_>) -> Result<u16, Halt> {
        self.prepare(&s).await?;
        let peer = s.client.peer.ip();
        let client = s.ctx.access.client_key(peer);
        let wait = s.ctx.settings.timeouts.passive_wait();
        let lease = match s.ctx.pool.lease(peer, client, wait).await {
            Ok(l) => l,
            Err(e @ PoolError::Exhausted { .. }) => return Err(Refusal::PoolFull(e).into()),
            Err(e @ PoolError::PerAddress(..)) => return Err(Refusal::PassivePerAddress(e).into()),
        };
        let port = lease.port();
        self.start_bridge(ClientSide::Passive(lease), s).await?;
        Ok(port)
    }

    /// Checks the client may set up a data connection and drops any earlier one: one data
    /// connection (and so at most one pool port) per session.
    async fn prepare(&mut self, s: &Parts<'_>) -> Result<(), Refusal> {
        if !s.login.phase().is_logged_in() {
            // No pool port for a client that has not logged in: the pool is a shared resource.
            return Err(Refusal::NotLoggedIn);
        }
        if let Some(old) = self.pending.take() {
            old.bridge.cancel().await;
        }
        Ok(())
    }

    /// Gets the backend's end of the data connection and starts the bridge.
    async fn start_bridge(&mut self, client: ClientSide, s: Parts<'_>) -> Result<(), Halt> {
        let siblings = s.login.identity().and_then(|who| s.security.siblings(who));
        let account = s.login.account().ok_or(Refusal::NotLoggedIn)?;
        let max_upload = s.ctx.policy(Some(account.route)).max_upload_bytes;
        let t = &s.ctx.settings.timeouts;
        let backend_tls = account.backend.data_tls();
        let backend = backend_data(s.ctx, account).await?;
        let params = BridgeParams {
            tls: s.security.data_config(),
            reuse: s.ctx.settings.tls.data_session_reuse,
            accept_timeout: t.data_connection(),
            handshake_timeout: t.tls_handshake(),
            stall: t.data_stall(),
            siblings,
            backend_tls,
            metrics: Arc::clone(&s.ctx.metrics),
            hash: s.ctx.audit.hashes(),
            max_upload,
        };
        self.pending = Some(Pending {
            bridge: DataBridge::spawn(client, backend, params),
            protection: s.security.protection(),
        });
        Ok(())
    }

    /// A transfer command: on the connection set up before it, at the protection it was set
    /// up with.
    pub(super) async fn transfer(
        &mut self,
        line: Line,
        direction: Direction,
        s: Parts<'_>,
    ) -> Result<Answer, Halt> {
        let pending = self.pending.take().ok_or(Refusal::NoDataConnection)?;
        let prot = s.security.protection();
        if pending.protection != prot {
            return Err(Refusal::ProtChanged.into());
        }
        let command = line.name();
        if prot == Protection::Clear && s.client.is_tls() && !s.ctx.settings.tls.allow_clear_data {
            return Err(Refusal::ClearTransfer { command }.into());
        }
        let mut bridge = pending.bridge;
        if let Some(Err(error)) = bridge.ended() {
            return Err(Refusal::DataLost { command, error }.into());
        }
        let session = s.login.session();
        let account = s.login.account().ok_or(Refusal::NotLoggedIn)?;
        let shape = self.shape;
        if matches!(command.as_str(), "RETR" | "STOR" | "STOU" | "APPE") {
            // These take the backend's pending REST offset, whatever it is.
            self.shape.rest = false;
        }
        if direction == Direction::Upload {
            if let Some(scanner) = s.ctx.scanners.for_route(&account.route.name) {
                let upload = Upload {
                    line,
                    bridge,
                    scanner,
                    shape,
                    session,
                };
                return upload.run(s.ctx, s.client, account).await;
            }
        }
        account.backend.send(&line.to_wire()).await?;
        bridge.start(direction);
        let first = account.backend.expect_reply().await?;
        s.client.send(&first).await?;
        if !first.is_preliminary() {
            // Refused (550 and the like): dropping the bridge releases the lease.
            return Ok(Answer::Sent);
        }
        let transfer = InFlight::new(line, direction, bridge, session);
        transfer.run(s.ctx, s.client, account).await?;
        Ok(Answer::Sent)
    }
}

/// The backend's end of the next data connection, as `backend.data_mode` says.
async fn backend_data(ctx: &Context, account: Account<'_>) -> Result<BackendSide, Halt> {
    let limit = ctx.settings.timeouts.backend_connect();
    let backend = account.backend;
    if account.route.settings.data_mode == BackendDataMode::Active {
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
