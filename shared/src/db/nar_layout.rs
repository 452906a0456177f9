//! A ready NAR's layout: per-chunk sizes and the `.nar.zst` identity, kept
//! in its `nars` row (`chunk_sizes`, `frames_digest`, migration 0007) so a
//! download reads no chunk row before its first byte (docs/measurements.md "NAR ranges",
//! docs/measurements.md "NAR ranges").

use sha2::{Digest, Sha256};

use super::chunks::ChunkRecord;
use super::{DbError, corrupt};

/// One chunk's spans: in the `.nar` (uncompressed) and in the `.nar.zst`
/// (its stored frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpan {
    /// Uncompressed size.
    pub chunk_size: u32,
    /// Stored (compressed) size.
    pub file_size: u32,
}

/// What serving a ready NAR needs beyond its chunk ids, kept in its row
/// (`chunk_sizes`, `frames_digest`) so a download reads no chunk row before
/// its first byte (docs/measurements.md "NAR ranges"). Derived from the chunk rows only, so the
/// stored and the recomputed value of a NAR are the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarLayout {
    /// Per chunk, in NAR order.
    pub spans: Vec<ChunkSpan>,
    /// Identity of the concatenated stored frames (the `.nar.zst` ETag):
    /// changes whenever a frame's bytes or location could (chunk hash,
    /// stored size, pack position). Whatever rewrites a listed chunk's frame
    /// in place must clear the layouts naming it.
    pub frames_digest: [u8; 32],
}

/// Builds a [`NarLayout`] from chunk rows in NAR order, without keeping them.
#[derive(Default)]
pub struct NarLayoutBuilder {
    spans: Vec<ChunkSpan>,
    digest: Sha256,
}

impl NarLayoutBuilder {
    /// Appends the next chunk of the NAR.
    pub fn push(&mut self, r: &ChunkRecord) -> Result<(), DbError> {
        let size = |v: i32, column| u32::try_from(v).map_err(|_| corrupt(column, "negative size"));
        self.spans.push(ChunkSpan {
            chunk_size: size(r.chunk_size, "chunks.chunk_size")?,
            file_size: size(r.file_size, "chunks.file_size")?,
        });
        self.digest.update(r.hash.as_bytes());
        self.digest.update(r.file_size.to_be_bytes());
        self.digest.update(r.pack_id.unwrap_or(-1).to_be_bytes());
        self.digest
            .update(r.pack_offset.unwrap_or(-1).to_be_bytes());
        Ok(())
    }

    /// The layout of the chunks pushed.
    pub fn finish(self) -> NarLayout {
        NarLayout {
            spans: self.spans,
            frames_digest: self.digest.finalize().into(),
        }
    }
}

/// Encodes spans as 8 bytes each (chunk size, file size; u32 big-endian).
pub fn encode_spans(spans: &[ChunkSpan]) -> Vec<u8> {
    spans
        .iter()
        .flat_map(|s| {
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&s.chunk_size.to_be_bytes());
            b[4..].copy_from_slice(&s.file_size.to_be_bytes());
            b
        })
        .collect()
}

/// Inverse of [`encode_spans`].
pub fn decode_spans(bytes: &[u8]) -> Result<Vec<ChunkSpan>, DbError> {
    if !bytes.len().is_multiple_of(8) {
        return Err(corrupt("nars.chunk_sizes", "length is not a multiple of 8"));
    }
    let u32_at = |b: &[u8]| {
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        u32::from_be_bytes(a)
    };
    Ok(bytes
        .chunks_exact(8)
        .map(|b| ChunkSpan {
            chunk_size: u32_at(&b[..4]),
            file_size: u32_at(&b[4..]),
        })
        .collect())
}

/// The layout stored in a row, checked against its chunk list; `None` when
/// either column is NULL (ingested before migration 0007).
pub fn decode(
    sizes: Option<&[u8]>,
    digest: Option<&[u8]>,
    chunks: usize,
) -> Result<Option<NarLayout>, DbError> {
    let (Some(sizes), Some(digest)) = (sizes, digest) else {
        return Ok(None);
    };
    let spans = decode_spans(sizes)?;
    if spans.len() != chunks {
        return Err(corrupt(
            "nars.chunk_sizes",
            "length differs from chunk_list",
        ));
    }
    let frames_digest = digest
        .try_into()
        .map_err(|_| corrupt("nars.frames_digest", "not 32 bytes"))?;
    Ok(Some(NarLayout {
        spans,
        frames_digest,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_round_trip() {
        let spans = vec![
            ChunkSpan {
                chunk_size: 65_536,
                file_size: 1_234,
            },
            ChunkSpan {
                chunk_size: u32::MAX,
                file_size: 0,
            },
        ];
        let bytes = encode_spans(&spans);
        assert_eq!(bytes.len(), 16);
        assert_eq!(decode_spans(&bytes).unwrap(), spans);
        assert!(decode_spans(&bytes[..9]).is_err());
        let digest = [7u8; 32];
        let layout = decode(Some(&bytes), Some(&digest), 2).unwrap().unwrap();
        assert_eq!(layout.spans, spans);
        assert!(decode(Some(&bytes), Some(&digest), 3).is_err());
        assert!(decode(Some(&bytes), Some(&digest[..31]), 2).is_err());
        assert!(decode(None, Some(&digest), 2).unwrap().is_none());
    }
}
