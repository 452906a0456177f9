//! The pack format: many chunks' zstd frames back to back in one storage
//! object, then an index of what it holds, then a fixed trailer.
//!
//! ```text
//! frame 0 | frame 1 | … | frame n-1 | index (n × 48 bytes) | trailer (24 bytes)
//! index entry: chunk SHA-256 (32) | offset u64 LE | stored length u32 LE | chunk size u32 LE
//! trailer:     entries u32 LE | version u32 LE | index offset u64 LE | b"LARDPACK"
//! ```
//!
//! Frames are independent zstd frames, so the bytes of consecutive chunks
//! read in one range are already a valid `.nar.zst` fragment. The index makes
//! a pack self-describing: `verify` can rebuild every packed chunk's location
//! from the packs alone. Nothing here does I/O.

use crate::chunk::ChunkHash;

/// Bytes of one index entry.
pub const ENTRY_LEN: usize = 48;
/// Bytes of the trailer.
pub const TRAILER_LEN: usize = 24;
/// The trailer's last bytes.
pub const MAGIC: &[u8; 8] = b"LARDPACK";
/// Format version written and understood.
pub const VERSION: u32 = 1;

/// Where one chunk's frame lies in its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// SHA-256 of the uncompressed chunk.
    pub hash: ChunkHash,
    /// First byte of the frame in the pack.
    pub offset: u64,
    /// Stored (compressed) frame length.
    pub length: u32,
    /// Uncompressed chunk size.
    pub chunk_size: u32,
}

/// A pack that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackError {
    /// Shorter than a trailer, or no magic at its end.
    #[error("not a pack (no trailer)")]
    NoTrailer,
    /// A version this build does not read.
    #[error("pack format version {0} is not supported")]
    Version(u32),
    /// Index offset, count and object size disagree.
    #[error("pack index does not fit the object ({0})")]
    Index(&'static str),
}

/// The index and trailer written after the frames of `entries`, which end at
/// `frames_end` (the index's offset).
pub fn encode_index(entries: &[PackEntry], frames_end: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_LEN + TRAILER_LEN);
    for e in entries {
        out.extend_from_slice(e.hash.as_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.length.to_le_bytes());
        out.extend_from_slice(&e.chunk_size.to_le_bytes());
    }
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&frames_end.to_le_bytes());
    out.extend_from_slice(MAGIC);
    out
}

/// What a pack's trailer says: where its index starts and how many entries
/// it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Offset of the index (= end of the frames).
    pub index_offset: u64,
    /// Index entries.
    pub entries: u32,
}

impl Trailer {
    /// Bytes of the index this trailer announces.
    pub fn index_len(&self) -> u64 {
        u64::from(self.entries) * ENTRY_LEN as u64
    }
}

/// Parses the last [`TRAILER_LEN`] bytes of a pack of `size` bytes.
pub fn decode_trailer(tail: &[u8], size: u64) -> Result<Trailer, PackError> {
    if tail.len() != TRAILER_LEN || &tail[16..24] != MAGIC {
        return Err(PackError::NoTrailer);
    }
    let entries = u32::from_le_bytes(word(&tail[0..4]));
    let version = u32::from_le_bytes(word(&tail[4..8]));
    if version != VERSION {
        return Err(PackError::Version(version));
    }
    let index_offset = u64::from_le_bytes(dword(&tail[8..16]));
    let trailer = Trailer {
        index_offset,
        entries,
    };
    let end = index_offset
        .checked_add(trailer.index_len())
        .and_then(|e| e.checked_add(TRAILER_LEN as u64));
    if end != Some(size) {
        return Err(PackError::Index(
            "offset and count do not add up to its size",
        ));
    }
    Ok(trailer)
}

/// Parses the index bytes a [`Trailer`] announced; every frame must lie
/// before the index.
pub fn decode_index(index: &[u8], trailer: &Trailer) -> Result<Vec<PackEntry>, PackError> {
    if index.len() as u64 != trailer.index_len() {
        return Err(PackError::Index("index length"));
    }
    index
        .chunks_exact(ENTRY_LEN)
        .map(|e| {
            let hash = ChunkHash::from_slice(&e[0..32]).map_err(|_| PackError::Index("hash"))?;
            let entry = PackEntry {
                hash,
                offset: u64::from_le_bytes(dword(&e[32..40])),
                length: u32::from_le_bytes(word(&e[40..44])),
                chunk_size: u32::from_le_bytes(word(&e[44..48])),
            };
            let end = entry.offset.checked_add(u64::from(entry.length));
            match end {
                Some(end) if end <= trailer.index_offset => Ok(entry),
                _ => Err(PackError::Index("a frame runs past the index")),
            }
        })
        .collect()
}

fn word(b: &[u8]) -> [u8; 4] {
    let mut w = [0; 4];
    w.copy_from_slice(b);
    w
}

fn dword(b: &[u8]) -> [u8; 8] {
    let mut w = [0; 8];
    w.copy_from_slice(b);
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<PackEntry> {
        vec![
            PackEntry {
                hash: ChunkHash::of(b"a"),
                offset: 0,
                length: 10,
                chunk_size: 100,
            },
            PackEntry {
                hash: ChunkHash::of(b"b"),
                offset: 10,
                length: 7,
                chunk_size: 70,
            },
        ]
    }

    #[test]
    fn index_round_trips() {
        let mut pack = vec![0u8; 17];
        pack.extend(encode_index(&entries(), 17));
        let size = pack.len() as u64;
        let trailer = decode_trailer(&pack[pack.len() - TRAILER_LEN..], size).unwrap();
        assert_eq!(trailer.entries, 2);
        assert_eq!(trailer.index_offset, 17);
        let index = &pack[17..17 + trailer.index_len() as usize];
        assert_eq!(decode_index(index, &trailer).unwrap(), entries());
    }

    #[test]
    fn damage_is_refused() {
        let mut pack = vec![0u8; 17];
        pack.extend(encode_index(&entries(), 17));
        let size = pack.len() as u64;
        let tail = pack[pack.len() - TRAILER_LEN..].to_vec();
        assert_eq!(
            decode_trailer(&tail, size + 1),
            Err(PackError::Index(
                "offset and count do not add up to its size"
            ))
        );
        let mut bad_magic = tail.clone();
        bad_magic[23] ^= 1;
        assert_eq!(decode_trailer(&bad_magic, size), Err(PackError::NoTrailer));
        let mut bad_version = tail.clone();
        bad_version[4] = 9;
        assert_eq!(
            decode_trailer(&bad_version, size),
            Err(PackError::Version(9))
        );
        // A frame said to end inside the index.
        let trailer = Trailer {
            index_offset: 12,
            entries: 2,
        };
        let index = encode_index(&entries(), 12);
        assert!(decode_index(&index[..2 * ENTRY_LEN], &trailer).is_err());
    }
}
