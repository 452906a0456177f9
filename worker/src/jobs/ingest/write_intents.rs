//! The ingest side of the deletion protocol (docs/gc.md, "Who may delete an
//! object"): write intents recorded before a new chunk object is written.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::bail;

use larder_shared::chunk::ChunkHash;
use larder_shared::chunk_store::ChunkStore;
use larder_shared::db::chunk_claims;
use larder_shared::db::unix_now;
use larder_shared::storage::ObjectKey;

/// This run's write intents: their owner, and how many it recorded (what
/// its commit must remove).
#[derive(Clone)]
pub(super) struct Writer {
    pub(super) owner: Arc<str>,
    pub(super) intents: Arc<AtomicU64>,
}

impl Writer {
    /// Records intents on the new chunks of a batch, then checks that no
    /// deleter claimed them; only then may their objects be written.
    pub(super) async fn intend(
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
    pub(super) async fn intend_keys(
        &self,
        db: &larder_shared::db::Db,
        keys: &[ObjectKey],
    ) -> anyhow::Result<()> {
        let keys = keys.to_vec();
        if keys.is_empty() {
            return Ok(());
        }
        let mut conn = db.conn().await?;
        // Committed (autocommit) before the claims are read.
        let recorded =
            chunk_claims::insert_intents(conn.raw(), &self.owner, &keys, unix_now()).await?;
        self.intents
            .fetch_add(recorded.len() as u64, Ordering::SeqCst);
        if chunk_claims::claimed(conn.raw(), &keys).await?.is_empty() {
            return Ok(());
        }
        // Nothing of this batch is written yet: withdraw its intents so the
        // deleter can go on, and retry once it is done.
        let recorded: Vec<ObjectKey> = keys
            .into_iter()
            .filter(|k| recorded.iter().any(|r| r == k.as_str()))
            .collect();
        chunk_claims::drop_intents(conn.raw(), &self.owner, &recorded).await?;
        self.intents
            .fetch_sub(recorded.len() as u64, Ordering::SeqCst);
        bail!("a chunk of this NAR is being garbage-collected; retrying later");
    }
}
