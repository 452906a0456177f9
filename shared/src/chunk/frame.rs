//! zstd frames: one standalone frame per chunk, compressed in parallel.

use std::io::{self, ErrorKind};
use std::num::NonZeroUsize;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::Chunk;

thread_local! {
    /// One zstd context per thread and level: contexts cost up to tens of
    /// MiB to set up at high levels, chunks are small.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    /// One decompression context per thread: a download or a chunk push's
    /// read-back decompresses thousands of small frames, and a fresh
    /// context for each showed in profiles.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses one chunk into one standalone zstd frame whose header records
/// the content size. CPU-bound: call from a blocking thread.
pub fn compress(data: &[u8], level: i32) -> io::Result<Bytes> {
    COMPRESSOR.with_borrow_mut(|slot| {
        let compressor = match slot {
            Some((l, c)) if *l == level => c,
            _ => &mut slot.insert((level, zstd::bulk::Compressor::new(level)?)).1,
        };
        compressor.compress(data).map(Bytes::from)
    })
}

/// Decompresses a chunk's frame, which must hold exactly `expected_len`
/// bytes (the chunk size the database records).
pub fn decompress(frame: &[u8], expected_len: usize) -> io::Result<Bytes> {
    let data = DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = match slot {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        decompressor.decompress(frame, expected_len)
    })?;
    if data.len() != expected_len {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!(
                "chunk frame holds {} bytes, expected {expected_len}",
                data.len()
            ),
        ));
    }
    Ok(Bytes::from(data))
}

/// Compresses the chunks not yet stored, `parallelism` at a time on blocking
/// threads, and yields every chunk in input order with its frame (`None` for
/// chunks the caller marked as already stored, which are not compressed).
///
/// Input items are `(chunk, already_stored)`, so the caller plugs in its own
/// dedup lookup. At most `parallelism` chunks are held, each with its frame:
/// memory stays under `parallelism × 2 × max_size` whatever the NAR size.
/// Errors pass through in order; compression failures become `E`.
pub fn compress_new_chunks<S, E>(
    chunks: S,
    level: i32,
    parallelism: NonZeroUsize,
) -> impl Stream<Item = Result<(Chunk, Option<Bytes>), E>> + Send
where
    S: Stream<Item = Result<(Chunk, bool), E>> + Send,
    E: From<io::Error> + Send + 'static,
{
    chunks
        .map(move |item| async move {
            let (chunk, already_stored) = item?;
            if already_stored {
                return Ok((chunk, None));
            }
            let data = chunk.data.clone();
            let frame = tokio::task::spawn_blocking(move || compress(&data, level))
                .await
                .map_err(io::Error::other)??;
            Ok((chunk, Some(frame)))
        })
        .buffered(parallelism.get())
}
