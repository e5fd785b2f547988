//! The control channel's security, as one machine: AUTH TLS and its handshake (RFC 4217), PBSZ
//! and PROT (the data connections' protection), CCC and the other RFC 2228 mechanisms (refused),
//! and the session's place among the sessions whose data connections may resume each other's
//! TLS sessions. It owns what it decides (the session's TLS configs, the protection level, the
//! membership) and borrows only the client's connection, which AUTH upgrades in place.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ServerConfig;
use tracing::{info, Span};

use super::client::ClientControl;
use super::Halt;
use super::{Answer, Context};
use crate::ftp::{escaped, AuthMechanism, ProtLevel, Reply};
use crate::metrics::Channel;
use crate::refusal::Refusal;
use crate::tls;
use crate::tls::binding::{Identity, Membership, Siblings};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protection {
    Clear,
    Private,
}

pub(super) struct Security {
    /// This session's own TLS configs, for its control and data handshakes.
    tls: tls::SessionTls,
    prot: Protection,
    /// Once the control connection is TLS: the session's place among the sessions whose data
    /// connections may resume each other's TLS sessions (see [`tls::binding`]).
    membership: Option<Membership>,
}

impl Security {
    /// Implicit FTPS protects the data channel from the start, as clients expect of it (none
    /// waits to send PROT P before its first transfer).
    pub(super) fn new(tls: tls::SessionTls, implicit: bool) -> Security {
        let prot = if implicit {
            Protection::Private
        } else {
            Protection::Clear
        };
        Security {
            tls,
            prot,
            membership: None,
        }
    }

    pub(super) fn protection(&self) -> Protection {
        self.prot
    }

    /// The TLS config for a data connection at the current protection level; `None` at
    /// PROT C.
    pub(super) fn data_config(&self) -> Option<Arc<ServerConfig>> {
        (self.prot == Protection::Private).then(|| Arc::clone(&self.tls.data))
    }

    /// The session logged in as `who`: its siblings may now resume its TLS sessions.
    pub(super) fn logged_in(&self, who: Identity) {
        if let Some(membership) = &self.membership {
            membership.logged_in(who);
        }
    }

    /// What a data connection of the session logged in as `who` needs to accept its
    /// siblings' TLS sessions.
    pub(super) fn siblings(&self, who: Identity) -> Option<Siblings> {
        Some(self.membership.as_ref()?.siblings(who))
    }

    /// AUTH: 234, then the handshake; a client whose handshake fails is gone.
    pub(super) async fn auth(
        &mut self,
        mechanism: Option<AuthMechanism>,
        ctx: &Context,
        client: &mut ClientControl,
    ) -> Result<Answer, Halt> {
        if client.is_tls() {
            return Err(Refusal::AlreadyTls.into());
        }
        let mechanism = mechanism.ok_or(Refusal::AuthMechanism)?;
        if client.has_pending_input() {
            return Err(Refusal::PipelinedAfterAuth.into());
        }
        client
            .send(&Reply::new(234, "AUTH TLS successful."))
            .await?;
        if let Err(e) = self.handshake(ctx, client).await {
            info!(error = %e, "control TLS handshake failed");
            return Ok(Answer::Close(None));
        }
        if mechanism == AuthMechanism::TlsWithPrivateData {
            self.prot = Protection::Private;
        }
        Ok(Answer::Sent)
    }

    pub(super) fn pbsz(&self, size: Option<u32>, client: &ClientControl) -> Result<Answer, Halt> {
        if !client.is_tls() {
            return Err(Refusal::NeedsTls { command: "PBSZ" }.into());
        }
        size.ok_or(Refusal::PbszNotANumber)?;
        // RFC 4217 §8: TLS needs no protection buffer; the answer is always 0.
        Ok(Reply::new(200, "PBSZ=0").into())
    }

    pub(super) fn prot(
        &mut self,
        level: Option<ProtLevel>,
        ctx: &Context,
        client: &ClientControl,
    ) -> Result<Answer, Halt> {
        // RFC 2228 puts PBSZ before PROT; like vsftpd, the gateway does not insist (Python's
        // ftplib sends `PROT C` alone), since TLS has no protection buffer to size anyway.
        if !client.is_tls() {
            return Err(Refusal::NeedsTls { command: "PROT" }.into());
        }
        match level.ok_or(Refusal::ProtUnknown)? {
            ProtLevel::Private => {
                self.prot = Protection::Private;
                Ok(Reply::new(200, "Protection level set to Private.").into())
            }
            ProtLevel::Clear if ctx.settings.tls.allow_clear_data => {
                self.prot = Protection::Clear;
                Ok(Reply::new(200, "Protection level set to Clear.").into())
            }
            ProtLevel::Clear => Err(Refusal::ClearProt.into()),
            ProtLevel::Safe | ProtLevel::Confidential => Err(Refusal::ProtUnsupported.into()),
        }
    }

    /// The control connection's handshake (at the first byte for implicit FTPS, after AUTH's
    /// 234 for explicit), with the session entered among its siblings first (`join_siblings`).
    pub(super) async fn handshake(
        &mut self,
        ctx: &Context,
        client: &mut ClientControl,
    ) -> std::io::Result<()> {
        self.join_siblings(ctx, client.peer);
        let config = Arc::clone(&self.tls.control);
        secure_control(ctx, client, config).await
    }

    /// Enters the session in the registry its siblings' data connections look in (see
    /// `tls::binding`), as *pending*, before its control handshake starts: the client may hand
    /// that handshake's ticket to a sibling's data connection the moment it has it, before
    /// this session's task runs again. Joined only after the handshake, rclone's check once
    /// had a data connection offer such a ticket first, fail to resume, and wait out its
    /// deadline.
    fn join_siblings(&mut self, ctx: &Context, peer: SocketAddr) {
        self.membership = self.tls.ticketer.as_ref().and_then(|ticketer| {
            let client = peer.ip().to_canonical();
            ctx.bindings.join(client, Arc::clone(ticketer))
        });
    }
}

/// The control connection's TLS handshake, counted, with the client certificate's subject (if
/// the client presented one) put on the session's span.
async fn secure_control(
    ctx: &Context,
    client: &mut ClientControl,
    config: Arc<ServerConfig>,
) -> std::io::Result<()> {
    let result = client
        .upgrade(config, ctx.settings.timeouts.tls_handshake())
        .await;
    let resumed = result
        .as_ref()
        .ok()
        .map(|()| client.tls_info().is_some_and(|(_, resumed)| resumed));
    ctx.metrics.handshake(Channel::control, resumed);
    if let Some(subject) = client.peer_subject().map(|s| escaped(&s)) {
        Span::current().record("client_cert", subject.as_str());
        info!(subject, "client certificate accepted");
    }
    result
}
