//! Throughput of the ingest path: FastCDC chunking, SHA-256, zstd per chunk.
//!
//! Results and the shell baselines: docs/measurements-chunking.md. Run with
//! `cargo bench -p larder-shared --bench chunking -- --warm-up-time 1
//! --measurement-time 5`. `LARDER_BENCH_MIB` shrinks the inputs (default 64).
//!
//! The compressible input is the concatenation of the regular files in
//! /usr/bin and /usr/lib/x86_64-linux-gnu (sorted by name) up to the size:
//! binaries and libraries, like real NARs. It is written to
//! `target/larder-bench-corpus.bin` so `zstd` and `sha256sum` can be timed on
//! the very same bytes.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, measurement::WallTime};
use futures::{StreamExt, TryStreamExt};
use larder_shared::chunk::{
    Chunk, ChunkIter, ChunkingParams, chunk_stream, compress, compress_new_chunks,
};
use sha2::{Digest, Sha256};

const LEVELS: [i32; 5] = [1, 3, 6, 9, 19];

fn input_len() -> usize {
    let mib: usize = std::env::var("LARDER_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    mib << 20
}

/// Deterministic incompressible bytes (splitmix64).
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut seed = 42u64;
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

fn binaries(len: usize) -> Vec<u8> {
    let mut files: Vec<PathBuf> = ["/usr/bin", "/usr/lib/x86_64-linux-gnu"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut out = Vec::with_capacity(len);
    for file in files {
        if out.len() >= len {
            break;
        }
        if let Ok(bytes) = std::fs::read(&file) {
            out.extend_from_slice(&bytes);
        }
    }
    assert!(out.len() >= len, "not enough files for {len} bytes");
    out.truncate(len);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/larder-bench-corpus.bin");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create target directory");
    }
    std::fs::write(&path, &out).expect("write corpus");
    eprintln!("corpus: {} ({len} bytes)", path.display());
    out
}

fn chunk_all(data: &[u8]) -> Vec<Chunk> {
    ChunkIter::new(data, data.len() as u64, &ChunkingParams::default())
        .expect("default params")
        .collect::<Result<_, _>>()
        .expect("in-memory input")
}

fn slow_group<'a>(c: &'a mut Criterion, name: &str, bytes: usize) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::BytesDecimal(bytes as u64));
    group
}

fn bench(c: &mut Criterion) {
    let len = input_len();
    let random = pseudo_random(len);
    let corpus = binaries(len);
    let params = ChunkingParams::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");

    let mut group = slow_group(c, "chunking", len);
    for (name, data) in [("random", &random), ("binaries", &corpus)] {
        group.bench_function(format!("cut-only/{name}"), |b| {
            b.iter(|| fastcdc::v2020::FastCDC::new(data, 16_384, 65_536, 262_144).count())
        });
        group.bench_function(format!("cut+copy+sha256/{name}"), |b| {
            b.iter(|| {
                ChunkIter::new(&data[..], len as u64, &params)
                    .unwrap()
                    .map(|c| c.unwrap().data.len())
                    .sum::<usize>()
            })
        });
        // As `larder push` uses it: a 16 MiB group's chunks are held until
        // the group is asked about, then dropped.
        group.bench_function(format!("cut+sha256, held per group/{name}"), |b| {
            b.iter(|| {
                let (mut group, mut held) = (Vec::new(), 0);
                for chunk in ChunkIter::new(&data[..], len as u64, &params).unwrap() {
                    let chunk = chunk.unwrap();
                    held += chunk.data.len();
                    group.push(chunk);
                    if held >= 16 << 20 {
                        group.clear();
                        held = 0;
                    }
                }
                group.len()
            })
        });
        // As ingest runs it (`chunk_stream`): cut on one thread, named
        // (SHA-256) on another, the cuts handed over 1 MiB at a time.
        let pieces: Vec<Bytes> = data.chunks(64 * 1024).map(Bytes::copy_from_slice).collect();
        group.bench_function(format!("cut, named on a second thread/{name}"), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let input = futures::stream::iter(pieces.clone().into_iter().map(Ok));
                    chunk_stream(input, len as u64, &params)
                        .unwrap()
                        .try_fold(0, |sum, c| async move { Ok(sum + c.data.len()) })
                        .await
                        .unwrap()
                })
            })
        });
    }
    group.bench_function("sha256/binaries", |b| {
        b.iter(|| Sha256::digest(black_box(&corpus)))
    });
    group.finish();

    let chunks = chunk_all(&corpus);
    let two = NonZeroUsize::new(2).expect("non-zero");
    let mut group = slow_group(c, "zstd-per-chunk", len);
    for level in LEVELS {
        // Computed on first use, so a filtered run skips unselected levels.
        let ratio = std::cell::OnceCell::new();
        let report_ratio = || {
            ratio.get_or_init(|| {
                let compressed: usize = chunks
                    .iter()
                    .map(|c| compress(&c.data, level).unwrap().len())
                    .sum();
                eprintln!(
                    "level {level}: {} chunks, {compressed} bytes, ratio {:.3}",
                    chunks.len(),
                    len as f64 / compressed as f64
                );
            });
        };
        group.bench_function(format!("1-thread/level-{level}"), |b| {
            report_ratio();
            b.iter(|| {
                chunks
                    .iter()
                    .map(|c| compress(&c.data, level).unwrap().len())
                    .sum::<usize>()
            })
        });
        group.bench_function(format!("2-threads/level-{level}"), |b| {
            report_ratio();
            b.iter(|| {
                runtime.block_on(async {
                    let input =
                        futures::stream::iter(chunks.iter().map(|c| Ok((c.clone(), false))));
                    compress_new_chunks::<_, std::io::Error>(input, level, two)
                        .map_ok(|(_, frame)| frame.map_or(0, |f| f.len()))
                        .try_fold(0, |sum, n| async move { Ok(sum + n) })
                        .await
                        .unwrap()
                })
            })
        });
    }
    group.finish();

    // The whole ingest path on 2 cores: async chunker (cut on a thread,
    // SHA-256 on another) feeding 2 compression threads.
    let mut group = slow_group(c, "ingest-pipeline", len);
    let pieces: Vec<Bytes> = corpus
        .chunks(64 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    for level in [1, 3] {
        group.bench_function(format!("2-threads/level-{level}"), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let input = futures::stream::iter(pieces.clone().into_iter().map(Ok));
                    let chunks = chunk_stream(input, len as u64, &params)
                        .unwrap()
                        .map(|c| c.map(|c| (c, false)).map_err(std::io::Error::other));
                    compress_new_chunks(chunks, level, two)
                        .try_fold(0, |sum, (c, _)| async move {
                            Ok::<_, std::io::Error>(sum + c.data.len())
                        })
                        .await
                        .unwrap()
                })
            })
        });
    }
    group.finish();
}

criterion::criterion_group!(benches, bench);
criterion::criterion_main!(benches);
