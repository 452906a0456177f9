//! Chunk-level push of one path (docs/protocol.md "Chunk-level push"): the
//! NAR from `nix-store --dump` is cut with the cache's chunking on a
//! blocking thread, the server is asked, a group of chunks at a time,
//! which it lacks, and only those go out, zstd-compressed on every core,
//! many per request. The NAR is then committed as its chunk list with its
//! NarHash and NarSize, which the server checks over the whole sequence.
//!
//! Only the commit waits for the path's references ([`Gate`]): cutting,
//! asking and sending run while the references are still being pushed, so
//! a chain of dependencies overlaps everything but the commits. A server
//! that takes prepare and publish ([`super::commit`]) verifies the NAR
//! before the gate opens too, so only a cheap publish waits; one that
//! streams prepares verifies it while it is being cut, each group's hashes
//! following once the group's chunks are in.
//!
//! Cutting is one thread's work, naming the chunks (SHA-256) is not: the
//! cutter hands batches of [`NAME_BATCH`] bytes to the blocking pool, one
//! per core, which hash them while it cuts on.
//!
//! Memory is bounded: the chunker runs at most [`CHANNEL_DEPTH`] batches
//! ahead of the namers, a group holds at most [`GROUP_BYTES`], and one
//! batch is in flight while the next is compressed. An interrupted push resumes by
//! itself: chunks the server already received count as present for the
//! same token subject, so asking again skips them.

use std::collections::HashSet;

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::io::SyncIoBridge;

use larder_core::CacheName;
use larder_core::chunk::{Chunk, ChunkHash, Cutter, NAME_BATCH, RawChunk};
pub use larder_core::wire::chunk_push::ChunkParamsResponse;
use larder_core::wire::chunk_push::{ENTRY_HEADER, chunk_list_hash, encode_entry};
use larder_core::wire::{UploadKind, UploadPathNarInfo};

use super::commit::{Chunking, StreamedPrepare, Target};
use super::error::UploadError;
use super::gate::Gate;
use super::progress::PathProgress;
use crate::api::{ApiClient, ApiError};
use crate::nix::{Nix, PathInfo};

/// Batches cut ahead of the namers.
const CHANNEL_DEPTH: usize = 4;
/// Bytes of NAR asked about (and held) at once.
const GROUP_BYTES: u64 = 16 * 1024 * 1024;
/// How long a failed cut waits for the dump's own error.
const DUMP_EXIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The server's chunk push, or `None` when it has none (an Attic server,
/// or one with it disabled): uploads are then whole NARs.
pub async fn detect(api: &ApiClient, cache: &CacheName) -> Option<Chunking> {
    let params = api.chunk_params(cache).await.ok()?;
    params.params().validate().ok()?;
    Some(Chunking::new(params))
}

