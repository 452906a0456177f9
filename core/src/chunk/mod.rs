//! Chunks: content-defined chunking of NARs and chunk names, the part both
//! the server (ingest) and the `larder` client (chunk-level push) run.
//!
//! A NAR is cut with FastCDC 2020 ([`fastcdc::v2020`], normalization level
//! 1, default gear table) into chunks of `min_size..=max_size` bytes
//! averaging `avg_size`; a NAR smaller than `nar_size_threshold` stays one
//! chunk. Each chunk is named by the SHA-256 of its uncompressed bytes
//! ([`ChunkHash`]). Cut points depend only on the bytes and the
//! [`ChunkingParams`], which is why a client given the cache's parameters
//! names the same chunks the server stores. The server side (zstd frames,
//! async wrappers) is `larder_shared::chunk`.

mod cut;
mod hash;
mod params;

pub use cut::{Batches, Chunk, ChunkError, ChunkIter, Cutter, NAME_BATCH, RawChunk};
pub use hash::{ChunkHash, InvalidChunkHash};
pub use params::{ChunkingParams, ChunkingProblem, InvalidChunkingParams};
