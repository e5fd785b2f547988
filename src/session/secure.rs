//! Securing the control connection (AUTH TLS and its handshake, RFC 4217) and choosing the
//! data connections' protection (PBSZ, PROT).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ServerConfig;
use tracing::{info, Span};

use super::client::ClientControl;
use super::refusal::{Halt, Refusal};
use super::{Context, Flow, Protection, Session};
use crate::ftp::{escaped, parse_pbsz, AuthMechanism, Command, ProtLevel};
use crate::metrics::Channel;
use crate::tls;

/// Enters the session in the registry its siblings' data connections look in (see
/// `tls::binding`), as *pending*, before its control handshake starts: the client may hand
/// that handshake's ticket to a sibling's data connection the moment it has it, before this
/// session's task runs again. Joined only after the handshake, rclone's check once had a data
/// connection offer such a ticket first, fail to resume, and wait out its deadline.
pub(super) fn join_siblings(
    ctx: &Context,
    tls: &tls::SessionTls,
    peer: SocketAddr,
) -> Option<tls::binding::Membership> {
    let ticketer = tls.ticketer.as_ref()?;
    let client = peer.ip().to_canonical();
    ctx.bindings.join(client, Arc::clone(ticketer))
}

/// The control connection's TLS handshake, counted, with the client certificate's subject (if
/// the client presented one) put on the session's span.
pub(super) async fn secure_control(
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

impl Session {
    pub(super) async fn auth(&mut self, cmd: &Command) -> Result<Flow, Halt> {
        if self.client.is_tls() {
            return Err(Refusal::AlreadyTls.into());
        }
        let mechanism = AuthMechanism::parse(&cmd.arg_text()).ok_or(Refusal::AuthMechanism)?;
        if self.client.has_pending_input() {
            return Err(Refusal::PipelinedAfterAuth.into());
        }
        self.reply(234, "AUTH TLS successful.").await?;
        self.membership = join_siblings(&self.ctx, &self.tls, self.client.peer);
        let config = Arc::clone(&self.tls.control);
        if let Err(e) = secure_control(&self.ctx, &mut self.client, config).await {
            info!(error = %e, "control TLS handshake failed");
            return Ok(Flow::Close);
        }
        if mechanism == AuthMechanism::TlsWithPrivateData {
            self.prot = Protection::Private;
        }
        Ok(Flow::Continue)
    }

    pub(super) async fn pbsz(&mut self, cmd: &Command) -> Result<(), Halt> {
        if !self.client.is_tls() {
            return Err(Refusal::NeedsTls { command: "PBSZ" }.into());
        }
        parse_pbsz(&cmd.arg_text()).ok_or(Refusal::PbszNotANumber)?;
        // RFC 4217 §8: TLS needs no protection buffer; the answer is always 0.
        Ok(self.reply(200, "PBSZ=0").await?)
    }

    pub(super) async fn prot(&mut self, cmd: &Command) -> Result<(), Halt> {
        // RFC 2228 puts PBSZ before PROT; like vsftpd, the gateway does not insist (Python's
        // ftplib sends `PROT C` alone), since TLS has no protection buffer to size anyway.
        if !self.client.is_tls() {
            return Err(Refusal::NeedsTls { command: "PROT" }.into());
        }
        match ProtLevel::parse(&cmd.arg_text()).ok_or(Refusal::ProtUnknown)? {
            ProtLevel::Private => {
                self.prot = Protection::Private;
                Ok(self.reply(200, "Protection level set to Private.").await?)
            }
            ProtLevel::Clear if self.ctx.settings.tls.allow_clear_data => {
                self.prot = Protection::Clear;
                Ok(self.reply(200, "Protection level set to Clear.").await?)
            }
            ProtLevel::Clear => Err(Refusal::ClearProt.into()),
            ProtLevel::Safe | ProtLevel::Confidential => Err(Refusal::ProtUnsupported.into()),
        }
    }
}
