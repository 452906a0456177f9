//! Coalesced, pipelined reads of a NAR's frames (docs/architecture.md
//! "Packs").
//!
//! Consecutive frames that lie back to back in one object (a NAR's chunks
//! in a pack are stored in NAR order) are fetched by one ranged read, a
//! *run*. A chunk the NAR repeats (a file stored twice, a block of zeros)
//! is read once: the pump keeps its frame until the chunk's last
//! occurrence and sends it again from memory, so a repeat neither costs a
//! read nor ends a run (what the planner learns from [`Repeats`], counted
//! from the NAR's chunk list before the first row is read). A planner task
//! turns chunk rows into runs and starts each run's storage request as soon
//! as the run is known, a run or
//! two ahead of the one being sent, so streaming is limited by storage
//! bandwidth rather than round trips; a pump task ([`pump`]) streams each
//! run's bytes in order. The first run is kept short (one batch of rows) so
//! the first byte does not wait for rows further on. Memory is bounded by
//! the channels and [`REUSE_MAX`], whatever the NAR's size; a client that
//! goes away stops both tasks at their next send.

mod pump;

use std::collections::{HashMap, HashSet};
use std::io;
use std::ops::Range;

use bytes::Bytes;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::ChunkStore;
use crate::chunk;
use crate::db::ChunkId;
use crate::db::chunks::{BATCH, ChunkRecord};
use crate::storage::{ByteStream, ObjectKey, StorageError};

/// Longest run, in bytes: runs end at object boundaries anyway (a pack is
/// tens of MiB), this bounds how many rows one run waits for.
const RUN_MAX: u64 = 64 * 1024 * 1024;
/// Bytes of repeated frames one download keeps in memory at once: past
/// it, a repeat is read again.
const REUSE_MAX: u64 = 8 * 1024 * 1024;
/// Runs whose requests are started ahead of the one being sent.
const RUNS_AHEAD: usize = 1;
/// Pieces between the pump and the body (frames or byte slices).
const PIECES_AHEAD: usize = 16;
/// Frames decompressed in parallel for `.nar`.
const DECODE_AHEAD: usize = 8;

/// A body stream of NAR bytes.
pub type NarStream = BoxStream<'static, io::Result<Bytes>>;

/// Which representation to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    /// Uncompressed NAR.
    Plain,
    /// Concatenated zstd frames.
    Zstd,
}

/// A chunk to send: its row, and the part of it (in the representation)
/// the requested range covers.
pub(super) type Part = (ChunkRecord, Range<u64>);

/// How often each chunk the stream sends more than once occurs in it.
pub(super) type Repeats = HashMap<ChunkId, u32>;

/// Where a step of a run gets its bytes.
enum Step {
    /// The next bytes of the run's read; `keep`: hold the frame, the chunk
    /// comes again.
    Read { part: Part, keep: bool },
    /// A frame read (and kept) earlier, sent again from memory; `last`: the
    /// chunk's last occurrence, the frame may go.
    Reuse { part: Part, last: bool },
}

/// One ranged read covering consecutive frames, and the steps that send it.
struct Run {
    key: ObjectKey,
    range: Range<u64>,
    steps: Vec<Step>,
}

impl Run {
    fn start(part: Part, range: Range<u64>, key: ObjectKey, keep: bool) -> Self {
        Self {
            key,
            range: range.clone(),
            steps: vec![Step::Read { part, keep }],
        }
    }

    /// Whether a read of `range` in `key` continues this run.
    fn continues(&self, key: &ObjectKey, range: &Range<u64>, limit: usize) -> bool {
        self.steps.len() < limit
            && *key == self.key
            && range.start == self.range.end
            && range.end - self.range.start <= RUN_MAX
    }
}

/// The planner's view of the frames the pump keeps: it decides at a
/// chunk's first whole read whether to keep it, and the pump follows.
struct Reuse {
    /// Occurrences still to come, of each repeated chunk.
    remaining: Repeats,
    /// Chunks whose frames the pump holds.
    kept: HashSet<ChunkId>,
    kept_bytes: u64,
}

impl Reuse {
    /// Counts one occurrence of `id`; whether more follow.
    fn occurs(&mut self, id: ChunkId) -> bool {
        match self.remaining.get_mut(&id) {
            Some(left) if *left > 1 => {
                *left -= 1;
                true
            }
            Some(_) => {
                self.remaining.remove(&id);
                false
            }
            None => false,
        }
    }

    /// Whether to keep a frame read whole, its chunk coming again.
    fn keep(&mut self, id: ChunkId, len: u64) -> bool {
        if self.kept_bytes + len > REUSE_MAX {
            return false;
        }
        self.kept.insert(id);
        self.kept_bytes += len;
        true
    }

