//! Chunks: content-defined chunking of NARs, chunk hashes, zstd frames.
//!
//! Spec: docs/architecture.md "Life of an upload". A NAR is cut with FastCDC 2020
//! ([`fastcdc::v2020`], normalization level 1, default gear table) into chunks
//! of `min_size..=max_size` bytes averaging `avg_size`; a NAR smaller than
//! `nar_size_threshold` stays one chunk. Each chunk is named by the SHA-256 of
//! its uncompressed bytes ([`ChunkHash`]), deduplicated globally by that name,
//! and stored, if new, as one standalone zstd frame with its content size in
//! the header. Concatenating the frames of a NAR's chunks is therefore a valid
//! `.nar.zst` stream, served without recompression.
//!
//! Everything streams. The chunker ([`ChunkIter`], or [`chunk_reader`] and
//! [`chunk_stream`] in async code) keeps one window of `2 × max_size` bytes,
//! and [`compress_new_chunks`] keeps at most `parallelism` chunks in flight, so
//! memory is independent of NAR size. Cut points depend only on the bytes, not
//! on how reads split them: the chunker always offers FastCDC a full
//! `max_size` window (or the rest of the input).

mod cut;
mod frame;

pub use cut::{chunk_reader, chunk_stream};
pub use frame::{compress, compress_new_chunks, decompress};
pub use larder_core::chunk::{
    Chunk, ChunkError, ChunkHash, ChunkIter, ChunkingParams, ChunkingProblem, Cutter,
    InvalidChunkHash, InvalidChunkingParams, NAME_BATCH, RawChunk,
};

#[cfg(test)]
mod tests;
