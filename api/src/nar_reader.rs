//! Streams a stored NAR back: the staged copy, or its chunks in order, as
//! the concatenated zstd frames (`.nar.zst`, no recompression) or
//! decompressed on the fly (`.nar`).
//!
//! A byte range seeks by the stored per-chunk sizes ([`ChunkLayout`]), so a
//! download resumed deep inside a large NAR reads only from the chunk that
//! holds its first byte.
//!
//! Chunks are fetched a few ahead for throughput, with memory bounded by the
//! prefetch window. A storage failure or a length mismatch ends the stream
//! with an error, which breaks the connection: a 200 never ends early as if
//! complete.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

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

/// A ready NAR's chunk records, in NAR order: the stored sizes that let a
/// range seek to the chunk holding its first byte.
#[derive(Debug, Clone)]
pub struct ChunkLayout {
    records: Vec<ChunkRecord>,
}

/// Batches of chunk rows loaded at once.
const LOAD_PARALLEL: usize = 4;

impl ChunkLayout {
    /// Loads every chunk row of `nar` (metadata only, no chunk data).
    pub async fn load(db: &Db, nar: &NarRecord) -> Result<Self, DbError> {
        let batches: Vec<Vec<i64>> = nar.chunk_ids.chunks(BATCH).map(<[i64]>::to_vec).collect();
        let loaded: Vec<Vec<ChunkRecord>> = stream::iter(batches)
            .map(|ids| {
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
            .buffered(LOAD_PARALLEL)
            .try_collect()
            .await?;
        Ok(Self {
            records: loaded.into_iter().flatten().collect(),
        })
    }

    /// Length of the representation: the NAR, or its stored frames.
    pub fn len(&self, repr: Representation) -> u64 {
        self.records.iter().map(|r| size_in(r, repr)).sum()
    }

    /// Identity of the concatenated stored frames: changes whenever any
    /// frame's bytes or location could (hash, stored size, pack position).
    pub fn frames_digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for r in &self.records {
            h.update(r.hash.as_bytes());
            h.update(r.file_size.to_be_bytes());
            h.update(r.pack_id.unwrap_or(-1).to_be_bytes());
            h.update(r.pack_offset.unwrap_or(-1).to_be_bytes());
        }
        h.finalize().into()
    }

    /// Streams bytes `range` of the representation. Only the chunks that
    /// overlap the range are read: the first frame by a ranged storage read
    /// (`.nar.zst`) or decompressed and skipped into (`.nar`), so nothing
    /// before the range's chunk is fetched or decompressed.
    pub fn stream(
        self,
        storage: Arc<dyn Storage>,
        repr: Representation,
        range: Range<u64>,
    ) -> NarStream {
        let mut plan = Vec::new();
        let mut pos = 0u64;
        for rec in self.records {
            let len = size_in(&rec, repr);
            let (start, end) = (pos, pos + len);
            pos = end;
            if end <= range.start {
                continue;
            }
            if start >= range.end {
                break;
            }
            let within = range.start.saturating_sub(start)..range.end.min(end) - start;
            plan.push((rec, within));
        }
        let body = stream::iter(plan)
            .map(move |(rec, within)| {
                let storage = storage.clone();
                async move {
                    match repr {
                        Representation::Zstd => fetch_frame(&storage, &rec, within).await,
                        Representation::Plain => {
                            let whole = 0..rec.file_size as u64;
                            let data = fetch_frame(&storage, &rec, whole).await?;
                            let expected = rec.chunk_size as usize;
                            let plain = tokio::task::spawn_blocking(move || {
                                chunk::decompress(&data, expected)
                            })
                            .await
                            .map_err(io_err)??;
                            Ok(plain.slice(within.start as usize..within.end as usize))
                        }
                    }
                }
            })
            .buffered(PREFETCH);
        Box::pin(body)
    }
}

fn size_in(rec: &ChunkRecord, repr: Representation) -> u64 {
    match repr {
        Representation::Plain => rec.chunk_size as u64,
        Representation::Zstd => rec.file_size as u64,
    }
}

/// Reads bytes `within` of one chunk's stored frame (its own object, or a
/// slice of a pack).
async fn fetch_frame(
    storage: &Arc<dyn Storage>,
    rec: &ChunkRecord,
    within: Range<u64>,
) -> std::io::Result<Bytes> {
    let (key, base) = match (rec.pack_id, rec.pack_offset) {
        (Some(pack), Some(off)) => (
            ObjectKey::new(format!("packs/{pack}")).map_err(io_err)?,
            off as u64,
        ),
        _ => (rec.hash.object_key(), 0),
    };
    let want = within.end - within.start;
    let whole_object = base == 0 && within.start == 0 && want == rec.file_size as u64;
    let range = (!whole_object).then(|| base + within.start..base + within.end);
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
    if data.len() as u64 != want {
        return Err(io_err(format!(
            "chunk {} gave {} bytes, expected {want}",
            rec.hash,
            data.len(),
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
