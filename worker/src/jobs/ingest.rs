//! Ingest: turns a staged NAR into deduplicated, compressed chunks.
//!
//! Steps, each safe to repeat: (1) stream the staged copy through FastCDC
//! (or, for a chunk-level push, take the chunk list its commit verified,
//! reading only the chunks the store lacks: `listed`);
//! (2) look chunks up by hash in batches; for the new ones, commit write
//! intents (one owner id per run), then make sure no deleter has claimed
//! them (docs/gc.md, "Who may delete an object"); (3) compress and store new
//! chunks in parallel (storage keys are content hashes, so a rerun rewrites
//! the same bytes); (4) in one transaction, remove this run's intents
//! (all of them: a deleter that reclaimed one as stale may have deleted its
//! object, so a shortfall rolls back), record the new chunks and add the
//! NAR's references and flip the NAR to `ready` with its layout (chunk
//! sizes and `.nar.zst` digest, what downloads seek by) (guarded by
//! `state = 'staged'`); (5) record its `.ls` listing (made in the same pass;
//! one missing is made on request) and delete the staged copy.
//! A crash anywhere leaves either a staged NAR (served from staging, retried)
//! or a ready one; objects written by a run that never committed keep their
//! intents, through which GC finds and deletes them after the grace period.
//!
//! With GC: a chunk found at `refcount = -1` (being deleted), or whose key
//! is claimed for deletion, is never reused or written; the job fails and
//! retries. The heartbeat refreshes this run's intents, so an ingest slower
//! than the grace period is not taken for dead.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio_util::task::AbortOnDropHandle;
use tracing::instrument;

use larder_shared::background;
use larder_shared::chunk::{self, Chunk, ChunkHash};
use larder_shared::db::chunk_claims;
use larder_shared::db::chunks::{self, NewChunk};
use larder_shared::db::nars::{self, NarState};
use larder_shared::db::{ChunkId, NarId, staged_chunks, staging_intents, unix_now};
use larder_shared::storage::{self, ObjectKey, StorageError};

use crate::services::Services;

mod commit;
mod group_commit;
pub mod group_queue;
mod listed;
mod listing;
mod nar_check;
mod placer;
mod run_commit;

use self::commit::commit;
use self::group_commit::commit_grouped;
use self::listing::record_listing;
use self::nar_check::{Integrity, NarCheck};
use self::placer::{Placed, Placer};
use self::run_commit::{RunCommit, Slot};
use crate::write_intents::Writer;

/// How often a running ingest marks its NAR as alive for the sweeper.
pub const HEARTBEAT: Duration = Duration::from_secs(60);

/// What an ingest run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The NAR is now ready.
    Ingested {
        /// Chunks in the NAR.
        chunks: usize,
        /// Chunks that were new to the store.
        new_chunks: usize,
        /// Bytes written for new chunks.
        stored_bytes: u64,
    },
    /// Nothing to do: already ready (a rerun), or gone.
    Skipped,
}

/// Runs the ingest job for one NAR.
#[instrument(skip_all, fields(nar_id))]
pub async fn ingest(svc: &Services, nar_id: NarId) -> anyhow::Result<Outcome> {
    ingest_inner(svc, nar_id, None).await
}

/// Where a test holds an ingest: its objects written and its intents
/// committed, its commit not begun (what a slow or killed ingest looks like
/// to GC). The tests of docs/gc.md's interleavings step through it.
#[derive(Clone, Default)]
pub struct BeforeCommit {
    reached: Arc<tokio::sync::Notify>,
    resume: Arc<tokio::sync::Notify>,
}

impl BeforeCommit {
    /// Waits until the ingest stands before its commit.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the ingest go on to its commit.
    pub fn resume(&self) {
        self.resume.notify_one();
    }

    /// Called by the paused side: signals [`Self::reached`], then waits for
    /// [`Self::resume`].
    pub(crate) async fn hold(&self) {
        self.reached.notify_one();
        self.resume.notified().await;
    }
}