/// Pushes `info` (upload metadata `meta`) by its chunks, committing once
/// `gate` opens; one attempt (each request retries its own transient
/// failures).
pub async fn push(
    target: Target<'_>,
    nix: &Nix,
    info: &PathInfo,
    meta: UploadPathNarInfo,
    chunking: &Chunking,
    progress: &PathProgress,
    gate: &mut Gate,
) -> Result<UploadKind, UploadError> {
    let Target { api, cache, .. } = target;
    let params = &chunking.params;
    // A NAR of one chunk commits in one step (`commit::one_step`), with its
    // bytes in the commit where the server takes that.
    let one_chunk = info.nar_size < u64::from(params.nar_size_threshold);
    if one_chunk && params.inline_nars {
        let how = (params.nar_size_threshold, params.zstd_level);
        return super::inline::push(target, nix, info, meta, how, progress, gate).await;
    }
    progress.restart();
    let (nar, dump) = nix.dump(&info.path)?.into_reader();
    let mut chunks = cut(nar, info.nar_size, params);
    let by_list = params.hash_lists && params.chunk_list_refs && chunking.names_lists();
    let prepare = (chunking.streams_prepares() && !one_chunk)
        .then(|| StreamedPrepare::open(target, &meta, by_list));
    let mut sender = Sender {
        api,
        cache,
        params,
        progress,
        store_path: meta.store_path.clone(),
        known: HashSet::new(),
        by_list,
        lists: Vec::new(),
        in_flight: None,
        prepare,
    };
    let mut order: Vec<ChunkHash> = Vec::new();
    let mut group: Vec<Chunk> = Vec::new();
    let mut group_bytes = 0;
    let group_max = params.max_missing_chunks.clamp(1, 4096);
    loop {
        let next = chunks.next().await;
        let end = match next {
            Some(Ok(chunk)) => {
                group_bytes += chunk.data.len() as u64;
                order.push(chunk.hash);
                group.push(chunk);
                false
            }
            Some(Err(e)) => {
                // The chunker stopped reading, so the dump ends (its pipe
                // closed) if it has not already: its own failure, if any,
                // says more than a short read.
                let ended = tokio::time::timeout(DUMP_EXIT, dump.wait()).await;
                return Err(UploadError::Dump(match ended {
                    Ok(Err(message)) => message,
                    _ => e,
                }));
            }
            None => true,
        };
        if !group.is_empty() && (end || group_bytes >= GROUP_BYTES || group.len() >= group_max) {
            sender.send_group(std::mem::take(&mut group)).await?;
            group_bytes = 0;
        }
        if end {
            break;
        }
    }
    sender.finish().await?;
    dump.wait().await.map_err(UploadError::Dump)?;
    let nar = super::commit::Nar {
        meta,
        chunks: order,
        lists: sender.lists,
    };
    super::commit::commit(target, nar, chunking, sender.prepare, progress, gate).await
}

/// Cuts the NAR on a blocking thread, reading the dump's pipe straight
/// into the chunker's window, and names the chunks on the blocking pool,
/// a batch per core at a time, in order; errors arrive as text, then the
/// end.
fn cut(
    nar: impl tokio::io::AsyncRead + Send + Unpin + 'static,
    size: u64,
    params: &ChunkParamsResponse,
) -> impl futures::Stream<Item = Result<Chunk, String>> + Send + Unpin + 'static {
    let (tx, mut rx) = mpsc::channel(CHANNEL_DEPTH);
    let params = params.params();
    let reader = SyncIoBridge::new(nar);
    tokio::task::spawn_blocking(move || {
        let cutter = match Cutter::new(reader, size, &params) {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.blocking_send(Err(e.to_string()));
                return;
            }
        };
        for batch in cutter.batches(NAME_BATCH) {
            let failed = batch.is_err();
            if tx.blocking_send(batch.map_err(|e| e.to_string())).is_err() || failed {
                return;
            }
        }
    });
    stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(|batch| async move {
            let batch = batch?;
            tokio::task::spawn_blocking(move || {
                batch.into_iter().map(RawChunk::name).collect::<Vec<_>>()
            })
            .await
            .map_err(|e| format!("naming chunks failed: {e}"))
        })
        .buffered(parallelism())
        .map_ok(|chunks| stream::iter(chunks.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
}

/// Asks about groups of chunks and sends the missing ones.
struct Sender<'a> {
    api: &'a ApiClient,
    cache: &'a CacheName,
    params: &'a ChunkParamsResponse,
    progress: &'a PathProgress,
    store_path: String,
    /// Chunks of this NAR sent or present already.
    known: HashSet<ChunkHash>,
    /// Whether the commit names the lists asked about: decided once per
    /// path, as the streamed prepare was opened.
    by_list: bool,
    /// Ids of the lists asked about, when the commit may name them instead
    /// of listing the chunks again: then each group is asked whole and in
    /// order, so that the lists concatenated are the NAR's chunks.
    lists: Vec<String>,
    /// The batch being sent, and its size on the wire.
    in_flight: Option<JoinHandle<Result<u64, ApiError>>>,
    /// The prepare streaming this NAR's list, if the server takes one.
    prepare: Option<StreamedPrepare>,
}

