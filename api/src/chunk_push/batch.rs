//! Receiving one batch of chunk frames (`POST …/chunks`): every frame is
//! decompressed (bounded by the largest chunk the cache cuts) and its bytes
//! hashed against the name it came with, on every core, before anything is
//! stored. The batch is then one staging object, held by a staging intent
//! until the transaction that records its `pushed_chunks` rows adopts it:
//! a crash at any point leaves a row or an intent, never an untracked object.

use std::sync::Arc;

use bytes::Bytes;

use larder_core::chunk::ChunkHash;
use larder_core::wire::chunk_push::{BatchEntry, ChunkBatchResponse, parse_batch};
use larder_shared::db::caches::CacheRecord;
use larder_shared::db::pushed_chunks::{self, PushedChunk};
use larder_shared::db::{staging_intents, unix_now};
use larder_shared::storage::layout;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// A verified frame: where it is in the body and what it holds.
struct Verified {
    hash: ChunkHash,
    offset: usize,
    len: usize,
    chunk_size: usize,
}

/// Verifies and stores `body` for `(cache, pusher)`.
pub async fn receive(
    state: &AppState,
    cache: &CacheRecord,
    pusher: &str,
    body: Bytes,
) -> ApiResult<ChunkBatchResponse> {
    let max_chunk = state.config.chunking.params().max_size as usize;
    let verified = verify(body.clone(), max_chunk).await?;
    let response = ChunkBatchResponse {
        chunks: verified.len() as u64,
        chunk_bytes: verified.iter().map(|v| v.chunk_size as u64).sum(),
    };
    let key = layout::new_chunk_batch_key();
    {
        let mut conn = state.db.conn().await?;
        staging_intents::insert(conn.raw(), &key, unix_now()).await?;
    }
    let stored = store(state, cache, pusher, &key, body, &verified).await;
    match stored {
        Ok(true) => Ok(response),
        // Nothing new (every chunk already pending for this pusher), or a
        // failure: the object goes, then its intent; if that fails too, the
        // intent is left for the sweeper.
        Ok(false) => {
            crate::staging::discard(&state.db, &state.staging, &key).await?;
            Ok(response)
        }
        Err(e) => {
            let _ = crate::staging::discard(&state.db, &state.staging, &key).await;
            Err(e)
        }
    }
}

/// Writes the batch object, then records its rows and adopts its intent in
/// one transaction. False when no row was new.
async fn store(
    state: &AppState,
    cache: &CacheRecord,
    pusher: &str,
    key: &larder_shared::storage::ObjectKey,
    body: Bytes,
    verified: &[Verified],
) -> ApiResult<bool> {
    state.staging.put_bytes(key, body).await?;
    let rows: Vec<PushedChunk> = verified
        .iter()
        .map(|v| PushedChunk {
            hash: v.hash,
            object_key: key.clone(),
            frame_offset: v.offset as u64,
            frame_len: v.len as u64,
            chunk_size: v.chunk_size as u64,
        })
        .collect();
    let mut tx = state.db.begin().await?;
    let inserted = pushed_chunks::insert(tx.raw(), cache.id, pusher, &rows, unix_now()).await?;
    if inserted == 0 {
        return Ok(false);
    }
    if !staging_intents::adopt(tx.raw(), key).await? {
        return Err(ApiError::StagedCopyExpired);
    }
    tx.commit().await?;
    Ok(true)
}

/// Decompresses and hashes every frame, the batch split across the cores.
async fn verify(body: Bytes, max_chunk: usize) -> ApiResult<Vec<Verified>> {
    let entries = parse_batch(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if entries.is_empty() {
        return Err(ApiError::BadRequest("empty chunk batch".into()));
    }
    let spans: Arc<Vec<(ChunkHash, usize, usize)>> = Arc::new(
        entries
            .iter()
            .map(
                |BatchEntry {
                     hash,
                     offset,
                     frame,
                 }| (*hash, *offset, frame.len()),
            )
            .collect(),
    );
    let workers = num_workers().min(spans.len());
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let (body, spans) = (body.clone(), spans.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            spans
                .iter()
                .enumerate()
                .skip(w)
                .step_by(workers)
                .map(|(i, &(hash, offset, len))| {
                    check_frame(i, hash, &body[offset..offset + len], max_chunk).map(|chunk_size| {
                        Verified {
                            hash,
                            offset,
                            len,
                            chunk_size,
                        }
                    })
                })
                .collect::<ApiResult<Vec<_>>>()
        }));
    }
    let mut out = Vec::with_capacity(spans.len());
    for t in tasks {
        out.extend(
            t.await
                .map_err(|e| ApiError::Internal(format!("chunk verification failed: {e}")))??,
        );
    }
    Ok(out)
}

/// The chunk size of frame `i`, if it decompresses to at most `max_chunk`
/// bytes whose SHA-256 is `hash`.
fn check_frame(i: usize, hash: ChunkHash, frame: &[u8], max_chunk: usize) -> ApiResult<usize> {
    let data = zstd::bulk::decompress(frame, max_chunk).map_err(|e| {
        ApiError::BadRequest(format!(
            "chunk {i} ({hash}) is not a zstd frame of at most {max_chunk} bytes: {e}"
        ))
    })?;
    if data.is_empty() {
        return Err(ApiError::BadRequest(format!("chunk {i} ({hash}) is empty")));
    }
    if ChunkHash::of(&data) != hash {
        return Err(ApiError::BadRequest(format!(
            "chunk {i} does not hash to its name {hash}"
        )));
    }
    Ok(data.len())
}

fn num_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
