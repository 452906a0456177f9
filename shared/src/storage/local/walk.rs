//! Listing a local store: a depth-first walk of the directory tree on a
//! blocking thread, sending each object as it is found.

use std::fs;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use super::file_io::{io_err, is_missing};
use crate::storage::{ObjectKey, ObjectMeta, StorageError};

pub(super) type ListSender = mpsc::Sender<Result<ObjectMeta, StorageError>>;

/// Depth-first walk from `start` (whose key prefix is `start_key`, empty or
/// ending in `/`), sending every regular file whose name is a valid key.
/// Returns early when the receiver is gone.
pub(super) fn walk(start: PathBuf, start_key: String, name_prefix: &str, tx: &ListSender) {
    let fail = |op, path: &Path, e| {
        let _ = tx.blocking_send(Err(io_err(op, path)(e)));
    };
    let first = match fs::read_dir(&start) {
        Err(e) if is_missing(&e) => return,
        Err(e) => return fail("read directory", &start, e),
        Ok(entries) => entries,
    };
    // (directory, its key prefix, its entries); only the first is filtered.
    let mut stack = vec![(start, start_key, first)];
    loop {
        let depth = stack.len();
        let Some((dir, dir_key, entries)) = stack.last_mut() else {
            return;
        };
        let entry = match entries.next() {
            None => {
                stack.pop();
                continue;
            }
            Some(Err(e)) => return fail("read directory", dir, e),
            Some(Ok(entry)) => entry,
        };
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        // Temp files and anything else hidden are not objects.
        if name.starts_with('.') || (depth == 1 && !name.starts_with(name_prefix)) {
            continue;
        }
        let key = format!("{dir_key}{name}");
        let path = entry.path();
        let file_type = match entry.file_type() {
            Err(e) if is_missing(&e) => continue,
            Err(e) => return fail("stat", &path, e),
            Ok(t) => t,
        };
        if file_type.is_dir() {
            match fs::read_dir(&path) {
                Err(e) if is_missing(&e) => {}
                Err(e) => return fail("read directory", &path, e),
                Ok(entries) => stack.push((path, format!("{key}/"), entries)),
            }
            continue;
        }
        if !file_type.is_file() {
            continue;
        }
        let Ok(key) = ObjectKey::new(key) else {
            tracing::debug!(path = %path.display(), "skipping file whose name is not a key");
            continue;
        };
        let meta = match entry.metadata().and_then(|m| Ok((m.len(), m.modified()?))) {
            Err(e) if is_missing(&e) => continue,
            Err(e) => return fail("stat", &path, e),
            Ok(meta) => meta,
        };
        let object = ObjectMeta {
            key,
            size: meta.0,
            last_modified: meta.1,
        };
        if tx.blocking_send(Ok(object)).is_err() {
            return;
        }
    }
}
