//! Each refusal's log line (and what its audit record quotes), decided per variant like its
//! reply and its count (see the parent module): a warning for what looks like an attack or a
//! fault in the deployment, information for the rest, nothing for an ordinary mistake a client
//! corrects.

use tracing::{info, warn};

use super::Refusal;
use crate::ftp::escaped;
use crate::policy::Denied;

impl Refusal {
    /// The log line: a warning for what looks like an attack or a fault in the deployment,
    /// information for the rest. Refusals of ordinary mistakes are not logged.
    pub(crate) fn log(&self) {
        use Refusal::*;
        match self {
            BadLine(e) => info!(error = %e, "refused client line"),
            Unrecognized(e) => info!(error = %e, "refused client line"),
            TlsRequired { command } => info!(%command, "refused before AUTH TLS"),
            PipelinedAfterAuth => warn!("client pipelined plaintext after AUTH TLS; closing"),
            ClearProt => info!("PROT C refused by policy"),
            ClearTransfer { command } => info!(%command, "clear data connection refused"),
            HostElsewhere { route, .. } => {
                info!(%route, "HOST refused: an earlier rule chose another route")
            }
            UserElsewhere { wanted, route } => {
                info!(%wanted, %route, "USER suffix refused: the route is already chosen")
            }
            ActiveDisabled { command } => info!(%command, "active mode refused: disabled"),
            BadActiveAddress { command, error } => {
                info!(%command, %error, "refused malformed active-mode address")
            }
            Bounce {
                command,
                target,
                peer,
            } => {
                warn!(%command, %target, %peer, "refused active-mode address: not the client's own (FTP bounce)")
            }
            LowPort { command, target } => {
                warn!(%command, %target, "refused active-mode port below 1024 (FTP bounce)")
            }
            PoolFull(e) => warn!(error = %e, "passive pool full for this address"),
            PassivePerAddress(e) => warn!(error = %e, "passive port refused: per-address limit"),
            DataLost { command, error } => {
                info!(%command, %error, "data connection gone before the transfer")
            }
            BackendDataPort { port, error } => {
                warn!(%error, port, "cannot reach the backend's data port")
            }
            // The backend's fault, logged under the module that reads its replies, as it was
            // before the session chose the reply.
            BadPassive(error) => warn!(
                target: "ftpsgate::backend::control",
                error = %error,
                "backend sent an unusable passive reply"
            ),
            Timeout { why } => info!(timeout = why, "session timed out"),
            ShuttingDown => info!("gateway shutting down; closing idle session"),
            BackendDown(e) => warn!(error = %e, "backend unreachable"),
            Banned { left } => {
                warn!(
                    ban_left_secs = left.as_secs(),
                    "login refused: address banned"
                )
            }
            LoginsInFlight => {
                warn!("login refused: every attempt the address has left is still at the backend")
            }
            RouteDenied { route } => warn!(%route, "refused: the route's access rules"),
            DeniedUser { user } => warn!(user = %escaped(user), "login refused: denied user"),
            MalformedUser => {
                warn!("login refused: whitespace around or control characters in the user name")
            }
            CertificateUser { user, certified } => warn!(
                user = %escaped(user),
                certified = %escaped(certified.as_deref().unwrap_or("(none)")),
                "login refused: not the user the client certificate names"
            ),
            Policy(Denied::Command { verb }) | Policy(Denied::ReadOnly { verb }) => {
                info!(%verb, "refused by policy")
            }
            Policy(Denied::Name { verb, name }) => {
                info!(%verb, name = %escaped(name), "refused by policy: file name")
            }
            Upload(upload) => upload.log(),
            BackendLost(e) => warn!(error = %e, "backend failed; closing session"),
            BackendRefused(reply) => info!(
                code = reply.code(),
                text = %escaped(&reply.text()),
                "backend refused the session"
            ),
            AddressDenied | AddressBanned | TooManySessions | TooManyFromAddress => {
                let text = self.reply().text();
                info!(reason = text.as_str(), "connection refused")
            }
            OutOfDescriptors { peer } => {
                warn!(%peer, "connection refused: out of file descriptors")
            }
            BadProxyHeader { balancer, error } => {
                warn!(%balancer, %error, "connection refused: bad PROXY header")
            }
            // Ordinary mistakes, answered and not logged.
            Ccc
            | OtherSecurity
            | LongAddress
            | Rein
            | AlreadyTls
            | AuthMechanism
            | NeedsTls { .. }
            | PbszNotANumber
            | ProtUnsupported
            | ProtUnknown
            | HostAfterUser
            | AfterEpsvAll { .. }
            | PasvNotIpv4
            | BadEpsvArgument
            | WrongFamily { .. }
            | NotLoggedIn
            | NoDataConnection
            | ProtChanged
            | Backend(_)
            | PassWithoutUser => {}
        }
    }
}

impl Refusal {
    /// The command line a policy refused, for its audit record.
    pub(crate) fn command(&self) -> Option<String> {
        match self {
            Refusal::Policy(Denied::Command { verb } | Denied::ReadOnly { verb }) => {
                Some(verb.clone())
            }
            Refusal::Policy(Denied::Name { verb, name }) => Some(format!("{verb} {name}")),
            _ => None,
        }
    }
}
