//! The checksum of a staged copy (XXH3-64 of its bytes).
//!
//! The upload that stages a NAR verifies its NarHash while streaming it,
//! and computes this checksum over the same bytes; the ingest that reads
//! the copy back checks the checksum instead of hashing the NAR with
//! SHA-256 a second time. What the ingest must catch is a copy damaged or
//! cut short in staging (a disk, a bucket, an operator), not a forgery: the
//! staging area is written only by the API, and whoever can write it can
//! also write the database. A 64-bit checksum catches that damage as surely
//! and costs about a twentieth of a SHA-256 pass (docs/architecture.md
//! "Ingest"). Copies staged before the checksum existed keep the SHA-256
//! check.

use std::fmt;
use std::hash::Hasher as _;

use twox_hash::XxHash3_64;

/// A staged copy's checksum, as recorded with its staging intent and its
/// `nars` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Checksum(u64);

impl Checksum {
    /// The checksum of `bytes` in one piece.
    pub fn of(bytes: &[u8]) -> Self {
        Self(XxHash3_64::oneshot(bytes))
    }

    /// As stored in a `BIGINT` column (the same 64 bits).
    pub fn to_db(self) -> i64 {
        self.0 as i64
    }

    /// From a `BIGINT` column.
    pub fn from_db(v: i64) -> Self {
        Self(v as u64)
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "xxh3:{:016x}", self.0)
    }
}

/// Computes a [`Checksum`] over bytes arriving in pieces.
#[derive(Default, Clone)]
pub struct Checksummer(XxHash3_64);

impl Checksummer {
    /// Adds the next piece.
    pub fn update(&mut self, piece: &[u8]) {
        self.0.write(piece);
    }

    /// The checksum of every piece so far.
    pub fn finish(&self) -> Checksum {
        Checksum(self.0.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_and_one_piece_agree_and_a_flip_shows() {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut c = Checksummer::default();
        for piece in bytes.chunks(4099) {
            c.update(piece);
        }
        assert_eq!(c.finish(), Checksum::of(&bytes));
        let mut flipped = bytes.clone();
        flipped[150_000] ^= 1;
        assert_ne!(Checksum::of(&flipped), Checksum::of(&bytes));
        assert_ne!(
            Checksum::of(&bytes[..bytes.len() - 8]),
            Checksum::of(&bytes)
        );
    }

    #[test]
    fn the_database_column_keeps_all_64_bits() {
        let c = Checksum(u64::MAX - 5);
        assert_eq!(Checksum::from_db(c.to_db()), c);
    }
}
