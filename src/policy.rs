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

/// Verbs that change the backend's files.
const WRITES: &[&str] = &[
    "STOR", "STOU", "APPE", "DELE", "RMD", "XRMD", "MKD", "XMKD", "RNFR", "RNTO", "SITE", "MFMT",
    "MFCT", "MFF",
];

/// Verbs whose argument is the name a file will have on the backend.
const NAMING: &[&str] = &["STOR", "STOU", "APPE", "RNTO"];

/// The verdict of `policy` on `verb` (upper case) with its argument `arg`.
pub(crate) fn check(policy: &PolicySettings, verb: &str, arg: &str) -> Option<Denied> {
    let verb_is = |list: &[String]| list.iter().any(|v| v.eq_ignore_ascii_case(verb));
    if verb_is(&policy.deny_commands) {
        return Some(Denied::Command { verb: verb.into() });
    }
    if policy.read_only && WRITES.contains(&verb) {
        return Some(Denied::ReadOnly { verb: verb.into() });
    }
    if !NAMING.contains(&verb) || arg.is_empty() {
        return None;
    }
    let name = file_name(arg);
    let matches = |patterns: &[String]| {
        patterns
            .iter()
            .any(|p| WildMatch::new(&p.to_lowercase()).matches(&name))
    };
    let allowed = policy.allow_names.is_empty() || matches(&policy.allow_names);
    (!allowed || matches(&policy.deny_names)).then(|| Denied::Name {
        verb: verb.into(),
        name: arg.into(),
    })
}

/// The name a file will have, as a pattern should see it: the last segment of the path (`/`,
/// or `\` for a backend on Windows), in lower case, without the trailing dots and spaces that
/// Windows drops from a name (`evil.exe. ` is `evil.exe` there).
fn file_name(arg: &str) -> String {
    let last = arg.rsplit(['/', '\\']).next().unwrap_or(arg);
    last.trim_end_matches(['.', ' ']).to_lowercase()
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
            check(&drop_box, "SITE", "CHMOD 777 x"),
            Some(Denied::Command {
                verb: "SITE".into()
            })
        );
        assert!(check(&drop_box, "DELE", "x").is_some());
        assert_eq!(check(&drop_box, "STOR", "x"), None);
        let mirror = policy(|p| p.read_only = true);
        for verb in [
            "STOR", "APPE", "DELE", "RNFR", "RNTO", "MKD", "XMKD", "SITE", "MFMT",
        ] {
            assert_eq!(
                check(&mirror, verb, "x"),
                Some(Denied::ReadOnly { verb: verb.into() })
            );
        }
        for verb in ["RETR", "LIST", "NLST", "MLSD", "CWD", "SIZE", "MDTM", "PWD"] {
            assert_eq!(check(&mirror, verb, "x"), None, "{verb}");
        }
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
        ] {
            assert!(
                matches!(check(&no_exe, "STOR", arg), Some(Denied::Name { .. })),
                "{arg}"
            );
        }
        assert!(
            check(&no_exe, "RNTO", "renamed.exe").is_some(),
            "a rename is an upload"
        );
        assert_eq!(check(&no_exe, "STOR", "report.pdf"), None);
        assert_eq!(check(&no_exe, "STOR", "exe/readme.txt"), None);
        assert_eq!(
            check(&no_exe, "RETR", "tool.exe"),
            None,
            "downloads are not uploads"
        );
        assert_eq!(
            check(&no_exe, "STOU", ""),
            None,
            "the server picks the name"
        );

        let only_csv = policy(|p| {
            p.allow_names = vec!["*.csv".into(), "report-????.pdf".into()];
            p.deny_names = vec!["secret*".into()];
        });
        assert_eq!(check(&only_csv, "STOR", "data.CSV"), None);
        assert_eq!(check(&only_csv, "APPE", "report-2026.pdf"), None);
        assert!(check(&only_csv, "STOR", "report-26.pdf").is_some());
        assert!(check(&only_csv, "STOR", "notes.txt").is_some());
        assert!(
            check(&only_csv, "STOR", "secret.csv").is_some(),
            "deny wins"
        );
    }
}
