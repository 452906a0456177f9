//! Reassembles a NAR from Attic's local storage: each chunk is its own file
//! (`<path>/<c>/<cc>/<name>` since Attic's storage layout version 1, flat
//! `<path>/<name>` before), compressed as the chunk row's `compression`
//! says. Decoding runs on a blocking thread and feeds a bounded channel, so
//! a NAR of any size streams through in constant memory.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::Stream;
use serde::Deserialize;

use super::attic_db::AtticChunk;

/// Why a NAR cannot be reassembled before reading any byte.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    /// A chunk row is gone or not valid.
    #[error("chunk {seq} is missing from Attic's database")]
    MissingChunk {
        /// Position in the NAR.
        seq: i64,
    },
    /// The NAR row lists a different number of chunks than chunkref holds.
    #[error("Attic's NAR row says {expected} chunks, chunkref has {found}")]
    ChunkCount {
        /// `nar.num_chunks`.
        expected: i64,
        /// Rows found.
        found: usize,
    },
    /// The chunk's file is not in Attic's storage.
    #[error("chunk {seq}: file {path} is missing from Attic's storage")]
    MissingFile {
        /// Position.
        seq: i64,
        /// Where it should be.
        path: PathBuf,
    },
    /// A chunk lives somewhere other than local storage.
    #[error("chunk {seq} is stored in {kind} storage, which this import cannot read")]
    NotLocal {
        /// Position.
        seq: i64,
        /// `S3`, `Http`, …
        kind: String,
    },
    /// A compression Attic never wrote.
    #[error("chunk {seq} has unknown compression {compression:?}")]
    Compression {
        /// Position.
        seq: i64,
        /// As stored.
        compression: String,
    },
}

/// How a chunk file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    None,
    Zstd,
    Brotli,
    Xz,
}

/// A chunk file to read.
#[derive(Debug, Clone)]
pub struct ChunkFile {
    path: PathBuf,
    codec: Codec,
}

#[derive(Deserialize)]
enum RemoteFile {
    Local {
        name: String,
    },
    #[serde(other)]
    Other,
}

/// Where Attic's local backend keeps the file `name`.
pub fn chunk_path(root: &Path, name: &str) -> PathBuf {
    let nested = match (name.get(0..1), name.get(0..2)) {
        (Some(a), Some(ab)) => root.join(a).join(ab).join(name),
        _ => root.join(name),
    };
    if nested.exists() {
        nested
    } else {
        // Layout version 0 (before Attic sharded its directory).
        let flat = root.join(name);
        if flat.exists() { flat } else { nested }
    }
}

/// Resolves the chunk rows of a NAR to files, or says why it cannot.
pub fn plan(
    root: &Path,
    chunks: &[AtticChunk],
    num_chunks: i64,
) -> Result<Vec<ChunkFile>, Unreadable> {
    if chunks.len() as i64 != num_chunks {
        return Err(Unreadable::ChunkCount {
            expected: num_chunks,
            found: chunks.len(),
        });
    }
    chunks
        .iter()
        .map(|c| {
            let seq = c.seq;
            let s = c
                .stored
                .as_ref()
                .filter(|s| s.state == "V")
                .ok_or(Unreadable::MissingChunk { seq })?;
            let codec = match s.compression.as_str() {
                "none" => Codec::None,
                "zstd" => Codec::Zstd,
                "br" | "brotli" => Codec::Brotli,
                "xz" => Codec::Xz,
                other => {
                    return Err(Unreadable::Compression {
                        seq,
                        compression: other.to_owned(),
                    });
                }
            };
            let kind = || {
                s.remote_file
                    .trim_start_matches(['{', ' ', '"'])
                    .split('"')
                    .next()
                    .unwrap_or("unknown")
                    .to_owned()
            };
            match serde_json::from_str::<RemoteFile>(&s.remote_file) {
                Ok(RemoteFile::Local { name }) if !name.contains('/') && !name.is_empty() => {
                    let path = chunk_path(root, &name);
                    if !path.is_file() {
                        return Err(Unreadable::MissingFile { seq, path });
                    }
                    Ok(ChunkFile { path, codec })
                }
                _ => Err(Unreadable::NotLocal { seq, kind: kind() }),
            }
        })
        .collect()
}

fn open(chunk: &ChunkFile) -> io::Result<Box<dyn Read + Send>> {
    let file = File::open(&chunk.path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("chunk file {}: {e}", chunk.path.display()),
        )
    })?;
    let file = BufReader::new(file);
    Ok(match chunk.codec {
        Codec::None => Box::new(file),
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
        Codec::Brotli => Box::new(brotli_decompressor::Decompressor::new(file, 64 * 1024)),
        Codec::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(file)),
    })
}

/// The NAR's bytes, decoded chunk after chunk; an unreadable or corrupt
/// chunk ends the stream with an error (the staging verifier rejects it).
pub fn stream(files: Vec<ChunkFile>) -> impl Stream<Item = Result<Bytes, String>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(8);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 256 * 1024];
        for chunk in &files {
            let mut reader = match open(chunk) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e.to_string()));
                    return;
                }
            };
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx
                            .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                            .is_err()
                        {
                            return; // the consumer gave up
                        }
                    }
                    Err(e) => {
                        let msg = format!("chunk file {}: {e}", chunk.path.display());
                        let _ = tx.blocking_send(Err(msg));
                        return;
                    }
                }
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}
