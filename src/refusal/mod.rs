//! Where a refusal's code is chosen. Whatever the gateway turns down itself, at the door or in a
//! session, is a [`Refusal`]: its reply, the metric reason it is counted under (when it says
//! something about a client an operator would watch) and its log line all come from the value,
//! each from one exhaustive match, so a new refusal does not compile until all three are
//! decided (the log lines are in `log.rs`). A session's handlers return one (as `Halt::Refused`) and `Session::refuse` sends it;
//! the listeners send theirs with `accept::refuse`; as rustls maps each error to one alert.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::access::Barred;
use crate::backend::{BackendError, NoDataPort, RouteError};
use crate::data::{BridgeError, PoolError};
use crate::ftp::{addr::AddrError, CommandError, LineError, Reply};
use crate::metrics::Reason;
use crate::policy::Denied;
use crate::proxy_protocol::ProxyError;

mod log;
mod upload;

pub(crate) use upload::UploadRefusal;

#[derive(Debug)]
pub(crate) enum Refusal {
    /// A line the framer refused: too long, a NUL, a bare CR or LF.
    BadLine(LineError),
    /// A line that is no command.
    Unrecognized(CommandError),
    /// Before AUTH TLS under `tls.required`: only what a client needs to get there passes.
    TlsRequired {
        command: String,
    },
    /// CCC: the control connection stays encrypted.
    Ccc,
    /// ADAT, MIC, CONF, ENC: RFC 2228 mechanisms other than TLS.
    OtherSecurity,
    /// LPRT, LPSV.
    LongAddress,
    Rein,
    AlreadyTls,
    AuthMechanism,
    /// Plaintext pipelined after AUTH TLS, before the handshake: it could be read as if it
    /// came over TLS (the STARTTLS injection class). The session ends.
    PipelinedAfterAuth,
    /// PBSZ or PROT before AUTH TLS.
    NeedsTls {
        command: &'static str,
    },
    PbszNotANumber,
    /// PROT C where `tls.allow_clear_data` is off.
    ClearProt,
    /// A transfer at PROT C (chosen before TLS) where `tls.allow_clear_data` is off.
    ClearTransfer {
        command: String,
    },
    ProtUnsupported,
    ProtUnknown,
    HostAfterUser,
    /// HOST naming a route other than the one an earlier rule chose.
    HostElsewhere {
        name: String,
        route: String,
    },
    /// `USER name@route` naming a route other than the one an earlier rule chose.
    UserElsewhere {
        wanted: String,
        route: String,
    },
    /// PASV, PORT or EPRT after EPSV ALL (RFC 2428 §4).
    AfterEpsvAll {
        command: String,
    },
    /// PASV on a connection it cannot describe (IPv6: RFC 2428 §4).
    PasvNotIpv4,
    BadEpsvArgument,
    /// EPSV or EPRT naming a network protocol the connection is not on.
    WrongFamily {
        family: u8,
    },
    ActiveDisabled {
        command: String,
    },
    BadActiveAddress {
        command: String,
        error: AddrError,
    },
    /// PORT or EPRT toward an address that is not the client's own (FTP bounce, RFC 2577).
    Bounce {
        command: String,
        target: SocketAddr,
        peer: IpAddr,
    },
    /// PORT or EPRT toward a port below 1024 (FTP bounce).
    LowPort {
        command: String,
        target: SocketAddr,
    },
    PoolFull(PoolError),
    PassivePerAddress(PoolError),
    /// PASV/EPSV/PORT/EPRT before login: the pool is a shared resource.
    NotLoggedIn,
    /// A transfer command without PASV, EPSV, PORT or EPRT before it.
    NoDataConnection,
    /// PROT changed between PASV and the transfer.
    ProtChanged,
    /// The data connection failed before the transfer command (not up in time, say): the
    /// backend never hears of the transfer.
    DataLost {
        command: String,
        error: BridgeError,
    },
    /// The backend's data port could not be reached.
    BackendDataPort {
        port: u16,
        error: std::io::Error,
    },
    /// The backend's own refusal (of PASV, EPSV, PORT, EPRT), relayed as it is.
    Backend(Reply),
    /// The backend's PASV/EPSV reply named no usable port.
    BadPassive(AddrError),
    /// No address of the backend could be reached when the session needed one. The session
    /// ends.
    BackendDown(RouteError),
    /// The login or idle deadline passed. The session ends.
    Timeout {
        why: &'static str,
    },
    /// The gateway is shutting down and the session is idle. The session ends.
    ShuttingDown,
    /// A login attempt from an address banned after failed logins. The session ends.
    Banned {
        left: Duration,
    },
    /// Every login attempt the address has left is a password still at a backend, and none
    /// came back in time (`timeouts.backend_reply_secs`). The session ends.
    LoginsInFlight,
    /// The route's `allow`/`deny` keep this client out. The session ends.
    RouteDenied {
        route: String,
    },
    /// A user in `access.deny_users`: never sent to a backend.
    DeniedUser {
        user: String,
    },
    /// A user name with whitespace at either end or a control character: never sent to a
    /// backend, which might read it as another name than the gateway's rules did. The name
    /// is not logged: unlike a denied user's, it is nobody's known name (a password typed
    /// into the wrong field, as likely as not).
    MalformedUser,
    /// A user other than the one the client certificate names (`tls.client_cert_user`).
    CertificateUser {
        user: String,
        certified: Option<String>,
    },
    /// The route's command and name rules (`[policy]`): never sent to the backend.
    Policy(Denied),
    /// An upload refused for what it holds or how it is sent (`[scan]`, `max_upload_bytes`).
    Upload(UploadRefusal),
    /// PASS without a USER the gateway passed on (one it refused, say).
    PassWithoutUser,
    /// The backend failed (closed, timed out, spoke nonsense) during the session. The session
    /// ends.
    BackendLost(BackendError),
    /// The backend turned the session away in its greeting (421 too many users, ...): its code
    /// is relayed, its text, which may name the server, is not. The session ends.
    BackendRefused(Reply),
    // At the door, before a session starts: the reply goes to an explicit-mode client only
    // (an implicit one gets a close, since a reply would need a TLS handshake).
    /// `access.allow`/`deny` keep the address out.
    AddressDenied,
    /// The address is banned after failed logins.
    AddressBanned,
    /// `limits.max_sessions` reached.
    TooManySessions,
    /// `limits.max_sessions_per_ip` reached for the address (or IPv6 network).
    TooManyFromAddress,
    /// Out of file descriptors: the acceptor spent its reserve one on telling `peer` so.
    OutOfDescriptors {
        peer: SocketAddr,
    },
    /// A trusted balancer's connection without a valid PROXY header: closed without a reply,
    /// since a balancer reads none.
    BadProxyHeader {
        balancer: SocketAddr,
        error: ProxyError,
    },
}

