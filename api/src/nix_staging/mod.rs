//! Stages a NAR file uploaded by stock `nix copy` in one pass over the body:
//! the file's SHA-256 (its narinfo `FileHash`, also its name) and size; the
//! file itself into storage (served later at the uploader's URL); and,
//! decompressed on the blocking pool, the NAR into staging with its SHA-256,
//! size and a full NAR parse. Memory stays bounded by a few channel slots.
//!
//! Nothing is left behind by a failed upload: each storage object appears
//! only when its stream ends without error, and the file's stream ends only
//! once the NAR is known to be valid and staged (a "verdict"). The staged
//! copy has a fresh random key, so the caller may delete it on any failure.
//!
//! ```text
//! body ──▶ driver ──▶ (file channel) ──▶ storage.put(uploads/…) ◀── verdict
//!             │                                                        │
//!             └──▶ (decoder channel) ──▶ decoder thread ──▶ staging.put(staging/…)
//! ```

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt, stream};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use larder_core::nix::hash::{FileHash, NarHash};
use larder_shared::storage::checksum::Checksum;
use larder_shared::storage::{ObjectKey, Storage};

use crate::error::ApiError;
mod pipes;

use self::pipes::{ChannelReader, metered, verdict_gated};
use crate::upload_decode::{self, DETECT_LEN, DecodeError, Decoding};

/// A request body as a stream of pieces.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, axum::Error>> + Send>>;

/// Channel slots between the stages (pieces of up to 256 KiB).
const SLOTS: usize = 8;

/// What a staged upload turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// SHA-256 of the file as uploaded.
    pub file_hash: FileHash,
    /// Its size.
    pub file_size: u64,
    /// SHA-256 of the decompressed NAR.
    pub nar_hash: NarHash,
    /// Its size.
    pub nar_size: u64,
    /// The staged copy's checksum.
    pub checksum: Checksum,
}

/// Reads the first [`DETECT_LEN`] bytes (fewer if the body is shorter) and
/// returns them with the whole body, those bytes included, still to read.
pub async fn read_head(mut body: BodyStream) -> Result<(Bytes, BodyStream), ApiError> {
    let mut pieces = Vec::new();
    let mut head = Vec::with_capacity(DETECT_LEN);
    while head.len() < DETECT_LEN {
        let Some(piece) = body.next().await else {
            break;
        };
        let piece = piece.map_err(|e| ApiError::BadRequest(format!("upload interrupted: {e}")))?;
        let take = piece.len().min(DETECT_LEN - head.len());
        head.extend_from_slice(&piece[..take]);
        pieces.push(Ok(piece));
    }
    let body: BodyStream = Box::pin(stream::iter(pieces).chain(body));
    Ok((Bytes::from(head), body))
}

/// Hashes the body and checks it is the file named `file_hash` of
/// `file_size` bytes, without decompressing it (an upload of a file the
/// store already knows). With `rewrite`, also stores it again there.
pub async fn consume_known(
    body: BodyStream,
    file_hash: FileHash,
    file_size: u64,
    rewrite: Option<(&Arc<dyn Storage>, &ObjectKey)>,
) -> Result<(), ApiError> {
    let failure: Arc<Mutex<Option<ApiError>>> = Arc::default();
    let checked = checked_file(body, file_hash, Some(file_size), failure.clone());
    let stored = match rewrite {
        Some((storage, key)) => storage.put(key, checked).await.map(drop),
        None => {
            let mut checked = checked;
            while let Some(item) = checked.next().await {
                if item.is_err() {
                    break;
                }
            }
            Ok(())
        }
    };
    if let Some(e) = failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    stored.map_err(ApiError::from)
}

/// `body` with its hash and size checked at the end: a mismatch (or a body
/// error) ends the stream with an error and is recorded in `failure`.
fn checked_file(
    body: BodyStream,
    file_hash: FileHash,
    file_size: Option<u64>,
    failure: Arc<Mutex<Option<ApiError>>>,
) -> larder_shared::storage::ByteStream {
    let state = (body, Sha256::new(), 0u64, false);
    Box::pin(stream::unfold(
        state,
        move |(mut body, mut hasher, mut size, done)| {
            let failure = failure.clone();
            async move {
                if done {
                    return None;
                }
                let fail = |e: ApiError| {
                    let msg = e.to_string();
                    if let Ok(mut f) = failure.lock() {
                        f.get_or_insert(e);
                    }
                    Err(io::Error::other(msg))
                };
                match body.next().await {
                    Some(Ok(piece)) => {
                        hasher.update(&piece);
                        size += piece.len() as u64;
                        Some((Ok(piece), (body, hasher, size, false)))
                    }
                    Some(Err(e)) => {
                        let item = fail(ApiError::BadRequest(format!("upload interrupted: {e}")));
                        Some((item, (body, hasher, size, true)))
                    }
                    None => {
                        let actual = FileHash::from_bytes(hasher.clone().finalize().into());
                        let problem = file_mismatch(actual, size, file_hash, file_size)?;
                        Some((fail(problem), (body, hasher, size, true)))
                    }
                }
            }
        },
    ))
}

/// `None` if the file is what its name (and record) say.
fn file_mismatch(
    actual: FileHash,
    size: u64,
    named: FileHash,
    known: Option<u64>,
) -> Option<ApiError> {
    if actual != named {
        return Some(ApiError::InvalidNar(format!(
            "the uploaded file hashes to {actual}, but its name says {named}"
        )));
    }
    match known {
        Some(known) if known != size => Some(ApiError::InvalidNar(format!(
            "the uploaded file has {size} bytes, but this file has {known}"
        ))),
        _ => None,
    }
}

