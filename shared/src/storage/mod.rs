//! Object storage for chunks and staged uploads.
//!
//! One trait, [`Storage`], with object-store semantics (docs/architecture.md):
//! streamed `put`, streamed `get` with an optional byte range, `head`,
//! idempotent `delete`, `list` by key prefix, and no rename or append. These
//! are the operations S3 offers, so an S3 backend can be added later without
//! touching callers. [`local::LocalStorage`] keeps objects in a directory,
//! [`s3::S3Storage`] in an S3-compatible bucket; [`conformance`] is the
//! behaviour both must show, tested against each.
//!
//! Keys are [`ObjectKey`]s, validated once so that they map unchanged to S3
//! keys and safely to relative paths. Every key shape (chunks, packs,
//! staging, uploads) is built and parsed in [`layout`] alone; chunk bytes go
//! through [`crate::chunk_store::ChunkStore`].
//!
//! A chunk's location is an [`ObjectRange`] (key, offset, length) rather than a
//! bare key, so several chunks can later be packed into one object.
//!
//! Everything streams: no operation holds a whole object in memory.

pub mod checksum;
#[cfg(test)]
pub(crate) mod conformance;
pub mod layout;
pub mod local;
pub mod requests;
pub mod s3;

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

/// A stream of object bytes, as `put` takes and `get` returns them.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A stream of listed objects; errors arrive in-band and end the listing.
pub type ObjectMetaStream = Pin<Box<dyn Stream<Item = Result<ObjectMeta, StorageError>> + Send>>;

/// Longest accepted object key, in bytes (S3's limit).
pub const MAX_KEY_LEN: usize = 1024;

/// An object store with S3 semantics.
///
/// Shared as `Arc<dyn Storage>`. Writes are whole-object and atomic: a reader
/// sees either the previous object, the complete new one, or nothing.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Stores `data` under `key`, replacing any existing object, and returns
    /// the number of bytes written.
    ///
    /// The object becomes visible atomically and only once the whole stream
    /// was read and made durable. If `data` yields an error
    /// ([`StorageError::Input`]) or storing fails, nothing is left behind and
    /// any previous object under `key` is untouched.
    async fn put(&self, key: &ObjectKey, data: ByteStream) -> Result<u64, StorageError>;

    /// [`Storage::put`] for bytes already in memory (small objects).
    async fn put_bytes(&self, key: &ObjectKey, data: Bytes) -> Result<u64, StorageError> {
        self.put(key, Box::pin(futures::stream::iter([Ok(data)])))
            .await
    }

    /// Streams the object, or the bytes `range` of it.
    ///
    /// A range must lie within the object (`start <= end <= size`), otherwise
    /// [`StorageError::InvalidRange`]: a short object is corruption to report,
    /// not something to clamp. A missing object is [`StorageError::NotFound`].
    async fn get(
        &self,
        key: &ObjectKey,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, StorageError>;

    /// The object's size and modification time, or `None` if it is missing.
    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError>;

    /// Removes the object. Deleting a missing object succeeds.
    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError>;

    /// Streams the objects whose key starts with `prefix` (a plain string
    /// prefix, as in S3: `chunks/a` matches `chunks/ab/…`), in no particular
    /// order. Lazy, so millions of keys do not need memory proportional to
    /// their count. A malformed prefix yields one [`StorageError::InvalidKey`].
    fn list(&self, prefix: &str) -> ObjectMetaStream;

    /// Cheap readiness probe: the backend is reachable and writable.
    async fn check(&self) -> Result<(), StorageError>;

    /// Removes what interrupted `put`s left behind (a process killed with
    /// `kill -9` mid-write) and is older than `max_age`; returns how many.
    /// Backends whose writes leave nothing behind keep this default.
    async fn remove_incomplete(&self, max_age: std::time::Duration) -> Result<u64, StorageError> {
        let _ = max_age;
        Ok(0)
    }
}

/// What [`Storage::head`] and [`Storage::list`] report about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's key.
    pub key: ObjectKey,
    /// Size in bytes.
    pub size: u64,
    /// Time of the last completed `put`.
    pub last_modified: SystemTime,
}

/// Where a stored chunk's bytes are: `length` bytes at `offset` of `key`.
///
/// Today every chunk is its own object (`offset` 0, `length` the object size);
/// the triple lets several chunks share one object later.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRange {
    /// The object holding the bytes.
    pub key: ObjectKey,
    /// First byte within the object.
    pub offset: u64,
    /// Number of bytes.
    pub length: u64,
}

impl ObjectRange {
    /// The byte range to pass to [`Storage::get`].
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset.saturating_add(self.length)
    }
}

/// A validated object key.
///
/// `/`-separated segments of `[A-Za-z0-9._-]`, at most [`MAX_KEY_LEN`] bytes.
/// No segment is empty, `.` or `..`, and none starts with `.`: dot-names are
/// reserved for backend bookkeeping (the local backend's `.tmp-` files). A
/// valid key is a valid S3 key and a safe relative path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