impl Sender<'_> {
    async fn send_group(&mut self, group: Vec<Chunk>) -> Result<(), UploadError> {
        let hashes: Vec<ChunkHash> = group.iter().map(|c| c.hash).collect();
        let list = self.by_list.then(|| chunk_list_hash(&hashes));
        let ask: Vec<ChunkHash> = if let Some(list) = list {
            self.lists.push(list.to_string());
            hashes.clone()
        } else {
            let mut ask: Vec<ChunkHash> = hashes
                .iter()
                .filter(|h| !self.known.contains(h))
                .copied()
                .collect();
            ask.sort_unstable();
            ask.dedup();
            ask
        };
        let missing: HashSet<String> = if ask.is_empty() {
            HashSet::new()
        } else {
            let compact = self.params.hash_lists;
            self.api
                .missing_chunks(self.cache, &self.store_path, &ask, compact)
                .await?
                .into_iter()
                .collect()
        };
        let (mut nar, mut dedup) = (0, 0);
        let mut to_send = Vec::new();
        for chunk in group {
            let len = chunk.data.len() as u64;
            nar += len;
            if self.known.insert(chunk.hash) && missing.contains(&chunk.hash.to_string()) {
                to_send.push(chunk);
            } else {
                dedup += len;
            }
        }
        let level = self.params.zstd_level;
        let mut frames = stream::iter(to_send)
            .map(|c| {
                tokio::task::spawn_blocking(move || {
                    compress(&c.data, level).map(|frame| (c.hash, frame))
                })
            })
            .buffered(parallelism());
        let limit = self.params.max_batch_bytes.max(1) as usize;
        let mut body = Vec::new();
        while let Some(done) = frames.next().await {
            let (hash, frame) = done
                .map_err(|e| UploadError::Dump(format!("compressing a chunk: {e}")))?
                .map_err(|e| UploadError::Dump(format!("compressing a chunk: {e}")))?;
            if !body.is_empty() && body.len() + ENTRY_HEADER + frame.len() > limit {
                self.send(std::mem::take(&mut body)).await?;
            }
            encode_entry(&mut body, &hash, &frame);
        }
        if !body.is_empty() {
            self.send(body).await?;
        }
        self.progress.chunks_done(nar, dedup);
        // The group's hashes go to the prepare once its last batch is in.
        if let Some(prepare) = &mut self.prepare {
            prepare.queue(&hashes, list);
        }
        if self.in_flight.as_ref().is_none_or(JoinHandle::is_finished) {
            self.finish().await?;
        }
        Ok(())
    }

    /// Starts sending `body` once the previous batch is through.
    async fn send(&mut self, body: Vec<u8>) -> Result<(), UploadError> {
        self.finish().await?;
        let (api, cache) = (self.api.clone(), self.cache.clone());
        self.in_flight = Some(tokio::spawn(async move {
            let len = body.len() as u64;
            api.upload_chunks(&cache, Bytes::from(body))
                .await
                .map(|_| len)
        }));
        Ok(())
    }

    /// Waits for the batch in flight; every chunk asked about so far is
    /// then in, so the prepare may have their hashes.
    async fn finish(&mut self) -> Result<(), UploadError> {
        if let Some(task) = self.in_flight.take() {
            let sent = task
                .await
                .map_err(|e| UploadError::Dump(format!("chunk upload task failed: {e}")))??;
            self.progress.frames_sent(sent);
        }
        if let Some(prepare) = &mut self.prepare {
            prepare.release();
        }
        Ok(())
    }
}

thread_local! {
    /// One zstd context per thread: chunks are small, contexts are not free.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// One chunk as one zstd frame recording its content size.
pub(super) fn compress(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with_borrow_mut(|slot| {
        let compressor = match slot {
            Some((l, c)) if *l == level => c,
            _ => &mut slot.insert((level, zstd::bulk::Compressor::new(level)?)).1,
        };
        compressor.compress(data)
    })
}

pub(crate) fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
