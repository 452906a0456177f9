//! Chunk-level push, Larder's own API under `/_api/larder/v1` (docs/protocol.md
//! "Chunk-level push"): the client cuts each NAR with the cache's
//! [`ChunkParamsResponse`], asks which chunks it must send
//! ([`MissingChunksRequest`]), sends those as zstd frames in batches (the
//! binary body of [`encode_entry`] / [`parse_batch`]), then commits the NAR as
//! its chunk list ([`CommitNarRequest`]).

use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkHash, ChunkingParams};
use crate::wire::UploadPathNarInfo;

/// Path prefix of Larder's versioned API family.
pub const PREFIX: &str = "/_api/larder/v1";

/// Content type of a chunk batch body.
pub const BATCH_CONTENT_TYPE: &str = "application/x-larder-chunks";

/// `GET …/caches/{cache}/chunk-push`: the cache's chunking and the server's
/// limits. A server without chunk-level push answers 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkParamsResponse {
    /// NARs smaller than this are one chunk.
    pub nar_size_threshold: u32,
    /// FastCDC minimum.
    pub min_size: u32,
    /// FastCDC average.
    pub avg_size: u32,
    /// FastCDC maximum.
    pub max_size: u32,
    /// Largest batch body the server takes.
    pub max_batch_bytes: u64,
    /// Most chunk hashes in one missing-chunks request.
    pub max_missing_chunks: usize,
    /// Most chunks in one commit.
    pub max_commit_chunks: usize,
    /// zstd level the cache stores chunks at, for the client's frames.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
}

fn default_zstd_level() -> i32 {
    3
}

impl ChunkParamsResponse {
    /// The FastCDC sizes.
    pub fn params(&self) -> ChunkingParams {
        ChunkingParams {
            nar_size_threshold: self.nar_size_threshold,
            min_size: self.min_size,
            avg_size: self.avg_size,
            max_size: self.max_size,
        }
    }
}

/// `POST …/caches/{cache}/chunks/missing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingChunksRequest {
    /// The store path the chunks belong to: the server looks for earlier
    /// versions of the same package among the cache's paths.
    pub store_path: String,
    /// Chunk hashes, lowercase hex.
    pub chunks: Vec<String>,
}

/// The chunks of the request the client must send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingChunksResponse {
    /// Subset of the request's hashes, in request order.
    pub missing: Vec<String>,
}

/// `POST …/caches/{cache}/chunks`: what the server took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkBatchResponse {
    /// Chunks in the batch.
    pub chunks: u64,
    /// Their uncompressed bytes.
    pub chunk_bytes: u64,
}

/// `POST …/caches/{cache}/nars`: the NAR as its chunks, with Attic's upload
/// metadata. Answered with [`crate::wire::UploadPathResult`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitNarRequest {
    /// What `upload-path` takes (`cache` must name the URL's cache).
    pub info: UploadPathNarInfo,
    /// The NAR's chunk hashes in order, lowercase hex.
    pub chunks: Vec<String>,
}

/// Bytes before each frame in a batch: the chunk's SHA-256, then the frame
/// length as a big-endian `u32`.
pub const ENTRY_HEADER: usize = 36;

/// Appends one batch entry: `hash` (32 bytes), frame length (u32 BE), frame.
pub fn encode_entry(out: &mut Vec<u8>, hash: &ChunkHash, frame: &[u8]) {
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
}

/// One entry of a batch body, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEntry<'a> {
    /// What the frame claims to decompress to.
    pub hash: ChunkHash,
    /// Offset of the frame in the body.
    pub offset: usize,
    /// The zstd frame.
    pub frame: &'a [u8],
}

/// Why a batch body does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The body ends inside an entry.
    #[error("chunk batch is truncated at byte {0}")]
    Truncated(usize),
    /// A zero-length frame.
    #[error("empty frame at byte {0}")]
    EmptyFrame(usize),
}

/// Splits a batch body into its entries.
pub fn parse_batch(body: &[u8]) -> Result<Vec<BatchEntry<'_>>, BatchError> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let header = body
            .get(at..at + ENTRY_HEADER)
            .ok_or(BatchError::Truncated(at))?;
        let (hash, len) = header.split_at(32);
        let hash = ChunkHash::from_slice(hash).map_err(|_| BatchError::Truncated(at))?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len == 0 {
            return Err(BatchError::EmptyFrame(at));
        }
        let start = at + ENTRY_HEADER;
        let frame = body
            .get(start..start + len)
            .ok_or(BatchError::Truncated(at))?;
        entries.push(BatchEntry {
            hash,
            offset: start,
            frame,
        });
        at = start + len;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip() {
        let (a, b) = (ChunkHash::of(b"a"), ChunkHash::of(b"b"));
        let mut body = Vec::new();
        encode_entry(&mut body, &a, b"frame-a");
        encode_entry(&mut body, &b, b"fb");
        let entries = parse_batch(&body).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].hash, entries[0].frame), (a, &b"frame-a"[..]));
        assert_eq!(entries[0].offset, ENTRY_HEADER);
        assert_eq!((entries[1].hash, entries[1].frame), (b, &b"fb"[..]));
        assert_eq!(&body[entries[1].offset..][..2], b"fb");
        assert!(parse_batch(&[]).unwrap().is_empty());
    }

    #[test]
    fn bad_batches() {
        let mut body = Vec::new();
        encode_entry(&mut body, &ChunkHash::of(b"a"), b"frame");
        assert_eq!(
            parse_batch(&body[..body.len() - 1]),
            Err(BatchError::Truncated(0))
        );
        assert_eq!(parse_batch(&body[..10]), Err(BatchError::Truncated(0)));
        let mut empty = Vec::new();
        encode_entry(&mut empty, &ChunkHash::of(b"a"), b"");
        assert_eq!(parse_batch(&empty), Err(BatchError::EmptyFrame(0)));
    }
}
