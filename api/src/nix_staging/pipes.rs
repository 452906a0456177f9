//! The streams between the driver, the decoder thread and storage: a
//! blocking reader over a channel, the metered NAR stream and the
//! verdict-gated file stream.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use futures::stream;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use larder_core::nix::hash::NarHash;
use larder_core::nix::nar::NarValidator;
use larder_shared::storage::checksum::{Checksum, Checksummer};

/// The decoder thread's input: pieces from the driver, read synchronously.
pub(super) struct ChannelReader {
    pub(super) rx: mpsc::Receiver<Bytes>,
    pub(super) current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(piece) => self.current = piece,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// Size, SHA-256 and grammar of the decompressed NAR, checked as it
/// streams, and the staged copy's checksum.
pub(super) struct NarMeter {
    hasher: Sha256,
    checksum: Checksummer,
    nar: NarValidator,
    size: u64,
}

/// The staged NAR stream: decoder output checked by a [`NarMeter`], ending
/// with an error unless the whole NAR is valid. The result lands in
/// `measured`; a NAR syntax error in `malformed`.
pub(super) fn metered(
    rx: mpsc::Receiver<io::Result<Bytes>>,
    measured: Arc<Mutex<Option<(NarHash, u64, Checksum)>>>,
    malformed: Arc<Mutex<Option<String>>>,
) -> larder_shared::storage::ByteStream {
    let meter = NarMeter {
        hasher: Sha256::new(),
        checksum: Checksummer::default(),
        nar: NarValidator::new(),
        size: 0,
    };
    Box::pin(stream::unfold(Some((rx, meter)), move |state| {
        let (measured, malformed) = (measured.clone(), malformed.clone());
        async move {
            let (mut rx, mut meter) = state?;
            let bad = |m: String| {
                if let Ok(mut slot) = malformed.lock() {
                    slot.get_or_insert(m.clone());
                }
                Err(io::Error::other(m))
            };
            match rx.recv().await {
                Some(Ok(piece)) => {
                    meter.hasher.update(&piece);
                    meter.checksum.update(&piece);
                    meter.size += piece.len() as u64;
                    match meter.nar.update(&piece) {
                        Ok(()) => Some((Ok(piece), Some((rx, meter)))),
                        Err(e) => Some((bad(e.to_string()), None)),
                    }
                }
                Some(Err(e)) => Some((Err(e), None)),
                None => match meter.nar.finish() {
                    Ok(_) => {
                        let hash = NarHash::from_bytes(meter.hasher.finalize().into());
                        if let Ok(mut slot) = measured.lock() {
                            *slot = Some((hash, meter.size, meter.checksum.finish()));
                        }
                        None
                    }
                    Err(e) => Some((bad(e.to_string()), None)),
                },
            }
        }
    }))
}

/// The file's stream into storage: what the driver sends, then the verdict.
pub(super) fn verdict_gated(
    rx: mpsc::Receiver<io::Result<Bytes>>,
    verdict: oneshot::Receiver<bool>,
) -> larder_shared::storage::ByteStream {
    Box::pin(stream::unfold(
        (rx, Some(verdict)),
        |(mut rx, verdict)| async move {
            if let Some(item) = rx.recv().await {
                return Some((item, (rx, verdict)));
            }
            match verdict?.await {
                Ok(true) => None,
                _ => Some((Err(io::Error::other("the NAR was not staged")), (rx, None))),
            }
        },
    ))
}
