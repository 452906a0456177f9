//! [`ChunkHash`]: a chunk's name, the SHA-256 of its uncompressed bytes.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// SHA-256 of a chunk's uncompressed bytes: its global identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkHash([u8; 32]);

/// Why bytes or text are not a [`ChunkHash`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidChunkHash {
    /// Not 32 bytes (or 64 hex digits).
    #[error("chunk hash must be 32 bytes, got {0}")]
    Length(usize),
    /// Hex text with a character outside `0-9a-f` (uppercase is rejected so
    /// each hash has one spelling, as in storage keys).
    #[error("chunk hash is not lowercase hex")]
    NotLowerHex,
}

impl ChunkHash {
    /// Hashes `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// The raw digest, as stored in the database.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Reads a raw digest back from the database.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, InvalidChunkHash> {
        bytes
            .try_into()
            .map(Self)
            .map_err(|_| InvalidChunkHash::Length(bytes.len()))
    }
}

impl fmt::Display for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkHash({self})")
    }
}

impl FromStr for ChunkHash {
    type Err = InvalidChunkHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 {
            return Err(InvalidChunkHash::Length(s.len() / 2));
        }
        if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(InvalidChunkHash::NotLowerHex);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| InvalidChunkHash::NotLowerHex)?;
        Ok(Self(out))
    }
}