impl Refusal {
    pub(crate) fn reply(&self) -> Reply {
        use Refusal::*;
        let (code, text) = match self {
            BadLine(e) => return Reply::new(500, &format!("Syntax error: {e}.")),
            Unrecognized(_) => (500, "Syntax error, command unrecognized."),
            TlsRequired { .. } => (530, "TLS required: send AUTH TLS first."),
            Ccc => (534, "CCC refused: the control connection stays encrypted."),
            OtherSecurity => (
                502,
                "Command not implemented: TLS is the only security mechanism.",
            ),
            LongAddress => (502, "Command not implemented; use EPSV."),
            Rein => (502, "REIN is not supported; reconnect instead."),
            AlreadyTls => (503, "Already using TLS."),
            AuthMechanism => (504, "AUTH mechanism not supported; use AUTH TLS."),
            PipelinedAfterAuth => (421, "Data after AUTH TLS before the handshake; closing."),
            NeedsTls { command } => {
                return Reply::new(503, &format!("{command} needs AUTH TLS first."))
            }
            PbszNotANumber => (501, "PBSZ takes a number."),
            ClearProt => (534, "Clear data connections are not allowed; use PROT P."),
            ClearTransfer { .. } => (
                521,
                "Data connections must be encrypted: send PBSZ 0 and PROT P.",
            ),
            ProtUnsupported => (536, "Protection level not supported; use PROT P."),
            ProtUnknown => (504, "Unknown protection level."),
            HostAfterUser => (503, "HOST must come before USER."),
            HostElsewhere { name, route } => {
                let text = format!(
                    "Host {name} is not served on this connection (it is for route {route})."
                );
                return Reply::new(504, &text);
            }
            UserElsewhere { wanted, route } => {
                let text = format!("This connection is for route {route}; reconnect for {wanted}.");
                return Reply::new(530, &text);
            }
            AfterEpsvAll { command } => {
                return Reply::new(501, &format!("{command} not allowed after EPSV ALL."))
            }
            PasvNotIpv4 => (522, "Network protocol not supported, use EPSV (2)."),
            BadEpsvArgument => (501, "Bad EPSV argument."),
            WrongFamily { family } => {
                let text = format!("Network protocol not supported, use ({family})");
                return Reply::new(522, &text);
            }
            ActiveDisabled { .. } => (502, "Active mode is disabled here; use PASV or EPSV."),
            BadActiveAddress { command, error } => {
                return Reply::new(501, &format!("Syntax error in {command}: {error}."))
            }
            Bounce { .. } => (
                500,
                "Illegal address: data connections go to your own address only.",
            ),
            LowPort { .. } => (
                504,
                "Command not implemented for that parameter: port below 1024.",
            ),
            PoolFull(_) => (425, "No passive port available; try again later."),
            PassivePerAddress(_) => (
                425,
                "Too many passive ports held from your address; try again later.",
            ),
            NotLoggedIn => (530, "Please log in with USER and PASS first."),
            NoDataConnection => (425, "Use PASV or EPSV first."),
            ProtChanged => (425, "Protection level changed since PASV; send PASV again."),
            DataLost { error, .. } => return error.reply(),
            BackendDataPort { .. } => (425, "Can't open data connection to the server."),
            Backend(reply) => return reply.clone(),
            BadPassive(_) => (
                425,
                "Can't open data connection: the server sent a bad passive reply.",
            ),
            Timeout { why } => {
                let text = format!("Timeout ({why}); closing control connection.");
                return Reply::new(421, &text);
            }
            ShuttingDown => (421, "Service shutting down; please reconnect later."),
            Banned { .. } => (421, Barred::BANNED_TEXT),
            LoginsInFlight => (
                421,
                "Too many logins in progress from your address; try again later.",
            ),
            RouteDenied { .. } => (421, Barred::DENIED_TEXT),
            DeniedUser { .. } | MalformedUser | CertificateUser { .. } => (530, "Login incorrect."),
            Policy(Denied::Command { verb }) => {
                return Reply::new(
                    550,
                    &format!("Permission denied: {verb} is not allowed here."),
                )
            }
            Policy(Denied::ReadOnly { .. }) => (550, "Permission denied: read-only."),
            Policy(Denied::Name { .. }) => (553, "File name not allowed."),
            Upload(upload) => {
                let (code, text) = upload.reply();
                return Reply::new(code, &text);
            }
            PassWithoutUser => (503, "Login with USER first."),
            BackendDown(_) => (
                421,
                "Service not available: the FTP server cannot be reached.",
            ),
            BackendLost(_) => (421, "Service not available: lost the FTP server."),
            BackendRefused(reply) => {
                let code = if reply.code() >= 400 {
                    reply.code()
                } else {
                    421
                };
                let text = "Service not available: the FTP server refused the session.";
                return Reply::new(code, text);
            }
            AddressDenied => (421, Barred::DENIED_TEXT),
            AddressBanned => (421, Barred::BANNED_TEXT),
            TooManySessions => (421, "Too many sessions; try again later."),
            TooManyFromAddress => (421, "Too many sessions from your address; try again later."),
            OutOfDescriptors { .. } => (421, "Out of resources; try again later."),
            BadProxyHeader { .. } => (421, "Bad PROXY header."),
        };
        Reply::new(code, text)
    }

