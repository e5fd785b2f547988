//! Client command lines (RFC 959 §5.3), typed when parsed.
//!
//! A line becomes a [`Request`]: the [`Command`] the gateway acts on, with every argument it
//! interprets already parsed (into a value, or the error the session refuses it with), and the
//! [`Line`] as the client sent it, which is what reaches the backend, byte for byte, when the
//! command is forwarded. A session matches on `Command` alone; no handler parses an argument.
//!
//! Adding a verb: a variant here, its arm in [`Command::from_parts`], and the session's handler
//! for it (docs/ARCHITECTURE.md, "Recipes").

use std::fmt;
use std::net::SocketAddr;

use thiserror::Error;

use super::addr::{self, AddrError, EpsvArg};
use super::args::{parse_pbsz, AuthMechanism, ProtLevel};

/// What a client asked for. Verbs the gateway does not interpret are [`Command::Forward`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    // RFC 2228 / RFC 4217 security commands, answered by the gateway.
    /// `None`: a mechanism other than TLS.
    Auth(Option<AuthMechanism>),
    /// `None`: not a number.
    Pbsz(Option<u32>),
    /// `None`: not a protection level at all.
    Prot(Option<ProtLevel>),
    Ccc,
    /// ADAT, MIC, CONF, ENC: RFC 2228 mechanisms other than TLS.
    OtherSecurity,
    // Data connections, set up by the gateway.
    Pasv,
    /// `None`: an argument that is neither a family number nor `ALL`.
    Epsv(Option<EpsvArg>),
    /// PORT or EPRT, with the address it names.
    Active(Result<SocketAddr, AddrError>),
    /// LPRT, LPSV.
    LongAddress,
    /// RETR, LIST, NLST, MLSD, STOR, STOU, APPE: a 1xx, data on the bridge, a final reply.
    Transfer(Direction),
    Abor,
    // Login and routing.
    /// The name as sent, untrimmed: `USER name @route` must not become `name` for the
    /// gateway's rules and `name ` for the backend.
    User(String),
    Pass,
    /// The name, trimmed (RFC 7151).
    Host(String),
    // Session control.
    Feat,
    /// STAT without an argument: the gateway's status, or the transfer's during one.
    Status,
    Rein,
    Quit,
    // Answered by the gateway before TLS when it has no backend yet; forwarded after.
    Help,
    Syst,
    Noop,
    /// Anything else, STAT with an argument included: forwarded as it is.
    Forward,
}

impl Command {
    /// The command for `verb` (ASCII letters, any case) with argument `arg`.
    fn from_parts(verb: &[u8], arg: &[u8]) -> Command {
        let text = || String::from_utf8_lossy(arg).trim().to_string();
        let mut upper = [0u8; 4];
        if verb.len() > upper.len() {
            return Command::Forward;
        }
        for (dst, src) in upper.iter_mut().zip(verb) {
            *dst = src.to_ascii_uppercase();
        }
        let (upper, _) = upper.split_at(verb.len());
        match upper {
            b"AUTH" => Command::Auth(AuthMechanism::parse(&text())),
            b"PBSZ" => Command::Pbsz(parse_pbsz(&text())),
            b"PROT" => Command::Prot(ProtLevel::parse(&text())),
            b"CCC" => Command::Ccc,
            b"ADAT" | b"MIC" | b"CONF" | b"ENC" => Command::OtherSecurity,
            b"PASV" => Command::Pasv,
            b"EPSV" => Command::Epsv(EpsvArg::parse(&text())),
            b"PORT" => Command::Active(addr::parse_port(&text())),
            b"EPRT" => Command::Active(addr::parse_eprt(&text())),
            b"LPRT" | b"LPSV" => Command::LongAddress,
            b"RETR" | b"LIST" | b"NLST" | b"MLSD" => Command::Transfer(Direction::Download),
            b"STOR" | b"STOU" | b"APPE" => Command::Transfer(Direction::Upload),
            b"ABOR" => Command::Abor,
            b"USER" => Command::User(String::from_utf8_lossy(arg).into_owned()),
            b"PASS" => Command::Pass,
            b"HOST" => Command::Host(text()),
            b"FEAT" => Command::Feat,
            b"STAT" if arg.is_empty() => Command::Status,
            b"REIN" => Command::Rein,
            b"QUIT" => Command::Quit,
            b"HELP" => Command::Help,
            b"SYST" => Command::Syst,
            b"NOOP" => Command::Noop,
            _ => Command::Forward,
        }
    }

