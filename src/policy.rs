//! Command and name rules (`[policy]`, or a route's own): a verb and its argument in, a verdict
//! out. Pure, so every rule is tested without a session; the session turns a verdict into a
//! `Refusal` (550 or 553), counted, audited and logged like every other.

use wildmatch::WildMatch;

use crate::config::PolicySettings;

/// Why the policy turned a command down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Denied {
    /// A verb in `deny_commands`.
    Command { verb: String },
    /// A verb that changes files, under `read_only`.
    ReadOnly { verb: String },
    /// An upload's name that `deny_names` matches or `allow_names` does not.
    Name { verb: String, name: String },
}

/// Verbs that only read, or run the session, under `read_only`: everything else is refused,
/// since a list of writes would let through every write it forgot (`MDTM time file` sets a
/// time on vsftpd, `RMDA`, `COMB` and `SITE` subcommands on others). Aliases are folded first
/// (see [`canonical`]).
const READS: &[&str] = &[
    "ABOR", "ACCT", "AUTH", "AVBL", "CCC", "CDUP", "CLNT", "CWD", "EPRT", "EPSV", "FEAT", "HELP",
    "HOST", "LANG", "LIST", "MDTM", "MLSD", "MLST", "MODE", "NLST", "NOOP", "OPTS", "PASS", "PASV",
    "PBSZ", "PORT", "PROT", "PWD", "QUIT", "REST", "RETR", "SIZE", "STAT", "STRU", "SYST", "TYPE",
    "USER",
];

/// Verbs whose argument is the name a file will have on the backend.
const NAMING: &[&str] = &["STOR", "STOU", "APPE", "RNTO"];

/// SITE subcommands that make a file under a name of the client's (ProFTPD's mod_copy and
/// mod_site_misc): refused whenever names are ruled, since their arguments name two paths
/// that cannot be told apart where a name holds a space.
const SITE_NAMING: &[&str] = &["CPTO", "COPY", "SYMLINK", "LINK"];

/// A verb under the name the rules use: the RFC 775 X- forms are the same commands, so a rule
/// against `MKD` holds against `XMKD` too.
fn canonical(verb: &str) -> String {
    let verb = verb.to_ascii_uppercase();
    match verb.as_str() {
        "XMKD" => "MKD".into(),
        "XRMD" => "RMD".into(),
        "XCWD" => "CWD".into(),
        "XCUP" => "CDUP".into(),
        "XPWD" => "PWD".into(),
        _ => verb,
    }
}

/// The verdict of `policy` on `verb` with its argument as sent (`arg`, the bytes after the
/// verb's space, untrimmed: the backend stores what it gets).
pub(crate) fn check(policy: &PolicySettings, sent: &str, arg: &[u8]) -> Option<Denied> {
    let verb = canonical(sent);
    let sent = sent.to_ascii_uppercase();
    if policy.deny_commands.iter().any(|v| canonical(v) == verb) {
        return Some(Denied::Command { verb: sent });
    }
    let text = String::from_utf8_lossy(arg);
    if policy.read_only && (!READS.contains(&verb.as_str()) || sets_a_time(&verb, &text)) {
        return Some(Denied::ReadOnly { verb: sent });
    }
    let ruled = !policy.allow_names.is_empty() || !policy.deny_names.is_empty();
    let site_naming = verb == "SITE"
        && text
            .split_whitespace()
            .next()
            .is_some_and(|sub| SITE_NAMING.iter().any(|n| n.eq_ignore_ascii_case(sub)));
    if !ruled || !(NAMING.contains(&verb.as_str()) || site_naming) {
        return None;
    }
    // STOU without a name: the server picks one.
    if verb == "STOU" && arg.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let denied = || Denied::Name {
        verb: sent.clone(),
        name: text.clone().into_owned(),
    };
    // A Telnet escape (0xFF) left in a name could be read another way by a backend that
    // decodes Telnet itself; a name the backend would store as something else cannot be ruled.
    let Some(name) = file_name(&text).filter(|_| !site_naming && !arg.contains(&0xff)) else {
        return Some(denied());
    };
    let matches = |patterns: &[String]| {
        patterns
            .iter()
            .any(|p| WildMatch::new(&p.to_lowercase()).matches(&name))
    };
    let allowed = policy.allow_names.is_empty() || matches(&policy.allow_names);
    (!allowed || matches(&policy.deny_names)).then(denied)
}

/// `MDTM YYYYMMDDHHMMSS file`: the form that sets a file's time (vsftpd's `mdtm_write`).
fn sets_a_time(verb: &str, arg: &str) -> bool {
    verb == "MDTM"
        && arg.trim_start().split_once(' ').is_some_and(|(time, _)| {
            time.len() >= 14 && time.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        })
}