    /// The reason it is counted under in `ftpsgate_refusals_total`, if it is counted.
    pub(crate) fn reason(&self) -> Option<Reason> {
        use Refusal::*;
        Some(match self {
            BadLine(_) | Unrecognized(_) => Reason::bad_line,
            TlsRequired { .. } => Reason::tls_required,
            ClearProt | ClearTransfer { .. } => Reason::clear_data,
            ActiveDisabled { .. } | Bounce { .. } | LowPort { .. } => Reason::port_refused,
            PoolFull(_) => Reason::pool_full,
            PassivePerAddress(_) => Reason::passive_per_ip,
            Timeout { .. } => Reason::timeout,
            ShuttingDown => Reason::shutting_down,
            BackendDown(_) => Reason::backend_down,
            Banned { .. } => Reason::banned,
            LoginsInFlight => Reason::logins_in_flight,
            RouteDenied { .. } => Reason::access_denied,
            DeniedUser { .. } => Reason::denied_user,
            MalformedUser => Reason::malformed_user,
            CertificateUser { .. } => Reason::certificate_user,
            Policy(Denied::Command { .. }) => Reason::policy_command,
            Policy(Denied::ReadOnly { .. }) => Reason::policy_read_only,
            Policy(Denied::Name { .. }) => Reason::policy_name,
            Upload(upload) => upload.reason(),
            AddressDenied => Reason::access_denied,
            AddressBanned => Reason::banned,
            TooManySessions => Reason::session_limit,
            TooManyFromAddress => Reason::per_ip_limit,
            BadProxyHeader { .. } => Reason::bad_proxy_header,
            // Mistakes a client makes and corrects, the backend's own answers, and the out of
            // descriptors case (counted as `accept_failed` where the accept failed): not
            // counted as refusals.
            Ccc
            | OtherSecurity
            | LongAddress
            | Rein
            | AlreadyTls
            | AuthMechanism
            | PipelinedAfterAuth
            | NeedsTls { .. }
            | PbszNotANumber
            | ProtUnsupported
            | ProtUnknown
            | HostAfterUser
            | HostElsewhere { .. }
            | UserElsewhere { .. }
            | AfterEpsvAll { .. }
            | PasvNotIpv4
            | BadEpsvArgument
            | WrongFamily { .. }
            | BadActiveAddress { .. }
            | NotLoggedIn
            | NoDataConnection
            | ProtChanged
            | DataLost { .. }
            | BackendDataPort { .. }
            | Backend(_)
            | BadPassive(_)
            | PassWithoutUser
            | BackendLost(_)
            | BackendRefused(_)
            | OutOfDescriptors { .. } => return None,
        })
    }

