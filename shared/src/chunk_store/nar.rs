//! Reads a whole ingested NAR, or a byte range of it, from its chunks in
//! order (the chunk store's NAR-sized read), as the concatenated zstd
//! frames (`.nar.zst`, no recompression) or decompressed on the fly
//! (`.nar`).
//!
//! A byte range seeks by the per-chunk sizes stored in the NAR's row at
//! ingest ([`NarLayout`], migration 0007): one `nars` row read and a binary
//! search find the chunk holding its first byte, and chunk rows are loaded
//! only for the chunks streamed, a batch or two ahead of the data. A NAR
//! ingested before migration 0007 has no stored layout: its chunk rows are
//! read once to compute it (the same values ingest stores), and the result
//! is written back, so only its first download pays for that.
//!
//! Frames are fetched by coalesced, pipelined reads ([`super::reads`]): one
//! ranged read per run of frames stored back to back, started ahead of
//! the data, with memory bounded by the pipeline. A storage failure or a length mismatch ends the stream
//! with an error, which breaks the connection: a 200 never ends early as if
//! complete.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::sync::Arc;

use futures::stream;
use futures::{StreamExt, TryStreamExt};

use super::{ChunkStore, reads};
use crate::db::chunks::{self, BATCH, ChunkRecord};
use crate::db::nar_layout::{ChunkSpan, NarLayout, NarLayoutBuilder};
use crate::db::nars::{self, NarRecord};
use crate::db::{ChunkId, Db, DbError, replaced_frames};

/// Batches of chunk rows loaded ahead of the data (and, for a NAR without a
/// stored layout, at once while computing it).
const ROWS_AHEAD: usize = 2;

pub use super::reads::{NarStream, Representation};

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// A ready NAR's chunk ids with their sizes, in NAR order: what lets a range
/// seek to the chunk holding its first byte.
#[derive(Debug, Clone)]
pub struct ChunkLayout {
    chunk_ids: Vec<ChunkId>,
    layout: NarLayout,
}

impl ChunkLayout {
    /// The stored layout of `nar`; for a NAR ingested before migration 0007,
    /// or one whose layout a recompression made stale
    /// ([`crate::db::layout_epoch`]), computed from its chunk rows (metadata
    /// only) and stored.
    pub async fn load(db: &Db, nar: &NarRecord) -> Result<Self, DbError> {
        let chunk_ids = nar.chunk_ids.clone();
        if let Some(layout) = &nar.layout {
            return Ok(Self {
                chunk_ids,
                layout: layout.clone(),
            });
        }
        let layout = compute(db, &chunk_ids).await?;
        let mut conn = db.conn().await?;
        if let Err(e) =
            nars::store_layout(conn.raw(), nar.id, &chunk_ids, (&layout, nar.epoch)).await
        {
            // Served all the same; the next download tries again.
            tracing::warn!(nar_id = nar.id.get(), error = %e, "storing the NAR layout failed");
        }
        Ok(Self { chunk_ids, layout })
    }

    /// Length of the representation: the NAR, or its stored frames.
    pub fn len(&self, repr: Representation) -> u64 {
        self.layout.spans.iter().map(|s| size_in(s, repr)).sum()
    }

    /// Identity of the concatenated stored frames ([`NarLayout::frames_digest`]).
    pub fn frames_digest(&self) -> [u8; 32] {
        self.layout.frames_digest
    }

    /// Streams bytes `range` of the representation. Only the chunks that
    /// overlap the range are read, their rows included: the first frame by
    /// a ranged storage read (`.nar.zst`) or decompressed and skipped into
    /// (`.nar`), so nothing before the range's chunk is fetched or
    /// decompressed. Each row is checked against the stored sizes.
    pub fn stream(
        self,
        db: Db,
        chunks: ChunkStore,
        repr: Representation,
        range: Range<u64>,
    ) -> NarStream {
        // Offset where each chunk ends in the representation.
        let ends: Vec<u64> = self
            .layout
            .spans
            .iter()
            .scan(0u64, |pos, s| {
                *pos += size_in(s, repr);
                Some(*pos)
            })
            .collect();
        let first = ends.partition_point(|&e| e <= range.start);
        let stop = if range.start >= range.end {
            first
        } else {
            (ends.partition_point(|&e| e < range.end) + 1).min(ends.len())
        };
        let repeats = repeats(&self.chunk_ids[first..stop]);
        let digest = self.layout.frames_digest;
        let whole = first == 0 && stop == self.chunk_ids.len();
        let plan = Arc::new(Plan {
            repr,
            chunk_ids: self.chunk_ids,
            spans: self.layout.spans,
            ends,
            range,
        });
        let cache = chunks.nar_rows.clone();
        // The identity names the frames, not the rows: a NAR collected and
        // pushed again has the same one (chunks stored as their own objects
        // are found by hash), with new chunk rows.
        let kept = cache
            .as_ref()
            .and_then(|c| c.get(&digest))
            .filter(|rows| rows.iter().map(|r| r.id).eq(plan.chunk_ids.iter().copied()));
        if let Some(rows) = kept {
            let parts = (first..stop).map(move |i| plan.part(i, &rows[i]));
            return reads::stream(chunks, Box::pin(stream::iter(parts)), repeats, repr);
        }
        // A download of the whole NAR keeps its rows if every one was
        // current (its sizes those of the layout); the rows go to the cache
        // as the last batch is read.
        let mut keeping = cache
            .filter(|c| whole && c.would_keep(plan.chunk_ids.len()))
            .map(|c| (c, Vec::with_capacity(plan.chunk_ids.len())));
        let batches: Vec<Range<usize>> = (first..stop)
            .step_by(BATCH)
            .map(|b| b..(b + BATCH).min(stop))
            .collect();
        let total = plan.chunk_ids.len();
        let parts = stream::iter(batches)
            .map(move |idx| {
                let (db, plan) = (db.clone(), plan.clone());
                async move { plan.rows(&db, idx).await }
            })
            .buffered(ROWS_AHEAD)
            .map_ok(move |(parts, current)| {
                if let Some((_, kept)) = keeping.as_mut().filter(|_| current) {
                    kept.extend(parts.iter().map(|p| p.0.clone()));
                } else {
                    keeping = None;
                }
                if let Some((cache, kept)) = keeping.take_if(|(_, kept)| kept.len() == total) {
                    cache.insert(digest, kept);
                }
                stream::iter(parts.into_iter().map(Ok))
            })
            .try_flatten();
        reads::stream(chunks, Box::pin(parts), repeats, repr)
    }
}