/// The name a file will have, as a pattern should see it: the last segment of the path once
/// `.` and `..` are resolved (a backend cleans them away), `/` or `\` (a backend on Windows)
/// separating, in lower case, without the dots and spaces Windows drops from the end of a name
/// (`evil.exe. ` is `evil.exe` there). `None` when no name is left (`""`, `"x/.."`): the backend
/// would make of it what it will, and no rule can say what that is.
fn file_name(arg: &str) -> Option<String> {
    let mut segments: Vec<&str> = Vec::new();
    for segment in arg.split(['/', '\\']) {
        match segment.trim_end_matches([' ', '\t']) {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let name = segments.last()?.trim_end_matches(['.', ' ']).to_lowercase();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(f: impl FnOnce(&mut PolicySettings)) -> PolicySettings {
        let mut p = PolicySettings::default();
        f(&mut p);
        p
    }

    #[test]
    fn denied_verbs_and_writes_under_read_only_are_refused_and_reads_are_not() {
        let drop_box = policy(|p| p.deny_commands = vec!["site".into(), "DELE".into()]);
        assert_eq!(
            check(&drop_box, "SITE", b"CHMOD 777 x"),
            Some(Denied::Command {
                verb: "SITE".into()
            })
        );
        assert!(check(&drop_box, "DELE", b"x").is_some());
        assert_eq!(check(&drop_box, "STOR", b"x"), None);
        let mirror = policy(|p| p.read_only = true);
        for verb in [
            "STOR", "APPE", "DELE", "RNFR", "RNTO", "MKD", "XMKD", "SITE", "MFMT",
        ] {
            assert_eq!(
                check(&mirror, verb, b"x"),
                Some(Denied::ReadOnly { verb: verb.into() })
            );
        }
        for verb in [
            "RETR", "LIST", "NLST", "MLSD", "CWD", "XCWD", "SIZE", "MDTM", "PWD",
        ] {
            assert_eq!(check(&mirror, verb, b"x"), None, "{verb}");
        }
        assert!(
            check(&mirror, "MDTM", b"20260101000000 x").is_some(),
            "setting a time is a write"
        );
        let no_dirs = policy(|p| p.deny_commands = vec!["xmkd".into(), "RMD".into()]);
        assert!(check(&no_dirs, "MKD", b"d").is_some() && check(&no_dirs, "XRMD", b"d").is_some());
    }

    #[test]
    fn names_are_matched_on_the_last_segment_in_any_case_as_windows_would_store_them() {
        let no_exe = policy(|p| p.deny_names = vec!["*.exe".into(), "*.JS".into()]);
        for arg in [
            "evil.exe",
            "dir/sub/Evil.EXE",
            "dir\\evil.exe",
            "evil.exe.",
            "evil.exe . ",
            "a.js",
            // A backend cleans these into `evil.exe`, or stores a name no rule can judge.
            "evil.exe/.",
            "evil.exe\\.",
            "evil.exe/",
            "evil.exe/x/..",
            "  ",
            "..",
        ] {
            assert!(
                matches!(
                    check(&no_exe, "STOR", arg.as_bytes()),
                    Some(Denied::Name { .. })
                ),
                "{arg}"
            );
        }
        assert!(
            check(&no_exe, "RNTO", b"renamed.exe").is_some(),
            "a rename is an upload"
        );
        assert_eq!(check(&no_exe, "STOR", b"report.pdf"), None);
        assert_eq!(check(&no_exe, "STOR", b"dir/../report.pdf"), None);
        assert!(
            check(&no_exe, "STOR", b"evil.\xff\xff\xf4exe").is_some(),
            "Telnet left in"
        );
        assert!(
            check(&no_exe, "SITE", b"CPTO evil.exe").is_some(),
            "mod_copy's target"
        );
        assert_eq!(check(&no_exe, "SITE", b"CHMOD 644 a.txt"), None);
        assert_eq!(check(&no_exe, "STOR", b"exe/readme.txt"), None);
        assert_eq!(
            check(&no_exe, "RETR", b"tool.exe"),
            None,
            "downloads are not uploads"
        );
        assert_eq!(
            check(&no_exe, "STOU", b""),
            None,
            "the server picks the name"
        );

        let only_csv = policy(|p| {
            p.allow_names = vec!["*.csv".into(), "report-????.pdf".into()];
            p.deny_names = vec!["secret*".into()];
        });
        assert_eq!(check(&only_csv, "STOR", b"data.CSV"), None);
        assert_eq!(check(&only_csv, "APPE", b"report-2026.pdf"), None);
        assert!(check(&only_csv, "STOR", b"report-26.pdf").is_some());
        assert!(check(&only_csv, "STOR", b"notes.txt").is_some());
        assert!(
            check(&only_csv, "STOR", b"secret.csv").is_some(),
            "deny wins"
        );
    }
}
