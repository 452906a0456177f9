//! The ingest of a NAR staged with its chunk list (a chunk-level push's
//! commit; `larder_shared::db::staged_chunks`): the chunks come from the
//! list instead of from cutting and hashing the staged copy. Only the
//! chunks the store lacks are read from the copy, a run of adjacent ones
//! at a time, and each is checked against its hash before it is
//! compressed. The chunks the store has are not read at all: the API
//! verified the NarHash, the size and the grammar over exactly this
//! sequence before it acknowledged the upload.
//!
//! The stages after it (placing frames in packs, the commit) are the cut
//! ingest's. What it does not make is the `.ls` listing, which the first
//! request for it makes from the stored NAR.

use std::ops::Range;

use anyhow::Context;
use bytes::Bytes;
use futures::{Stream, StreamExt, stream};
use tokio_util::task::AbortOnDropHandle;

use larder_shared::db::staged_chunks::{StagedChunk, StagedChunks};
use larder_shared::storage::{self, ObjectKey};

use super::{LOOKUP_BATCH, Piece, Prepare, Prepared};

/// The list's chunks, prepared in batches of [`LOOKUP_BATCH`],
/// `parallelism` at a time, in NAR order.
pub(super) fn batches(
    prepare: Prepare,
    key: ObjectKey,
    list: StagedChunks,
    parallelism: usize,
) -> impl Stream<Item = anyhow::Result<Vec<Prepared>>> + Send + 'static {
    let mut offset = 0u64;
    let placed: Vec<(u64, StagedChunk)> = list
        .0
        .into_iter()
        .map(|c| {
            let at = offset;
            offset += u64::from(c.size);
            (at, c)
        })
        .collect();
    let batches: Vec<Vec<(u64, StagedChunk)>> =
        placed.chunks(LOOKUP_BATCH).map(<[_]>::to_vec).collect();
    stream::iter(batches)
        .map(move |batch| {
            let task =
                AbortOnDropHandle::new(tokio::spawn(run(prepare.clone(), key.clone(), batch)));
            async move { task.await? }
        })
        .buffered(parallelism)
}

/// Looks one batch up, reads the chunks the store lacks from the staged
/// copy, and hands them to [`Prepare::compress`] to be checked and
/// compressed.
async fn run(
    prepare: Prepare,
    key: ObjectKey,
    batch: Vec<(u64, StagedChunk)>,
) -> anyhow::Result<Vec<Prepared>> {
    let hashes: Vec<_> = batch.iter().map(|(_, c)| c.hash).collect();
    let known = prepare.lookup(&hashes).await?;
    let mut data = vec![Bytes::new(); batch.len()];
    let mut i = 0;
    while i < batch.len() {
        if known.contains_key(&batch[i].1.hash) {
            i += 1;
            continue;
        }
        let mut end = i + 1;
        while end < batch.len() && !known.contains_key(&batch[end].1.hash) {
            end += 1;
        }
        let (start, last) = (batch[i].0, &batch[end - 1]);
        let bytes = read(&prepare, &key, start..last.0 + u64::from(last.1.size)).await?;
        let mut at = 0;
        for (slot, (_, c)) in data[i..end].iter_mut().zip(&batch[i..end]) {
            let size = c.size as usize;
            *slot = bytes.slice(at..at + size);
            at += size;
        }
        i = end;
    }
    let pieces = batch
        .iter()
        .zip(data)
        .map(|((_, c), data)| Piece {
            known: known.get(&c.hash).copied(),
            hash: c.hash,
            data,
            check: true,
        })
        .collect();
    prepare.compress(pieces).await
}

/// The staged copy's bytes in `range`, whole.
async fn read(prepare: &Prepare, key: &ObjectKey, range: Range<u64>) -> anyhow::Result<Bytes> {
    storage::read_range(&*prepare.svc.staging, key, range.clone())
        .await
        .with_context(|| format!("reading bytes {range:?} of staged copy {key:?}"))
}