/// [`ingest`], stopping before the commit until `pause` is resumed.
pub async fn ingest_pausing(
    svc: &Services,
    nar_id: NarId,
    pause: &BeforeCommit,
) -> anyhow::Result<Outcome> {
    ingest_inner(svc, nar_id, Some(pause)).await
}

async fn ingest_inner(
    svc: &Services,
    nar_id: NarId,
    pause: Option<&BeforeCommit>,
) -> anyhow::Result<Outcome> {
    let nar = {
        let mut conn = svc.db.conn().await?;
        nars::get(conn.raw(), nar_id).await?
    };
    let Some(nar) = nar.filter(|n| n.state == NarState::Staged) else {
        return Ok(Outcome::Skipped);
    };
    let key = nar
        .staging_key
        .clone()
        .context("staged NAR has no staging key")?;
    let writer = Writer::new("ingest");

    // Polled with the run in the same task, so it stops with it, however
    // the run ends (a dropped future included).
    let heartbeat = async {
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            if let Ok(mut conn) = svc.db.conn().await {
                let now = unix_now();
                let _ = nars::touch(conn.raw(), nar_id, now).await;
                let _ = chunk_claims::touch_intents(conn.raw(), &writer.owner, now).await;
            }
        }
    };
    let result = tokio::select! {
        r = run(
            svc,
            &writer,
            pause,
            nar_id,
            &key,
            nar.nar_size as u64,
            match nar.staged_checksum {
                Some(sum) => Integrity::Checksum(sum),
                None => Integrity::NarHash(nar.nar_hash),
            },
        ) => r,
        () = heartbeat => Err(anyhow::anyhow!("ingest heartbeat stopped")),
    };
    let outcome = result?;
    if matches!(outcome, Outcome::Ingested { .. }) {
        // The commit handed the staged copy to a staging intent: a crash
        // before the intent goes leaves it to the next sweep.
        svc.staging.delete(&key).await?;
        let mut conn = svc.db.conn().await?;
        staging_intents::remove(conn.raw(), &key).await?;
    }
    Ok(outcome)
}

