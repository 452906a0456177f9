//! [`Storage`] in a local directory (or a filesystem shared by every host).
//!
//! Key `a/b/c` is the file `<root>/a/b/c`; callers put sharding into their
//! keys. A `put` writes `.tmp-<name>-<random>` beside the target, fsyncs it,
//! renames it over the target and fsyncs the directory, so readers see the old
//! object or the whole new one, and a crash leaves at most a temp file, which
//! [`LocalStorage::remove_stale_temp_files`] cleans up. Keys never start a
//! segment with `.`, so temp files cannot collide with objects.
//!
//! Unlike S3, a key cannot be both an object and a prefix of deeper keys
//! (`a/b` and `a/b/c`): the second `put` fails with an I/O error.

use std::fs;
use std::io::{self, ErrorKind, SeekFrom, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{
    ByteStream, ObjectKey, ObjectMeta, ObjectMetaStream, Storage, StorageError, blocking_stream,
    validate_prefix,
};

mod file_io;
mod walk;

use self::file_io::{io_err, is_missing, sync_dir};
use self::walk::walk;

/// Name prefix of in-progress writes.
const TEMP_PREFIX: &str = ".tmp-";
/// Largest piece a `get` stream yields.
const READ_PIECE: usize = 128 * 1024;
/// Pieces of a `put` queued for its writer thread.
const WRITE_QUEUE: usize = 16;
/// Listed objects buffered ahead of the consumer.
const LIST_BUFFER: usize = 256;

/// Objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    /// Uses `root`, creating it if needed. Call at startup: this blocks.
    pub fn new(root: PathBuf) -> Result<Self, StorageError> {
        fs::create_dir_all(&root).map_err(io_err("create root", &root))?;
        Ok(Self { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    /// Creates `dir` if needed and makes the new entries durable by fsyncing
    /// every ancestor up to the root (only the first write into a new shard
    /// directory pays for this).
    async fn ensure_dir(&self, dir: &Path) -> Result<(), StorageError> {
        if tokio::fs::metadata(dir).await.is_ok_and(|m| m.is_dir()) {
            return Ok(());
        }
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io_err("create directory", dir))?;
        let mut current = dir;
        while current != self.root {
            let Some(parent) = current.parent() else {
                break;
            };
            sync_dir(parent).await?;
            current = parent;
        }
        Ok(())
    }

    /// Writes the stream to `tmp`, fsynced; returns the byte count.
    ///
    /// The pieces go as they are to a blocking thread that owns the file,
    /// so each byte is copied once, by the kernel: a Tokio file copies every
    /// write into a buffer of its own first (and a buffered writer in front
    /// of it once more): about a tenth of the server's CPU in a chunk-level
    /// push (docs/measurements.md, chunk-level push, seventh session).
    async fn write_temp(
        key: &ObjectKey,
        tmp: &Path,
        mut data: ByteStream,
    ) -> Result<u64, StorageError> {
        // Created here, not on the writer thread, so that the file exists
        // before this future can be dropped: the caller's guard then always
        // finds the file it must remove.
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .await
            .map_err(io_err("create", tmp))?
            .into_std()
            .await;
        let (pieces, mut queue) = tokio::sync::mpsc::channel::<Bytes>(WRITE_QUEUE);
        let writer = {
            let tmp = tmp.to_path_buf();
            tokio::task::spawn_blocking(move || -> Result<(fs::File, u64), StorageError> {
                let mut written = 0u64;
                while let Some(piece) = queue.blocking_recv() {
                    file.write_all(&piece).map_err(io_err("write", &tmp))?;
                    written += piece.len() as u64;
                }
                Ok((file, written))
            })
        };
        let fed: Result<(), StorageError> = async {
            while let Some(piece) = data.next().await {
                let piece = piece.map_err(|source| StorageError::Input {
                    key: key.clone(),
                    source,
                })?;
                if pieces.send(piece).await.is_err() {
                    // The writer stopped on an error, which it returns.
                    return Ok(());
                }
            }
            Ok(())
        }
        .await;
        drop(pieces);
        let (file, written) = writer.await??;
        // An input that failed leaves a temp file for the caller to remove:
        // no point making it durable.
        fed?;
        tokio::task::spawn_blocking(move || file.sync_all())
            .await?
            .map_err(io_err("fsync", tmp))?;
        Ok(written)
    }

    /// Deletes `.tmp-` files last modified more than `max_age` ago: leftovers
    /// of writers that crashed or were cancelled mid-`put`. Returns how many
    /// were removed. `max_age` must exceed the longest expected `put`.
    pub async fn remove_stale_temp_files(&self, max_age: Duration) -> Result<u64, StorageError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let cutoff = SystemTime::now()
                .checked_sub(max_age)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let mut removed = 0;
            let mut dirs = vec![root];
            while let Some(dir) = dirs.pop() {
                let entries = match fs::read_dir(&dir) {
                    Err(e) if is_missing(&e) => continue,
                    other => other.map_err(io_err("read directory", &dir))?,
                };
                for entry in entries {
                    let entry = entry.map_err(io_err("read directory", &dir))?;
                    let path = entry.path();
                    let file_type = entry.file_type().map_err(io_err("stat", &path))?;
                    if file_type.is_dir() {
                        dirs.push(path);
                        continue;
                    }
                    if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                        continue;
                    }
                    let modified = match entry.metadata().and_then(|m| m.modified()) {
                        Err(e) if is_missing(&e) => continue,
                        other => other.map_err(io_err("stat", &path))?,
                    };
                    if modified < cutoff {
                        match fs::remove_file(&path) {
                            Ok(()) => removed += 1,
                            Err(e) if is_missing(&e) => {}
                            Err(e) => return Err(io_err("remove", &path)(e)),
                        }
                    }
                }
            }
            Ok(removed)
        })
        .await?
    }
}

