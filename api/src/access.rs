//! Access recording without a database write per request: narinfo and NAR
//! reads are noted in memory and written in batches every
//! `[access] flush-interval` (and at shutdown). GC keeps paths that were
//! read within their retention period. Token use goes the same way, so a
//! token's `last_used_at` costs at most one write per flush interval.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use larder_shared::db::chunks::BATCH;
use larder_shared::db::{CacheId, Db, DbError, NarId, ObjectId, objects, tokens, unix_now};

#[derive(Debug, Default)]
struct Pending {
    objects: HashSet<ObjectId>,
    nars: HashMap<CacheId, HashSet<NarId>>,
    /// Token ids seen.
    tokens: HashSet<String>,
}

/// Accesses noted since the last flush.
#[derive(Debug, Default)]
pub struct AccessLog {
    pending: Mutex<Pending>,
}

impl AccessLog {
    fn with<R>(&self, f: impl FnOnce(&mut Pending) -> R) -> R {
        match self.pending.lock() {
            Ok(mut g) => f(&mut g),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Notes a narinfo read of an object.
    pub fn object(&self, object_id: ObjectId) {
        self.with(|p| p.objects.insert(object_id));
    }

    /// Notes a NAR read through a cache.
    pub fn nar(&self, cache_id: CacheId, nar_id: NarId) {
        self.with(|p| p.nars.entry(cache_id).or_default().insert(nar_id));
    }

    /// Notes a request carrying the token with this `jti`.
    pub fn token(&self, jti: &str) {
        self.with(|p| {
            if !p.tokens.contains(jti) {
                p.tokens.insert(jti.to_owned());
            }
        });
    }

    /// Writes what was noted, as accessed at `at`.
    pub async fn flush(&self, db: &Db, at: i64) -> Result<(), DbError> {
        let pending = self.with(std::mem::take);
        if pending.objects.is_empty() && pending.nars.is_empty() && pending.tokens.is_empty() {
            return Ok(());
        }
        let mut conn = db.conn().await?;
        let ids: Vec<ObjectId> = pending.objects.into_iter().collect();
        for batch in ids.chunks(BATCH) {
            objects::touch(conn.raw(), batch, at).await?;
        }
        for (cache_id, nars) in pending.nars {
            let nars: Vec<NarId> = nars.into_iter().collect();
            for batch in nars.chunks(BATCH) {
                objects::touch_by_nar(conn.raw(), cache_id, batch, at).await?;
            }
        }
        let jtis: Vec<String> = pending.tokens.into_iter().collect();
        for batch in jtis.chunks(BATCH) {
            tokens::mark_used(conn.raw(), batch, at).await?;
        }
        Ok(())
    }

    /// Flushes every `interval` until `shutdown`, then once more.
    pub fn spawn_flusher(
        self: std::sync::Arc<Self>,
        db: Db,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        tokio::spawn(async move {
            loop {
                let stop = tokio::select! {
                    _ = shutdown.cancelled() => true,
                    _ = tokio::time::sleep(interval) => false,
                };
                if let Err(e) = self.flush(&db, unix_now()).await {
                    tracing::warn!(error = %e, "writing access times failed; they are lost for this interval");
                }
                if stop {
                    return;
                }
            }
        });
    }
}
