//! Multipart uploads: objects larger than [`PART_SIZE`] go up in parts,
//! [`PARTS_IN_FLIGHT`] at a time, and are aborted on any failure.

use bytes::Bytes;
use futures::StreamExt;
use object_store::{MultipartUpload, ObjectStoreExt, PutPayload};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{PART_SIZE, PARTS_IN_FLIGHT, S3Storage, remote};
use crate::storage::requests::{self, Op};
use crate::storage::{ByteStream, ObjectKey, StorageError};

impl S3Storage {
    /// Uploads `data` (of which `first` was already read, exactly
    /// [`PART_SIZE`] bytes) as a multipart upload; aborts it on any failure
    /// or when `cancel` fires.
    pub(super) async fn put_multipart(
        self,
        key: ObjectKey,
        first: Vec<Bytes>,
        data: ByteStream,
        cancel: CancellationToken,
    ) -> Result<u64, StorageError> {
        let path = self.path(key.as_str());
        let mut upload = self
            .request(Op::CreateMultipart, self.store.put_multipart(&path))
            .await
            .map_err(remote("create multipart upload", key.as_str()))?;
        let mut parts = JoinSet::new();
        let sent = tokio::select! {
            r = self.send_parts(&key, &mut *upload, &mut parts, first, data) => r,
            () = cancel.cancelled() => Err(StorageError::Cancelled(key.clone())),
        };
        let completed = match sent {
            Ok(n) => self
                .request(Op::CompleteMultipart, upload.complete())
                .await
                .map(|_| n)
                .map_err(remote("complete multipart upload", key.as_str())),
            Err(e) => Err(e),
        };
        if completed.is_err() {
            parts.abort_all();
            if let Err(e) = self.request(Op::AbortMultipart, upload.abort()).await {
                tracing::warn!(key = %key, error = %e, "could not abort multipart upload; the bucket's lifecycle rule will");
            }
        }
        completed
    }

    /// Sends every part; returns the total size once all parts are stored.
    async fn send_parts(
        &self,
        key: &ObjectKey,
        upload: &mut dyn MultipartUpload,
        parts: &mut JoinSet<object_store::Result<()>>,
        first: Vec<Bytes>,
        mut data: ByteStream,
    ) -> Result<u64, StorageError> {
        let mut total = PART_SIZE as u64;
        self.send_part(upload, parts, first).await;
        let mut buffer: Vec<Bytes> = Vec::new();
        let mut buffered = 0usize;
        loop {
            // Reap finished parts (a failed one ends the upload); wait
            // while too many are in flight.
            loop {
                let done = if parts.len() >= PARTS_IN_FLIGHT {
                    parts.join_next().await
                } else {
                    parts.try_join_next()
                };
                match done {
                    Some(done) => done?.map_err(remote("upload part", key.as_str()))?,
                    None => break,
                }
            }
            let Some(piece) = data.next().await else {
                break;
            };
            let mut piece = piece.map_err(|source| StorageError::Input {
                key: key.clone(),
                source,
            })?;
            total += piece.len() as u64;
            while buffered + piece.len() >= PART_SIZE {
                let head = piece.split_to(PART_SIZE - buffered);
                buffer.push(head);
                buffered = 0;
                self.send_part(upload, parts, std::mem::take(&mut buffer))
                    .await;
            }
            if !piece.is_empty() {
                buffered += piece.len();
                buffer.push(piece);
            }
        }
        if !buffer.is_empty() {
            self.send_part(upload, parts, buffer).await;
        }
        while let Some(done) = parts.join_next().await {
            done?.map_err(remote("upload part", key.as_str()))?;
        }
        Ok(total)
    }

    /// Starts uploading one part (in order) on its own task, in a slot.
    async fn send_part(
        &self,
        upload: &mut dyn MultipartUpload,
        parts: &mut JoinSet<object_store::Result<()>>,
        pieces: Vec<Bytes>,
    ) {
        // Take the slot first: the part's number is fixed by `put_part`.
        let slot = self.slots.clone().acquire_owned().await.ok();
        let request = upload.put_part(PutPayload::from_iter(pieces));
        parts.spawn(async move {
            let r = request.await;
            requests::record(Op::UploadPart, r.is_ok());
            drop(slot);
            r
        });
    }
}
