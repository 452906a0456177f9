//! I/O errors of the local store: naming the operation and path, and
//! telling "no such object" apart.

use std::fs;
use std::io::{self, ErrorKind};
use std::path::Path;

use crate::storage::StorageError;

pub(super) fn io_err(
    op: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> StorageError + use<> {
    let path = path.to_path_buf();
    move |source| StorageError::Io { op, path, source }
}

/// True for errors meaning "no such object": the file or a parent is missing,
/// or a parent is a file.
pub(super) fn is_missing(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

pub(super) async fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    let owned = dir.to_path_buf();
    tokio::task::spawn_blocking(move || fs::File::open(&owned)?.sync_all())
        .await?
        .map_err(io_err("fsync directory", dir))
}
