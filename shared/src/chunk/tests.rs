use std::io::{self, ErrorKind, Read};
use std::num::NonZeroUsize;

use bytes::Bytes;
use fastcdc::v2020;
use futures::{StreamExt, TryStreamExt};

use super::*;

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
fn hash_text_round_trips() {
    let h = ChunkHash::of(b"abc");
    let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(h.to_string(), hex);
    assert_eq!(hex.parse::<ChunkHash>().unwrap(), h);
    assert_eq!(ChunkHash::from_slice(h.as_bytes()).unwrap(), h);
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
    106594, 75208, 19070, 105223, 66060, 92895, 156030, 42707, 136630, 120388, 69647, 50111, 69315,
    99975, 80480, 69411, 75480, 111912, 173995, 152981, 91175, 82603, 83253, 98842, 44283, 73250,
    99422, 69746, 69256, 102265, 20478, 47113, 119239, 137091, 83267, 50333,
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
fn long_inputs_cut_as_fastcdc_does_and_chunks_stay_intact() {
    // Many windows long, read in pieces of every shape: the cut points are
    // fastcdc's own, and a chunk still held keeps its bytes while the
    // window moves on.
    let params = ChunkingParams::default();
    let data = pseudo_random(13 << 20, 11);
    let reference: Vec<usize> = v2020::FastCDC::new(&data, 16384, 65536, 262_144)
        .map(|c| c.length)
        .collect();
    for sizes in [&[usize::MAX][..], &[65_536], &[100_003, 13]] {
        let reader = Dribble {
            data: &data,
            sizes,
            calls: 0,
        };
        let mut cut = Vec::new();
        let mut held = Vec::new();
        for (i, chunk) in ChunkIter::new(reader, data.len() as u64, &params)
            .unwrap()
            .enumerate()
        {
            let chunk = chunk.unwrap();
            cut.push(chunk.data.len());
            if i % 7 == 0 {
                held.push(chunk);
            }
        }
        assert_eq!(cut, reference, "{sizes:?}");
        for c in &held {
            let at = c.offset as usize;
            assert_eq!(&c.data[..], &data[at..at + c.data.len()], "{sizes:?}");
            assert_eq!(c.hash, ChunkHash::of(&c.data));
        }
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
fn batches_of_cuts_named_are_the_chunks_and_an_error_comes_last() {
    let params = ChunkingParams::default();
    let data = pseudo_random(3 << 20, 17);
    let whole = chunks_of(&data, &[usize::MAX], &params);
    let cutter = |announced| Cutter::new(&data[..], announced, &params).unwrap();
    for bytes in [1, 300_000, 1 << 20, usize::MAX] {
        let batches: Vec<Vec<RawChunk>> = cutter(data.len() as u64)
            .batches(bytes)
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(batches.iter().all(|b| !b.is_empty()));
        let held = |b: &Vec<RawChunk>| b.iter().map(|c| c.data.len()).sum::<usize>();
        let (last, full) = batches.split_last().unwrap();
        assert!(
            full.iter().all(|b| held(b) >= bytes.min(data.len())),
            "{bytes}"
        );
        assert!(held(last) > 0);
        let named: Vec<Chunk> = batches.into_iter().flatten().map(RawChunk::name).collect();
        assert_eq!(named, whole, "{bytes}");
    }
    // Announced one byte short: everything cut before the error still
    // arrives, then the error, then nothing.
    let results: Vec<_> = cutter(data.len() as u64 - 1).batches(usize::MAX).collect();
    let [Ok(cut), Err(ChunkError::LongerThanExpected { .. })] = &results[..] else {
        panic!("{results:?}");
    };
    assert!(!cut.is_empty());
    assert!(whole.starts_with(&cut.iter().cloned().map(RawChunk::name).collect::<Vec<_>>()));
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