/// Why a string is not an [`ObjectKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidObjectKey {
    /// Empty, or longer than [`MAX_KEY_LEN`] bytes.
    #[error("object key must be 1 to {MAX_KEY_LEN} bytes long (got {0})")]
    Length(usize),
    /// Leading, trailing or doubled `/`.
    #[error("object key {0:?} has an empty segment")]
    EmptySegment(String),
    /// A segment starting with `.`, including `.` and `..`.
    #[error("object key {0:?} has a segment starting with '.'")]
    DotSegment(String),
    /// A character outside `A-Za-z0-9._-/`.
    #[error("object key {key:?} contains the invalid character {bad:?}")]
    InvalidChar {
        /// The rejected key.
        key: String,
        /// The first offending character.
        bad: char,
    },
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Checks one complete segment; `partial` allows the last segment of a list
/// prefix to be empty.
fn check_segment(seg: &str, whole: &str, partial: bool) -> Result<(), InvalidObjectKey> {
    if seg.is_empty() && !partial {
        return Err(InvalidObjectKey::EmptySegment(whole.to_owned()));
    }
    if seg.starts_with('.') {
        return Err(InvalidObjectKey::DotSegment(whole.to_owned()));
    }
    if let Some(bad) = seg.chars().find(|&c| !is_key_char(c)) {
        return Err(InvalidObjectKey::InvalidChar {
            key: whole.to_owned(),
            bad,
        });
    }
    Ok(())
}

impl ObjectKey {
    /// Validates `key`.
    pub fn new(key: impl Into<String>) -> Result<Self, InvalidObjectKey> {
        let key = key.into();
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(InvalidObjectKey::Length(key.len()));
        }
        for seg in key.split('/') {
            check_segment(seg, &key, false)?;
        }
        Ok(Self(key))
    }

    /// For keys built from parts that are valid by construction (hex digests).
    pub(crate) fn from_trusted(key: String) -> Self {
        debug_assert!(
            Self::new(key.clone()).is_ok(),
            "invalid trusted key {key:?}"
        );
        Self(key)
    }

    /// The key as sent to the backend.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a [`Storage::list`] prefix: like a key, except that it may be empty
/// and its last segment may be empty or partial.
pub fn validate_prefix(prefix: &str) -> Result<(), InvalidObjectKey> {
    if prefix.len() > MAX_KEY_LEN {
        return Err(InvalidObjectKey::Length(prefix.len()));
    }
    let mut segments = prefix.split('/').peekable();
    while let Some(seg) = segments.next() {
        check_segment(seg, prefix, segments.peek().is_none())?;
    }
    Ok(())
}

impl FromStr for ObjectKey {
    type Err = InvalidObjectKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for ObjectKey {
    type Error = InvalidObjectKey;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl AsRef<str> for ObjectKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectKey({:?})", self.0)
    }
}

