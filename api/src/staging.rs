//! Streams an upload into staging while verifying it: SHA-256, size, and a
//! full NAR parse, all on the fly, and the staged copy's checksum
//! ([`Checksum`], recorded with its intent for the ingest to check).
//! Nothing is held whole in memory, and a failed upload leaves no object
//! behind (the storage backend only makes an object appear when its stream
//! ends without error).
//!
//! Every staging key comes from [`reserve`], which commits its staging
//! intent before the first byte is written (docs/gc.md "Staging objects"):
//! the sweeper finds an abandoned upload's object through it, never by
//! listing. A copy that will not be recorded goes through [`discard`].

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use larder_core::nix::hash::NarHash;
use larder_core::nix::nar::NarValidator;
use larder_shared::db::staged_chunks::StagedChunks;
use larder_shared::db::{Db, staging_intents, unix_now};
use larder_shared::storage::checksum::{Checksum, Checksummer};
use larder_shared::storage::{ObjectKey, Storage, layout};

use crate::error::ApiError;

/// A fresh staging key, its intent committed: call before writing a byte.
pub async fn reserve(db: &Db) -> Result<ObjectKey, ApiError> {
    let key = layout::new_staging_key();
    let mut conn = db.conn().await?;
    staging_intents::insert(conn.raw(), &key, unix_now()).await?;
    Ok(key)
}

/// Records the checksum and size of the complete, verified copy at `key`
/// with its intent, and the chunk list a chunk-level push verified it as,
/// whence the `nars` row adopting it takes the checksum and the list (the
/// size counts against the staging quota until then). An intent the
/// sweeper took meanwhile is left alone: the adopt that follows finds it
/// gone and refuses the copy.
pub async fn record_checksum(
    db: &Db,
    key: &ObjectKey,
    checksum: Checksum,
    size: u64,
    chunks: Option<&StagedChunks>,
) -> Result<(), ApiError> {
    let mut conn = db.conn().await?;
    staging_intents::record_checksum(conn.raw(), key, checksum, size, chunks).await?;
    Ok(())
}

/// Deletes a staged copy that will not be recorded (a failed upload, a
/// surplus copy), then its intent. If this fails half-way, the intent is
/// left for the sweeper.
pub async fn discard(db: &Db, staging: &Arc<dyn Storage>, key: &ObjectKey) -> Result<(), ApiError> {
    staging.delete(key).await?;
    let mut conn = db.conn().await?;
    staging_intents::remove(conn.raw(), key).await?;
    Ok(())
}

/// What the uploader claims about the NAR.
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    /// Claimed SHA-256.
    pub nar_hash: NarHash,
    /// Claimed size.
    pub nar_size: u64,
}

/// Why verification failed (first failure wins).
#[derive(Debug, Clone)]
enum Rejection {
    TooLong,
    Malformed(String),
    Body(String),
}

/// Incremental verifier shared by the staging and proof-of-possession paths.
struct Verifier {
    expected: Expected,
    hasher: Sha256,
    checksum: Checksummer,
    nar: NarValidator,
    seen: u64,
}

impl Verifier {
    fn new(expected: Expected) -> Self {
        Self {
            expected,
            hasher: Sha256::new(),
            checksum: Checksummer::default(),
            nar: NarValidator::new(),
            seen: 0,
        }
    }

    fn update(&mut self, data: &[u8]) -> Result<(), Rejection> {
        self.seen += data.len() as u64;
        if self.seen > self.expected.nar_size {
            return Err(Rejection::TooLong);
        }
        self.hasher.update(data);
        self.checksum.update(data);
        self.nar
            .update(data)
            .map_err(|e| Rejection::Malformed(e.to_string()))
    }