/// The chunks of `ids` that occur more than once, with their counts: what
/// lets a download read a repeated chunk's frame once.
fn repeats(ids: &[ChunkId]) -> reads::Repeats {
    let mut counts: reads::Repeats = HashMap::new();
    for id in ids {
        *counts.entry(*id).or_default() += 1;
    }
    counts.retain(|_, n| *n > 1);
    counts
}

/// The chunks a stream sends, and where the range falls in each.
struct Plan {
    repr: Representation,
    chunk_ids: Vec<ChunkId>,
    spans: Vec<ChunkSpan>,
    ends: Vec<u64>,
    range: Range<u64>,
}

impl Plan {
    /// Loads the rows of chunks `idx` (≤ [`BATCH`]), each with the part of
    /// it the range covers, and whether every row was current (its sizes
    /// those of the layout). A chunk recompressed since the layout was
    /// computed (its stored size differs) is read from its previous frame
    /// for `.nar.zst`, whose length the response has promised, and from its
    /// new one for `.nar` (the same bytes decompressed).
    async fn rows(&self, db: &Db, idx: Range<usize>) -> std::io::Result<(Vec<reads::Part>, bool)> {
        let ids = &self.chunk_ids[idx.clone()];
        let mut conn = db.conn().await.map_err(io_err)?;
        let mut found = chunks::get_many(conn.raw(), ids).await.map_err(io_err)?;
        // Chunks whose stored size is not the layout's (a missing row fails
        // below).
        let moved: Vec<(ChunkId, i32)> = idx
            .clone()
            .filter_map(|i| {
                let rec = found.get(&self.chunk_ids[i])?;
                let want = i32::try_from(self.spans[i].file_size).ok()?;
                (rec.file_size != want).then_some((rec.id, want))
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let current = moved.is_empty();
        if self.repr == Representation::Zstd && !current {
            let previous = replaced_frames::find(conn.raw(), &moved)
                .await
                .map_err(io_err)?;
            for (id, frame) in previous {
                if let Some(rec) = found.get_mut(&id) {
                    rec.pack_id = Some(frame.pack_id);
                    rec.pack_offset = Some(frame.pack_offset);
                    rec.file_size = frame.file_size;
                }
            }
        }
        drop(conn);
        let parts = idx
            .map(|i| {
                let id = self.chunk_ids[i];
                let rec = found
                    .get(&id)
                    .ok_or_else(|| io_err(format!("chunk {id} of a ready NAR is missing")))?;
                self.part(i, rec)
            })
            .collect::<std::io::Result<_>>()?;
        Ok((parts, current))
    }

    /// Chunk `i` of the NAR, whose row is `rec`, with the part of it the
    /// range covers; an error if the row is another chunk's or its sizes
    /// are not the layout's.
    fn part(&self, i: usize, rec: &ChunkRecord) -> std::io::Result<reads::Part> {
        let (id, span) = (self.chunk_ids[i], self.spans[i]);
        let zstd = self.repr == Representation::Zstd;
        if rec.id != id
            || i64::from(span.chunk_size) != i64::from(rec.chunk_size)
            || (zstd && i64::from(span.file_size) != i64::from(rec.file_size))
        {
            return Err(io_err(format!(
                "chunk {id}'s row differs from the NAR's stored layout"
            )));
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        let within =
            self.range.start.saturating_sub(start)..self.range.end.min(self.ends[i]) - start;
        Ok((rec.clone(), within))
    }
}

/// The layout of chunks `ids` from their rows, as ingest computes it.
async fn compute(db: &Db, ids: &[ChunkId]) -> Result<NarLayout, DbError> {
    let batches: Vec<Vec<ChunkId>> = ids.chunks(BATCH).map(<[ChunkId]>::to_vec).collect();
    let mut loaded = stream::iter(batches)
        .map(|ids| {
            let db = db.clone();
            async move {
                let mut conn = db.conn().await?;
                let found = chunks::get_many(conn.raw(), &ids).await?;
                Ok::<_, DbError>((ids, found))
            }
        })
        .buffered(ROWS_AHEAD * 2);
    let mut builder = NarLayoutBuilder::default();
    while let Some((ids, found)) = loaded.try_next().await? {
        for id in ids {
            let rec = found.get(&id).ok_or_else(|| DbError::Corrupt {
                column: "nars.chunk_list",
                message: format!("chunk {id} is missing"),
            })?;
            builder.push(rec)?;
        }
    }
    Ok(builder.finish())
}

fn size_in(span: &ChunkSpan, repr: Representation) -> u64 {
    match repr {
        Representation::Plain => u64::from(span.chunk_size),
        Representation::Zstd => u64::from(span.file_size),
    }
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
