//! A committed NAR's bytes, read back from its chunks in order: frames the
//! pusher sent (in their batch objects) and chunks of the store, each
//! decompressed. The stream feeds the same verifying staging as a whole-NAR
//! upload ([`crate::staging::stage`]), so NarHash, NarSize and the NAR
//! grammar are checked over the whole chunk sequence, existing chunks
//! included, and nothing is acknowledged (or left behind) unless they hold.
//!
//! Memory stays bounded: at most [`IN_FLIGHT`] chunks are read and
//! decompressed ahead, on blocking threads, whatever the NAR's size.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt, stream};

use larder_shared::chunk_store::ChunkStore;
use larder_shared::storage::Storage;

use super::presence::Source;

/// Chunks read ahead of the consumer.
const IN_FLIGHT: usize = 64;

/// The NAR as a stream of chunk contents, `sources` in order.
pub fn nar_stream(
    chunks: ChunkStore,
    staging: Arc<dyn Storage>,
    sources: Vec<Source>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    stream::iter(sources)
        .map(move |source| {
            let (chunks, staging) = (chunks.clone(), staging.clone());
            async move { read(&chunks, &staging, source).await }
        })
        .buffered(IN_FLIGHT)
}

/// One chunk's bytes, decompressed and of the size its row says.
async fn read(
    chunks: &ChunkStore,
    staging: &Arc<dyn Storage>,
    source: Source,
) -> io::Result<Bytes> {
    let (frame, size) = match source {
        Source::Stored(rec) => (
            chunks.read_frame(&rec).await?,
            rec.chunk_size.max(0) as usize,
        ),
        Source::Pushed(p) => {
            let range = p.frame_offset..p.frame_offset + p.frame_len;
            let mut body = staging
                .get(&p.object_key, Some(range))
                .await
                .map_err(io::Error::other)?;
            let mut frame = Vec::with_capacity(p.frame_len as usize);
            while let Some(piece) = body.next().await {
                frame.extend_from_slice(&piece?);
            }
            (Bytes::from(frame), p.chunk_size as usize)
        }
    };
    tokio::task::spawn_blocking(move || larder_shared::chunk::decompress(&frame, size))
        .await
        .map_err(io::Error::other)?
}
