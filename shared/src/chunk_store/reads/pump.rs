//! The pump: sends each run's bytes in order, step by step.
//!
//! `.nar.zst` forwards the storage read's pieces as they come, cut only
//! where a frame is kept for a later repeat or a repeat is sent; `.nar`
//! cuts the read into whole frames for the decoder. Kept frames live until
//! their chunk's last occurrence, as the planner decided. Every run must
//! give exactly its length.

use std::collections::HashMap;
use std::io;

use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use tokio::sync::mpsc;

use super::{Opened, Piece, Representation, Run, Step};
use crate::db::ChunkId;
use crate::storage::{ByteStream, ObjectKey};

type Out = mpsc::Sender<io::Result<Piece>>;

/// Sends the runs the planner hands over until they or the body end.
pub(super) async fn pump(
    mut runs: mpsc::Receiver<io::Result<(Run, Opened)>>,
    repr: Representation,
    out: Out,
) {
    let mut kept = HashMap::new();
    while let Some(next) = runs.recv().await {
        let result = match next {
            Ok((run, opened)) => send_run(run, opened, repr, &mut kept, &out).await,
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

/// Streams one run; `Ok(false)` once the body is gone.
async fn send_run(
    run: Run,
    opened: Opened,
    repr: Representation,
    kept: &mut HashMap<ChunkId, Bytes>,
    out: &Out,
) -> io::Result<bool> {
    let body = opened
        .await
        .map_err(io::Error::other)?
        .map_err(io::Error::other)?;
    let mut read = RunRead {
        body,
        buf: Bytes::new(),
        got: 0,
        want: run.range.end - run.range.start,
        key: run.key,
    };
    // `.nar.zst`: bytes of the steps passed over, forwarded in one go.
    let mut pending = 0u64;
    for step in run.steps {
        if let Step::Read { part, keep: false } = &step
            && repr == Representation::Zstd
        {
            pending += part.1.end - part.1.start;
            continue;
        }
        if pending > 0 && !read.forward(std::mem::take(&mut pending), out).await? {
            return Ok(false);
        }
        let (part, frame) = match step {
            Step::Read { part, keep } => {
                let len = match repr {
                    Representation::Zstd => part.1.end - part.1.start,
                    Representation::Plain => part.0.file_size.max(0) as u64,
                };
                let frame = read.take(len).await?;
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
    if pending > 0 && !read.forward(pending, out).await? {
        return Ok(false);
    }
    read.finish().await?;
    Ok(true)
}

/// One run's storage read, taken in exact amounts.
struct RunRead {
    body: ByteStream,
    /// Read but not yet taken.
    buf: Bytes,
    got: u64,
    want: u64,
    key: ObjectKey,
}

impl RunRead {
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
