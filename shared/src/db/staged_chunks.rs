//! `staged_chunks` (on `staging_intents` and `nars`, migration 0019): the
//! chunk list a chunk-level push's commit verified a staged copy as, so its
//! ingest takes the chunks from the list instead of cutting and hashing
//! every byte of the copy again (worker `jobs::ingest`).
//!
//! 36 bytes a chunk: its SHA-256, then its size as a big-endian `u32`. The
//! list is recorded with the copy's checksum
//! ([`super::staging_intents::record_checksum`]) by the API, after it
//! verified the NarHash over exactly this sequence; the ingest still takes
//! it only if it is the NAR's size and its chunks are ones the store would
//! cut ([`StagedChunks::fits`]), and otherwise cuts the copy as if there
//! were no list.

use sqlx::Row;

use super::{DbError, NarId, Raw, corrupt};
use crate::chunk::{ChunkHash, ChunkingParams};
use crate::on_conn;

/// Bytes a chunk takes in the encoding.
const ENTRY: usize = 36;

/// One chunk of a staged NAR, in NAR order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagedChunk {
    /// SHA-256 of the chunk's bytes.
    pub hash: ChunkHash,
    /// Its size.
    pub size: u32,
}

/// A staged NAR's chunks, in NAR order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StagedChunks(pub Vec<StagedChunk>);

impl StagedChunks {
    /// The column's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * ENTRY);
        for c in &self.0 {
            out.extend_from_slice(c.hash.as_bytes());
            out.extend_from_slice(&c.size.to_be_bytes());
        }
        out
    }

    /// Inverse of [`Self::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DbError> {
        if !bytes.len().is_multiple_of(ENTRY) {
            return Err(corrupt("staged_chunks", "length is not a multiple of 36"));
        }
        let chunks = bytes
            .chunks_exact(ENTRY)
            .map(|e| {
                let hash =
                    ChunkHash::from_slice(&e[..32]).map_err(|err| corrupt("staged_chunks", err))?;
                let mut size = [0u8; 4];
                size.copy_from_slice(&e[32..]);
                Ok(StagedChunk {
                    hash,
                    size: u32::from_be_bytes(size),
                })
            })
            .collect::<Result<_, DbError>>()?;
        Ok(Self(chunks))
    }

    /// Whether the list is a NAR of `nar_size` bytes cut as the store cuts
    /// with `params`: one chunk below the whole-NAR threshold, otherwise
    /// chunks of `min_size..=max_size` bytes (the last may be shorter).
    /// The client cuts with the parameters the server publishes; a list
    /// that does not fit them (another client, changed parameters) would
    /// store chunks of sizes the store never makes, so its NAR is cut anew.
    pub fn fits(&self, nar_size: u64, params: &ChunkingParams) -> bool {
        let Some((last, rest)) = self.0.split_last() else {
            return false;
        };
        let total: u64 = self.0.iter().map(|c| u64::from(c.size)).sum();
        if total != nar_size || last.size == 0 || last.size > params.max_size {
            return false;
        }
        if nar_size < u64::from(params.nar_size_threshold) {
            return rest.is_empty();
        }
        rest.iter()
            .all(|c| (params.min_size..=params.max_size).contains(&c.size))
    }
}

/// The chunk list of staged NAR `id`, if its copy came with one. Read by
/// the ingest alone: the list can be hundreds of KiB, so it is not one of
/// the columns every NAR read loads.
pub async fn of_nar(raw: Raw<'_>, id: NarId) -> Result<Option<StagedChunks>, DbError> {
    on_conn!(raw, c => {
        let row = sqlx::query("SELECT staged_chunks FROM nars WHERE id = $1 AND state = 'staged'")
            .bind(id)
            .fetch_optional(&mut *c)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let bytes: Option<Vec<u8>> = row.try_get("staged_chunks")?;
        bytes.as_deref().map(StagedChunks::decode).transpose()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8, size: u32) -> StagedChunk {
        StagedChunk {
            hash: ChunkHash::of(&[n]),
            size,
        }
    }

    #[test]
    fn round_trip() {
        let list = StagedChunks(vec![chunk(1, 70_000), chunk(2, 5)]);
        let bytes = list.encode();
        assert_eq!(bytes.len(), 72);
        assert_eq!(StagedChunks::decode(&bytes).unwrap(), list);
        assert!(StagedChunks::decode(&bytes[..71]).is_err());
    }

    #[test]
    fn fits_only_the_stores_cut() {
        let p = ChunkingParams::default();
        let (min, max) = (p.min_size, p.max_size);
        let two = StagedChunks(vec![chunk(1, min), chunk(2, 10)]);
        let size = u64::from(min) + 10;
        assert!(two.fits(size, &p) == (size >= u64::from(p.nar_size_threshold)));
        let big = StagedChunks(vec![chunk(1, max), chunk(2, min), chunk(3, 1)]);
        let big_size = u64::from(max) + u64::from(min) + 1;
        assert!(big.fits(big_size, &p));
        assert!(!big.fits(big_size + 1, &p), "size differs");
        let small_inner = StagedChunks(vec![chunk(1, max), chunk(2, min - 1), chunk(3, 1)]);
        assert!(!small_inner.fits(u64::from(max) + u64::from(min), &p));
        let too_big = StagedChunks(vec![chunk(1, max + 1), chunk(2, min)]);
        assert!(!too_big.fits(u64::from(max) + 1 + u64::from(min), &p));
        let split_small = StagedChunks(vec![chunk(1, 100), chunk(2, 100)]);
        assert!(!split_small.fits(200, &p));
        assert!(StagedChunks(vec![chunk(1, 200)]).fits(200, &p));
        assert!(!StagedChunks::default().fits(0, &p));
    }
}
