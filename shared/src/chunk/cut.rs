//! The async wrappers of the blocking chunker ([`Cutter`], in
//! `larder_core::chunk`): cut points on one background thread, SHA-256 on
//! a second one, the cuts handed over in batches ([`crate::background`]).
//! Cutting is the one serial stage of an ingest, and naming cost as much
//! again when the same thread did it.
//!
//! Not the background pool: it is busy compressing, and naming queued
//! behind compression stalled the cutter (an ingest on two cores went a
//! fifth slower, docs/measurements.md).

use std::io;

use bytes::Bytes;
use futures::Stream;
use tokio::io::AsyncRead;

use super::{Chunk, ChunkError, ChunkingParams, Cutter, InvalidChunkingParams, NAME_BATCH};
use crate::background;

/// Batches cut ahead of the namer.
const CUT_DEPTH: usize = 4;

/// Chunks handed from the namer to the async consumer ahead of demand;
/// bounds memory together with the window and the batches. Deep enough
/// that the chunker keeps going while a batch of chunks is looked up (at
/// most 32 × `max_size`, 8 MiB with the default chunking).
const CHUNK_CHANNEL_DEPTH: usize = 32;

/// Chunks an async reader: cut on a background thread, named on another,
/// in order (all of it off the async runtime, below request handling's
/// priority). See [`Cutter`] for the contract.
///
/// Dropping the stream stops both threads at their next batch; a thread
/// that dies ends it with an error. Must be called within a Tokio runtime.
pub fn chunk_reader<R>(
    reader: R,
    total_size: u64,
    params: &ChunkingParams,
) -> Result<impl Stream<Item = Result<Chunk, ChunkError>> + Send + 'static, InvalidChunkingParams>
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let cutter = Cutter::new(
        tokio_util::io::SyncIoBridge::new(reader),
        total_size,
        params,
    )?;
    let batches = background::stream(
        "larder-chunker",
        CUT_DEPTH,
        move |tx| {
            for batch in cutter.batches(NAME_BATCH) {
                if tx.blocking_send(batch).is_err() {
                    return;
                }
            }
        },
        |e| Err(ChunkError::Task(e.to_string())),
    );
    Ok(background::stream(
        "larder-namer",
        CHUNK_CHANNEL_DEPTH,
        move |tx| {
            // Dropping the batches on return stops the cutter.
            for batch in futures::executor::block_on_stream(Box::pin(batches)) {
                let chunks = match batch {
                    Ok(chunks) => chunks,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                };
                for chunk in chunks {
                    if tx.blocking_send(Ok(chunk.name())).is_err() {
                        return;
                    }
                }
            }
        },
        |e| Err(ChunkError::Task(e.to_string())),
    ))
}

/// [`chunk_reader`] over a byte stream, such as
/// [`crate::storage::ByteStream`] from `Storage::get`.
pub fn chunk_stream<S>(
    input: S,
    total_size: u64,
    params: &ChunkingParams,
) -> Result<impl Stream<Item = Result<Chunk, ChunkError>> + Send + 'static, InvalidChunkingParams>
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static,
{
    chunk_reader(tokio_util::io::StreamReader::new(input), total_size, params)
}
