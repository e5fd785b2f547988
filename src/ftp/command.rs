//! Client command lines (RFC 959 §5.3): a verb, optionally a space and an argument.
//!
//! The proxy keeps the original bytes so that commands it passes through reach the backend
//! byte for byte; only the verb is interpreted.

use std::fmt;

use thiserror::Error;

/// The verbs the proxy treats specially. Everything else is `Other` and passed through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    // RFC 2228 / RFC 4217 security commands, answered locally.
    Auth,
    Pbsz,
    Prot,
    Ccc,
    Adat,
    Mic,
    Conf,
    Enc,
    // Data connection set-up, translated.
    Pasv,
    Epsv,
    Port,
    Eprt,
    Lprt,
    Lpsv,
    // Transfers: a 1xx, data on the bridge, then a final reply.
    Retr,
    Stor,
    Stou,
    Appe,
    List,
    Nlst,
    Mlsd,
    // Session control.
    User,
    Pass,
    Feat,
    Abor,
    Stat,
    Rein,
    Quit,
    // Allowed before TLS when TLS is required.
    Help,
    Syst,
    Noop,
    Host,
    Other,
}

impl Verb {
    fn from_bytes(verb: &[u8]) -> Verb {
        let mut upper = [0u8; 4];
        if verb.len() > 4 {
            return Verb::Other;
        }
        for (dst, src) in upper.iter_mut().zip(verb) {
            *dst = src.to_ascii_uppercase();
        }
        match upper.get(..verb.len()).unwrap_or_default() {
            b"AUTH" => Verb::Auth,
            b"PBSZ" => Verb::Pbsz,
            b"PROT" => Verb::Prot,
            b"CCC" => Verb::Ccc,
            b"ADAT" => Verb::Adat,
            b"MIC" => Verb::Mic,
            b"CONF" => Verb::Conf,
            b"ENC" => Verb::Enc,
            b"PASV" => Verb::Pasv,
            b"EPSV" => Verb::Epsv,
            b"PORT" => Verb::Port,
            b"EPRT" => Verb::Eprt,
            b"LPRT" => Verb::Lprt,
            b"LPSV" => Verb::Lpsv,
            b"RETR" => Verb::Retr,
            b"STOR" => Verb::Stor,
            b"STOU" => Verb::Stou,
            b"APPE" => Verb::Appe,
            b"LIST" => Verb::List,
            b"NLST" => Verb::Nlst,
            b"MLSD" => Verb::Mlsd,
            b"USER" => Verb::User,
            b"PASS" => Verb::Pass,
            b"FEAT" => Verb::Feat,
            b"ABOR" => Verb::Abor,
            b"STAT" => Verb::Stat,
            b"REIN" => Verb::Rein,
            b"QUIT" => Verb::Quit,
            b"HELP" => Verb::Help,
            b"SYST" => Verb::Syst,
            b"NOOP" => Verb::Noop,
            b"HOST" => Verb::Host,
            _ => Verb::Other,
        }
    }

    /// The direction of the data a transfer command moves, `None` for other commands.
    pub fn transfer(self) -> Option<Direction> {
        match self {
            Verb::Retr | Verb::List | Verb::Nlst | Verb::Mlsd => Some(Direction::Download),
            Verb::Stor | Verb::Stou | Verb::Appe => Some(Direction::Upload),
            _ => None,
        }
    }

