//! What must hold between the chunk store, the NARs and storage whenever no
//! GC is running, and an ingest driver that retries like the job queue.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use larder_shared::chunk::ChunkHash;
use larder_shared::chunk_store::ChunkStore;
use larder_shared::db::chunks::{self, BATCH};
use larder_shared::db::nars;
use larder_shared::db::{ChunkId, NarId};
use larder_worker::Services;
use larder_worker::jobs::ingest;

use super::{ints, pairs};
use crate::common::TestApp;

/// Pause between passes of [`ingest_until_done`] after a failed one.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Bytes of the objects chunk rows live in (packs whole, as recorded, and
/// chunks stored on their own): what a GC deleting every chunk frees.
pub async fn stored_chunk_bytes(app: &TestApp) -> i64 {
    let own = app
        .scalar(
            "SELECT CAST(COALESCE(SUM(file_size), 0) AS BIGINT) FROM chunks WHERE pack_id IS NULL",
        )
        .await;
    let packs = app
        .scalar("SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM packs")
        .await;
    own + packs
}

/// Ids of staged NARs.
pub async fn staged_nars(svc: &Services) -> Vec<NarId> {
    ints(
        &svc.db,
        "SELECT id FROM nars WHERE state = 'staged' ORDER BY id",
    )
    .await
    .into_iter()
    .map(NarId)
    .collect()
}

/// Ingests every staged NAR, retrying failed ones (ingest fails on purpose
/// when GC is deleting a chunk it needs; the job queue would retry it) for
/// at most `passes` passes. Returns the errors seen on the way, or an
/// error naming the NARs still staged at the end.
pub async fn ingest_until_done(svc: &Services, passes: usize) -> Result<Vec<String>, String> {
    let mut errors = Vec::new();
    for _ in 0..passes {
        let staged = staged_nars(svc).await;
        if staged.is_empty() {
            return Ok(errors);
        }
        let mut failed = false;
        for id in staged {
            if let Err(e) = ingest::ingest(svc, id).await {
                errors.push(format!("NAR {id}: {e:#}"));
                failed = true;
            }
        }
        if failed {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
    let left = staged_nars(svc).await;
    if left.is_empty() {
        Ok(errors)
    } else {
        Err(format!(
            "NARs {left:?} still staged after {passes} passes; errors: {errors:#?}"
        ))
    }
}

/// Asserts, with no GC running, that
/// - no chunk is left marked as being deleted (`refcount < 0`);
/// - every chunk's `refcount` is the number of ready NARs listing it, and
///   every chunk a ready NAR lists has a row;
/// - every chunk row's object (its own, or its pack) is in storage.
///
/// Returns the number of chunk and pack objects no row locates a frame in
/// (left by ingests that failed after storing, or packs whose chunks all
/// died; GC or `verify --repair` removes them).
pub async fn assert_chunk_store_sound(app: &TestApp, ctx: &str) -> usize {
    let db = &app.state.db;
    let marked = ints(db, "SELECT id FROM chunks WHERE refcount < 0").await;
    assert!(
        marked.is_empty(),
        "{ctx}: chunks left marked for deletion: {marked:?}"
    );

    let mut expected: HashMap<ChunkId, i64> = HashMap::new();
    let mut conn = db.conn().await.expect("connection");
    for id in ints(db, "SELECT id FROM nars WHERE state = 'ready'").await {
        let nar = nars::get(conn.raw(), NarId(id))
            .await
            .expect("query")
            .expect("NAR row");
        for c in nar.chunk_ids.iter().copied().collect::<BTreeSet<_>>() {
            *expected.entry(c).or_default() += 1;
        }
    }
    let rows = pairs(db, "SELECT id, refcount FROM chunks ORDER BY id").await;
    let ids: HashSet<ChunkId> = rows.iter().map(|(id, _)| ChunkId(*id)).collect();
    for (id, refcount) in &rows {
        let want = expected.get(&ChunkId(*id)).copied().unwrap_or(0);
        assert_eq!(*refcount, want, "{ctx}: refcount of chunk {id}");
    }
    let mut lost: Vec<ChunkId> = expected
        .keys()
        .filter(|c| !ids.contains(c))
        .copied()
        .collect();
    lost.sort();
    assert!(
        lost.is_empty(),
        "{ctx}: ready NARs list chunks without rows: {lost:?}"
    );

    let mut stored: HashSet<String> = app.object_keys("chunks/").await.into_iter().collect();
    stored.extend(app.object_keys("packs/").await);
    let all: Vec<ChunkId> = rows.iter().map(|(id, _)| ChunkId(*id)).collect();
    let mut row_keys = HashSet::new();
    for batch in all.chunks(BATCH) {
        for rec in chunks::get_many(conn.raw(), batch)
            .await
            .expect("query")
            .values()
        {
            let key = ChunkStore::locate(rec).key.as_str().to_owned();
            assert!(
                stored.contains(&key),
                "{ctx}: chunk {} (refcount {}) has no object {key}",
                rec.id,
                rec.refcount
            );
            row_keys.insert(key);
        }
    }
    stored.difference(&row_keys).count()
}

/// Hash → id of every chunk at `refcount = 0`: what the next GC may delete.
pub async fn unreferenced_chunks(app: &TestApp) -> HashMap<ChunkHash, ChunkId> {
    let ids: Vec<ChunkId> = ints(&app.state.db, "SELECT id FROM chunks WHERE refcount = 0")
        .await
        .into_iter()
        .map(ChunkId)
        .collect();
    chunk_hashes(app, &ids)
        .await
        .into_iter()
        .map(|(id, hash)| (hash, id))
        .collect()
}

/// Id → hash of the chunks `ids` that exist.
pub async fn chunk_hashes(app: &TestApp, ids: &[ChunkId]) -> HashMap<ChunkId, ChunkHash> {
    let mut conn = app.state.db.conn().await.expect("connection");
    let mut out = HashMap::new();
    for batch in ids.chunks(BATCH) {
        let recs = chunks::get_many(conn.raw(), batch).await.expect("query");
        out.extend(recs.into_iter().map(|(id, rec)| (id, rec.hash)));
    }
    out
}
