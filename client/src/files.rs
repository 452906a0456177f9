//! Reading and atomically replacing the small files the client owns or
//! edits: its config, nix.conf, netrc.
//!
//! A write goes to a temporary file in the same directory, gets its mode
//! before any byte is written, and is renamed over the target: a crash
//! never leaves a half-written nix.conf, and a token is never readable by
//! others, not even for a moment.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Mode of files holding tokens.
pub const PRIVATE_MODE: u32 = 0o600;

/// A file operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct FileError {
    /// What was being done.
    pub action: &'static str,
    /// The file involved.
    pub path: PathBuf,
    /// The OS error.
    pub source: std::io::Error,
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FileError {
    let path = path.to_owned();
    move |source| FileError {
        action,
        path,
        source,
    }
}

/// The file's text; a missing file reads as empty (nothing configured yet).
pub fn read_or_empty(path: &Path) -> Result<String, FileError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(io_error("reading", path)(e)),
    }
}

/// Replaces `path` with `contents`, mode `mode`, creating its directory
/// (mode 0700) if needed.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error("creating directory", dir))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_error("creating", &tmp))?;
        // The umask may have narrowed `mode`, or a stale file pre-existed.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_error("setting permissions of", &tmp))?;
        file.write_all(contents)
            .map_err(io_error("writing", &tmp))?;
        file.sync_all().map_err(io_error("syncing", &tmp))?;
        fs::rename(&tmp, path).map_err(io_error("replacing", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// [`write_atomic`] with mode 0600.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    write_atomic(path, contents, PRIVATE_MODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_with_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("f");
        write_private(&path, b"one").unwrap();
        write_atomic(&path, b"two", 0o644).unwrap();
        assert_eq!(read_or_empty(&path).unwrap(), "two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn missing_file_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_or_empty(&dir.path().join("nope")).unwrap(), "");
    }
}
