//! Chunk-level push, Larder's own API under `/_api/larder/v1` (docs/protocol.md
//! "Chunk-level push"): the client cuts each NAR with the cache's
//! [`ChunkParamsResponse`], asks which chunks it must send
//! ([`MissingChunksRequest`]), sends those as zstd frames in batches (the
//! binary body of [`encode_entry`] / [`parse_batch`]), then commits the NAR as
//! its chunk list ([`CommitNarRequest`]), in one step or as a prepare (the
//! heavy verification, sent before the path's references are in) and a
//! publish (the cheap recording, once they are): [`CommitMode`].
//!
//! Chunk lists travel as hex JSON, or, to servers advertising
//! [`ChunkParamsResponse::hash_lists`], as a [`HASH_LIST_CONTENT_TYPE`] body:
//! a JSON head followed by raw 32-byte hashes ([`encode_hash_list`]).

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
    /// The server takes [`CommitMode::Prepare`] and [`CommitMode::Publish`]
    /// (absent from older servers: false).
    #[serde(default)]
    pub prepare_publish: bool,
    /// The server takes [`HASH_LIST_CONTENT_TYPE`] bodies for the
    /// missing-chunks question and the commit (absent from older servers).
    #[serde(default)]
    pub hash_lists: bool,
    /// A commit may name the lists of earlier hash-list questions
    /// ([`CommitNarRequest::chunk_lists`]) instead of listing its chunks.
    #[serde(default)]
    pub chunk_list_refs: bool,
    /// A prepare's [`HASH_LIST_CONTENT_TYPE`] body may arrive as the
    /// client cuts: the server reads the NAR back, verifies and stages it
    /// a piece of the list at a time, as the hashes come. The client sends
    /// a piece only once its chunks are in (absent from older servers,
    /// which read the whole body first).
    #[serde(default)]
    pub streamed_prepare: bool,
    /// A NAR below `nar_size_threshold` (one chunk) may be committed with
    /// its bytes in the commit ([`INLINE_NAR_CONTENT_TYPE`]): one request
    /// instead of a question, a batch and a commit (absent from older
    /// servers).
    #[serde(default)]
    pub inline_nars: bool,
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
    /// Chunk hashes, lowercase hex; empty in the head of a
    /// [`HASH_LIST_CONTENT_TYPE`] body, whose hashes follow it.
    #[serde(default)]
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
    /// The NAR's chunk hashes in order, lowercase hex; empty in the head of
    /// a [`HASH_LIST_CONTENT_TYPE`] body (whose hashes follow it) and for a
    /// publish.
    #[serde(default)]
    pub chunks: Vec<String>,
    /// One step, or which half of two (absent: one step, as older clients).
    #[serde(default, skip_serializing_if = "CommitMode::is_commit")]
    pub mode: CommitMode,
    /// Instead of `chunks`: the [`chunk_list_id`]s of hash-list questions
    /// this caller asked, whose lists, concatenated, are the NAR's chunks.
    /// `409 ChunkListUnknown` when the server no longer remembers one; the
    /// caller then lists the chunks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunk_lists: Vec<String>,
    /// For a publish: what the prepare answered ([`PreparedNarResponse`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<String>,
    /// For a prepare sent as a [`HASH_LIST_CONTENT_TYPE`] body: its tail
    /// is the raw 32-byte [`chunk_list_id`]s of this caller's questions
    /// (whose lists, concatenated, are the NAR's chunks), not chunk
    /// hashes; with `streamed_prepare`, resolved as they arrive.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub list_ids_follow: bool,
}

/// What a `POST …/nars` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitMode {
    /// Verify, stage and record the path: visible when answered.
    #[default]
    Commit,
    /// Verify and stage the NAR, record nothing: answered with a
    /// [`PreparedNarResponse`]; the path's references need not be in yet.
    Prepare,
    /// Record the path from its prepared NAR (no chunk list): the caller
    /// sends it once the path's references are in. `409 PreparedMissing`
    /// when the prepared NAR is gone; the caller then commits in one step.
    Publish,
}

impl CommitMode {
    fn is_commit(&self) -> bool {
        *self == CommitMode::Commit
    }
}

/// The answer to a prepare: the name of the prepared NAR, for its publish.
/// Only good for the same cache, token subject, NarHash and NarSize.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedNarResponse {
    /// Opaque to the client.
    pub prepared: String,
}

/// The name of a chunk list: the SHA-256 of its hashes' bytes, in order,
/// lowercase hex (as a [`ChunkHash`] of them is written).
pub fn chunk_list_id(hashes: &[ChunkHash]) -> String {
    chunk_list_hash(hashes).to_string()
}

/// [`chunk_list_id`] as its 32 bytes, as a streamed prepare sends it.
pub fn chunk_list_hash(hashes: &[ChunkHash]) -> ChunkHash {
    let mut bytes = Vec::with_capacity(32 * hashes.len());
    for h in hashes {
        bytes.extend_from_slice(h.as_bytes());
    }
    ChunkHash::of(&bytes)
}

/// Content type of a body carrying a JSON head and raw chunk hashes.
pub const HASH_LIST_CONTENT_TYPE: &str = "application/x-larder-hash-list";

/// A [`HASH_LIST_CONTENT_TYPE`] body: the head's length (u32 BE), the head
/// (JSON: [`MissingChunksRequest`] or [`CommitNarRequest`] with no `chunks`),
/// then each hash as its 32 bytes, in order.
pub fn encode_hash_list(head: &[u8], hashes: &[ChunkHash]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + head.len() + 32 * hashes.len());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(head);
    for h in hashes {
        out.extend_from_slice(h.as_bytes());
    }
    out
}