    /// Commands RFC 4217 lets a client send before the control channel is protected, when the
    /// gateway requires TLS. `USER` is deliberately absent: a user name (and the password after
    /// it) must never cross the internet in the clear.
    pub fn allowed_before_tls(self) -> bool {
        matches!(
            self,
            Verb::Auth
                | Verb::Feat
                | Verb::Help
                | Verb::Quit
                | Verb::Host
                | Verb::Syst
                | Verb::Noop
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

/// One parsed client command.
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    line: Vec<u8>,
    verb: Verb,
    verb_len: usize,
}

impl Command {
    /// Parses a line produced by [`super::LineFramer`] (terminator already removed).
    pub fn parse(line: Vec<u8>) -> Result<Command, CommandError> {
        let verb_len = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
        if verb_len == 0 {
            return Err(CommandError::Empty);
        }
        let word = line.get(..verb_len).unwrap_or_default();
        if !word.iter().all(u8::is_ascii_alphabetic) {
            return Err(CommandError::BadVerb);
        }
        let verb = Verb::from_bytes(word);
        Ok(Command {
            line,
            verb,
            verb_len,
        })
    }

    /// `USER name`, for a user name taken from a client's own USER line (so free of line
    /// breaks): the gateway strips a route suffix from it.
    pub fn user(name: &str) -> Command {
        Command {
            line: format!("USER {name}").into_bytes(),
            verb: Verb::User,
            verb_len: 4,
        }
    }

    pub fn verb(&self) -> Verb {
        self.verb
    }

    /// The verb as sent, upper-cased, for replies and logs.
    pub fn name(&self) -> String {
        let word = self.line.get(..self.verb_len).unwrap_or_default();
        String::from_utf8_lossy(word).to_ascii_uppercase()
    }

    /// The argument: everything after the first space, byte for byte (paths may start with or
    /// contain spaces).
    pub fn arg(&self) -> &[u8] {
        self.line.get(self.verb_len + 1..).unwrap_or_default()
    }

    /// The argument as trimmed text, for the few commands whose argument we interpret.
    pub fn arg_text(&self) -> String {
        String::from_utf8_lossy(self.arg()).trim().to_string()
    }

    /// The command as it goes on the wire to the backend.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut wire = Vec::with_capacity(self.line.len() + 2);
        wire.extend_from_slice(&self.line);
        wire.extend_from_slice(b"\r\n");
        wire
    }
}

/// Logs show commands through this: the password is hidden, and so is the user name, which
/// becomes the session's user only once the backend accepts it (a refused name never reaches
/// a log line); everything else is escaped (see [`super::Escaped`]).
impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.verb {
            Verb::Pass => f.write_str("PASS ****"),
            Verb::User => f.write_str("USER ****"),
            _ => write!(f, "{}", super::Escaped(&self.line)),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> Command {
        Command::parse(s.as_bytes().to_vec()).expect("valid command")
    }

    #[test]
    fn verbs_are_case_insensitive_and_arguments_kept_verbatim() {
        let c = cmd("retr  two  spaces.txt");
        assert_eq!(c.verb(), Verb::Retr);
        assert_eq!(c.arg(), b" two  spaces.txt");
        assert_eq!(c.to_wire(), b"retr  two  spaces.txt\r\n");
        assert_eq!(c.name(), "RETR");
    }

    #[test]
    fn unknown_verbs_pass_through() {
        assert_eq!(cmd("XMKD dir").verb(), Verb::Other);
        assert_eq!(cmd("SITE CHMOD 644 x").verb(), Verb::Other);
        assert_eq!(cmd("NOOPS").verb(), Verb::Other);
    }

    #[test]
    fn empty_and_non_alphabetic_verbs_are_refused() {
        assert_eq!(Command::parse(vec![]), Err(CommandError::Empty));
        assert_eq!(Command::parse(b" NOOP".to_vec()), Err(CommandError::Empty));
        assert_eq!(Command::parse(b"N0OP".to_vec()), Err(CommandError::BadVerb));
    }

    #[test]
    fn password_and_user_name_never_appear_in_logs() {
        assert_eq!(format!("{}", cmd("PASS hunter2")), "PASS ****");
        assert_eq!(format!("{:?}", cmd("pass hunter2")), "PASS ****");
        assert_eq!(format!("{}", cmd("USER alice")), "USER ****");
    }

    #[test]
    fn logged_commands_carry_no_control_characters() {
        let shown = format!("{}", cmd("CWD \x1b]0;owned\x07dir"));
        assert_eq!(shown, "CWD \\u{1b}]0;owned\\u{7}dir");
    }

    #[test]
    fn transfer_commands_know_their_direction() {
        assert_eq!(Verb::Retr.transfer(), Some(Direction::Download));
        assert_eq!(Verb::Mlsd.transfer(), Some(Direction::Download));
        assert_eq!(Verb::Appe.transfer(), Some(Direction::Upload));
        assert_eq!(cmd("CWD /").verb().transfer(), None);
    }

    #[test]
    fn user_is_not_allowed_before_tls() {
        assert!(!Verb::User.allowed_before_tls());
        assert!(!Verb::Pass.allowed_before_tls());
        assert!(Verb::Auth.allowed_before_tls());
        assert!(Verb::Feat.allowed_before_tls());
    }
}