async fn run(
    svc: &Services,
    writer: &Writer,
    pause: Option<&BeforeCommit>,
    nar_id: NarId,
    key: &ObjectKey,
    nar_size: u64,
    integrity: Integrity,
) -> anyhow::Result<Outcome> {
    let params = svc.config.chunking.params();
    let level = svc.config.compression.level;
    let pack_size = svc.config.storage.pack_size;
    let packed = pack_size > 0;
    let parallelism = NonZeroUsize::new(num_cpus::get() * 2 + 2).unwrap_or(NonZeroUsize::MIN);

    // Batches are looked up and compressed `parallelism` at a time, each
    // compressed on a background pool thread (a handoff per batch, not per
    // chunk), and come out in NAR order.
    let prepare = Prepare {
        svc: svc.clone(),
        writer: writer.clone(),
        level,
        packed,
    };
    let list = {
        let mut conn = svc.db.conn().await?;
        staged_chunks::of_nar(conn.raw(), nar_id).await?
    };
    let (mut batches, check) = match list {
        Some(list) if list.fits(nar_size, &params) => {
            let batches: Batches =
                listed::batches(prepare, key.clone(), list, parallelism.get()).boxed();
            (batches, None)
        }
        list => {
            if list.is_some() {
                tracing::info!("staged chunk list does not fit the chunking; cutting the NAR");
            }
            let cut = cut(svc, prepare, nar_id, key, nar_size, integrity, parallelism).await?;
            let Some((batches, check)) = cut else {
                return Ok(Outcome::Skipped);
            };
            (batches, Some(check))
        }
    };

    let mut slots: Vec<Slot> = Vec::new();
    // New chunks, by hash (a chunk repeated in the NAR is recorded once).
    let mut new: HashMap<ChunkHash, NewChunk> = HashMap::new();
    let (mut new_chunks, mut stored_bytes) = (0usize, 0u64);
    let small = nar_size <= pack_size / 4;
    let mut placer = packed.then(|| Placer::new(svc, writer, pack_size, small));
    loop {
        let batch = match batches.try_next().await {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(e) => match check.as_ref().and_then(NarCheck::failure) {
                Some(reason) => bail!("staged NAR does not parse: staging copy corrupt: {reason}"),
                None => return Err(e),
            },
        };
        for Prepared {
            known,
            hash,
            chunk_size,
            frame,
        } in batch
        {
            if let Some(id) = known {
                slots.push(Slot::Known(id));
                continue;
            }
            slots.push(Slot::New(hash));
            if let std::collections::hash_map::Entry::Vacant(e) = new.entry(hash) {
                new_chunks += 1;
                stored_bytes += frame.len() as u64;
                e.insert(NewChunk {
                    hash,
                    chunk_size: chunk_size as i32,
                    file_size: frame.len() as i32,
                    pack: None,
                });
                if let Some(placer) = placer.as_mut() {
                    placer.push(hash, chunk_size, frame).await?;
                }
            }
        }
    }
    // A listed NAR's listing is made by the first `.ls` request.
    let listing = match check {
        Some(check) => check.finish().await?,
        None => None,
    };
    let placed = match placer {
        Some(placer) => placer.finish().await?,
        None => Placed::default(),
    };
    for (hash, n) in new.iter_mut() {
        n.pack = placed.locations.get(hash).copied();
        if packed && n.pack.is_none() {
            bail!("new chunk {hash} was placed in no pack");
        }
    }
    if let Some(pause) = pause {
        pause.hold().await;
    }
    let (slots_len, shared) = (slots.len(), placed.shared);
    let run = RunCommit {
        owner: writer.owner.clone(),
        intents: writer.intents.load(Ordering::SeqCst),
        nar_id,
        staged: key.clone(),
        slots,
        new,
        sealed: placed.packs,
    };
    // The runs of a shared pack wake together at its seal: committed in
    // one transaction (group_commit); any other run commits alone.
    let ready = if shared {
        commit_grouped(svc, run).await?
    } else {
        commit(svc, &run).await?
    };
    if !ready {
        return Ok(Outcome::Skipped);
    }
    if let Some(listing) = listing {
        record_listing(svc, nar_id, &listing).await;
    }
    Ok(Outcome::Ingested {
        chunks: slots_len,
        new_chunks,
        stored_bytes,
    })
}

/// Prepared batches, in NAR order.
type Batches = futures::stream::BoxStream<'static, anyhow::Result<Vec<Prepared>>>;

/// The staged copy cut into batches (FastCDC and SHA-256 on the chunker's
/// thread), tapped by the whole-NAR checks. `None` when the copy is gone
/// because an overlapping run finished the NAR.
async fn cut(
    svc: &Services,
    prepare: Prepare,
    nar_id: NarId,
    key: &ObjectKey,
    nar_size: u64,
    integrity: Integrity,
    parallelism: NonZeroUsize,
) -> anyhow::Result<Option<(Batches, NarCheck)>> {
    let params = svc.config.chunking.params();
    let input = match svc.staging.get(key, None).await {
        Ok(input) => input,
        Err(StorageError::NotFound(_)) => {
            let mut conn = svc.db.conn().await?;
            let state = nars::get(conn.raw(), nar_id).await?.map(|n| n.state);
            if state != Some(NarState::Staged) {
                return Ok(None);
            }
            bail!("staged copy {key:?} of a staged NAR is missing");
        }
        Err(e) => return Err(e.into()),
    };
    let input = storage::read_ahead(input, READ_AHEAD);
    let (check, input) = NarCheck::tap(input, nar_size, integrity);
    let batches = chunk::chunk_stream(input, nar_size, &params)?
        .map_err(anyhow::Error::from)
        .try_chunks(LOOKUP_BATCH)
        .map_err(|e| e.1)
        .map_ok(move |batch| {
            // A task of its own, so a batch's lookup and compression go on
            // while the caller places the frames of earlier ones.
            let task = AbortOnDropHandle::new(tokio::spawn(prepare.clone().run(batch)));
            async move { task.await? }
        })
        .try_buffered(parallelism.get());
    Ok(Some((batches.boxed(), check)))
}

