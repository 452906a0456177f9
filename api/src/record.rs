//! Recording a pushed store path, the one transaction shape every upload
//! route shares (Attic's `upload-path`, and the narinfo PUT of stock
//! `nix copy`): the NAR row (a fresh staged copy, or a NAR already stored),
//! the object with the uploader's metadata, and the ingest job when the
//! staged copy is the one to ingest. The caller owns the transaction, so it
//! can record more in it (the uploader's URL) before committing. A push's
//! audit row ([`larder_shared::audit`]) goes into the same transaction.

use larder_core::CacheName;
use larder_core::nix::hash::NarHash;
use larder_core::nix::store_path::StorePathHash;
use larder_shared::audit::{Actor, AuditEvent, PushRoute};
use larder_shared::db::chunks::BATCH;
use larder_shared::db::nars::{self, NarState};
use larder_shared::db::object_refs;
use larder_shared::db::objects::{self, ObjectMeta, Replace};
use larder_shared::db::{CacheId, NarId, ObjectId, Tx, audit, staging_intents};
use larder_shared::jobs;
use larder_shared::retention::Retention;
use larder_shared::storage::ObjectKey;

use crate::error::{ApiError, ApiResult};

/// A store path to record in a cache.
#[derive(Debug, Clone, Copy)]
pub struct NewPath<'a> {
    /// The cache.
    pub cache_id: CacheId,
    /// Hash part of the store path.
    pub hash: &'a StorePathHash,
    /// What narinfo serves besides the NAR fields (signatures included).
    pub meta: &'a ObjectMeta,
    /// The verified NAR hash.
    pub nar_hash: &'a NarHash,
    /// The verified NAR size.
    pub nar_size: u64,
    /// Whether this upload may replace another NAR of the path (first push
    /// wins otherwise).
    pub replace: Replace,
    /// Who the path comes from.
    pub origin: Origin<'a>,
    /// The cache's retention, to mark the paths this one references as used
    /// before it is written ([`refresh_references`]); `None` for imports,
    /// which keep the clocks they bring.
    pub retention: Option<Retention>,
}

/// Who a path comes from: what `objects.created_by` and the audit trail say.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// A push through the API: audited (`push`, or `replace` when the path
    /// had another NAR), created by the token's subject.
    Push {
        /// Who pushed.
        actor: &'a Actor,
        /// The cache's name, for the audit row.
        cache: &'a CacheName,
        /// Which route.
        route: PushRoute,
    },
    /// `import-attic`: created by Attic's uploader; the import audits one
    /// summary per cache instead of a row per path.
    Import {
        /// Attic's `objects.created_by`.
        created_by: Option<&'a str>,
    },
}

/// What [`record_staged`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The object's row id.
    pub object_id: ObjectId,
    /// The NAR's row id.
    pub nar_id: NarId,
    /// False when the NAR row already existed: the caller's staged copy is
    /// surplus, to delete once the transaction has committed.
    pub used_staged_copy: bool,
}

/// Records the path with a freshly staged, verified copy of its NAR at `key`:
/// a new NAR row and its ingest job, or, when another upload of the same NAR
/// won, a link to that row (a broken NAR is repaired by the fresh copy).
/// A NAR row naming `key` takes it over from its staging intent
/// ([`staging_intents::adopt`]); [`ApiError::StagedCopyExpired`] if the
/// sweeper took the intent first, and the caller must drop the transaction.
pub async fn record_staged(
    tx: &mut Tx,
    path: &NewPath<'_>,
    key: &ObjectKey,
    now: i64,
) -> ApiResult<Recorded> {
    let size = path.nar_size as i64;
    let (nar_id, used) =
        match nars::insert_staged(tx.raw(), path.nar_hash, size, key.as_str(), now).await? {
            Some(id) => (id, true),
            None => {
                let nar = nars::find_by_hash(tx.raw(), path.nar_hash)
                    .await?
                    .ok_or_else(|| ApiError::Internal("NAR vanished during upload".into()))?;
                // A broken NAR is repaired by this fresh, verified copy.
                let repaired = nar.state == NarState::Broken
                    && nars::restage(tx.raw(), nar.id, key.as_str(), now).await?;
                (nar.id, repaired)
            }
        };
    if used && !staging_intents::adopt(tx.raw(), key).await? {
        return Err(ApiError::StagedCopyExpired);
    }
    let object_id = upsert(tx, path, nar_id, now).await?;
    if used {
        jobs::enqueue_ingest(
            tx.raw(),
            &[jobs::StagedNar {
                nar_id,
                nar_size: path.nar_size,
            }],
        )
        .await?;
    }
    Ok(Recorded {
        object_id,
        nar_id,
        used_staged_copy: used,
    })
}

