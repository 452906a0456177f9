//! Streams a stored NAR back: the staged copy, or its chunks in order, as
//! the concatenated zstd frames (`.nar.zst`, no recompression) or
//! decompressed on the fly (`.nar`).
//!
//! Chunks are fetched a few ahead for throughput, with memory bounded by the
//! prefetch window. A storage failure or a length mismatch ends the stream
//! with an error, which breaks the connection: a 200 never ends early as if
//! complete.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};

use larder_shared::chunk;
use larder_shared::db::chunks::{self, BATCH, ChunkRecord};
use larder_shared::db::nars::NarRecord;
use larder_shared::db::{Db, DbError};
use larder_shared::storage::{ObjectKey, Storage};

/// Chunks fetched ahead of the one being sent.
const PREFETCH: usize = 8;

/// A body stream of NAR bytes.
pub type NarStream = BoxStream<'static, std::io::Result<Bytes>>;

/// Which representation to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    /// Uncompressed NAR.
    Plain,
    /// Concatenated zstd frames.
    Zstd,
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Streams a ready NAR's chunks.
pub fn chunks_stream(
    db: Db,
    storage: Arc<dyn Storage>,
    nar: &NarRecord,
    repr: Representation,
) -> NarStream {
    let batches: Vec<Vec<i64>> = nar.chunk_ids.chunks(BATCH).map(<[i64]>::to_vec).collect();
    let records = stream::iter(batches)
        .then(move |ids| {
            let db = db.clone();
            async move {
                let mut conn = db.conn().await?;
                let found = chunks::get_many(conn.raw(), &ids).await?;
                ids.iter()
                    .map(|id| {
                        found.get(id).cloned().ok_or_else(|| DbError::Corrupt {
                            column: "nars.chunk_list",
                            message: format!("chunk {id} is missing"),
                        })
                    })
                    .collect::<Result<Vec<ChunkRecord>, DbError>>()
            }
        })
        .map_ok(|v| stream::iter(v.into_iter().map(Ok::<_, DbError>)))
        .try_flatten()
        .map_err(io_err);
    let body = records
        .map_ok(move |rec| {
            let storage = storage.clone();
            async move {
                let data = fetch_chunk(&storage, &rec).await?;
                match repr {
                    Representation::Zstd => Ok(data),
                    Representation::Plain => {
                        let expected = rec.chunk_size as usize;
                        tokio::task::spawn_blocking(move || chunk::decompress(&data, expected))
                            .await
                            .map_err(io_err)?
                    }
                }
            }
        })
        .try_buffered(PREFETCH);
    Box::pin(body)
}

/// Reads one chunk's stored bytes (its own object, or a slice of a pack).
async fn fetch_chunk(storage: &Arc<dyn Storage>, rec: &ChunkRecord) -> std::io::Result<Bytes> {
    let (key, range) = match (rec.pack_id, rec.pack_offset) {
        (Some(pack), Some(off)) => (
            ObjectKey::new(format!("packs/{pack}")).map_err(io_err)?,
            Some(off as u64..off as u64 + rec.file_size as u64),
        ),
        _ => (rec.hash.object_key(), None),
    };
    let parts: Vec<Bytes> = storage
        .get(&key, range)
        .await
        .map_err(io_err)?
        .try_collect()
        .await?;
    let data = if parts.len() == 1 {
        parts.into_iter().next().unwrap_or_default()
    } else {
        Bytes::from(parts.concat())
    };
    if data.len() != rec.file_size as usize {
        return Err(io_err(format!(
            "chunk {} has {} bytes, expected {}",
            rec.hash,
            data.len(),
            rec.file_size
        )));
    }
    Ok(data)
}

/// Ends the stream with an error unless exactly `expected` bytes went
/// through, so a short body can never pass for a complete one.
pub fn exact_length(inner: NarStream, expected: u64) -> NarStream {
    let state = (inner, 0u64, false);
    Box::pin(stream::unfold(
        state,
        move |(mut inner, seen, done)| async move {
            if done {
                return None;
            }
            match inner.next().await {
                Some(Ok(b)) => {
                    let seen = seen + b.len() as u64;
                    if seen > expected {
                        Some((Err(io_err("NAR longer than recorded")), (inner, seen, true)))
                    } else {
                        Some((Ok(b), (inner, seen, false)))
                    }
                }
                Some(Err(e)) => Some((Err(e), (inner, seen, true))),
                None if seen == expected => None,
                None => Some((
                    Err(io_err("NAR shorter than recorded")),
                    (inner, seen, true),
                )),
            }
        },
    ))
}