/// Pieces of the staged copy read ahead of the chunker (128 KiB each from
/// local storage): with every core compressing, a read the chunker waited
/// for would wait for a thread to be scheduled, once per piece.
const READ_AHEAD: usize = 16;

/// Chunks looked up (and, for the unknown ones, compressed) together.
const LOOKUP_BATCH: usize = 16;

/// One chunk of a batch to prepare: its bytes, unless the store has it.
struct Piece {
    /// The chunk's row, if the store has it already.
    known: Option<ChunkId>,
    hash: ChunkHash,
    /// Its bytes; empty for a known one.
    data: Bytes,
    /// Whether `data` is checked against `hash` (bytes the hash was not
    /// computed from).
    check: bool,
}

/// One chunk of a prepared batch.
struct Prepared {
    /// The chunk's row, if the store has it already.
    known: Option<ChunkId>,
    hash: ChunkHash,
    chunk_size: u32,
    /// The compressed frame of a new chunk; empty for a known one.
    frame: Bytes,
}

/// What preparing a batch needs, cloned into each batch's future.
#[derive(Clone)]
struct Prepare {
    svc: Services,
    writer: Writer,
    level: i32,
    packed: bool,
}

impl Prepare {
    /// Looks the batch up, then compresses its new chunks on one blocking
    /// thread (and, without packs, stores each as its own object).
    async fn run(self, batch: Vec<Chunk>) -> anyhow::Result<Vec<Prepared>> {
        let hashes: Vec<ChunkHash> = batch.iter().map(|c| c.hash).collect();
        let known = self.lookup(&hashes).await?;
        let pieces = batch
            .into_iter()
            .map(|c| Piece {
                known: known.get(&c.hash).copied(),
                hash: c.hash,
                data: c.data,
                check: false,
            })
            .collect();
        self.compress(pieces).await
    }

    /// The chunks of `hashes` the store has. Without packs, the others get
    /// this run's write intents before their objects are written.
    async fn lookup(&self, hashes: &[ChunkHash]) -> anyhow::Result<HashMap<ChunkHash, ChunkId>> {
        let known = {
            let mut conn = self.svc.db.conn().await?;
            chunks::find_by_hashes(conn.raw(), hashes).await?
        };
        if known.values().any(|r| r.refcount < 0) {
            // GC is deleting one of them: storing it again now could race
            // the deletion of its object. Retry once GC is done.
            bail!("a chunk of this NAR is being garbage-collected; retrying later");
        }
        if !self.packed {
            let unknown: Vec<ChunkHash> = hashes
                .iter()
                .filter(|h| !known.contains_key(h))
                .copied()
                .collect();
            self.writer.intend(&self.svc.db, &unknown).await?;
        }
        Ok(known.into_iter().map(|(h, r)| (h, r.id)).collect())
    }

    /// Compresses the new pieces on one blocking thread (checking those
    /// marked so first), then, without packs, stores each as its own object.
    async fn compress(self, pieces: Vec<Piece>) -> anyhow::Result<Vec<Prepared>> {
        let level = self.level;
        let prepared = background::run(move || {
            pieces
                .into_iter()
                .map(|p| {
                    let frame = match p.known {
                        Some(_) => Bytes::new(),
                        None if p.check && ChunkHash::of(&p.data) != p.hash => {
                            bail!(
                                "staged copy corrupt: chunk {} differs from its bytes",
                                p.hash
                            )
                        }
                        None => chunk::compress(&p.data, level)?,
                    };
                    Ok(Prepared {
                        known: p.known,
                        hash: p.hash,
                        chunk_size: p.data.len() as u32,
                        frame,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await??;
        if !self.packed {
            let chunk_store = self.svc.chunks();
            for p in prepared.iter().filter(|p| p.known.is_none()) {
                chunk_store.put(&p.hash, p.frame.clone()).await?;
            }
        }
        Ok(prepared)
    }
}
