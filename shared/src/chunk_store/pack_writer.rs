//! Writes one pack as a single streamed storage put: frames go to storage as
//! they are appended, so a pack of tens of MiB needs no buffer, and the
//! object appears (atomically, as every put) only when [`PackWriter::seal`]
//! has written the index. A writer dropped unsealed fails its put, so
//! storage keeps nothing of it.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::chunk::ChunkHash;
use crate::pack::{self, PackEntry};
use crate::storage::{ByteStream, ObjectKey, Storage, StorageError, layout};

/// Packs this process sealed, and their bytes (for `/metrics`).
static SEALED: AtomicU64 = AtomicU64::new(0);
static SEALED_BYTES: AtomicU64 = AtomicU64::new(0);

/// `(packs, bytes)` this process has sealed since it started.
pub fn sealed_totals() -> (u64, u64) {
    (
        SEALED.load(Ordering::Relaxed),
        SEALED_BYTES.load(Ordering::Relaxed),
    )
}

/// Frames in flight between the appender and the put.
const IN_FLIGHT: usize = 16;

enum Piece {
    Data(Bytes),
    End,
}

/// A sealed, durable pack.
#[derive(Debug, Clone)]
pub struct SealedPack {
    /// Its id (key [`layout::pack_key`]).
    pub id: i64,
    /// Object size, index included.
    pub size: u64,
    /// Frames it holds.
    pub chunks: u64,
}

/// An open pack being streamed to storage.
pub struct PackWriter {
    id: i64,
    tx: mpsc::Sender<Piece>,
    put: JoinHandle<Result<u64, StorageError>>,
    entries: Vec<PackEntry>,
    len: u64,
}

impl PackWriter {
    /// Starts the put of pack `id` (an id from `db::packs::next_id`, whose
    /// write intent the caller has committed).
    pub fn open(storage: Arc<dyn Storage>, id: i64) -> Self {
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let body: ByteStream = Box::pin(futures::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(Piece::Data(b)) => Some((Ok(b), Some(rx))),
                Some(Piece::End) => None,
                // Dropped unsealed: fail the put so nothing is stored.
                None => Some((Err(io::Error::other("pack writer dropped unsealed")), None)),
            }
        }));
        let key = layout::pack_key(id);
        let put = tokio::spawn(async move { storage.put(&key, body).await });
        Self {
            id,
            tx,
            put,
            entries: Vec::new(),
            len: 0,
        }
    }

    /// The pack's id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Bytes of frames appended so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends a chunk's frame; returns where it lies in the pack.
    pub async fn append(
        &mut self,
        hash: ChunkHash,
        chunk_size: u32,
        frame: Bytes,
    ) -> Result<PackEntry, StorageError> {
        let entry = PackEntry {
            hash,
            offset: self.len,
            length: u32::try_from(frame.len()).map_err(|_| self.error("frame over 4 GiB"))?,
            chunk_size,
        };
        let frame_len = frame.len() as u64;
        if self.tx.send(Piece::Data(frame)).await.is_err() {
            return Err(self.put_error().await);
        }
        self.len += frame_len;
        self.entries.push(entry);
        Ok(entry)
    }

    /// Writes the index and trailer and waits until the pack is durable.
    pub async fn seal(self) -> Result<SealedPack, StorageError> {
        let index = pack::encode_index(&self.entries, self.len);
        let size = self.len + index.len() as u64;
        if self.tx.send(Piece::Data(Bytes::from(index))).await.is_err()
            || self.tx.send(Piece::End).await.is_err()
        {
            drop(self.tx);
            let id = self.id;
            return Err(self.put.await.map_err(StorageError::Task)?.err().unwrap_or(
                StorageError::Pack {
                    id,
                    message: "put ended early".into(),
                },
            ));
        }
        drop(self.tx);
        let id = self.id;
        let written = self.put.await??;
        if written != size {
            return Err(StorageError::Pack {
                id,
                message: format!("wrote {written} bytes, expected {size}"),
            });
        }
        SEALED.fetch_add(1, Ordering::Relaxed);
        SEALED_BYTES.fetch_add(size, Ordering::Relaxed);
        Ok(SealedPack {
            id,
            size,
            chunks: self.entries.len() as u64,
        })
    }

    fn error(&self, message: &str) -> StorageError {
        StorageError::Pack {
            id: self.id,
            message: message.into(),
        }
    }

    /// The put's error after its task ended early.
    async fn put_error(&mut self) -> StorageError {
        match (&mut self.put).await {
            Ok(Ok(_)) => self.error("put ended early"),
            Ok(Err(e)) => e,
            Err(e) => StorageError::Task(e),
        }
    }
}

/// Key of a pack (what intents and claims name).
pub fn key(id: i64) -> ObjectKey {
    layout::pack_key(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk;
    use crate::storage::local::LocalStorage;
    use futures::TryStreamExt;

    #[tokio::test]
    async fn a_sealed_pack_holds_its_frames_and_index() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path().into()).unwrap());
        let mut w = PackWriter::open(storage.clone(), 5);
        let mut frames = Vec::new();
        for i in 0..3u8 {
            let data = vec![i; 1000 + usize::from(i)];
            let frame = chunk::compress(&data, 3).unwrap();
            let e = w
                .append(ChunkHash::of(&data), data.len() as u32, frame.clone())
                .await
                .unwrap();
            frames.push((e, frame));
        }
        let sealed = w.seal().await.unwrap();
        assert_eq!(sealed.chunks, 3);
        let bytes: Vec<Bytes> = storage
            .get(&key(5), None)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let all = bytes.concat();
        assert_eq!(all.len() as u64, sealed.size);
        let trailer =
            pack::decode_trailer(&all[all.len() - pack::TRAILER_LEN..], sealed.size).unwrap();
        let start = trailer.index_offset as usize;
        let index = pack::decode_index(&all[start..start + trailer.index_len() as usize], &trailer)
            .unwrap();
        for ((e, frame), listed) in frames.iter().zip(&index) {
            assert_eq!(e, listed);
            let at = e.offset as usize;
            assert_eq!(&all[at..at + e.length as usize], &frame[..]);
        }
    }

    #[tokio::test]
    async fn a_dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path().into()).unwrap());
        let mut w = PackWriter::open(storage.clone(), 6);
        w.append(ChunkHash::of(b"x"), 1, Bytes::from_static(b"frame"))
            .await
            .unwrap();
        drop(w);
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            if storage
                .remove_incomplete(std::time::Duration::ZERO)
                .await
                .unwrap()
                == 0
            {
                break;
            }
        }
        assert!(storage.head(&key(6)).await.unwrap().is_none());
    }
}
