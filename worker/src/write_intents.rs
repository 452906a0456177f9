//! The writer's side of the deletion protocol (docs/gc.md, "Who may delete
//! an object"): write intents recorded before a new chunk object or pack is
//! written. Ingest, compaction and `repack` all write through a [`Writer`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::bail;

use larder_shared::chunk::ChunkHash;
use larder_shared::chunk_store::ChunkStore;
use larder_shared::chunk_store::pack_writer::{self, PackWriter};
use larder_shared::db::unix_now;
use larder_shared::db::{chunk_claims, packs};
use larder_shared::storage::ObjectKey;

use crate::services::Services;

/// This run's write intents: their owner, and how many it recorded (what
/// its commit must remove).
#[derive(Clone)]
pub(crate) struct Writer {
    pub(crate) owner: Arc<str>,
    pub(crate) intents: Arc<AtomicU64>,
}

impl Writer {
    /// A writer with a fresh owner id `<kind>-<ulid>`: one per run, so an
    /// overlapping run of the same work counts its own intents.
    pub(crate) fn new(kind: &str) -> Self {
        Self {
            owner: Arc::from(format!("{kind}-{}", ulid::Ulid::new())),
            intents: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Opens a new pack, its intent committed and no claim on its key.
    pub(crate) async fn open_pack(&self, svc: &Services) -> anyhow::Result<PackWriter> {
        let id = {
            let mut conn = svc.db.conn().await?;
            packs::next_id(conn.raw(), unix_now()).await?
        };
        self.intend_keys(&svc.db, &[pack_writer::key(id)]).await?;
        Ok(svc.chunks().open_pack(id))
    }

    /// Records intents on the new chunks of a batch, then checks that no
    /// deleter claimed them; only then may their objects be written.
    pub(crate) async fn intend(
        &self,
        db: &larder_shared::db::Db,
        hashes: &[ChunkHash],
    ) -> anyhow::Result<()> {
        let keys: Vec<ObjectKey> = hashes
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(ChunkStore::own_object)
            .collect();
        self.intend_keys(db, &keys).await
    }

    /// Records intents on object `keys` (a batch's chunk objects, or a pack),
    /// then checks that no deleter claimed them; only then may they be
    /// written.
    pub(crate) async fn intend_keys(
        &self,
        db: &larder_shared::db::Db,
        keys: &[ObjectKey],
    ) -> anyhow::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut conn = db.conn().await?;
        // Committed (autocommit) before the claims are read.
        let recorded =
            chunk_claims::insert_intents(conn.raw(), &self.owner, keys, unix_now()).await?;
        self.intents
            .fetch_add(recorded.len() as u64, Ordering::SeqCst);
        if chunk_claims::claimed(conn.raw(), keys).await?.is_empty() {
            return Ok(());
        }
        // Nothing of this batch is written yet: withdraw its intents so the
        // deleter can go on, and retry once it is done.
        let recorded: Vec<ObjectKey> = keys
            .iter()
            .filter(|k| recorded.iter().any(|r| r == k.as_str()))
            .cloned()
            .collect();
        chunk_claims::drop_intents(conn.raw(), &self.owner, &recorded).await?;
        self.intents
            .fetch_sub(recorded.len() as u64, Ordering::SeqCst);
        bail!("an object this run would write is being garbage-collected; retrying later");
    }
}