/// Records the path as a link to a NAR the store already has (the uploader
/// proved possession). Touches the NAR so GC, which deletes only orphans
/// untouched for its grace period, leaves it alone; `None` if it is gone.
pub async fn link_existing(
    tx: &mut Tx,
    path: &NewPath<'_>,
    nar_id: NarId,
    now: i64,
) -> ApiResult<Option<ObjectId>> {
    if !nars::touch(tx.raw(), nar_id, now).await? {
        return Ok(None);
    }
    let object_id = upsert(tx, path, nar_id, now).await?;
    Ok(Some(object_id))
}

/// Links the path to `nar_id`, or [`ApiError::PathConflict`] when the cache
/// already serves it with another NAR that this upload may not replace; the
/// caller's transaction must then be dropped (it holds the NAR row). A push
/// is audited here, in the caller's transaction. Callers have written (the
/// NAR row) before this read, so SQLite holds the write lock already.
async fn upsert(tx: &mut Tx, path: &NewPath<'_>, nar_id: NarId, now: i64) -> ApiResult<ObjectId> {
    refresh_references(tx, path, now).await?;
    let (old_nar, created_by) = match path.origin {
        Origin::Push { actor, .. } => (
            objects::find(tx.raw(), path.cache_id, path.hash)
                .await?
                .map(|o| o.nar.nar_hash),
            actor.subject.as_deref(),
        ),
        Origin::Import { created_by } => (None, created_by),
    };
    let id = objects::upsert(
        tx.raw(),
        path.cache_id,
        path.hash,
        nar_id,
        path.meta,
        now,
        path.replace,
        created_by,
    )
    .await?
    .ok_or_else(|| ApiError::PathConflict {
        store_path_hash: path.hash.clone(),
        nar_hash: *path.nar_hash,
    })?;
    if let Origin::Push {
        actor,
        cache,
        route,
    } = path.origin
    {
        let (cache, store_path, nar_hash) = (
            cache.clone(),
            path.meta.store_path.to_string(),
            *path.nar_hash,
        );
        let event = match old_nar {
            Some(old_nar_hash) if old_nar_hash != nar_hash => AuditEvent::Replace {
                cache,
                store_path,
                nar_hash,
                old_nar_hash,
                route,
            },
            _ => AuditEvent::Push {
                cache,
                store_path,
                nar_hash,
                nar_size: path.nar_size,
                route,
            },
        };
        audit::insert(tx.raw(), now, actor, &event).await?;
    }
    Ok(id)
}

/// Marks the paths of the cache that `path` references as used at `now`
/// (those not used in the last moments, [`Retention::refresh_before`]), in
/// the upload's transaction and before the object is written: a new root
/// refreshes the closure it relies on, and on PostgreSQL the touched rows
/// stay locked until the commit, so a GC `DELETE` racing this upload waits,
/// then re-checks and keeps them (docs/gc.md "Closures").
async fn refresh_references(tx: &mut Tx, path: &NewPath<'_>, now: i64) -> ApiResult<()> {
    let Some(older_than) = path.retention.and_then(|r| r.refresh_before(now)) else {
        return Ok(());
    };
    let hashes = object_refs::ref_hashes(
        path.hash.as_str(),
        path.meta.references.iter().map(|r| r.hash.as_str()),
    );
    let hashes: Vec<&str> = hashes.iter().map(String::as_str).collect();
    for batch in hashes.chunks(BATCH) {
        objects::touch_by_hashes(tx.raw(), path.cache_id, batch, now, older_than).await?;
    }
    Ok(())
}
