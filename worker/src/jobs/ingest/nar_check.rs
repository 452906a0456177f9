//! The whole-NAR checks of an ingest (the staged copy's integrity, grammar,
//! `.ls` listing), made while the staged copy is read, before it is chunked.
//!
//! Integrity is the copy's checksum, recorded by the upload that verified
//! its NarHash over the same bytes ([`Checksum`]); a copy staged before
//! checksums were recorded is hashed with SHA-256 against its NarHash, as
//! every copy once was (a pass over the NAR costing about a fifth of what
//! compressing it does).
//!
//! The checks tap the staged byte stream and run on a background thread of
//! their own (`larder_shared::background`): the chunker's thread (cut
//! points) is the ingest's one serial stage, and every core it does not
//! need names and compresses.
//! A grammar error ends the tapped stream soon after the checker finds it.

use std::io;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use sha2::{Digest, Sha256};

use larder_core::nix::hash::NarHash;
use larder_core::nix::nar::{NarSummary, NarValidator};
use larder_shared::background;
use larder_shared::storage::checksum::{Checksum, Checksummer};

/// Pieces queued for the checker (128 KiB each from local storage).
const DEPTH: usize = 32;

/// The first grammar error, set once by the checker and read by the tap
/// (so the stream stops) and by the ingest (for its message).
type Failure = Arc<OnceLock<String>>;

/// What the staged copy is checked against, and what the checker
/// computes of it (the same kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Integrity {
    /// The checksum its upload recorded.
    Checksum(Checksum),
    /// Its NarHash (no checksum recorded).
    NarHash(NarHash),
}

impl std::fmt::Display for Integrity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Checksum(c) => c.fmt(f),
            Self::NarHash(h) => h.fmt(f),
        }
    }
}

/// The checks of one ingest: the checker thread, and its first failure.
pub(super) struct NarCheck {
    checker: background::Handle<Result<(Integrity, NarSummary), String>>,
    failed: Failure,
    integrity: Integrity,
}

impl NarCheck {
    /// Taps `input`: every piece read also goes to the checker, which
    /// stops after `nar_size` bytes (the size the database knows; a longer
    /// input fails the chunker). Once the checker finds the grammar broken,
    /// the stream ends with an error.
    pub(super) fn tap<S>(
        input: S,
        nar_size: u64,
        integrity: Integrity,
    ) -> (Self, impl Stream<Item = io::Result<Bytes>> + Send + Unpin)
    where
        S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
    {
        let (tx, rx) = sync_channel(DEPTH);
        let failed = Failure::default();
        let checker = {
            let failed = failed.clone();
            background::spawn("larder-nar-check", move || {
                check(&rx, nar_size, integrity, &failed)
            })
        };
        let stop = failed.clone();
        let tapped =
            input.and_then(move |piece| futures::future::ready(forward(&tx, &stop, piece)));
        (
            Self {
                checker,
                failed,
                integrity,
            },
            tapped,
        )
    }

    /// The grammar error the checker found, if any: the reason to give
    /// instead of the chunker's read error.
    pub(super) fn failure(&self) -> Option<String> {
        self.failed.get().cloned()
    }

    /// After the whole NAR went through: checks it is the copy its upload
    /// verified and ends well-formed; returns its listing as JSON.
    pub(super) async fn finish(self) -> anyhow::Result<Option<Vec<u8>>> {
        let (actual, summary) = match self.checker.await.context("NAR checker")? {
            Ok(checked) => checked,
            Err(reason) => bail!("staged NAR does not parse: staging copy corrupt: {reason}"),
        };
        if actual != self.integrity {
            let (what, against) = match actual {
                Integrity::Checksum(_) => ("checksums", "recorded"),
                Integrity::NarHash(_) => ("hashes", "expected"),
            };
            bail!(
                "staged NAR {what} to {actual}, {against} {}: staging copy corrupt",
                self.integrity
            );
        }
        Ok(summary.listing.map(|l| l.to_json()))
    }
}

/// Hands `piece` to the checker, unless it has failed already.
fn forward(tx: &SyncSender<Bytes>, failed: &Failure, piece: Bytes) -> io::Result<Bytes> {
    if let Some(reason) = failed.get() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, reason.clone()));
    }
    // A checker that stopped (enough bytes, or an error) no longer reads:
    // what it would say is in its result.
    let _ = tx.send(piece.clone());
    Ok(piece)
}

/// Computes what [`Integrity`] asks for, one of the two.
enum Hasher {
    Checksum(Box<Checksummer>),
    NarHash(Sha256),
}

