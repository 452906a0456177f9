//! The pump: sends each window's bytes in NAR order, step by step, each
//! from its read.
//!
//! `.nar.zst` forwards a read's pieces as they come, cut only where a step
//! changes read, a gap is dropped, a frame is kept for a later repeat or a
//! repeat is sent; `.nar` cuts the reads into whole frames for the decoder.
//! Kept frames live until their chunk's last occurrence, as the planner
//! decided. Every read must give exactly its length.

use std::collections::HashMap;
use std::io;

use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use tokio::sync::mpsc;

use super::{Opened, Piece, Representation, Started, Step, Window};
use crate::db::ChunkId;
use crate::storage::{ByteStream, ObjectKey};

type Out = mpsc::Sender<io::Result<Piece>>;

/// Sends the windows the planner hands over until they or the body end.
pub(super) async fn pump(
    mut windows: mpsc::Receiver<io::Result<Started>>,
    repr: Representation,
    out: Out,
) {
    let mut kept = HashMap::new();
    while let Some(next) = windows.recv().await {
        let result = match next {
            Ok((window, opened)) => send_window(window, opened, repr, &mut kept, &out).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Streams one window; `Ok(false)` once the body is gone.
async fn send_window(
    window: Window,
    opened: Vec<Opened>,
    repr: Representation,
    kept: &mut HashMap<ChunkId, Bytes>,
    out: &Out,
) -> io::Result<bool> {
    let mut reads: Vec<Reading> = window
        .reads
        .into_iter()
        .zip(opened)
        .map(|(r, opened)| Reading::Opening(r.key, r.range.end - r.range.start, opened))
        .collect();
    // `.nar.zst`: bytes of the steps passed over, forwarded in one go from
    // one read.
    let mut pending: Option<(usize, u64)> = None;
    for step in window.steps {
        if let Step::Read {
            read,
            skip: 0,
            part,
            keep: false,
        } = &step
            && repr == Representation::Zstd
            && pending.is_none_or(|(r, _)| r == *read)
        {
            let len = part.1.end - part.1.start;
            pending = Some((*read, pending.map_or(0, |(_, n)| n) + len));
            continue;
        }
        if let Some((r, n)) = pending.take()
            && !reads[r].open().await?.forward(n, out).await?
        {
            return Ok(false);
        }
        let (part, frame) = match step {
            Step::Read {
                read,
                skip,
                part,
                keep,
            } => {
                let from = reads[read].open().await?;
                from.skip(skip).await?;
                if repr == Representation::Zstd && !keep {
                    let len = part.1.end - part.1.start;
                    pending = Some((read, len));
                    continue;
                }
                let len = match repr {
                    Representation::Zstd => part.1.end - part.1.start,
                    Representation::Plain => part.0.file_size.max(0) as u64,
                };
                let frame = from.take(len).await?;
                if keep {
                    kept.insert(part.0.id, frame.clone());
                }
                (part, frame)
            }
            Step::Reuse { part, last } => {
                let frame = if last {
                    kept.remove(&part.0.id)
                } else {
                    kept.get(&part.0.id).cloned()
                };
                let frame =
                    frame.ok_or_else(|| io::Error::other("a repeated frame was not kept"))?;
                (part, frame)
            }
        };
        let within = part.1;
        let piece = match repr {
            Representation::Zstd => Piece {
                data: frame.slice(within.start as usize..within.end as usize),
                decode: None,
            },
            Representation::Plain => Piece {
                data: frame,
                decode: Some((part.0.chunk_size, within)),
            },
        };
        if out.send(Ok(piece)).await.is_err() {
            return Ok(false);
        }
    }
    if let Some((r, n)) = pending
        && !reads[r].open().await?.forward(n, out).await?
    {
        return Ok(false);
    }
    for read in reads {
        if let Reading::Open(read) = read {
            read.finish().await?;
        }
    }
    Ok(true)
}

/// A read of the window: its request started, or its body open.
enum Reading {
    Opening(ObjectKey, u64, Opened),
    Open(OpenRead),
    /// Only while switching between the two.
    Gone,
}

impl Reading {
    /// The read's body, waiting for the request the first time.
    async fn open(&mut self) -> io::Result<&mut OpenRead> {
        if matches!(self, Reading::Opening(..))
            && let Reading::Opening(key, want, opened) = std::mem::replace(self, Reading::Gone)
        {
            let body = opened
                .await
                .map_err(io::Error::other)?
                .map_err(io::Error::other)?;
            *self = Reading::Open(OpenRead {
                body,
                buf: Bytes::new(),
                got: 0,
                want,
                key,
            });
        }
        match self {
            Reading::Open(read) => Ok(read),
            _ => Err(io::Error::other("a read was lost while opening")),
        }
    }
}

/// One storage read, taken in exact amounts.
struct OpenRead {
    body: ByteStream,
    /// Read but not yet taken.
    buf: Bytes,
    got: u64,
    want: u64,
    key: ObjectKey,
}

impl OpenRead {
    /// Refills the empty buffer with the read's next piece.
    async fn fill(&mut self) -> io::Result<()> {
        let Some(piece) = self.body.try_next().await? else {
            return Err(self.wrong_length());
        };
        self.got += piece.len() as u64;
        if self.got > self.want {
            return Err(self.wrong_length());
        }
        self.buf = piece;
        Ok(())
    }

    /// The next `n` bytes in one buffer: a slice of the read's piece when
    /// they lie in one, a copy when they span several.
    async fn take(&mut self, n: u64) -> io::Result<Bytes> {
        let n = n as usize;
        while self.buf.is_empty() && n > 0 {
            self.fill().await?;
        }
        if self.buf.len() >= n {
            return Ok(self.buf.split_to(n));
        }
        let mut frame = BytesMut::with_capacity(n);
        while frame.len() < n {
            if self.buf.is_empty() {
                self.fill().await?;
            }
            let k = (n - frame.len()).min(self.buf.len());
            frame.extend_from_slice(&self.buf.split_to(k));
        }
        Ok(frame.freeze())
    }

    /// Drops the next `n` bytes (a gap between needed frames).
    async fn skip(&mut self, mut n: u64) -> io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() {
                self.fill().await?;
                continue;
            }
            let k = n.min(self.buf.len() as u64);
            let _ = self.buf.split_to(k as usize);
            n -= k;
        }
        Ok(())
    }

    /// Sends the next `n` bytes as they come; `Ok(false)` once the body is
    /// gone.
    async fn forward(&mut self, mut n: u64, out: &Out) -> io::Result<bool> {
        while n > 0 {
            if self.buf.is_empty() {
                self.fill().await?;
                continue;
            }
            let k = n.min(self.buf.len() as u64);
            let piece = Piece {
                data: self.buf.split_to(k as usize),
                decode: None,
            };
            n -= k;
            if out.send(Ok(piece)).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Checks that every byte was taken and the read gave no more.
    async fn finish(mut self) -> io::Result<()> {
        while self.buf.is_empty() {
            match self.body.try_next().await? {
                Some(piece) => {
                    self.got += piece.len() as u64;
                    self.buf = piece;
                }
                None => break,
            }
        }
        if !self.buf.is_empty() || self.got != self.want {
            return Err(self.wrong_length());
        }
        Ok(())
    }

    fn wrong_length(&self) -> io::Error {
        io::Error::other(format!(
            "read of {} gave {} bytes or more, expected {}",
            self.key, self.got, self.want
        ))
    }
}
