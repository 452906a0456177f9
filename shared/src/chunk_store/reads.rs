//! Coalesced, pipelined reads of a NAR's frames (docs/architecture.md
//! "Packs").
//!
//! A planner task cuts the rows a download needs into *windows* (up to
//! [`WINDOW_MAX`] bytes to read). The first is not kept short: a shorter
//! first window would send its first byte a few milliseconds sooner (the
//! rows of a whole window take a dozen round trips to the database, two at
//! a time) for one more request to every object it touches, since the next
//! window reads the rest of them again. Within a window, the frames of one
//! object are fetched by one ranged read from the first to the last,
//! bridging gaps of up to [`GAP_MAX`] bytes (read and dropped): a NAR's new
//! chunks lie back to back in its pack, and the chunks it shares with other
//! NARs sit, in order, in theirs, so a NAR interleaving its own pack with
//! another's costs one read per pack, not one per switch. All of a window's
//! reads start at once, a window ahead of the one being sent; a pump task
//! ([`pump`]) takes each step's bytes from its read in NAR order.
//!
//! A chunk the NAR repeats (a file stored twice, a block of zeros) is read
//! once: the pump keeps its frame until the chunk's last occurrence and
//! sends it again from memory (what the planner learns from [`Repeats`],
//! counted from the NAR's chunk list before the first row is read). Memory
//! is bounded by the channels and [`REUSE_MAX`], whatever the NAR's size; a
//! client that goes away stops both tasks at their next send.

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
use crate::db::chunks::ChunkRecord;
use crate::storage::{ByteStream, ObjectKey, StorageError};

/// Bytes a window reads at most (gaps included): how far ahead of the
/// bytes being sent requests are opened, and how many rows one window
/// waits for.
const WINDOW_MAX: u64 = 64 * 1024 * 1024;
/// Longest gap between two needed frames of one object that a read
/// bridges (reading and dropping it) rather than ending: about what a
/// bucket streams in the time-to-first-byte of one more request (~50 ms ×
/// ~100 MB/s), so bridging never costs more time than it saves.
const GAP_MAX: u64 = 4 * 1024 * 1024;
/// Reads one window opens at most.
const READS_MAX: usize = 16;
/// Bytes of repeated frames one download keeps in memory at once: past
/// it, a repeat is read again.
const REUSE_MAX: u64 = 8 * 1024 * 1024;
/// Windows whose requests are started ahead of the one being sent.
const WINDOWS_AHEAD: usize = 1;
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

/// Where a step of a window gets its bytes.
enum Step {
    /// The next bytes of read `read` of the window, after dropping `skip`
    /// (a gap); `keep`: hold the frame, the chunk comes again.
    Read {
        read: usize,
        skip: u64,
        part: Part,
        keep: bool,
    },
    /// A frame read (and kept) earlier, sent again from memory; `last`: the
    /// chunk's last occurrence, the frame may go.
    Reuse { part: Part, last: bool },
}

/// One ranged read of a window.
struct ObjectRead {
    key: ObjectKey,
    range: Range<u64>,
}

/// Consecutive steps of the download and the reads that serve them.
#[derive(Default)]
struct Window {
    reads: Vec<ObjectRead>,
    /// The read of each object still open to extension.
    last_read: HashMap<ObjectKey, usize>,
    steps: Vec<Step>,
    /// Bytes the reads cover, gaps included.
    bytes: u64,
}

impl Window {
    /// Adds a step reading `range` of `key`: at the end of that object's
    /// open read when it lies a short gap past it, else as a new read.
    fn push_read(&mut self, key: ObjectKey, range: Range<u64>, part: Part, keep: bool) {
        let extend = self.last_read.get(&key).copied().filter(|&i| {
            let end = self.reads[i].range.end;
            range.start >= end && range.start - end <= GAP_MAX
        });
        let (read, skip) = match extend {
            Some(i) => {
                let skip = range.start - self.reads[i].range.end;
                self.reads[i].range.end = range.end;
                (i, skip)
            }
            None => {
                self.reads.push(ObjectRead {
                    key: key.clone(),
                    range: range.clone(),
                });
                self.last_read.insert(key, self.reads.len() - 1);
                (self.reads.len() - 1, 0)
            }
        };
        self.bytes += skip + (range.end - range.start);
        self.steps.push(Step::Read {
            read,
            skip,
            part,
            keep,
        });
    }

    /// Whether the window is to be sent now.
    fn is_full(&self) -> bool {
        self.bytes >= WINDOW_MAX || self.reads.len() >= READS_MAX
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
    let (windows_tx, windows_rx) = mpsc::channel(WINDOWS_AHEAD);
    tokio::spawn(plan(store.clone(), parts, repeats, repr, windows_tx));
    let (out_tx, out_rx) = mpsc::channel(PIECES_AHEAD);
    tokio::spawn(pump::pump(windows_rx, repr, out_tx));
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

/// A window on its way to the pump, its reads started.
type Started = (Window, Vec<Opened>);

/// Cuts parts into windows and starts each window's reads at once.
async fn plan(
    store: ChunkStore,
    mut parts: BoxStream<'static, io::Result<Part>>,
    repeats: Repeats,
    repr: Representation,
    windows: mpsc::Sender<io::Result<Started>>,
) {
    let mut reuse = Reuse {
        remaining: repeats,
        kept: HashSet::new(),
        kept_bytes: 0,
    };
    let mut window = Window::default();
    loop {
        let part = match parts.try_next().await {
            Ok(Some(part)) => part,
            Ok(None) => break,
            Err(e) => {
                let _ = windows.send(Err(e)).await;
                return;
            }
        };
        let id = part.0.id;
        let at = ChunkStore::locate(&part.0);
        let again = reuse.occurs(id);
        if reuse.kept.contains(&id) {
            if !again {
                reuse.release(id, at.length);
            }
            window.steps.push(Step::Reuse { part, last: !again });
            continue;
        }
        let (key, range) = needed(&part, repr);
        let keep = again && range == at.range() && reuse.keep(id, at.length);
        window.push_read(key, range, part, keep);
        if window.is_full() && !start(&store, std::mem::take(&mut window), &windows).await {
            return;
        }
    }
    if !window.steps.is_empty() {
        start(&store, window, &windows).await;
    }
}

/// Starts `window`'s reads and hands it to the pump; false once the pump
/// is gone.
async fn start(
    store: &ChunkStore,
    window: Window,
    windows: &mpsc::Sender<io::Result<Started>>,
) -> bool {
    let opened = window
        .reads
        .iter()
        .map(|r| {
            let (store, key, range) = (store.clone(), r.key.clone(), r.range.clone());
            tokio::spawn(async move { store.read_object(&key, range).await })
        })
        .collect();
    windows.send(Ok((window, opened))).await.is_ok()
}