    /// Drops a kept frame after its chunk's last occurrence.
    fn release(&mut self, id: ChunkId, len: u64) {
        if self.kept.remove(&id) {
            self.kept_bytes -= len;
        }
    }
}

/// Storage bytes `part` needs: the slice of its frame for `.nar.zst`, the
/// whole frame for `.nar` (decompressed, then sliced).
fn needed(part: &Part, repr: Representation) -> (ObjectKey, Range<u64>) {
    let at = ChunkStore::locate(&part.0);
    let range = match repr {
        Representation::Zstd => at.offset + part.1.start..at.offset + part.1.end,
        Representation::Plain => at.range(),
    };
    (at.key, range)
}

/// Streams the bytes of `parts` (in order) as `repr`.
pub(super) fn stream(
    store: ChunkStore,
    parts: BoxStream<'static, io::Result<Part>>,
    repeats: Repeats,
    repr: Representation,
) -> NarStream {
    let (runs_tx, runs_rx) = mpsc::channel(RUNS_AHEAD);
    tokio::spawn(plan(store.clone(), parts, repeats, repr, runs_tx));
    let (out_tx, out_rx) = mpsc::channel(PIECES_AHEAD);
    tokio::spawn(pump::pump(runs_rx, repr, out_tx));
    let pieces =
        futures::stream::unfold(
            out_rx,
            |mut rx| async move { rx.recv().await.map(|p| (p, rx)) },
        );
    match repr {
        Representation::Zstd => Box::pin(pieces.map_ok(|p: Piece| p.data)),
        Representation::Plain => Box::pin(
            pieces
                .map_ok(|p: Piece| async move {
                    let Piece { data, decode } = p;
                    let Some((size, within)) = decode else {
                        return Ok(data);
                    };
                    let plain = tokio::task::spawn_blocking(move || {
                        chunk::decompress(&data, size as usize)
                    })
                    .await
                    .map_err(io::Error::other)??;
                    Ok(plain.slice(within.start as usize..within.end as usize))
                })
                .try_buffered(DECODE_AHEAD),
        ),
    }
}

/// What the pump hands the body: bytes to send, or (`.nar`) a whole frame
/// with its chunk size and the slice of it to send once decompressed.
struct Piece {
    data: Bytes,
    decode: Option<(i32, Range<u64>)>,
}

type Opened = JoinHandle<Result<ByteStream, StorageError>>;

/// Groups parts into runs and starts each run's request at once.
async fn plan(
    store: ChunkStore,
    mut parts: BoxStream<'static, io::Result<Part>>,
    repeats: Repeats,
    repr: Representation,
    runs: mpsc::Sender<io::Result<(Run, Opened)>>,
) {
    let mut reuse = Reuse {
        remaining: repeats,
        kept: HashSet::new(),
        kept_bytes: 0,
    };
    let mut current: Option<Run> = None;
    let mut first = true;
    loop {
        let part = match parts.try_next().await {
            Ok(Some(part)) => part,
            Ok(None) => break,
            Err(e) => {
                let _ = runs.send(Err(e)).await;
                return;
            }
        };
        let id = part.0.id;
        let at = ChunkStore::locate(&part.0);
        let again = reuse.occurs(id);
        if reuse.kept.contains(&id)
            && let Some(run) = current.as_mut()
        {
            if !again {
                reuse.release(id, at.length);
            }
            run.steps.push(Step::Reuse { part, last: !again });
            continue;
        }
        let (key, range) = needed(&part, repr);
        let keep = again && range == at.range() && reuse.keep(id, at.length);
        let limit = if first { BATCH } else { usize::MAX };
        if let Some(run) = current.as_mut()
            && run.continues(&key, &range, limit)
        {
            run.range.end = range.end;
            run.steps.push(Step::Read { part, keep });
            continue;
        }
        if let Some(run) = current.take() {
            first = false;
            if !start(&store, run, &runs).await {
                return;
            }
        }
        current = Some(Run::start(part, range, key, keep));
    }
    if let Some(run) = current {
        start(&store, run, &runs).await;
    }
}

/// Starts `run`'s read and hands it to the pump; false once the pump is
/// gone.
async fn start(
    store: &ChunkStore,
    run: Run,
    runs: &mpsc::Sender<io::Result<(Run, Opened)>>,
) -> bool {
    let (store, key, range) = (store.clone(), run.key.clone(), run.range.clone());
    let opened = tokio::spawn(async move { store.read_object(&key, range).await });
    runs.send(Ok((run, opened))).await.is_ok()
}
