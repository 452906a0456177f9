//! Chunks: content-defined chunking of NARs, chunk hashes, zstd frames.
//!
//! Spec: issue 2, "Worker ingest job". A NAR is cut with FastCDC 2020
//! ([`fastcdc::v2020`], normalization level 1, default gear table) into chunks
//! of `min_size..=max_size` bytes averaging `avg_size`; a NAR smaller than
//! `nar_size_threshold` stays one chunk. Each chunk is named by the SHA-256 of
//! its uncompressed bytes ([`ChunkHash`]), deduplicated globally by that name,
//! and stored, if new, as one standalone zstd frame with its content size in
//! the header. Concatenating the frames of a NAR's chunks is therefore a valid
//! `.nar.zst` stream, served without recompression.
//!
//! Everything streams. The chunker ([`ChunkIter`], or [`chunk_reader`] and
//! [`chunk_stream`] in async code) keeps one window of `2 × max_size` bytes,
//! and [`compress_new_chunks`] keeps at most `parallelism` chunks in flight, so
//! memory is independent of NAR size. Cut points depend only on the bytes, not
//! on how reads split them: the chunker always offers FastCDC a full
//! `max_size` window (or the rest of the input).

use std::fmt;
use std::io::{self, ErrorKind, Read};
use std::num::NonZeroUsize;
use std::str::FromStr;

use bytes::Bytes;
use fastcdc::v2020::{self, Normalization};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;

use crate::storage::ObjectKey;

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

    /// Where the chunk's zstd frame is stored: `chunks/ab/cd/abcd….zst`.
    ///
    /// Two levels of 256-way sharding keep directories small up to billions
    /// of chunks on the local backend and spread S3 key prefixes.
    pub fn object_key(&self) -> ObjectKey {
        let hex = self.to_string();
        ObjectKey::from_trusted(format!("chunks/{}/{}/{hex}.zst", &hex[0..2], &hex[2..4]))
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

/// FastCDC sizes, in bytes. Configured as `[chunking]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkingParams {
    /// NARs smaller than this stay one chunk. At most `max_size`.
    pub nar_size_threshold: u32,
    /// Smallest chunk FastCDC cuts (the last chunk of a NAR may be smaller).
    pub min_size: u32,
    /// FastCDC's target average.
    pub avg_size: u32,
    /// Largest chunk; bounds the chunker's memory.
    pub max_size: u32,
}

impl Default for ChunkingParams {
    /// 64 KiB threshold; 16 / 64 / 256 KiB chunks.
    fn default() -> Self {
        Self {
            nar_size_threshold: 64 * 1024,
            min_size: 16 * 1024,
            avg_size: 64 * 1024,
            max_size: 256 * 1024,
        }
    }
}

/// One thing wrong with [`ChunkingParams`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkingProblem {
    /// Outside what FastCDC 2020 supports.
    #[error("{field} is {value}, outside {min}..={max}")]
    OutOfRange {
        /// Config name of the field.
        field: &'static str,
        /// Given value.
        value: u32,
        /// Smallest allowed.
        min: u32,
        /// Largest allowed.
        max: u32,
    },
    /// FastCDC scans two bytes at a time; odd sizes shift its cut points.
    #[error("{field} is {value}, must be even")]
    Odd {
        /// Config name of the field.
        field: &'static str,
        /// Given value.
        value: u32,
    },
    /// The sizes are not ordered.
    #[error("need min-size <= avg-size <= max-size (got {min} / {avg} / {max})")]
    Order {
        /// `min_size`.
        min: u32,
        /// `avg_size`.
        avg: u32,
        /// `max_size`.
        max: u32,
    },
    /// A one-chunk NAR could exceed `max_size`.
    #[error("nar-size-threshold {threshold} exceeds max-size {max}")]
    ThresholdAboveMax {
        /// `nar_size_threshold`.
        threshold: u32,
        /// `max_size`.
        max: u32,
    },
}

/// Every problem [`ChunkingParams::validate`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidChunkingParams(pub Vec<ChunkingProblem>);

impl fmt::Display for InvalidChunkingParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid chunking parameters: ")?;
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidChunkingParams {}