    /// The checksum of the bytes, once they are the NAR claimed.
    fn finish(self) -> Result<Checksum, ApiError> {
        let Expected { nar_hash, nar_size } = self.expected;
        if self.seen != nar_size {
            return Err(ApiError::InvalidNar(format!(
                "NAR size mismatch: metadata says {nar_size} bytes, body has {}",
                self.seen
            )));
        }
        let actual = NarHash::from_bytes(self.hasher.finalize().into());
        if actual != nar_hash {
            return Err(ApiError::InvalidNar(format!(
                "NAR hash mismatch: metadata says {nar_hash}, body hashes to {actual}"
            )));
        }
        self.nar
            .finish()
            .map_err(|e| ApiError::InvalidNar(format!("malformed NAR: {e}")))?;
        Ok(self.checksum.finish())
    }
}

fn rejection_error(r: Rejection, expected: &Expected) -> ApiError {
    match r {
        Rejection::TooLong => ApiError::InvalidNar(format!(
            "NAR size mismatch: body is longer than the {} bytes the metadata says",
            expected.nar_size
        )),
        Rejection::Malformed(m) => ApiError::InvalidNar(format!("malformed NAR: {m}")),
        Rejection::Body(m) => ApiError::BadRequest(format!("upload interrupted: {m}")),
    }
}

/// Streams `body` into `key`, verifying it against `expected`, and records
/// its checksum with the key's intent, and `chunks`, the chunk list a
/// chunk-level push's body was read back from (what the ingest then takes
/// instead of cutting the copy), complete once the body is (a streamed
/// prepare fills it as its pieces arrive). On any failure the object does
/// not exist afterwards.
pub async fn stage<S, E>(
    db: &Db,
    storage: &Arc<dyn Storage>,
    key: &ObjectKey,
    body: S,
    expected: Expected,
    chunks: Option<&Mutex<StagedChunks>>,
) -> Result<(), ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let verifier = Arc::new(Mutex::new(Some(Verifier::new(expected))));
    let failure: Arc<Mutex<Option<Rejection>>> = Arc::default();
    let (v, f) = (verifier.clone(), failure.clone());
    let stream = body.map(move |item| {
        let fail = |r: Rejection| {
            let msg = format!("{r:?}");
            if let Ok(mut slot) = f.lock() {
                slot.get_or_insert(r);
            }
            Err(std::io::Error::other(msg))
        };
        let data = match item {
            Ok(d) => d,
            Err(e) => return fail(Rejection::Body(e.to_string())),
        };
        let mut guard = v
            .lock()
            .map_err(|_| std::io::Error::other("verifier poisoned"))?;
        let Some(ver) = guard.as_mut() else {
            return Err(std::io::Error::other("verifier gone"));
        };
        match ver.update(&data) {
            Ok(()) => Ok(data),
            Err(r) => fail(r),
        }
    });
    let put = storage.put(key, Box::pin(stream)).await;
    if let Some(r) = failure.lock().ok().and_then(|mut s| s.take()) {
        // The backend discarded the partial object; make sure of it.
        let _ = storage.delete(key).await;
        return Err(rejection_error(r, &expected));
    }
    put?;
    let ver = verifier
        .lock()
        .ok()
        .and_then(|mut g| g.take())
        .ok_or_else(|| ApiError::Internal("verifier lost".into()))?;
    match ver.finish() {
        Ok(checksum) => {
            let chunks = match chunks.map(Mutex::lock) {
                Some(Ok(mut list)) => Some(std::mem::take(&mut *list)),
                Some(Err(_)) => return Err(ApiError::Internal("chunk list poisoned".into())),
                None => None,
            };
            record_checksum(db, key, checksum, expected.nar_size, chunks.as_ref()).await
        }
        Err(e) => {
            storage.delete(key).await?;
            Err(e)
        }
    }
}

/// Consumes `body` without storing it, verifying it against `expected`:
/// proof that the uploader really has a NAR the store already holds.
pub async fn prove_possession<S, E>(body: S, expected: Expected) -> Result<(), ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let mut ver = Verifier::new(expected);
    while let Some(item) = body.next().await {
        let data = item.map_err(|e| rejection_error(Rejection::Body(e.to_string()), &expected))?;
        ver.update(&data)
            .map_err(|r| rejection_error(r, &expected))?;
    }
    ver.finish().map(drop)
}
