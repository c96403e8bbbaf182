//! The agent's journal on the node (`--state-dir`, `/var/lib/netscope` by
//! default): reports drained from the kernel but not yet acknowledged, so
//! that they outlive a crash of the agent (issue 15, docs/restarts.md).

use std::io;
use std::path::{Path, PathBuf};

/// File name of the journal inside the state directory.
pub const JOURNAL_FILE: &str = "journal";

/// Removes the journal (and its temporary and quarantined siblings, all
/// named `journal*`) from `dir`, then `dir` itself when that leaves it
/// empty. Files that are not netscope's are left alone. Returns what was
/// removed; nothing there is not an error.
///
/// # Errors
/// The filesystem's error other than "not found".
pub fn remove(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name();
        if name.to_string_lossy().starts_with(JOURNAL_FILE) && e.file_type()?.is_file() {
            std::fs::remove_file(e.path())?;
            removed.push(e.path());
        }
    }
    if std::fs::remove_dir(dir).is_ok() {
        removed.push(dir.to_path_buf());
    }
    Ok(removed)
}
