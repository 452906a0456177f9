//! Reassembles a NAR from Attic's storage: each chunk is its own file,
//! compressed as the chunk row's `compression` says. On local storage the
//! file is `<path>/<c>/<cc>/<name>` (since Attic's storage layout version
//! 1, flat `<path>/<name>` before); on S3 it is the object the row's
//! `{"S3":{"bucket","key"}}` names, read through Larder's S3 client.
//! Decoding runs on a blocking thread and feeds a bounded channel, so a NAR
//! of any size streams through in constant memory.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use serde::Deserialize;
use tokio_util::io::{StreamReader, SyncIoBridge};

use larder_shared::storage::{ObjectKey, Storage};

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
    /// A chunk lives somewhere other than the storage Attic's config names.
    #[error("chunk {seq} is stored in {kind} storage, which Attic's config does not name")]
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

/// Where Attic's chunk files are, as its config says.
#[derive(Clone)]
pub enum ChunkSource {
    /// `[storage] type = "local"`.
    Local(PathBuf),
    /// `[storage] type = "s3"`: the bucket's objects, through Larder's client.
    S3 {
        /// The configured bucket (a chunk naming another is not read).
        bucket: String,
        /// Client for it.
        storage: Arc<dyn Storage>,
    },
}

/// A chunk file to read.
#[derive(Debug, Clone)]
pub struct ChunkFile {
    at: Location,
    codec: Codec,
}

#[derive(Debug, Clone)]
enum Location {
    File(PathBuf),
    Object(ObjectKey),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(p) => write!(f, "chunk file {}", p.display()),
            Location::Object(k) => write!(f, "chunk object {k}"),
        }
    }
}

#[derive(Deserialize)]
enum RemoteFile {
    Local {
        name: String,
    },
    S3 {
        bucket: String,
        key: String,
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
    source: &ChunkSource,
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
            let at = match (serde_json::from_str::<RemoteFile>(&s.remote_file), source) {
                (Ok(RemoteFile::Local { name }), ChunkSource::Local(root))
                    if !name.contains('/') && !name.is_empty() =>
                {
                    let path = chunk_path(root, &name);
                    if !path.is_file() {
                        return Err(Unreadable::MissingFile { seq, path });
                    }
                    Location::File(path)
                }
                (Ok(RemoteFile::S3 { bucket, key }), ChunkSource::S3 { bucket: ours, .. })
                    if &bucket == ours =>
                {
                    // A missing object fails the stream: reported as broken.
                    let key = key.parse().map_err(|_| Unreadable::NotLocal {
                        seq,
                        kind: "S3 (a key Larder cannot address)".into(),
                    })?;
                    Location::Object(key)
                }
                _ => return Err(Unreadable::NotLocal { seq, kind: kind() }),
            };
            Ok(ChunkFile { at, codec })
        })
        .collect()
}

/// Dry run: the first chunk object missing from Attic's bucket, if any
/// (local files were checked by [`plan`]; a real run finds a missing object
/// while reading it).
pub async fn first_missing(source: &ChunkSource, files: &[ChunkFile]) -> Result<(), String> {
    let ChunkSource::S3 { storage, .. } = source else {
        return Ok(());
    };
    for f in files {
        if let Location::Object(key) = &f.at {
            match storage.head(key).await {
                Ok(Some(_)) => {}
                Ok(None) => return Err(format!("{} is missing from Attic's bucket", f.at)),
                Err(e) => return Err(format!("{}: {e}", f.at)),
            }
        }
    }
    Ok(())
}

/// Opens a chunk for reading on a blocking thread (`rt` runs S3 requests).
fn open(
    chunk: &ChunkFile,
    storage: Option<&Arc<dyn Storage>>,
    rt: &tokio::runtime::Handle,
) -> io::Result<Box<dyn Read + Send>> {
    let raw: Box<dyn Read + Send> = match (&chunk.at, storage) {
        (Location::File(path), _) => Box::new(File::open(path)?),
        (Location::Object(key), Some(storage)) => {
            let body = rt
                .block_on(storage.get(key, None))
                .map_err(io::Error::other)?;
            Box::new(SyncIoBridge::new_with_handle(
                StreamReader::new(body),
                rt.clone(),
            ))
        }
        (Location::Object(_), None) => {
            return Err(io::Error::other("no S3 client for Attic's bucket"));
        }
    };
    let file = BufReader::new(raw);
    Ok(match chunk.codec {
        Codec::None => Box::new(file),
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
        Codec::Brotli => Box::new(brotli_decompressor::Decompressor::new(file, 64 * 1024)),
        Codec::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(file)),
    })
}

/// The NAR's bytes, decoded chunk after chunk; an unreadable or corrupt
/// chunk ends the stream with an error (the staging verifier rejects it).
pub fn stream(
    source: &ChunkSource,
    files: Vec<ChunkFile>,
) -> impl Stream<Item = Result<Bytes, String>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(8);
    let storage = match source {
        ChunkSource::S3 { storage, .. } => Some(storage.clone()),
        ChunkSource::Local(_) => None,
    };
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 256 * 1024];
        for chunk in &files {
            let mut reader = match open(chunk, storage.as_ref(), &rt) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.blocking_send(Err(format!("{}: {e}", chunk.at)));
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
                        let msg = format!("{}: {e}", chunk.at);
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