/// Content type of a one-step commit carrying its NAR, one chunk's worth,
/// as zstd: the head's length (u32 BE), the head (JSON:
/// [`CommitNarRequest`] with no `chunks`), then the compressed NAR
/// ([`encode_inline_nar`]). For a servers advertising
/// [`ChunkParamsResponse::inline_nars`].
pub const INLINE_NAR_CONTENT_TYPE: &str = "application/x-larder-inline-nar";

/// An [`INLINE_NAR_CONTENT_TYPE`] body.
pub fn encode_inline_nar(head: &[u8], compressed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + head.len() + compressed.len());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(head);
    out.extend_from_slice(compressed);
    out
}

/// Splits an [`INLINE_NAR_CONTENT_TYPE`] body into its head and the
/// compressed NAR.
pub fn parse_inline_nar(body: &[u8]) -> Result<(&[u8], &[u8]), HashListError> {
    split_head(body)
}

/// A framed body's head (after its u32 BE length) and the rest.
fn split_head(body: &[u8]) -> Result<(&[u8], &[u8]), HashListError> {
    let len = body
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or(HashListError::TruncatedHead(0))?;
    let head = body
        .get(4..4 + len)
        .ok_or(HashListError::TruncatedHead(len))?;
    Ok((head, &body[4 + len..]))
}

/// Why a hash-list body does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashListError {
    /// The body ends inside the head.
    #[error("hash list body ends inside its {0}-byte head")]
    TruncatedHead(usize),
    /// The hashes are not a whole number of 32 bytes.
    #[error("hash list has {0} bytes after its head, not a multiple of 32")]
    Ragged(usize),
}

/// Splits a [`HASH_LIST_CONTENT_TYPE`] body into its head and hashes.
pub fn parse_hash_list(body: &[u8]) -> Result<(&[u8], Vec<ChunkHash>), HashListError> {
    let (head, tail) = split_head(body)?;
    Ok((head, parse_hashes(tail)?))
}

/// The raw hashes after a hash-list body's head.
pub fn parse_hashes(raw: &[u8]) -> Result<Vec<ChunkHash>, HashListError> {
    if !raw.len().is_multiple_of(32) {
        return Err(HashListError::Ragged(raw.len()));
    }
    raw.chunks_exact(32)
        .map(|h| ChunkHash::from_slice(h).map_err(|_| HashListError::Ragged(raw.len())))
        .collect()
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
    fn inline_nar_round_trip() {
        let body = encode_inline_nar(b"{\"head\":1}", b"zstd bytes");
        assert_eq!(
            parse_inline_nar(&body).unwrap(),
            (&b"{\"head\":1}"[..], &b"zstd bytes"[..])
        );
        assert_eq!(
            parse_inline_nar(&body[..6]),
            Err(HashListError::TruncatedHead(10))
        );
        assert_eq!(
            parse_inline_nar(b"\0\0"),
            Err(HashListError::TruncatedHead(0))
        );
    }

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
    fn hash_lists() {
        let hashes = vec![ChunkHash::of(b"a"), ChunkHash::of(b"b")];
        let body = encode_hash_list(br#"{"store_path":"x"}"#, &hashes);
        assert_eq!(body.len(), 4 + 18 + 64);
        let (head, parsed) = parse_hash_list(&body).unwrap();
        assert_eq!((head, parsed), (&br#"{"store_path":"x"}"#[..], hashes));
        assert_eq!(
            parse_hash_list(&body[..body.len() - 1]),
            Err(HashListError::Ragged(63))
        );
        assert_eq!(
            parse_hash_list(&body[..10]),
            Err(HashListError::TruncatedHead(18))
        );
        assert_eq!(parse_hash_list(&[0]), Err(HashListError::TruncatedHead(0)));
        let empty = encode_hash_list(b"{}", &[]);
        let (head, none) = parse_hash_list(&empty).unwrap();
        assert_eq!((head, none.len()), (&b"{}"[..], 0));
    }

    #[test]
    fn commit_modes_default_to_one_step() {
        let old: CommitNarRequest =
            serde_json::from_str(r#"{"info":{"cache":"c","store_path_hash":"h","store_path":"/nix/store/h-x","references":[],"nar_hash":"sha256:00","nar_size":1},"chunks":["ab"]}"#)
                .unwrap();
        assert_eq!((old.mode, &old.prepared), (CommitMode::Commit, &None));
        let json = serde_json::to_value(&old).unwrap();
        assert!(json.get("mode").is_none() && json.get("prepared").is_none());
        let publish = CommitNarRequest {
            mode: CommitMode::Publish,
            prepared: Some("p".into()),
            chunk_lists: vec![],
            chunks: vec![],
            ..old
        };
        let json = serde_json::to_value(&publish).unwrap();
        assert_eq!(
            (&json["mode"], &json["prepared"]),
            (&"publish".into(), &"p".into())
        );
        let back: ChunkParamsResponse = serde_json::from_str(
            r#"{"nar_size_threshold":1,"min_size":1,"avg_size":2,"max_size":4,"max_batch_bytes":9,"max_missing_chunks":1,"max_commit_chunks":1}"#,
        )
        .unwrap();
        assert!(!back.prepare_publish && !back.hash_lists && !back.chunk_list_refs);
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
