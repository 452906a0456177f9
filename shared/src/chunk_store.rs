//! The chunk store: the one owner of chunk bytes. It decides where a chunk's
//! zstd frame lives ([`ChunkStore::locate`]: its own object, or a slice of
//! a pack), writes new frames, reads a frame or part of one, deletes a
//! chunk's object and lists the objects that may be chunks, so that the NAR
//! reader, ingest, GC and `verify` never build a key or pick a range
//! themselves. Packs (several chunks per object) change [`ChunkStore::locate`]
//! and the writer, not the readers.

pub mod nar;
pub mod nar_rows;
pub mod pack_writer;
pub mod packer;
mod reads;

use std::io;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};

use crate::chunk::ChunkHash;
use crate::db::chunks::ChunkRecord;
use crate::pack::{self, PackEntry};
use crate::storage::layout::{self, CHUNKS};
use crate::storage::{ObjectKey, ObjectMeta, ObjectRange, Storage, StorageError};

/// Chunk frames in a storage backend.
#[derive(Clone)]
pub struct ChunkStore {
    storage: Arc<dyn Storage>,
    /// Chunk rows of NARs served lately, for downloads (the API's).
    nar_rows: Option<Arc<nar_rows::NarRows>>,
}

/// Why a pack's index could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PackIndexError {
    /// The pack is missing, or its size unknown.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Reading the pack failed.
    #[error(transparent)]
    Read(#[from] io::Error),
    /// The pack does not parse.
    #[error(transparent)]
    Format(#[from] pack::PackError),
}

/// An object found under the chunk prefix, by [`ChunkStore::list`].
#[derive(Debug, Clone)]
pub struct StoredObject {
    /// The chunk the key names, or `None` for a key no chunk row can name.
    pub hash: Option<ChunkHash>,
    /// Key, size and age of the object.
    pub meta: ObjectMeta,
}

impl ChunkStore {
    /// Chunks in `storage` (the main backend, never staging).
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self {
            storage,
            nar_rows: None,
        }
    }

    /// The same store, whose NAR downloads keep and reuse chunk rows in
    /// `cache` ([`nar_rows`]).
    pub fn with_nar_rows(self, cache: Arc<nar_rows::NarRows>) -> Self {
        Self {
            nar_rows: Some(cache),
            ..self
        }
    }

    /// Where the chunk's stored frame is: bytes `offset..offset + length`
    /// of one object.
    pub fn locate(rec: &ChunkRecord) -> ObjectRange {
        let length = rec.file_size.max(0) as u64;
        match (rec.pack_id, rec.pack_offset) {
            (Some(pack), Some(offset)) => ObjectRange {
                key: layout::pack_key(pack),
                offset: offset.max(0) as u64,
                length,
            },
            _ => ObjectRange {
                key: layout::chunk_key(&rec.hash),
                offset: 0,
                length,
            },
        }
    }

    /// The object a chunk stored on its own lives in (what GC deletes).
    pub fn own_object(hash: &ChunkHash) -> ObjectKey {
        layout::chunk_key(hash)
    }

    /// Stores a new chunk's frame as its own object, atomically visible.
    pub async fn put(&self, hash: &ChunkHash, frame: Bytes) -> Result<u64, StorageError> {
        self.storage
            .put_bytes(&layout::chunk_key(hash), frame)
            .await
    }

    /// Reads bytes `within` of the chunk's frame (`0..file_size` is the
    /// whole frame). Exactly that many bytes or an error, never fewer.
    pub async fn read(&self, rec: &ChunkRecord, within: Range<u64>) -> io::Result<Bytes> {
        let at = Self::locate(rec);
        if within.start > within.end || within.end > at.length {
            return Err(io::Error::other(format!(
                "range {within:?} outside chunk {} of {} bytes",
                rec.hash, at.length
            )));
        }
        let want = within.end - within.start;
        // A chunk stored on its own is the whole object; a packed one is
        // always a range, also at offset 0.
        let whole_object = rec.pack_id.is_none() && within.start == 0 && want == at.length;
        let range = (!whole_object).then(|| at.offset + within.start..at.offset + within.end);
        let data = self.read_bytes(&at.key, range).await?;
        if data.len() as u64 != want {
            return Err(io::Error::other(format!(
                "chunk {} gave {} bytes, expected {want}",
                rec.hash,
                data.len(),
            )));
        }
        Ok(data)
    }

    /// Reads the chunk's whole stored frame.
    pub async fn read_frame(&self, rec: &ChunkRecord) -> io::Result<Bytes> {
        self.read(rec, 0..rec.file_size.max(0) as u64).await
    }

    /// Deletes a chunk object (idempotent). Only GC's deleter calls this,
    /// under the protocol of docs/gc.md.
    pub async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.storage.delete(key).await
    }

    /// Streams bytes `range` of object `key` (a run of frames, see [`reads`]).
    pub async fn read_object(
        &self,
        key: &ObjectKey,
        range: Range<u64>,
    ) -> Result<crate::storage::ByteStream, StorageError> {
        self.storage.get(key, Some(range)).await
    }

    /// Opens a new pack for writing (see [`pack_writer`]); `id` from
    /// `db::packs::next_id`, its write intent committed by the caller.
    pub fn open_pack(&self, id: i64) -> pack_writer::PackWriter {
        pack_writer::PackWriter::open(self.storage.clone(), id)
    }

    /// The index a pack carries at its end: what it holds, from the pack
    /// alone (what `verify` rebuilds locations from).
    pub async fn read_pack_index(&self, id: i64) -> Result<Vec<PackEntry>, PackIndexError> {
        let key = layout::pack_key(id);
        let size = self
            .storage
            .head(&key)
            .await?
            .ok_or_else(|| StorageError::NotFound(key.clone()))?
            .size;
        let tail_at = size
            .checked_sub(pack::TRAILER_LEN as u64)
            .ok_or(pack::PackError::NoTrailer)?;
        let tail = self.read_bytes(&key, Some(tail_at..size)).await?;
        let trailer = pack::decode_trailer(&tail, size)?;
        let at = trailer.index_offset;
        let index = self
            .read_bytes(&key, Some(at..at + trailer.index_len()))
            .await?;
        Ok(pack::decode_index(&index, &trailer)?)
    }

    /// Bytes `range` of object `key` (all of it for `None`) in memory: for
    /// reads bounded by a frame, an index or a compaction window.
    pub async fn read_bytes(
        &self,
        key: &ObjectKey,
        range: Option<Range<u64>>,
    ) -> io::Result<Bytes> {
        crate::storage::read_bytes(&*self.storage, key, range).await
    }

    /// Bytes `range` of object `key`, exactly ([`crate::storage::read_range`]).
    pub async fn read_range(&self, key: &ObjectKey, range: Range<u64>) -> io::Result<Bytes> {
        crate::storage::read_range(&*self.storage, key, range).await
    }

    /// Every pack object (what `verify` compares with the `packs` rows).
    pub fn list_packs(
        &self,
    ) -> impl Stream<Item = Result<(Option<i64>, ObjectMeta), StorageError>> + Send + use<> {
        self.storage
            .list(layout::PACKS)
            .map_ok(|meta| (layout::parse_pack_key(meta.key.as_str()), meta))
    }

    /// Every object under the chunk prefix, each with the chunk its key
    /// names, lazily (what `verify` compares with the chunk rows).
    pub fn list(&self) -> impl Stream<Item = Result<StoredObject, StorageError>> + Send + use<> {
        self.storage.list(CHUNKS).map_ok(|meta| StoredObject {
            hash: layout::parse_chunk_key(meta.key.as_str()),
            meta,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk;
    use crate::storage::local::LocalStorage;

    fn record(hash: ChunkHash, frame: &[u8], len: usize) -> ChunkRecord {
        ChunkRecord {
            id: crate::db::ChunkId(1),
            hash,
            chunk_size: len as i32,
            file_size: frame.len() as i32,
            pack_id: None,
            pack_offset: None,
            refcount: 1,
        }
    }

    #[tokio::test]
    async fn put_read_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::new(Arc::new(LocalStorage::new(dir.path().into()).unwrap()));
        let data = vec![7u8; 5000];
        let hash = ChunkHash::of(&data);
        let frame = chunk::compress(&data, 3).unwrap();
        store.put(&hash, frame.clone()).await.unwrap();
        let rec = record(hash, &frame, data.len());
        assert_eq!(store.read_frame(&rec).await.unwrap(), frame);
        assert_eq!(store.read(&rec, 2..5).await.unwrap(), frame.slice(2..5));
        assert!(store.read(&rec, 0..frame.len() as u64 + 1).await.is_err());
        let listed: Vec<StoredObject> = store.list().try_collect().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].hash, Some(hash));
        store.delete(&ChunkStore::own_object(&hash)).await.unwrap();
        assert!(store.read_frame(&rec).await.is_err());
    }

    #[test]
    fn a_packed_chunk_is_a_slice_of_its_pack() {
        let mut rec = record(ChunkHash::of(b"x"), b"frame", 1);
        rec.pack_id = Some(9);
        rec.pack_offset = Some(4096);
        let at = ChunkStore::locate(&rec);
        assert_eq!(at.key.as_str(), "packs/09/9.pack");
        assert_eq!(at.range(), 4096..4101);
    }
}