impl ChunkingParams {
    /// Checks the sizes against FastCDC's limits and each other; reports
    /// every problem at once.
    pub fn validate(&self) -> Result<(), InvalidChunkingParams> {
        let mut problems = Vec::new();
        let limits = [
            (
                "min-size",
                self.min_size,
                v2020::MINIMUM_MIN,
                v2020::MINIMUM_MAX,
            ),
            (
                "avg-size",
                self.avg_size,
                v2020::AVERAGE_MIN,
                v2020::AVERAGE_MAX,
            ),
            (
                "max-size",
                self.max_size,
                v2020::MAXIMUM_MIN,
                v2020::MAXIMUM_MAX,
            ),
        ];
        for (field, value, min, max) in limits {
            let (min, max) = (min as u32, max as u32);
            if !(min..=max).contains(&value) {
                problems.push(ChunkingProblem::OutOfRange {
                    field,
                    value,
                    min,
                    max,
                });
            }
            if value % 2 == 1 {
                problems.push(ChunkingProblem::Odd { field, value });
            }
        }
        if !(self.min_size <= self.avg_size && self.avg_size <= self.max_size) {
            problems.push(ChunkingProblem::Order {
                min: self.min_size,
                avg: self.avg_size,
                max: self.max_size,
            });
        }
        if self.nar_size_threshold > self.max_size {
            problems.push(ChunkingProblem::ThresholdAboveMax {
                threshold: self.nar_size_threshold,
                max: self.max_size,
            });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(InvalidChunkingParams(problems))
        }
    }
}

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
    /// The chunking thread died.
    #[error("chunking task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// Blocking chunker: splits `total_size` bytes read from `R` into [`Chunk`]s,
/// hashing each. Runs on a blocking thread; see [`chunk_reader`] for async use.
///
/// Holds a `2 × max_size` window. Yields an error, then ends, if the input is
/// not exactly `total_size` bytes long.
pub struct ChunkIter<R> {
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

impl<R: Read> ChunkIter<R> {
    /// Chunks `reader`, which must yield exactly `total_size` bytes (the
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

    fn next_chunk(&mut self) -> Result<Option<Chunk>, ChunkError> {
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
        let data = Bytes::copy_from_slice(&window[..len]);
        let chunk = Chunk {
            hash: ChunkHash::of(&data),
            offset: self.offset,
            data,
        };
        self.start += len;
        self.offset += len as u64;
        Ok(Some(chunk))
    }
}

impl<R: Read> Iterator for ChunkIter<R> {
    type Item = Result<Chunk, ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_chunk();
        self.done = !matches!(next, Ok(Some(_)));
        next.transpose()
    }
}

/// Chunks handed from the chunking thread to the async consumer ahead of
/// demand; bounds memory together with the window.
const CHUNK_CHANNEL_DEPTH: usize = 2;

/// Chunks an async reader on a blocking thread (cut points and SHA-256 stay
/// off the async runtime). See [`ChunkIter`] for the contract.
///
/// Dropping the stream stops the thread at its next chunk. Must be called
/// within a Tokio runtime.
pub fn chunk_reader<R>(
    reader: R,
    total_size: u64,
    params: &ChunkingParams,
) -> Result<impl Stream<Item = Result<Chunk, ChunkError>> + Send + 'static, InvalidChunkingParams>
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let chunks = ChunkIter::new(
        tokio_util::io::SyncIoBridge::new(reader),
        total_size,
        params,
    )?;
    Ok(crate::storage::blocking_stream(
        CHUNK_CHANNEL_DEPTH,
        move |tx| {
            for chunk in chunks {
                if tx.blocking_send(chunk).is_err() {
                    return;
                }
            }
        },
        |e| Err(ChunkError::Task(e)),
    ))
}

/// [`chunk_reader`] over a byte stream, such as
/// [`crate::storage::ByteStream`] from `Storage::get`.
pub fn chunk_stream<S>(
    input: S,
    total_size: u64,
    params: &ChunkingParams,
) -> Result<impl Stream<Item = Result<Chunk, ChunkError>> + Send + 'static, InvalidChunkingParams>
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static,
{
    chunk_reader(tokio_util::io::StreamReader::new(input), total_size, params)
}