/// Why the driver stopped early.
enum DriveError {
    /// The body failed or did not match its name: this error wins.
    Body(ApiError),
    /// A consumer went away; its own error explains why.
    Aborted,
}

/// Reads the body once, hashing it and feeding the file and decoder
/// channels. A body error or a hash mismatch is also sent down the file
/// channel, so the file is never stored.
async fn drive(
    mut body: BodyStream,
    file_tx: Option<mpsc::Sender<io::Result<Bytes>>>,
    dec_tx: mpsc::Sender<Bytes>,
    named: FileHash,
) -> Result<(FileHash, u64), DriveError> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let poison = |tx: &Option<mpsc::Sender<io::Result<Bytes>>>, why: String| {
        let tx = tx.clone();
        async move {
            if let Some(tx) = tx {
                let _ = tx.send(Err(io::Error::other(why))).await;
            }
        }
    };
    while let Some(piece) = body.next().await {
        let piece = match piece {
            Ok(p) => p,
            Err(e) => {
                poison(&file_tx, "upload interrupted".into()).await;
                return Err(DriveError::Body(ApiError::BadRequest(format!(
                    "upload interrupted: {e}"
                ))));
            }
        };
        hasher.update(&piece);
        size += piece.len() as u64;
        if let Some(tx) = &file_tx
            && tx.send(Ok(piece.clone())).await.is_err()
        {
            return Err(DriveError::Aborted);
        }
        if dec_tx.send(piece).await.is_err() {
            poison(&file_tx, "decoder stopped".into()).await;
            return Err(DriveError::Aborted);
        }
    }
    let actual = FileHash::from_bytes(hasher.finalize().into());
    if let Some(problem) = file_mismatch(actual, size, named, None) {
        poison(&file_tx, problem.to_string()).await;
        return Err(DriveError::Body(problem));
    }
    Ok((actual, size))
}

fn decode_error(e: DecodeError) -> ApiError {
    match e {
        DecodeError::Unrecognised => ApiError::BadRequest(e.to_string()),
        _ => ApiError::InvalidNar(e.to_string()),
    }
}

/// Stages an uploaded file: decompresses it as `decoding` says into
/// `staging_key` (in `staging`), and, if `upload_key` is given, stores the
/// file itself there (in `storage`). The body must hash to `named`.
/// On error nothing new is stored.
pub async fn stage(
    storage: &Arc<dyn Storage>,
    staging: &Arc<dyn Storage>,
    body: BodyStream,
    decoding: Decoding,
    named: FileHash,
    staging_key: &ObjectKey,
    upload_key: Option<&ObjectKey>,
) -> Result<Measured, ApiError> {
    let (dec_tx, dec_rx) = mpsc::channel::<Bytes>(SLOTS);
    let (nar_tx, nar_rx) = mpsc::channel::<io::Result<Bytes>>(SLOTS);
    let (file_tx, file_rx) = match upload_key {
        Some(_) => {
            let (tx, rx) = mpsc::channel(SLOTS);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let (verdict_tx, verdict_rx) = oneshot::channel::<bool>();
    let measured: Arc<Mutex<Option<(NarHash, u64, Checksum)>>> = Arc::default();
    let malformed: Arc<Mutex<Option<String>>> = Arc::default();

    let decoder = tokio::task::spawn_blocking(move || {
        let mut input = ChannelReader {
            rx: dec_rx,
            current: Bytes::new(),
        };
        let result = upload_decode::decode(decoding, &mut input, |piece| {
            nar_tx
                .blocking_send(Ok(piece))
                .map_err(|_| io::Error::other("staging stopped"))
        });
        if let Err(e) = &result
            && !matches!(e, DecodeError::Sink(_))
        {
            let _ = nar_tx.blocking_send(Err(io::Error::other(e.to_string())));
        }
        result
    });
    let staged = {
        let stream = metered(nar_rx, measured.clone(), malformed.clone());
        async move {
            let result = staging.put(staging_key, stream).await;
            let _ = verdict_tx.send(result.is_ok());
            result
        }
    };
    let filed = async move {
        match (upload_key, file_rx) {
            (Some(key), Some(rx)) => Some(storage.put(key, verdict_gated(rx, verdict_rx)).await),
            _ => None,
        }
    };
    let (driven, staged, filed, decoded) =
        tokio::join!(drive(body, file_tx, dec_tx, named), staged, filed, decoder);

    let outcome = (|| {
        let driven = match driven {
            Err(DriveError::Body(e)) => return Err(e),
            other => other,
        };
        match decoded {
            Err(e) => return Err(ApiError::Internal(format!("decoder task failed: {e}"))),
            Ok(Err(DecodeError::Sink(_))) | Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(decode_error(e)),
        }
        if let Err(e) = staged {
            if let Some(m) = malformed.lock().ok().and_then(|mut m| m.take()) {
                return Err(ApiError::InvalidNar(format!("malformed NAR: {m}")));
            }
            return Err(e.into());
        }
        if let Some(Err(e)) = filed {
            return Err(e.into());
        }
        let Ok((file_hash, file_size)) = driven else {
            return Err(ApiError::Internal("upload pipeline stopped early".into()));
        };
        let (nar_hash, nar_size, checksum) = measured
            .lock()
            .ok()
            .and_then(|mut m| m.take())
            .ok_or_else(|| ApiError::Internal("staged NAR was not measured".into()))?;
        Ok(Measured {
            file_hash,
            file_size,
            nar_hash,
            nar_size,
            checksum,
        })
    })();
    if outcome.is_err() {
        // The copy may have been completed before another part failed.
        let _ = staging.delete(staging_key).await;
    }
    outcome
}
