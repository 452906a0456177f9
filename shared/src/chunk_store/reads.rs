//! Coalesced, pipelined reads of a NAR's frames (docs/architecture.md
//! "Packs").
//!
//! Consecutive frames that lie back to back in one object (a NAR's chunks
//! in a pack are stored in NAR order) are fetched by one ranged read, a
//! *run*. A planner task turns chunk rows into runs and starts each run's
//! storage request as soon as the run is known, a run or two ahead of the
//! one being sent, so streaming is limited by storage bandwidth rather than
//! round trips; a pump task streams each run's bytes in order. The first run
//! is kept short (one batch of rows) so the first byte does not wait for
//! rows further on. Memory is bounded by the channels, whatever the NAR's
//! size; a client that goes away stops both tasks at their next send.

use std::io;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::ChunkStore;
use crate::chunk;
use crate::db::chunks::{BATCH, ChunkRecord};
use crate::storage::{ByteStream, ObjectKey, StorageError};

/// Longest run, in bytes: runs end at object boundaries anyway (a pack is
/// tens of MiB), this bounds how many rows one run waits for.
const RUN_MAX: u64 = 64 * 1024 * 1024;
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

/// One ranged read covering consecutive parts.
struct Run {
    key: ObjectKey,
    range: Range<u64>,
    parts: Vec<Part>,
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
    repr: Representation,
) -> NarStream {
    let (runs_tx, runs_rx) = mpsc::channel(RUNS_AHEAD);
    tokio::spawn(plan(store.clone(), parts, repr, runs_tx));
    let (out_tx, out_rx) = mpsc::channel(PIECES_AHEAD);
    tokio::spawn(pump(runs_rx, repr, out_tx));
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
    repr: Representation,
    runs: mpsc::Sender<io::Result<(Run, Opened)>>,
) {
    let mut current: Option<Run> = None;
    let mut first = true;
    loop {
        let next = match parts.try_next().await {
            Ok(next) => next,
            Err(e) => {
                let _ = runs.send(Err(e)).await;
                return;
            }
        };
        if let (Some(run), Some(part)) = (current.as_mut(), next.as_ref()) {
            let (key, range) = needed(part, repr);
            let limit = if first { BATCH } else { usize::MAX };
            let fits = key == run.key
                && range.start == run.range.end
                && run.parts.len() < limit
                && range.end - run.range.start <= RUN_MAX;
            if fits {
                run.range.end = range.end;
                run.parts.extend(next);
                continue;
            }
        }
        if let Some(run) = current.take() {
            first = false;
            let (store, key, range) = (store.clone(), run.key.clone(), run.range.clone());
            let opened = tokio::spawn(async move { store.read_object(&key, range).await });
            if runs.send(Ok((run, opened))).await.is_err() {
                return;
            }
        }
        let Some(part) = next else { return };
        let (key, range) = needed(&part, repr);
        current = Some(Run {
            key,
            range,
            parts: vec![part],
        });
    }
}

/// Sends each run's bytes in order: as they come for `.nar.zst`, cut into
/// whole frames for `.nar`. Every run must give exactly its length.
async fn pump(
    mut runs: mpsc::Receiver<io::Result<(Run, Opened)>>,
    repr: Representation,
    out: mpsc::Sender<io::Result<Piece>>,
) {
    while let Some(next) = runs.recv().await {
        let result = match next {
            Ok((run, opened)) => send_run(run, opened, repr, &out).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Streams one run; `Ok(false)` once the body is gone.
async fn send_run(
    run: Run,
    opened: Opened,
    repr: Representation,
    out: &mpsc::Sender<io::Result<Piece>>,
) -> io::Result<bool> {
    let mut body = opened
        .await
        .map_err(io::Error::other)?
        .map_err(io::Error::other)?;
    let want = run.range.end - run.range.start;
    let mut got = 0u64;
    let mut parts = run.parts.into_iter();
    let mut frame = BytesMut::new();
    let mut part = parts.next();
    while let Some(bytes) = body.try_next().await? {
        got += bytes.len() as u64;
        if got > want {
            break;
        }
        if repr == Representation::Zstd {
            if out
                .send(Ok(Piece {
                    data: bytes,
                    decode: None,
                }))
                .await
                .is_err()
            {
                return Ok(false);
            }
            continue;
        }
        frame.extend_from_slice(&bytes);
        while let Some((rec, within)) = part.as_ref() {
            let len = rec.file_size.max(0) as usize;
            if frame.len() < len {
                break;
            }
            let piece = Piece {
                data: frame.split_to(len).freeze(),
                decode: Some((rec.chunk_size, within.clone())),
            };
            if out.send(Ok(piece)).await.is_err() {
                return Ok(false);
            }
            part = parts.next();
        }
    }
    if got != want {
        return Err(io::Error::other(format!(
            "read of {} gave {got} bytes, expected {want}",
            run.key
        )));
    }
    if repr == Representation::Plain && (part.is_some() || !frame.is_empty()) {
        return Err(io::Error::other(format!(
            "read of {} does not end at a frame boundary",
            run.key
        )));
    }
    Ok(true)
}