/// The checker thread: checksums (or hashes) and parses up to `nar_size`
/// bytes.
fn check(
    rx: &Receiver<Bytes>,
    nar_size: u64,
    integrity: Integrity,
    failed: &Failure,
) -> Result<(Integrity, NarSummary), String> {
    let mut hasher = match integrity {
        Integrity::Checksum(_) => Hasher::Checksum(Box::default()),
        Integrity::NarHash(_) => Hasher::NarHash(Sha256::new()),
    };
    let mut validator = NarValidator::with_listing();
    let mut seen = 0u64;
    while seen < nar_size {
        let Ok(piece) = rx.recv() else { break };
        let piece = &piece[..piece.len().min((nar_size - seen) as usize)];
        seen += piece.len() as u64;
        match &mut hasher {
            Hasher::Checksum(c) => c.update(piece),
            Hasher::NarHash(h) => h.update(piece),
        }
        if let Err(e) = validator.update(piece) {
            let reason = e.to_string();
            let _ = failed.set(reason.clone());
            return Err(reason);
        }
    }
    let summary = validator.finish().map_err(|e| e.to_string())?;
    let digest = match hasher {
        Hasher::Checksum(c) => Integrity::Checksum(c.finish()),
        Hasher::NarHash(h) => Integrity::NarHash(NarHash::from_bytes(h.finalize().into())),
    };
    Ok((digest, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NAR string: length, bytes, zero padding to 8.
    fn token(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
        out.resize(out.len().next_multiple_of(8), 0);
    }

    /// The NAR of one regular file holding `contents`.
    fn nar_of(contents: &[u8]) -> Vec<u8> {
        let mut nar = Vec::new();
        for t in [
            &b"nix-archive-1"[..],
            b"(",
            b"type",
            b"regular",
            b"contents",
        ] {
            token(&mut nar, t);
        }
        token(&mut nar, contents);
        token(&mut nar, b")");
        nar
    }

    /// Reads `nar` through the tap in pieces, as the chunker would (on a
    /// blocking thread), announcing `size` bytes, to be checked against
    /// `integrity`.
    async fn read_all(
        nar: &[u8],
        piece: usize,
        size: u64,
        integrity: Integrity,
    ) -> (NarCheck, io::Result<()>) {
        let pieces: Vec<io::Result<Bytes>> = nar
            .chunks(piece)
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect();
        let (check, tapped) = NarCheck::tap(futures::stream::iter(pieces), size, integrity);
        let read = tokio::task::spawn_blocking(move || {
            futures::executor::block_on(tapped.try_for_each(|_| async { Ok(()) }))
        })
        .await
        .unwrap();
        (check, read)
    }

    fn hash(nar: &[u8]) -> Integrity {
        Integrity::NarHash(NarHash::from_bytes(Sha256::digest(nar).into()))
    }

    fn checksum(nar: &[u8]) -> Integrity {
        Integrity::Checksum(Checksum::of(nar))
    }

    #[tokio::test]
    async fn a_whole_nar_in_pieces_passes_with_its_listing() {
        let nar = nar_of(&[7u8; 1000]);
        for integrity in [hash(&nar), checksum(&nar)] {
            let (check, read) = read_all(&nar, 5, nar.len() as u64, integrity).await;
            read.unwrap();
            assert_eq!(check.failure(), None);
            let listing = check.finish().await.unwrap().expect("a listing");
            assert!(String::from_utf8(listing).unwrap().contains("\"regular\""));
        }
    }

    #[tokio::test]
    async fn another_hash_or_checksum_is_refused() {
        let nar = nar_of(b"hello");
        for integrity in [hash(b"other"), checksum(b"other")] {
            let (check, read) = read_all(&nar, 64, nar.len() as u64, integrity).await;
            read.unwrap();
            let err = check.finish().await.unwrap_err().to_string();
            assert!(err.contains("staging copy corrupt"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_broken_grammar_is_refused_and_says_why() {
        let mut nar = nar_of(&[1u8; 4096]);
        nar[8] = b'X'; // the magic
        let (check, _read) = read_all(&nar, 16, nar.len() as u64, checksum(&nar)).await;
        let err = check.finish().await.unwrap_err().to_string();
        assert!(err.contains("does not parse"), "{err}");
    }

    #[tokio::test]
    async fn a_truncated_nar_does_not_finish() {
        let nar = nar_of(b"hello");
        let cut = &nar[..nar.len() - 8];
        for integrity in [hash(cut), checksum(cut)] {
            let (check, read) = read_all(cut, 16, nar.len() as u64, integrity).await;
            read.unwrap();
            assert!(check.finish().await.is_err());
        }
    }
}
