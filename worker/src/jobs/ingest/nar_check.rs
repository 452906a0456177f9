//! The whole-NAR checks of an ingest (NarHash, grammar, `.ls` listing),
//! made while the staged copy is read, before it is chunked.
//!
//! The checks tap the staged byte stream, which the chunker polls from its
//! blocking thread (`SyncIoBridge`): they run there, beside cut points and
//! chunk hashes, instead of on the task that places frames. The ingest task
//! then only moves frames, which keeps every core busy compressing.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use sha2::{Digest, Sha256};

use larder_core::nix::hash::NarHash;
use larder_core::nix::nar::{NarError, NarValidator};

/// Running checks over one staged NAR.
struct Checks {
    hasher: Sha256,
    /// Makes the `.ls` listing too (Nix's write-nar-listing format), so
    /// paths pushed without one get it here.
    validator: NarValidator,
    /// The first grammar error, kept for the ingest's message.
    failed: Option<NarError>,
}

/// The checks of one ingest, shared between the tapped stream and the
/// ingest that reads the verdict once the stream has ended.
#[derive(Clone)]
pub(super) struct NarCheck(Arc<Mutex<Checks>>);

impl NarCheck {
    /// Taps `input`: every piece read is hashed and parsed on the way to
    /// the chunker. A piece that breaks the NAR grammar ends the stream
    /// with an error.
    pub(super) fn tap<S>(input: S) -> (Self, impl Stream<Item = io::Result<Bytes>> + Send + Unpin)
    where
        S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
    {
        let check = Self(Arc::new(Mutex::new(Checks {
            hasher: Sha256::new(),
            validator: NarValidator::with_listing(),
            failed: None,
        })));
        let tap = check.clone();
        let tapped = input.and_then(move |piece| {
            let verdict = tap.update(&piece);
            futures::future::ready(verdict.map(|()| piece))
        });
        (check, tapped)
    }

    fn update(&self, piece: &[u8]) -> io::Result<()> {
        let mut checks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        checks.hasher.update(piece);
        if let Err(e) = checks.validator.update(piece) {
            let message = e.to_string();
            checks.failed.get_or_insert(e);
            return Err(io::Error::new(io::ErrorKind::InvalidData, message));
        }
        Ok(())
    }

    /// The grammar error that ended the stream, if one did: the reason to
    /// give instead of the chunker's read error.
    pub(super) fn failure(&self) -> Option<String> {
        let checks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        checks.failed.as_ref().map(ToString::to_string)
    }

    /// After the whole NAR went through: checks it hashes to `expected` and
    /// ends well-formed; returns its listing as JSON.
    pub(super) fn finish(&self, expected: &NarHash) -> anyhow::Result<Option<Vec<u8>>> {
        let (hasher, validator) = {
            let mut checks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            (
                std::mem::take(&mut checks.hasher),
                std::mem::replace(&mut checks.validator, NarValidator::new()),
            )
        };
        let actual = NarHash::from_bytes(hasher.finalize().into());
        if &actual != expected {
            bail!("staged NAR hashes to {actual}, expected {expected}: staging copy corrupt");
        }
        let summary = validator
            .finish()
            .context("staged NAR does not parse: staging copy corrupt")?;
        Ok(summary.listing.map(|l| l.to_json()))
    }
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

    async fn read_all(nar: &[u8], piece: usize) -> (NarCheck, io::Result<()>) {
        let pieces: Vec<io::Result<Bytes>> = nar
            .chunks(piece)
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect();
        let (check, tapped) = NarCheck::tap(futures::stream::iter(pieces));
        let read = tapped.try_for_each(|_| async { Ok(()) }).await;
        (check, read)
    }

    fn hash(nar: &[u8]) -> NarHash {
        NarHash::from_bytes(Sha256::digest(nar).into())
    }

    #[tokio::test]
    async fn a_whole_nar_in_pieces_passes_with_its_listing() {
        let nar = nar_of(&[7u8; 1000]);
        let (check, read) = read_all(&nar, 5).await;
        read.unwrap();
        assert_eq!(check.failure(), None);
        let listing = check.finish(&hash(&nar)).unwrap().expect("a listing");
        assert!(String::from_utf8(listing).unwrap().contains("\"regular\""));
    }

    #[tokio::test]
    async fn another_hash_is_refused() {
        let nar = nar_of(b"hello");
        let (check, read) = read_all(&nar, 64).await;
        read.unwrap();
        let err = check.finish(&hash(b"other")).unwrap_err().to_string();
        assert!(err.contains("staging copy corrupt"), "{err}");
    }

    #[tokio::test]
    async fn a_broken_grammar_ends_the_stream_and_says_why() {
        let mut nar = nar_of(b"hello");
        nar[8] = b'X'; // the magic
        let (check, read) = read_all(&nar, 16).await;
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(check.failure().is_some());
        assert!(check.finish(&hash(&nar)).is_err());
    }

    #[tokio::test]
    async fn a_truncated_nar_does_not_finish() {
        let nar = nar_of(b"hello");
        let (check, read) = read_all(&nar[..nar.len() - 8], 16).await;
        read.unwrap();
        assert!(check.finish(&hash(&nar[..nar.len() - 8])).is_err());
    }
}
