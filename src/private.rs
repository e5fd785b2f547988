//! Directories only the gateway's user may enter: ACME's `state_dir` (the account key, the
//! certificates' keys) and the scan spool (uploads not yet judged). Both are created 0700 and
//! refused at start when anyone else could read or write what they hold.

use std::fs::{DirBuilder, Metadata};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

/// Creates `dir` and any missing parents, 0700.
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Why `meta` is not private, if it is not: owned by another user than the gateway's, or
/// open to its group or to others. Said as its mode and owner, for the refusal.
pub(crate) fn exposed(meta: &Metadata) -> Option<String> {
    let me = rustix::process::geteuid().as_raw();
    (meta.mode() & 0o077 != 0 || meta.uid() != me).then(|| {
        format!(
            "mode {:o}, owner {} (the gateway's user is uid {me})",
            meta.mode() & 0o7777,
            meta.uid()
        )
    })
}
