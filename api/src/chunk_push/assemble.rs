//! A committed NAR's bytes, read back from its chunks in order: frames the
//! pusher sent (in their batch objects) and chunks of the store, each
//! decompressed. The stream feeds the same verifying staging as a whole-NAR
//! upload ([`crate::staging::stage`]), so NarHash, NarSize and the NAR
//! grammar are checked over the whole chunk sequence, existing chunks
//! included, and nothing is acknowledged (or left behind) unless they hold.
//!
//! Frames stored back to back (a package's earlier version in its pack,
//! the frames of one batch) are read by one ranged read per run of up to
//! [`RUN_FRAMES`] frames, not one request each, and a run's frames are
//! decompressed together on one blocking thread. Memory stays bounded: at
//! most [`RUNS_AHEAD`] runs are read and decompressed ahead of the
//! consumer, whatever the NAR's size.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt, stream};

use larder_shared::chunk::ChunkHash;
use larder_shared::chunk_store::ChunkStore;
use larder_shared::db::staged_chunks::{StagedChunk, StagedChunks};
use larder_shared::storage::{self, ObjectKey, Storage};

use super::presence::Source;

/// Frames one run reads at most (at most 2 MiB of stored frames with the
/// default chunking).
const RUN_FRAMES: usize = 8;
/// Runs read and decompressed ahead of the consumer: with [`RUN_FRAMES`],
/// at most 64 chunks in memory, as many as one read per chunk held.
const RUNS_AHEAD: usize = 8;

/// Which storage an object is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    /// The chunk store's (packs, or chunks stored on their own).
    Chunks,
    /// Staging (the pusher's batches).
    Staging,
}

/// Frames stored back to back in one object, read by one request.
#[derive(Debug)]
struct Run {
    store: Store,
    key: ObjectKey,
    range: Range<u64>,
    /// Each frame's stored length and its chunk's size, in order.
    frames: Vec<(u64, usize)>,
}

/// Where `source`'s frame is: store, object, offset, length; and its
/// chunk's size.
fn place(source: Source) -> (Store, ObjectKey, u64, u64, usize) {
    let size = source.size() as usize;
    match source {
        Source::Stored(rec) => {
            let at = ChunkStore::locate(&rec);
            (Store::Chunks, at.key, at.offset, at.length, size)
        }
        Source::Pushed(p) => (
            Store::Staging,
            p.object_key,
            p.frame_offset,
            p.frame_len,
            size,
        ),
    }
}

/// `sources` cut into runs of frames stored back to back.
fn runs(sources: Vec<Source>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for source in sources {
        let (store, key, offset, len, size) = place(source);
        match runs.last_mut() {
            Some(run)
                if run.store == store
                    && run.key == key
                    && run.range.end == offset
                    && run.frames.len() < RUN_FRAMES =>
            {
                run.range.end += len;
                run.frames.push((len, size));
            }
            _ => runs.push(Run {
                store,
                key,
                range: offset..offset + len,
                frames: vec![(len, size)],
            }),
        }
    }
    runs
}

/// The NAR as a stream of chunk contents, `sources` in order.
pub fn nar_stream(
    chunks: ChunkStore,
    staging: Arc<dyn Storage>,
    sources: Vec<Source>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    contents(chunks, staging, stream::iter(runs(sources)).map(Ok))
}

/// The NAR as a stream of chunk contents, its sources arriving in pieces
/// (a streamed prepare's list): a run never spans two pieces.
pub fn streamed_nar(
    chunks: ChunkStore,
    staging: Arc<dyn Storage>,
    sources: impl Stream<Item = io::Result<Vec<Source>>> + Send + 'static,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let runs = sources
        .map_ok(|piece| stream::iter(runs(piece)).map(Ok))
        .try_flatten();
    contents(chunks, staging, runs)
}

/// The chunk contents of `runs`, in order, [`RUNS_AHEAD`] runs read ahead.
fn contents(
    chunks: ChunkStore,
    staging: Arc<dyn Storage>,
    runs: impl Stream<Item = io::Result<Run>> + Send + 'static,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    runs.map_ok(move |run| {
        let (chunks, staging) = (chunks.clone(), staging.clone());
        async move { read(&chunks, &staging, run).await }
    })
    .try_buffered(RUNS_AHEAD)
    .map_ok(|contents| stream::iter(contents.into_iter().map(Ok)))
    .try_flatten()
}

/// The chunk list `sources` (of `hashes`, in order) make up: what the NAR
/// is verified as, recorded with its staged copy for the ingest.
pub fn chunk_list(hashes: &[ChunkHash], sources: &[Source]) -> StagedChunks {
    let chunks = hashes
        .iter()
        .zip(sources)
        .map(|(hash, source)| StagedChunk {
            hash: *hash,
            size: source.size(),
        })
        .collect();
    StagedChunks(chunks)
}

/// A run's chunk contents, each decompressed and of the size its row
/// says.
async fn read(chunks: &ChunkStore, staging: &Arc<dyn Storage>, run: Run) -> io::Result<Vec<Bytes>> {
    let bytes = match run.store {
        Store::Chunks => chunks.read_range(&run.key, run.range.clone()).await?,
        Store::Staging => storage::read_range(&**staging, &run.key, run.range.clone()).await?,
    };
    tokio::task::spawn_blocking(move || {
        let mut at = 0usize;
        run.frames
            .iter()
            .map(|&(len, size)| {
                let frame = bytes.slice(at..at + len as usize);
                at += len as usize;
                larder_shared::chunk::decompress(&frame, size)
            })
            .collect()
    })
    .await
    .map_err(io::Error::other)?
}
