//! Opening the audit log so that nobody else can read, redirect, forge or erase its records.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

/// Opens `path` for appending, and refuses what would let someone else read, redirect, forge
/// or erase the records (a mistake, or a user with write access to the directory):
///
/// - `O_NOFOLLOW`: a symbolic link as the file itself is refused, so the log cannot be aimed at
///   another file (a key, a system file) that the gateway would append to. Directories above
///   it may be links (`/var/log` often is).
/// - Created `0600`: the records name users and client addresses. `O_CREAT`'s mode applies only
///   to a new file, so an existing one is checked instead (see [`unfit`]), on the descriptor
///   opened, so no rename between the check and the use can swap it.
pub(super) fn append(path: &Path) -> io::Result<File> {
    let flags =
        OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::RUSR | Mode::WUSR).map_err(|e| {
        if e == Errno::LOOP {
            io::Error::other("a symbolic link (the audit log must be the file itself: it is opened with O_NOFOLLOW)")
        } else {
            io::Error::from(e)
        }
    })?;
    let file = File::from(fd);
    match unfit(&file.metadata()?, rustix::process::geteuid().as_raw()) {
        Some(why) => Err(io::Error::other(why)),
        None => Ok(file),
    }
}

/// Why an opened audit log must not be used, if it must not. It must be a regular file or a
/// FIFO (a collector's named pipe), owned by the gateway's own user (`euid`), writable by no one
/// else and readable by no one outside its group: 0600 or 0640. An existing file keeps its mode
/// and owner whatever the gateway would have created, so both are checked, not assumed.
fn unfit(meta: &Metadata, euid: u32) -> Option<String> {
    let kind = meta.file_type();
    if !kind.is_file() && !kind.is_fifo() {
        return Some("not a regular file (nor a FIFO)".into());
    }
    if meta.uid() != euid {
        return Some(format!(
            "owned by uid {}, not by the gateway's user (uid {euid}): chown it, or let the gateway create it",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o027 != 0 {
        return Some(format!(
            "mode {mode:04o}: others could read it, or someone else write (forge or erase records) into it; chmod it to 0600 or 0640"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gateway's own regular file or FIFO, 0600 or 0640; nothing else.
    #[test]
    fn only_the_gateway_s_own_file_closed_to_others_is_fit() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let euid = rustix::process::geteuid().as_raw();
        let with_mode = |name: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"").expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            std::fs::metadata(&path).expect("stat")
        };
        assert_eq!(unfit(&with_mode("a", 0o600), euid), None);
        assert_eq!(unfit(&with_mode("b", 0o640), euid), None);
        for (name, mode) in [("c", 0o666), ("d", 0o620), ("e", 0o644), ("f", 0o602)] {
            let why = unfit(&with_mode(name, mode), euid).expect("refused");
            assert!(why.starts_with(&format!("mode {mode:04o}: ")), "{why}");
        }
        let why = unfit(&with_mode("g", 0o600), euid.wrapping_add(1)).expect("refused");
        assert!(why.contains("not by the gateway's user"), "{why}");
        let null = std::fs::metadata("/dev/null").expect("stat");
        let why = unfit(&null, null.uid()).expect("refused");
        assert!(why.starts_with("not a regular file"), "{why}");
    }

    /// A symbolic link is refused, even to a fit file; a new file is created 0600.
    #[test]
    fn a_symbolic_link_is_refused_and_a_new_file_is_created_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let new = dir.path().join("audit.jsonl");
        append(&new).expect("created");
        let mode = std::fs::metadata(&new).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&new, &link).expect("symlink");
        let err = append(&link).expect_err("a symlink");
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }
}