thread_local! {
    /// One zstd context per thread and level: contexts cost up to tens of
    /// MiB to set up at high levels, chunks are small.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses one chunk into one standalone zstd frame whose header records
/// the content size. CPU-bound: call from a blocking thread.
pub fn compress(data: &[u8], level: i32) -> io::Result<Bytes> {
    COMPRESSOR.with_borrow_mut(|slot| {
        let compressor = match slot {
            Some((l, c)) if *l == level => c,
            _ => &mut slot.insert((level, zstd::bulk::Compressor::new(level)?)).1,
        };
        compressor.compress(data).map(Bytes::from)
    })
}

/// Decompresses a chunk's frame, which must hold exactly `expected_len`
/// bytes (the chunk size the database records).
pub fn decompress(frame: &[u8], expected_len: usize) -> io::Result<Bytes> {
    let data = zstd::bulk::decompress(frame, expected_len)?;
    if data.len() != expected_len {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!(
                "chunk frame holds {} bytes, expected {expected_len}",
                data.len()
            ),
        ));
    }
    Ok(Bytes::from(data))
}

/// Compresses the chunks not yet stored, `parallelism` at a time on blocking
/// threads, and yields every chunk in input order with its frame (`None` for
/// chunks the caller marked as already stored, which are not compressed).
///
/// Input items are `(chunk, already_stored)`, so the caller plugs in its own
/// dedup lookup. At most `parallelism` chunks are held, each with its frame:
/// memory stays under `parallelism × 2 × max_size` whatever the NAR size.
/// Errors pass through in order; compression failures become `E`.
pub fn compress_new_chunks<S, E>(
    chunks: S,
    level: i32,
    parallelism: NonZeroUsize,
) -> impl Stream<Item = Result<(Chunk, Option<Bytes>), E>> + Send
where
    S: Stream<Item = Result<(Chunk, bool), E>> + Send,
    E: From<io::Error> + Send + 'static,
{
    chunks
        .map(move |item| async move {
            let (chunk, already_stored) = item?;
            if already_stored {
                return Ok((chunk, None));
            }
            let data = chunk.data.clone();
            let frame = tokio::task::spawn_blocking(move || compress(&data, level))
                .await
                .map_err(io::Error::other)??;
            Ok((chunk, Some(frame)))
        })
        .buffered(parallelism.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    /// Deterministic bytes (splitmix64), independent of any RNG crate.
    fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// A reader returning at most `sizes[i % len]` bytes per call.
    struct Dribble<'a> {
        data: &'a [u8],
        sizes: &'a [usize],
        calls: usize,
    }

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.sizes[self.calls % self.sizes.len()]
                .min(buf.len())
                .min(self.data.len());
            self.calls += 1;
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn chunks_of(data: &[u8], sizes: &[usize], params: &ChunkingParams) -> Vec<Chunk> {
        let reader = Dribble {
            data,
            sizes,
            calls: 0,
        };
        ChunkIter::new(reader, data.len() as u64, params)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn lengths(chunks: &[Chunk]) -> Vec<usize> {
        chunks.iter().map(|c| c.data.len()).collect()
    }

    #[test]
    fn hash_text_round_trips_and_keys_are_sharded() {
        let h = ChunkHash::of(b"abc");
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(h.to_string(), hex);
        assert_eq!(hex.parse::<ChunkHash>().unwrap(), h);
        assert_eq!(ChunkHash::from_slice(h.as_bytes()).unwrap(), h);
        assert_eq!(h.object_key().as_str(), format!("chunks/ba/78/{hex}.zst"));
        assert_eq!(
            ChunkHash::from_slice(&[0; 31]),
            Err(InvalidChunkHash::Length(31))
        );
        assert_eq!(
            hex.to_uppercase().parse::<ChunkHash>(),
            Err(InvalidChunkHash::NotLowerHex)
        );
        assert_eq!(
            hex[..62].parse::<ChunkHash>(),
            Err(InvalidChunkHash::Length(31))
        );
    }

    #[test]
    fn params_validation_reports_every_problem() {
        ChunkingParams::default().validate().unwrap();
        let bad = ChunkingParams {
            nar_size_threshold: 1 << 20,
            min_size: 32,
            avg_size: 1001,
            max_size: 512,
        };
        let problems = bad.validate().unwrap_err().0;
        assert_eq!(
            problems,
            [
                ChunkingProblem::OutOfRange {
                    field: "min-size",
                    value: 32,
                    min: 64,
                    max: 1 << 20
                },
                ChunkingProblem::Odd {
                    field: "avg-size",
                    value: 1001
                },
                ChunkingProblem::OutOfRange {
                    field: "max-size",
                    value: 512,
                    min: 1024,
                    max: 16 << 20
                },
                ChunkingProblem::Order {
                    min: 32,
                    avg: 1001,
                    max: 512
                },
                ChunkingProblem::ThresholdAboveMax {
                    threshold: 1 << 20,
                    max: 512
                },
            ]
        );
    }

    /// Boundaries recorded once for `pseudo_random(3 MiB, 42)` with the
    /// default parameters. A change here re-chunks every stored NAR: dedup
    /// against existing chunks would silently stop working.
    const RECORDED_LENGTHS: [usize; 36] = [
        106594, 75208, 19070, 105223, 66060, 92895, 156030, 42707, 136630, 120388, 69647, 50111,
        69315, 99975, 80480, 69411, 75480, 111912, 173995, 152981, 91175, 82603, 83253, 98842,
        44283, 73250, 99422, 69746, 69256, 102265, 20478, 47113, 119239, 137091, 83267, 50333,
    ];

    #[test]
    fn boundaries_are_stable_across_read_sizes_and_releases() {
        let params = ChunkingParams::default();
        let data = pseudo_random(3 << 20, 42);
        let whole = chunks_of(&data, &[usize::MAX], &params);
        for sizes in [&[1usize, 7, 4096][..], &[65_536], &[100_003, 13]] {
            assert_eq!(chunks_of(&data, sizes, &params), whole, "{sizes:?}");
        }
        // Same cut points as fastcdc's own in-memory chunker.
        let reference: Vec<usize> = v2020::FastCDC::new(&data, 16384, 65536, 262_144)
            .map(|c| c.length)
            .collect();
        assert_eq!(lengths(&whole), reference);
        assert_eq!(lengths(&whole), RECORDED_LENGTHS);
        let mut offset = 0;
        for c in &whole {
            assert_eq!((c.offset, c.hash), (offset, ChunkHash::of(&c.data)));
            offset += c.data.len() as u64;
        }
    }

    #[test]
    fn chunk_sizes_stay_within_min_and_max() {
        let params = ChunkingParams::default();
        let random = chunks_of(&pseudo_random(5 << 20, 7), &[usize::MAX], &params);
        let (last, rest) = random.split_last().unwrap();
        assert!(last.data.len() <= 262_144);
        assert!(
            rest.iter()
                .all(|c| (16_384..=262_144).contains(&c.data.len()))
        );
        // Constant data has no cut points: every chunk is max-size.
        let zeros = chunks_of(&vec![0; (1 << 20) + 5], &[usize::MAX], &params);
        assert_eq!(lengths(&zeros), [262_144, 262_144, 262_144, 262_144, 5]);
        assert_eq!(zeros[0].hash, zeros[1].hash);
    }

    #[test]
    fn small_nars_stay_one_chunk() {
        let params = ChunkingParams::default();
        let small = pseudo_random(65_535, 3);
        assert_eq!(lengths(&chunks_of(&small, &[1000], &params)), [65_535]);
        let at_threshold = pseudo_random(200_000, 3);
        assert!(chunks_of(&at_threshold, &[usize::MAX], &params).len() > 1);
        assert!(chunks_of(&[], &[1], &params).is_empty());
    }

    #[test]
    fn wrong_announced_size_is_an_error() {
        let params = ChunkingParams::default();
        let data = pseudo_random(300_000, 5);
        for (announced, longer) in [(299_999, true), (300_001, false), (1000, true), (0, true)] {
            let results: Vec<_> = ChunkIter::new(&data[..], announced, &params)
                .unwrap()
                .collect();
            let last = results.last().unwrap();
            match last {
                Err(ChunkError::LongerThanExpected { expected }) if longer => {
                    assert_eq!(*expected, announced)
                }
                Err(ChunkError::ShorterThanExpected { expected, actual }) if !longer => {
                    assert_eq!((*expected, *actual), (announced, 300_000))
                }
                other => panic!("{announced}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_edit_in_the_middle_changes_only_nearby_chunks() {
        let params = ChunkingParams::default();
        let original = pseudo_random(8 << 20, 11);
        let mut edited = original.clone();
        edited.splice(4 << 20..(4 << 20) + 10, pseudo_random(1000, 12));
        let before = chunks_of(&original, &[usize::MAX], &params);
        let after = chunks_of(&edited, &[usize::MAX], &params);
        let known: std::collections::HashSet<_> = before.iter().map(|c| c.hash).collect();
        let new = after.iter().filter(|c| !known.contains(&c.hash)).count();
        assert!(before.len() > 60, "{}", before.len());
        assert!((1..=3).contains(&new), "{new} new chunks");
    }

    #[test]
    fn frames_round_trip_and_concatenate_into_one_stream() {
        let data = pseudo_random(3 << 20, 9);
        let text: Vec<u8> = b"nix store path /nix/store/abc-hello ".repeat(30_000);
        let mut all = data.clone();
        all.extend_from_slice(&text);
        let chunks = chunks_of(&all, &[usize::MAX], &ChunkingParams::default());
        let mut concatenated = Vec::new();
        for c in &chunks {
            let frame = compress(&c.data, 3).unwrap();
            let content_size = zstd::zstd_safe::get_frame_content_size(&frame);
            assert_eq!(content_size.ok(), Some(Some(c.data.len() as u64)));
            assert_eq!(decompress(&frame, c.data.len()).unwrap(), c.data);
            assert!(decompress(&frame, c.data.len() - 1).is_err());
            assert!(decompress(&frame, c.data.len() + 1).is_err());
            concatenated.extend_from_slice(&frame);
        }
        assert!(concatenated.len() < all.len() - text.len() / 2);
        let mut decoder = zstd::stream::read::Decoder::new(&concatenated[..]).unwrap();
        let mut decoded = Vec::new();
        decoder.read_to_end(&mut decoded).unwrap();
        assert!(decoded == all, "concatenated frames decode to the NAR");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_pipeline_keeps_order_and_compresses_only_new_chunks() {
        let params = ChunkingParams::default();
        let data = pseudo_random(2 << 20, 21);
        let expected = chunks_of(&data, &[usize::MAX], &params);
        let pieces: Vec<io::Result<Bytes>> = data
            .chunks(10_007)
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect();
        let chunks = chunk_stream(futures::stream::iter(pieces), data.len() as u64, &params)
            .unwrap()
            .map_err(io::Error::other);
        // Every third chunk counts as already stored.
        let flagged = chunks.enumerate().map(|(i, c)| c.map(|c| (c, i % 3 == 0)));
        let parallelism = NonZeroUsize::new(2).unwrap();
        let out: Vec<(Chunk, Option<Bytes>)> = compress_new_chunks(flagged, 1, parallelism)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(out.len(), expected.len());
        for (i, ((chunk, frame), want)) in out.iter().zip(&expected).enumerate() {
            assert_eq!(chunk, want);
            match frame {
                None => assert_eq!(i % 3, 0),
                Some(f) => assert_eq!(decompress(f, chunk.data.len()).unwrap(), chunk.data),
            }
        }
    }

    #[tokio::test]
    async fn async_chunker_reports_input_errors() {
        let pieces: Vec<io::Result<Bytes>> = vec![
            Ok(Bytes::from(vec![1; 100_000])),
            Err(io::Error::new(ErrorKind::ConnectionReset, "gone")),
        ];
        let results: Vec<_> = chunk_stream(
            futures::stream::iter(pieces),
            1_000_000,
            &ChunkingParams::default(),
        )
        .unwrap()
        .collect()
        .await;
        assert!(matches!(results.last(), Some(Err(ChunkError::Read(_)))));
    }
}