    /// The direction of the data a transfer command moves, `None` for other commands.
    pub fn transfer(&self) -> Option<Direction> {
        match self {
            Command::Transfer(direction) => Some(*direction),
            _ => None,
        }
    }

    /// Commands RFC 4217 lets a client send before the control channel is protected, when the
    /// gateway requires TLS. `USER` is deliberately absent: a user name (and the password after
    /// it) must never cross the internet in the clear.
    pub fn allowed_before_tls(&self) -> bool {
        matches!(
            self,
            Command::Auth(_)
                | Command::Feat
                | Command::Help
                | Command::Quit
                | Command::Host(_)
                | Command::Syst
                | Command::Noop
        )
    }
}

/// Which way a transfer's bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Backend to client: RETR, LIST, NLST, MLSD.
    Download,
    /// Client to backend: STOR, STOU, APPE.
    Upload,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Download => "download",
            Direction::Upload => "upload",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CommandError {
    #[error("empty command line")]
    Empty,
    #[error("command verb is not ASCII letters")]
    BadVerb,
}

/// A command line as the client sent it (terminator removed): what is forwarded, and what
/// logs show.
#[derive(Clone, PartialEq, Eq)]
pub struct Line {
    /// The verb, then (after one space) the argument.
    verb: Vec<u8>,
    /// Everything after the first space, byte for byte (paths may start with or contain
    /// spaces); `None` when there was no space.
    arg: Option<Vec<u8>>,
    /// USER or PASS: never shown in a log.
    secret: bool,
}

impl Line {
    /// `USER name`, for a user name taken from a client's own USER line (so free of line
    /// breaks): the gateway strips a route suffix from it.
    pub fn user(name: &str) -> Line {
        Line {
            verb: b"USER".to_vec(),
            arg: Some(name.as_bytes().to_vec()),
            secret: true,
        }
    }

    /// The verb as sent, upper-cased, for replies and logs.
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.verb).to_ascii_uppercase()
    }

    /// The argument, byte for byte; empty when there is none.
    pub fn arg(&self) -> &[u8] {
        self.arg.as_deref().unwrap_or_default()
    }

    /// The argument as trimmed text.
    pub fn arg_text(&self) -> String {
        String::from_utf8_lossy(self.arg()).trim().to_string()
    }

    /// The command as it goes on the wire to the backend.
    pub fn to_wire(&self) -> Vec<u8> {
        let arg = self.arg.as_deref();
        let len = self.verb.len() + arg.map_or(0, |a| a.len() + 1) + 2;
        let mut wire = Vec::with_capacity(len);
        wire.extend_from_slice(&self.verb);
        if let Some(arg) = arg {
            wire.push(b' ');
            wire.extend_from_slice(arg);
        }
        wire.extend_from_slice(b"\r\n");
        wire
    }
}

/// Logs show command lines through this: the password is hidden, and so is the user name,
/// which becomes the session's user only once the backend accepts it (a refused name never
/// reaches a log line); everything else is escaped (see [`super::Escaped`]).
impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secret {
            return write!(f, "{} ****", self.name());
        }
        write!(f, "{}", super::Escaped(&self.verb))?;
        match &self.arg {
            Some(arg) => write!(f, " {}", super::Escaped(arg)),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One parsed client command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub line: Line,
}