/// Errors of every [`Storage`] backend.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No object under this key.
    #[error("object {0} not found")]
    NotFound(ObjectKey),
    /// A key or list prefix that fails validation.
    #[error(transparent)]
    InvalidKey(#[from] InvalidObjectKey),
    /// A `get` range outside the object.
    #[error("range {start}..{end} is outside object {key} of {size} bytes")]
    InvalidRange {
        /// The object.
        key: ObjectKey,
        /// Requested start.
        start: u64,
        /// Requested end (exclusive).
        end: u64,
        /// Actual object size.
        size: u64,
    },
    /// The caller's data stream failed during `put`; nothing was stored.
    #[error("input stream for {key} failed")]
    Input {
        /// The object that was being written.
        key: ObjectKey,
        /// The stream's error.
        #[source]
        source: io::Error,
    },
    /// The backend itself failed.
    #[error("storage {op} failed at {}", path.display())]
    Io {
        /// The operation (`"open"`, `"rename"`, …).
        op: &'static str,
        /// The backend path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A remote object store request failed (after its retries).
    #[error("storage {op} of {key} failed")]
    Remote {
        /// The operation (`"put"`, `"upload part"`, …).
        op: &'static str,
        /// The object key (or list prefix) involved.
        key: String,
        /// The client's error, naming the status or transport failure.
        #[source]
        source: object_store::Error,
    },
    /// The caller dropped a `put` before it completed; it was rolled back.
    #[error("put of {0} was cancelled")]
    Cancelled(ObjectKey),
    /// A pack's streamed put broke off or wrote another size than its
    /// frames and index (the pack is not stored).
    #[error("writing pack {id} failed: {message}")]
    Pack {
        /// The pack.
        id: i64,
        /// What went wrong.
        message: String,
    },
    /// A blocking helper task died (panic or runtime shutdown).
    #[error("storage task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// Bytes `range` of object `key` (all of it for `None`) in memory: for
/// reads bounded by a frame, a run of frames, an index or a compaction
/// window. A read that arrives in one piece is not copied.
pub async fn read_bytes(
    storage: &dyn Storage,
    key: &ObjectKey,
    range: Option<Range<u64>>,
) -> io::Result<Bytes> {
    use futures::TryStreamExt;
    let parts: Vec<Bytes> = storage
        .get(key, range)
        .await
        .map_err(io::Error::other)?
        .try_collect()
        .await?;
    Ok(if parts.len() == 1 {
        parts.into_iter().next().unwrap_or_default()
    } else {
        Bytes::from(parts.concat())
    })
}

/// [`read_bytes`] of `range`, refusing bytes of another length than asked
/// (corruption to report, not something to pass on).
pub async fn read_range(
    storage: &dyn Storage,
    key: &ObjectKey,
    range: Range<u64>,
) -> io::Result<Bytes> {
    let bytes = read_bytes(storage, key, Some(range.clone())).await?;
    if bytes.len() as u64 != range.end - range.start {
        return Err(io::Error::other(format!(
            "{key:?} gave {} bytes for {range:?}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Reads `input` up to `pieces` pieces ahead of its consumer, on a task of
/// its own. For a consumer on a blocking thread (the chunker), whose every
/// read would otherwise wait for the async read to be scheduled; errors
/// pass through in order. Dropping the stream stops the task at its next
/// piece. Must be called within a Tokio runtime.
pub fn read_ahead(mut input: ByteStream, pieces: usize) -> ByteStream {
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(pieces.max(1));
    tokio::spawn(async move {
        while let Some(piece) = input.next().await {
            let failed = piece.is_err();
            if tx.send(piece).await.is_err() || failed {
                return;
            }
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    }))
}

/// Runs `produce` on the blocking pool and streams what it sends.
///
/// The channel holds at most `capacity` items, which bounds memory; when the
/// consumer drops the stream, `produce`'s next send fails and it should
/// return. If `produce` panics, the stream ends with `on_failure(error)`
/// rather than silently, so a truncated output is never taken as complete.
/// Must be called within a Tokio runtime.
pub(crate) fn blocking_stream<T, P, F>(
    capacity: usize,
    produce: P,
    on_failure: F,
) -> impl Stream<Item = T> + Send + 'static
where
    T: Send + 'static,
    P: FnOnce(&tokio::sync::mpsc::Sender<T>) + Send + 'static,
    F: FnOnce(tokio::task::JoinError) -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    let handle = tokio::task::spawn_blocking(move || produce(&tx));
    crate::background::channel_stream(rx, handle, on_failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_accept_sharded_paths() {
        for ok in [
            "a",
            "chunks/ab/cd/abcd.zst",
            "staging/01HZX-upload_1.nar",
            "a.b/c-d/e_f",
        ] {
            let key = ObjectKey::new(ok).unwrap();
            assert_eq!(key.as_str(), ok);
            assert_eq!(key.to_string().parse::<ObjectKey>().unwrap(), key);
        }
        assert!(ObjectKey::new("x".repeat(MAX_KEY_LEN)).is_ok());
    }

    #[test]
    fn keys_reject_traversal_and_odd_characters() {
        use InvalidObjectKey as E;
        let long = "x".repeat(MAX_KEY_LEN + 1);
        type Expect = fn(&E) -> bool;
        let cases: [(&str, Expect); 12] = [
            ("", |e| matches!(e, E::Length(0))),
            (&long, |e| matches!(e, E::Length(_))),
            ("/a", |e| matches!(e, E::EmptySegment(_))),
            ("a/", |e| matches!(e, E::EmptySegment(_))),
            ("a//b", |e| matches!(e, E::EmptySegment(_))),
            (".", |e| matches!(e, E::DotSegment(_))),
            ("a/../b", |e| matches!(e, E::DotSegment(_))),
            ("a/./b", |e| matches!(e, E::DotSegment(_))),
            ("a/.tmp-x", |e| matches!(e, E::DotSegment(_))),
            ("a b", |e| matches!(e, E::InvalidChar { bad: ' ', .. })),
            ("a\\b", |e| matches!(e, E::InvalidChar { bad: '\\', .. })),
            ("ä", |e| matches!(e, E::InvalidChar { bad: 'ä', .. })),
        ];
        for (input, expected) in cases {
            let err = ObjectKey::new(input).unwrap_err();
            assert!(expected(&err), "{input:?} gave {err:?}");
        }
    }

    #[test]
    fn prefixes_allow_partial_last_segment() {
        for ok in ["", "chunks", "chunks/", "chunks/a", "chunks/ab/"] {
            assert!(validate_prefix(ok).is_ok(), "{ok:?}");
        }
        for bad in ["/", "a//", "../", "a/..", "a/.", "a b", "a/./"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn object_range_is_offset_plus_length() {
        let r = ObjectRange {
            key: ObjectKey::new("a").unwrap(),
            offset: 10,
            length: 5,
        };
        assert_eq!(r.range(), 10..15);
    }
}
