//! `[policy]` and `[routes.NAME.policy]`: the commands a route takes and the names an upload
//! may have. The rules themselves are in `crate::policy`.

use serde::{Deserialize, Serialize};

use super::{Bad, ConfigError};

/// What a route's sessions may do, beyond what the backend allows: a drop box that takes
/// uploads but no deletes, a read-only mirror, no executables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySettings {
    /// Verbs refused with 550 and never sent to the backend (e.g. `["SITE", "DELE", "RNFR"]`).
    /// Any case; an X- form counts as its verb (`XMKD` is `MKD`).
    pub deny_commands: Vec<String>,
    /// Let only verbs that read or run the session through; every other verb gets 550, so a
    /// write verb nobody listed (a server's own) is refused too.
    pub read_only: bool,
    /// Glob patterns (`*`, `?`, any case) an upload's file name must match, if any are given:
    /// STOR, STOU, APPE and RNTO (a rename is an upload under another name). Refused with 553.
    pub allow_names: Vec<String>,
    /// Glob patterns an upload's file name must not match (e.g. `["*.exe", "*.js"]`); wins over
    /// `allow_names`. Refused with 553.
    pub deny_names: Vec<String>,
    /// The most bytes one upload may carry. The client gets 552 once it sends more; without
    /// `[scan]` the backend has received the bytes before them and keeps what it keeps of an
    /// aborted upload (vsftpd keeps the part), with `[scan]` it has received nothing.
    pub max_upload_bytes: Option<u64>,
}

/// Verbs a policy cannot refuse: without them no client could log in, secure the session or
/// leave it.
const ESSENTIAL: &[&str] = &["AUTH", "USER", "PASS", "QUIT", "PBSZ", "PROT"];

impl PolicySettings {
    pub(super) fn validate(&self, key: &str, bad: Bad) -> Result<(), ConfigError> {
        for verb in &self.deny_commands {
            let upper = verb.to_ascii_uppercase();
            if !(3..=4).contains(&verb.len()) || !verb.chars().all(|c| c.is_ascii_alphabetic()) {
                return Err(bad(
                    format!("{key}.deny_commands"),
                    format!("`{}` is not an FTP verb", verb.escape_default()),
                ));
            }
            if ESSENTIAL.contains(&upper.as_str()) {
                return Err(bad(
                    format!("{key}.deny_commands"),
                    format!("{upper} cannot be refused: clients need it to log in, secure or leave the session"),
                ));
            }
        }
        for (field, patterns) in [
            ("allow_names", &self.allow_names),
            ("deny_names", &self.deny_names),
        ] {
            if let Some(p) = patterns.iter().find(|p| {
                p.is_empty() || p.contains(['/', '\\']) || p.chars().any(char::is_control)
            }) {
                return Err(bad(
                    format!("{key}.{field}"),
                    format!(
                        "`{}`: a pattern for a file name (`*`, `?`), without a path",
                        p.escape_default()
                    ),
                ));
            }
        }
        Ok(())
    }
}
