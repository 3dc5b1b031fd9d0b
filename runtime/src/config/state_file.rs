//! The node's own files in its state directory (the applied device
//! configuration, the credential of `citadel init`): read when present,
//! written atomically — a temporary file, synced, renamed over the old one,
//! the directory synced — so a crash leaves the old file or the new one,
//! never half of either.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The text of `path`, `None` when there is no such file.
pub(super) fn read_if_present(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(format!("cannot read {}: {err}", path.display())),
    }
}

/// Write `value` as pretty JSON to `dir/name` atomically, with permission
/// bits `mode` (from creation on: the content is never readable by more).
pub(super) fn write_json(dir: &Path, name: &str, value: &impl serde::Serialize, mode: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!("{name}.tmp"));
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)?;
    file.write_all(&serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, dir.join(name))?;
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}
