//! The async wrappers of the blocking chunker ([`ChunkIter`], in
//! `larder_core::chunk`): cut points and SHA-256 on a background thread
//! ([`crate::background`]).

use std::io;

use bytes::Bytes;
use futures::Stream;
use tokio::io::AsyncRead;

use super::{Chunk, ChunkError, ChunkIter, ChunkingParams, InvalidChunkingParams};

/// Chunks handed from the chunking thread to the async consumer ahead of
/// demand; bounds memory together with the window. Deep enough that the
/// chunker keeps cutting while a batch of chunks is looked up (at most
/// 32 × `max_size`, 8 MiB with the default chunking).
const CHUNK_CHANNEL_DEPTH: usize = 32;

/// Chunks an async reader on a background thread of its own (cut points
/// and SHA-256 stay off the async runtime, below request handling's
/// priority). See [`ChunkIter`] for the contract.
///
/// Dropping the stream stops the thread at its next chunk. Must be called
/// within a Tokio runtime.
pub fn chunk_reader<R>(
    reader: R,
    total_size: u64,
    params: &ChunkingParams,
) -> Result<impl Stream<Item = Result<Chunk, ChunkError>> + Send + 'static, InvalidChunkingParams>
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let chunks = ChunkIter::new(
        tokio_util::io::SyncIoBridge::new(reader),
        total_size,
        params,
    )?;
    Ok(crate::background::stream(
        "larder-chunker",
        CHUNK_CHANNEL_DEPTH,
        move |tx| {
            for chunk in chunks {
                if tx.blocking_send(chunk).is_err() {
                    return;
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
