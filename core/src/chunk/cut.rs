//! Cutting a NAR into chunks: the blocking [`Cutter`] (and [`ChunkIter`],
//! which names each chunk as it is cut), shared by the server's ingest and
//! the `larder` client's chunk-level push, so both cut the same bytes at
//! the same points.
//!
//! Cutting is serial (each cut point depends on the last), naming is not:
//! SHA-256 costs about as much as FastCDC, so a caller with cores to spare
//! takes the cuts in batches ([`Cutter::batches`]) and names them on other
//! threads ([`RawChunk::name`]) while the cutter goes on.

use std::io::{self, ErrorKind, Read};

use bytes::Bytes;
use fastcdc::v2020::{self, Normalization};

use super::{ChunkHash, ChunkingParams, InvalidChunkingParams};

/// One chunk of a NAR, uncompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// SHA-256 of `data`.
    pub hash: ChunkHash,
    /// Position of the first byte within the NAR.
    pub offset: u64,
    /// The bytes; at most `max_size` long.
    pub data: Bytes,
}

/// Bytes of cut chunks handed on together to be named
/// ([`Cutter::batches`]): a handoff per megabyte, not per chunk.
pub const NAME_BATCH: usize = 1024 * 1024;

/// A chunk cut but not yet named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChunk {
    /// Position of the first byte within the NAR.
    pub offset: u64,
    /// The bytes; at most `max_size` long.
    pub data: Bytes,
}

impl RawChunk {
    /// Names the chunk: hashes its bytes.
    pub fn name(self) -> Chunk {
        Chunk {
            hash: ChunkHash::of(&self.data),
            offset: self.offset,
            data: self.data,
        }
    }
}

/// Why chunking a NAR failed. Any error means the chunks so far are not the
/// whole NAR.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// Reading the input failed.
    #[error("reading the NAR failed")]
    Read(#[source] io::Error),
    /// The input continued past the size the caller announced.
    #[error("NAR is longer than its announced {expected} bytes")]
    LongerThanExpected {
        /// The announced size.
        expected: u64,
    },
    /// The input ended before the size the caller announced.
    #[error("NAR ended after {actual} of its announced {expected} bytes")]
    ShorterThanExpected {
        /// The announced size.
        expected: u64,
        /// Bytes actually read.
        actual: u64,
    },
    /// The thread running the chunker died (async wrappers).
    #[error("chunking task failed: {0}")]
    Task(String),
}

/// Blocking chunker: splits `total_size` bytes read from `R` into
/// [`RawChunk`]s. Runs on a blocking thread.
///
/// Holds a `2 × max_size` window. Yields an error, then ends, if the input is
/// not exactly `total_size` bytes long.
pub struct Cutter<R> {
    reader: R,
    params: ChunkingParams,
    masks: (u64, u64),
    /// `total_size < nar_size_threshold`: the whole input is one chunk.
    single: bool,
    total_size: u64,
    buf: Box<[u8]>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// NAR offset of `buf[start]`.
    offset: u64,
    eof: bool,
    done: bool,
}

impl<R: Read> Cutter<R> {
    /// Cuts `reader`, which must yield exactly `total_size` bytes (the
    /// NAR size the database knows).
    pub fn new(
        reader: R,
        total_size: u64,
        params: &ChunkingParams,
    ) -> Result<Self, InvalidChunkingParams> {
        params.validate()?;
        Ok(Self {
            reader,
            params: *params,
            masks: v2020::select_masks(params.avg_size as usize, Normalization::Level1),
            single: total_size < u64::from(params.nar_size_threshold),
            total_size,
            buf: vec![0; 2 * params.max_size as usize].into_boxed_slice(),
            start: 0,
            end: 0,
            offset: 0,
            eof: false,
            done: false,
        })
    }

    /// Reads until the window holds `want` bytes or the input ends.
    fn fill(&mut self, want: usize) -> Result<(), ChunkError> {
        while !self.eof && self.end - self.start < want {
            if self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(ChunkError::Read(e)),
            }
            if self.offset + (self.end - self.start) as u64 > self.total_size {
                return Err(ChunkError::LongerThanExpected {
                    expected: self.total_size,
                });
            }
        }
        Ok(())
    }

    fn next_chunk(&mut self) -> Result<Option<RawChunk>, ChunkError> {
        let max = self.params.max_size as usize;
        // A one-chunk NAR is below the threshold, so below max_size: reading
        // one byte more either hits the end or proves the size wrong.
        self.fill(if self.single { max + 1 } else { max })?;
        let window = &self.buf[self.start..self.end];
        if window.is_empty() {
            if self.offset != self.total_size {
                return Err(ChunkError::ShorterThanExpected {
                    expected: self.total_size,
                    actual: self.offset,
                });
            }
            return Ok(None);
        }
        let len = if self.single {
            window.len()
        } else {
            let (mask_s, mask_l) = self.masks;
            v2020::cut(
                window,
                self.params.min_size as usize,
                self.params.avg_size as usize,
                max,
                mask_s,
                mask_l,
                mask_s << 1,
                mask_l << 1,
            )
            .1
        };
        let chunk = RawChunk {
            offset: self.offset,
            data: Bytes::copy_from_slice(&window[..len]),
        };
        self.start += len;
        self.offset += len as u64;
        Ok(Some(chunk))
    }
}

impl<R: Read> Iterator for Cutter<R> {
    type Item = Result<RawChunk, ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_chunk();
        self.done = !matches!(next, Ok(Some(_)));
        next.transpose()
    }
}

impl<R: Read> Cutter<R> {
    /// The cuts in batches of at least `bytes` (the last one may be
    /// smaller): a handoff per batch, not per chunk. An error comes after
    /// the batch cut before it, and ends the batches.
    pub fn batches(self, bytes: usize) -> Batches<R> {
        Batches {
            cutter: self,
            bytes,
            failed: None,
        }
    }
}

/// [`Cutter::batches`].
pub struct Batches<R> {
    cutter: Cutter<R>,
    bytes: usize,
    failed: Option<ChunkError>,
}

impl<R: Read> Iterator for Batches<R> {
    type Item = Result<Vec<RawChunk>, ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        let (mut batch, mut held) = (Vec::new(), 0);
        while held < self.bytes {
            match self.cutter.next() {
                Some(Ok(chunk)) => {
                    held += chunk.data.len();
                    batch.push(chunk);
                }
                Some(Err(e)) if batch.is_empty() => return Some(Err(e)),
                Some(Err(e)) => {
                    self.failed = Some(e);
                    break;
                }
                None => break,
            }
        }
        (!batch.is_empty()).then_some(Ok(batch))
    }
}

/// Blocking chunker naming each chunk as it is cut: [`Cutter`] and
/// [`RawChunk::name`] on one thread.
pub struct ChunkIter<R>(Cutter<R>);

impl<R: Read> ChunkIter<R> {
    /// Chunks `reader`, which must yield exactly `total_size` bytes (the
    /// NAR size the database knows).
    pub fn new(
        reader: R,
        total_size: u64,
        params: &ChunkingParams,
    ) -> Result<Self, InvalidChunkingParams> {
        Cutter::new(reader, total_size, params).map(Self)
    }
}

impl<R: Read> Iterator for ChunkIter<R> {
    type Item = Result<Chunk, ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|cut| cut.map(RawChunk::name))
    }
}