/// Removes a temp file whose `put` was dropped before it finished (the one
/// cleanup that must run on cancellation, so it lives in `Drop`).
struct TempFileGuard(Option<PathBuf>);

impl Drop for TempFileGuard {
    fn drop(&mut self) {
        if let Some(tmp) = self.0.take()
            && let Err(e) = std::fs::remove_file(&tmp)
            && !is_missing(&e)
        {
            tracing::warn!(path = %tmp.display(), error = %e, "could not remove temp file");
        }
    }
}

#[async_trait]
impl Storage for LocalStorage {
    async fn put(&self, key: &ObjectKey, data: ByteStream) -> Result<u64, StorageError> {
        let path = self.path(key);
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            unreachable!("a validated key always has a last segment");
        };
        self.ensure_dir(dir).await?;
        let tmp = dir.join(format!(
            "{TEMP_PREFIX}{}-{:016x}",
            name.to_string_lossy(),
            rand::random::<u64>()
        ));
        // A writer cancelled mid-put (a client gone, a stalled upload cut
        // off) must not leave its temp file until the next sweep.
        let mut guard = TempFileGuard(Some(tmp.clone()));
        let renamed = match Self::write_temp(key, &tmp, data).await {
            Ok(written) => tokio::fs::rename(&tmp, &path)
                .await
                .map(|()| written)
                .map_err(io_err("rename", &path)),
            Err(e) => Err(e),
        };
        guard.0 = None;
        match renamed {
            Ok(written) => {
                sync_dir(dir).await?;
                Ok(written)
            }
            Err(e) => {
                if let Err(cleanup) = tokio::fs::remove_file(&tmp).await
                    && !is_missing(&cleanup)
                {
                    tracing::warn!(path = %tmp.display(), error = %cleanup, "could not remove temp file");
                }
                Err(e)
            }
        }
    }

    async fn get(
        &self,
        key: &ObjectKey,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, StorageError> {
        let path = self.path(key);
        let mut file = match tokio::fs::File::open(&path).await {
            Err(e) if is_missing(&e) => return Err(StorageError::NotFound(key.clone())),
            other => other.map_err(io_err("open", &path))?,
        };
        let meta = file.metadata().await.map_err(io_err("stat", &path))?;
        if !meta.is_file() {
            return Err(StorageError::NotFound(key.clone()));
        }
        let size = meta.len();
        let range = range.unwrap_or(0..size);
        if range.start > range.end || range.end > size {
            return Err(StorageError::InvalidRange {
                key: key.clone(),
                start: range.start,
                end: range.end,
                size,
            });
        }
        if range.start > 0 {
            file.seek(SeekFrom::Start(range.start))
                .await
                .map_err(io_err("seek", &path))?;
        }
        // The open file keeps the object read consistent even if a `put`
        // replaces it meanwhile. A file that shrank underneath (external
        // tampering) ends the stream with an error instead of short data.
        let remaining = range.end - range.start;
        Ok(Box::pin(futures::stream::try_unfold(
            (file, remaining),
            |(mut file, remaining)| async move {
                if remaining == 0 {
                    return Ok(None);
                }
                let want = remaining.min(READ_PIECE as u64);
                let mut buf = BytesMut::with_capacity(want as usize);
                let n = (&mut file).take(want).read_buf(&mut buf).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "object is shorter than when it was opened",
                    ));
                }
                Ok(Some((buf.freeze(), (file, remaining - n as u64))))
            },
        )))
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path(key);
        match tokio::fs::metadata(&path).await {
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(io_err("stat", &path)(e)),
            Ok(meta) if !meta.is_file() => Ok(None),
            Ok(meta) => Ok(Some(ObjectMeta {
                key: key.clone(),
                size: meta.len(),
                last_modified: meta.modified().map_err(io_err("stat", &path))?,
            })),
        }
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        let path = self.path(key);
        match tokio::fs::remove_file(&path).await {
            Err(e) if is_missing(&e) => Ok(()),
            other => other.map_err(io_err("remove", &path)),
        }
    }

    fn list(&self, prefix: &str) -> ObjectMetaStream {
        if let Err(e) = validate_prefix(prefix) {
            return Box::pin(futures::stream::iter([Err(e.into())]));
        }
        // Start in the deepest directory the prefix names completely; only
        // its entries need the partial last segment as a name filter.
        let (dir_key, name_prefix) = match prefix.rsplit_once('/') {
            Some((dir, name)) => (format!("{dir}/"), name.to_owned()),
            None => (String::new(), prefix.to_owned()),
        };
        let start = self.root.join(&dir_key);
        Box::pin(blocking_stream(
            LIST_BUFFER,
            move |tx| walk(start, dir_key, &name_prefix, tx),
            |e| Err(e.into()),
        ))
    }

    async fn check(&self) -> Result<(), StorageError> {
        let probe = self
            .root
            .join(format!("{TEMP_PREFIX}check-{:016x}", rand::random::<u64>()));
        tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .await
            .map_err(io_err("create", &probe))?;
        tokio::fs::remove_file(&probe)
            .await
            .map_err(io_err("remove", &probe))
    }

    async fn remove_incomplete(&self, max_age: Duration) -> Result<u64, StorageError> {
        self.remove_stale_temp_files(max_age).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance::{self, key};
    use bytes::Bytes;
    use std::sync::Arc;

    /// Every file under `dir`, relative, sorted; includes temp files.
    fn files_under(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut dirs = vec![dir.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        out
    }

    fn storage() -> (tempfile::TempDir, LocalStorage) {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path().join("root")).unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn a_cancelled_put_leaves_no_temp_file() {
        use futures::StreamExt;
        let (_dir, s) = storage();
        let key = ObjectKey::new("staging/cut.nar").unwrap();
        let (wrote_tx, wrote_rx) = tokio::sync::oneshot::channel::<()>();
        let mut wrote_tx = Some(wrote_tx);
        // One piece, then a writer that never sends again.
        let data: ByteStream = Box::pin(
            futures::stream::iter([Ok(Bytes::from_static(b"partial"))]).chain(
                futures::stream::poll_fn(move |_| {
                    if let Some(tx) = wrote_tx.take() {
                        let _ = tx.send(());
                    }
                    std::task::Poll::Pending
                }),
            ),
        );
        let put = s.put(&key, data);
        tokio::select! {
            _ = put => panic!("the put cannot finish"),
            _ = wrote_rx => {}
        }
        // The put future is dropped here, mid-write.
        assert_eq!(files_under(s.root()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn put_get_round_trip_of_a_multi_piece_stream() {
        let (_dir, s) = storage();
        conformance::put_get_round_trip_of_a_multi_piece_stream(&s).await;
        assert_eq!(files_under(s.root()), ["chunks/ab/cd/abcd.zst", "empty"]);
    }

    #[tokio::test]
    async fn range_get_reads_exactly_the_range() {
        let (_dir, s) = storage();
        conformance::range_get_reads_exactly_the_range(&s).await;
    }

    #[tokio::test]
    async fn put_overwrites() {
        let (_dir, s) = storage();
        conformance::put_overwrites(&s).await;
    }

    #[tokio::test]
    async fn delete_is_idempotent() {
        let (_dir, s) = storage();
        conformance::delete_is_idempotent(&s).await;
    }

    #[tokio::test]
    async fn list_by_prefix_walks_nested_directories() {
        let (_dir, s) = storage();
        fs::create_dir_all(s.root().join("chunks/ab/cd")).unwrap();
        fs::write(s.root().join("chunks/ab/cd/.tmp-x9-0"), b"partial").unwrap();
        conformance::list_by_prefix(&s).await;
    }

    #[tokio::test]
    async fn failed_input_stream_leaves_nothing_behind() {
        let (_dir, s) = storage();
        conformance::failed_input_stream_leaves_nothing_behind(&s).await;
        assert_eq!(files_under(s.root()), ["chunks/00/00/obj"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_puts_of_one_key_leave_one_intact_object() {
        let (_dir, s) = storage();
        let root = s.root().to_path_buf();
        conformance::concurrent_puts_of_one_key_leave_one_intact_object(Arc::new(s)).await;
        assert_eq!(files_under(&root), ["chunks/ff/ff/same"]);
    }

    #[tokio::test]
    async fn large_objects_and_cancelled_puts() {
        let (_dir, s) = storage();
        conformance::large_objects(&s, 300_000).await;
        conformance::cancelled_put_leaves_no_object(Arc::new(s), 300_000).await;
    }

    #[tokio::test]
    async fn stale_temp_files_are_removed_fresh_ones_kept() {
        let (_dir, s) = storage();
        s.put_bytes(&key("chunks/aa/bb/obj"), Bytes::from_static(b"keep"))
            .await
            .unwrap();
        let old = s.root().join("chunks/aa/bb/.tmp-obj-1");
        let fresh = s.root().join("chunks/aa/.tmp-other-2");
        for p in [&old, &fresh] {
            fs::write(p, b"partial").unwrap();
        }
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
        let removed = s
            .remove_stale_temp_files(Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(removed, 1);
        assert_eq!(
            files_under(s.root()),
            ["chunks/aa/.tmp-other-2", "chunks/aa/bb/obj"]
        );
    }
}