impl Request {
    /// Parses a line produced by [`super::LineFramer`] (terminator already removed).
    pub fn parse(mut bytes: Vec<u8>) -> Result<Request, CommandError> {
        let arg = bytes
            .iter()
            .position(|&b| b == b' ')
            .map(|space| bytes.split_off(space));
        let verb = bytes;
        if verb.is_empty() {
            return Err(CommandError::Empty);
        }
        if !verb.iter().all(u8::is_ascii_alphabetic) {
            return Err(CommandError::BadVerb);
        }
        // `split_off` left the space at the front of the argument.
        let arg = arg.map(|mut a| {
            a.remove(0);
            a
        });
        let command = Command::from_parts(&verb, arg.as_deref().unwrap_or_default());
        let secret = matches!(command, Command::User(_) | Command::Pass);
        let line = Line { verb, arg, secret };
        Ok(Request { command, line })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Request {
        Request::parse(s.as_bytes().to_vec()).expect("valid command")
    }

    #[test]
    fn verbs_are_case_insensitive_and_arguments_kept_verbatim() {
        let r = req("retr  two  spaces.txt");
        assert_eq!(r.command, Command::Transfer(Direction::Download));
        assert_eq!(r.line.arg(), b" two  spaces.txt");
        assert_eq!(r.line.to_wire(), b"retr  two  spaces.txt\r\n");
        assert_eq!(r.line.name(), "RETR");
        assert_eq!(req("NOOP").line.to_wire(), b"NOOP\r\n");
        assert_eq!(req("NOOP ").line.to_wire(), b"NOOP \r\n");
    }

    #[test]
    fn unknown_verbs_pass_through() {
        assert_eq!(req("XMKD dir").command, Command::Forward);
        assert_eq!(req("SITE CHMOD 644 x").command, Command::Forward);
        assert_eq!(req("NOOPS").command, Command::Forward);
        assert_eq!(req("STAT /dir").command, Command::Forward);
        assert_eq!(req("stat").command, Command::Status);
    }

    #[test]
    fn empty_and_non_alphabetic_verbs_are_refused() {
        assert_eq!(Request::parse(vec![]), Err(CommandError::Empty));
        assert_eq!(Request::parse(b" NOOP".to_vec()), Err(CommandError::Empty));
        assert_eq!(Request::parse(b"N0OP".to_vec()), Err(CommandError::BadVerb));
    }

    #[test]
    fn arguments_are_typed_when_parsed() {
        assert_eq!(
            req("auth tls").command,
            Command::Auth(Some(AuthMechanism::Tls))
        );
        assert_eq!(req("AUTH GSSAPI").command, Command::Auth(None));
        assert_eq!(req("PBSZ 0").command, Command::Pbsz(Some(0)));
        assert_eq!(
            req("PROT P").command,
            Command::Prot(Some(ProtLevel::Private))
        );
        assert_eq!(req("EPSV ALL").command, Command::Epsv(Some(EpsvArg::All)));
        assert_eq!(req("EPSV x").command, Command::Epsv(None));
        let port = req("PORT 127,0,0,1,4,1").command;
        assert_eq!(
            port,
            Command::Active(Ok("127.0.0.1:1025".parse().expect("addr")))
        );
        assert!(matches!(
            req("EPRT |9|x|1|").command,
            Command::Active(Err(_))
        ));
        assert_eq!(req("USER  ann ").command, Command::User(" ann ".into()));
        assert_eq!(
            req("HOST  ftp.example ").command,
            Command::Host("ftp.example".into())
        );
    }

    #[test]
    fn password_and_user_name_never_appear_in_logs() {
        assert_eq!(format!("{}", req("PASS hunter2").line), "PASS ****");
        assert_eq!(format!("{:?}", req("pass hunter2").line), "PASS ****");
        assert_eq!(format!("{}", req("USER alice").line), "USER ****");
        assert_eq!(format!("{}", Line::user("alice")), "USER ****");
    }

    #[test]
    fn logged_commands_carry_no_control_characters() {
        let shown = format!("{}", req("CWD \x1b]0;owned\x07dir").line);
        assert_eq!(shown, "CWD \\u{1b}]0;owned\\u{7}dir");
    }

    #[test]
    fn transfer_commands_know_their_direction() {
        assert_eq!(req("RETR x").command.transfer(), Some(Direction::Download));
        assert_eq!(req("MLSD").command.transfer(), Some(Direction::Download));
        assert_eq!(req("APPE x").command.transfer(), Some(Direction::Upload));
        assert_eq!(req("CWD /").command.transfer(), None);
    }

    #[test]
    fn user_is_not_allowed_before_tls() {
        assert!(!req("USER a").command.allowed_before_tls());
        assert!(!req("PASS a").command.allowed_before_tls());
        assert!(req("AUTH TLS").command.allowed_before_tls());
        assert!(req("FEAT").command.allowed_before_tls());
    }
}