    /// True when the session ends after the reply.
    pub(crate) fn ends_session(&self) -> bool {
        use Refusal::*;
        match self {
            PipelinedAfterAuth
            | Timeout { .. }
            | ShuttingDown
            | BackendDown(_)
            | Banned { .. }
            | LoginsInFlight
            | RouteDenied { .. }
            | BackendLost(_)
            | BackendRefused(_)
            | AddressDenied
            | AddressBanned
            | TooManySessions
            | TooManyFromAddress
            | OutOfDescriptors { .. }
            | BadProxyHeader { .. } => true,
            BadLine(_)
            | Unrecognized(_)
            | TlsRequired { .. }
            | Ccc
            | OtherSecurity
            | LongAddress
            | Rein
            | AlreadyTls
            | AuthMechanism
            | NeedsTls { .. }
            | PbszNotANumber
            | ClearProt
            | ClearTransfer { .. }
            | ProtUnsupported
            | ProtUnknown
            | HostAfterUser
            | HostElsewhere { .. }
            | UserElsewhere { .. }
            | AfterEpsvAll { .. }
            | PasvNotIpv4
            | BadEpsvArgument
            | WrongFamily { .. }
            | ActiveDisabled { .. }
            | BadActiveAddress { .. }
            | Bounce { .. }
            | LowPort { .. }
            | PoolFull(_)
            | PassivePerAddress(_)
            | NotLoggedIn
            | NoDataConnection
            | ProtChanged
            | DataLost { .. }
            | BackendDataPort { .. }
            | Backend(_)
            | BadPassive(_)
            | DeniedUser { .. }
            | MalformedUser
            | CertificateUser { .. }
            | Policy(_)
            | Upload(_)
            | PassWithoutUser => false,
        }
    }
}

impl From<NoDataPort> for Refusal {
    fn from(no: NoDataPort) -> Self {
        match no {
            NoDataPort::Refused(reply) => Refusal::Backend(reply),
            NoDataPort::Unusable(error) => Refusal::BadPassive(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_one_reply_and_bounces_are_counted() {
        let bounce = Refusal::Bounce {
            command: "PORT".into(),
            target: "192.0.2.9:2000".parse().expect("addr"),
            peer: "127.0.0.1".parse().expect("ip"),
        };
        assert_eq!(bounce.reply().code(), 500);
        assert_eq!(bounce.reason(), Some(Reason::port_refused));
        let transfer = Refusal::ClearTransfer {
            command: "RETR".into(),
        };
        let codes = (Refusal::ClearProt.reply().code(), transfer.reply().code());
        assert_eq!(codes, (534, 521));
        assert_eq!(transfer.reason(), Some(Reason::clear_data));
        assert!(Refusal::Timeout { why: "idle" }.ends_session());
        assert!(!Refusal::NotLoggedIn.ends_session());
        assert_eq!(Refusal::NotLoggedIn.reason(), None);
        let down = Refusal::BackendDown(RouteError::AllDown("default".into()));
        assert_eq!(down.reply().code(), 421);
        assert_eq!(down.reason(), Some(Reason::backend_down));
        assert!(down.ends_session());
        // At the door: the same three facts, and the texts the listeners always sent.
        let full = Refusal::TooManyFromAddress;
        let text = "421 Too many sessions from your address; try again later.\r\n";
        assert_eq!(full.reply().as_bytes(), text.as_bytes());
        assert_eq!(full.reason(), Some(Reason::per_ip_limit));
        assert!(full.ends_session());
        let lost = Refusal::BackendLost(BackendError::Timeout);
        let text = "421 Service not available: lost the FTP server.\r\n";
        assert_eq!(lost.reply().as_bytes(), text.as_bytes());
        assert_eq!(lost.reason(), None);
        let refused = Refusal::BackendRefused(Reply::new(230, "odd"));
        assert_eq!(refused.reply().code(), 421);
    }

    #[test]
    fn a_backends_unusable_passive_reply_is_425_and_its_refusal_is_relayed() {
        let bad = Refusal::from(NoDataPort::Unusable(AddrError::Epsv));
        let text = "425 Can't open data connection: the server sent a bad passive reply.\r\n";
        assert_eq!(bad.reply().as_bytes(), text.as_bytes());
        assert_eq!((bad.reason(), bad.ends_session()), (None, false));
        let refused = Refusal::from(NoDataPort::Refused(Reply::new(421, "Too many.")));
        assert_eq!(refused.reply(), Reply::new(421, "Too many."));
    }
}
