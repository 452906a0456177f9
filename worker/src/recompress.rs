//! Recompressing cold frames at `[compression] archive-level` (docs/gc.md
//! "Recompression"): decompress, check the chunk's hash, compress again,
//! and keep whichever frame is smaller. A damaged frame is copied as it is
//! (never laundered into a fresh one that verify would call sound). All cores, on the background pool (`larder_shared::background`); a window of frames at
//! a time, so memory stays bounded.

use anyhow::Context;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use larder_shared::background;
use larder_shared::chunk::{self, ChunkHash};
use larder_shared::db::chunks::ChunkRecord;

/// `frames` (the stored frames of `rows`, in order) recompressed at
/// `level`; a frame that would not shrink is returned as it was.
pub async fn frames(
    rows: &[ChunkRecord],
    frames: Vec<Bytes>,
    level: i32,
) -> anyhow::Result<Vec<Bytes>> {
    let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
    futures::stream::iter(rows.iter().cloned().zip(frames))
        .map(|(rec, frame)| async move {
            background::run(move || one(&rec, frame, level))
                .await
                .context("recompression thread")?
        })
        .buffered(parallelism)
        .try_collect()
        .await
}

fn one(rec: &ChunkRecord, frame: Bytes, level: i32) -> anyhow::Result<Bytes> {
    let sound = chunk::decompress(&frame, rec.chunk_size.max(0) as usize)
        .ok()
        .filter(|data| ChunkHash::of(data) == rec.hash);
    let Some(data) = sound else {
        tracing::warn!(chunk = %rec.id, "stored frame is damaged; copied as it is (run larder-admin verify)");
        return Ok(frame);
    };
    let smaller = chunk::compress(&data, level)?;
    Ok(if smaller.len() < frame.len() {
        smaller
    } else {
        frame
    })
}
