//! Chunk packs (docs/architecture.md "Packs", docs/gc.md "Packs"): many
//! chunks' frames per storage object, every scenario on SQLite and
//! PostgreSQL.
//!
//! 1. small NARs ingested together share one pack (group commit);
//! 2. a NAR larger than a pack spans several, its new chunks contiguous in
//!    NAR order, and every range reads right across pack boundaries;
//! 3. chunks deduplicate across packs and across the layout before packs
//!    (one object per chunk), which stays readable beside packs;
//! 4. GC keeps a pack while any chunk in it lives (its dead bytes counted),
//!    and deletes it with its last chunk;
//! 5. a pack an ingest sealed but never committed (killed) is found through
//!    its write intent and deleted after the grace period;
//! 6. each pack's own index names exactly the chunk rows located in it;
//! 7. verify reads packed chunks back, marks a NAR whose pack bytes are
//!    damaged broken (a re-push repairs it), and removes orphan packs;
//! 8. compaction rewrites a mostly dead pack while a download that resolved
//!    the old locations is under way and an ingest reuses the chunks it moves; the old pack goes a grace period
//!    later, and every NAR reads the same bytes throughout; a compaction
//!    killed after sealing its new pack, before moving rows, loses nothing
//!    and leaks nothing;
//! 9. `larder-admin repack` moves chunks stored one per object into packs
//!    online; GC deletes the old objects a grace period later;
//! 10. a NAR that repeats its own chunks, or interleaves chunks shared with
//!     another NAR (in that NAR's pack) with its own, costs one storage read
//!     per pack, and reads the same bytes whole and in every range;
//! 11. runs sharing a pack fail alone: a NAR whose staged copy is bad fails
//!     (the others commit), a run that lost to an overlapping run of the
//!     same NAR changes nothing, and a run killed after its frames went into
//!     the shared pack, before its commit, loses nothing (the others commit;
//!     its NAR stays staged, is served, and its rerun ingests it);
//! 12. the runs of a shared pack commit in one transaction
//!     ([`group_commit`]): chunks they share are counted once per NAR, and a
//!     run whose commit fails fails alone.

use crate::common;

mod group_commit;
use crate::gc::gc_support::clock::{backdate_intents, gc_at, grace};
use crate::gc::gc_support::http::{assert_bytes, delete_path};
use crate::gc::gc_support::invariants::assert_chunk_store_sound;
use crate::gc::gc_support::pool::BlockPool;
use crate::pipeline::http::{Client, boundaries, check_ranges};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use http_body_util::BodyExt;
use tower::ServiceExt;

use futures::TryStreamExt;
use larder_shared::chunk_store::ChunkStore;
use larder_shared::chunk_store::nar::{ChunkLayout, Representation};
use larder_shared::config::Config;
use larder_shared::db::chunks::{self, BATCH};
use larder_shared::db::nars::NarState;
use larder_shared::db::unix_now;
use larder_shared::storage::checksum::Checksum;
use larder_shared::storage::{ObjectKey, layout};
use larder_shared::token::Permission;
use larder_worker::Services;
use larder_worker::jobs::ingest::{self, BeforeCommit, Outcome};
use larder_worker::jobs::verify;

use common::counting::Counting;
use common::nar::TestNar;
use common::read::{assert_kind, fetch, unzstd};
use common::{Backend, TestApp};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const PULL_PUSH_DELETE: &[Permission] = &[Permission::Pull, Permission::Push, Permission::Delete];

/// The smallest pack size, so a few MiB of NAR fill several packs.
async fn small_packs_app(backend: Backend) -> TestApp {
    TestApp::builder(backend)
        .pack_size(MIB as u64)
        .build()
        .await
}

on_both_backends!(
    small_nars_share_a_pack,
    pack_index_names_the_rows,
    a_bad_nar_fails_alone_in_its_group,
    a_staged_copy_is_checked_by_its_checksum,
    a_killed_run_of_a_group_loses_nothing,
    downloads_reuse_chunk_rows,
);

/// [`small_packs_app`] whose GC never compacts, so dead space stays.
async fn uncompacted_app(backend: Backend) -> TestApp {
    TestApp::builder(backend)
        .pack_size(MIB as u64)
        .compaction_threshold(0.0)
        .build()
        .await
}

on_both_backends!(crate::packs::uncompacted_app =>
    gc_keeps_a_pack_while_a_chunk_lives,
);

on_both_backends!(crate::packs::small_packs_app =>
    a_nar_spans_several_packs,
    compaction_reclaims_dead_space,
    killed_compaction_loses_nothing,
    killed_ingest_pack_is_collected,
    verify_reads_packs,
    repeated_chunks_are_read_once,
);

on_both_backends!(crate::gc::gc_support::legacy_app =>
    dedup_across_packs_and_the_old_layout,
    repack_moves_old_chunks_into_packs,
);

/// Ingests every staged NAR at once, as a worker running that many jobs
/// would.
async fn ingest_concurrently(svc: &Services, app: &TestApp) -> usize {
    let ids = app.staged_nar_ids().await;
    let runs = ids.into_iter().map(|id| {
        let svc = svc.clone();
        tokio::spawn(async move { ingest::ingest(&svc, id).await })
    });
    let mut done = 0;
    for run in futures::future::join_all(runs).await {
        match run.expect("task").expect("ingest") {
            Outcome::Ingested { .. } => done += 1,
            Outcome::Skipped => {}
        }
    }
    done
}

// --- 1. group commit ----------------------------------------------------------------

async fn small_nars_share_a_pack(app: &TestApp) {
    app.create_cache("small", false).await;
    let token = app.token(&[("small", PULL_PUSH_DELETE)]);
    let nars: Vec<TestNar> = (0..8)
        .map(|i| TestNar::files(&format!("small-{i}"), 900 + i, &[3 * KIB, 20 * KIB]))
        .collect();
    for n in &nars {
        assert_kind(&app.upload(&token, "small", n).await, "Uploaded");
    }
    assert_eq!(ingest_concurrently(&app.services, app).await, nars.len());
    let packs = app.count("packs").await;
    assert!(
        (1..nars.len() as i64).contains(&packs),
        "{} small NARs ingested together made {packs} packs",
        nars.len()
    );
    assert_eq!(app.object_keys("packs/").await.len() as i64, packs);
    assert_eq!(
        app.object_keys("chunks/").await.len(),
        0,
        "nothing unpacked"
    );
    for n in &nars {
        assert_bytes(app, &token, "small", n, "grouped").await;
    }
    app.assert_chunk_store_consistent().await;
    assert_chunk_store_sound(app, "grouped").await;
}

// --- 2. a NAR over several packs ------------------------------------------------------

async fn a_nar_spans_several_packs(app: &TestApp) {
    app.create_cache("big", true).await;
    let token = app.token(&[("big", PULL_PUSH_DELETE)]);
    // More chunks than one batch of rows (`BATCH`), so the download plans
    // more than one batch of rows into its first window.
    let nar = TestNar::files("big-1.0", 77, &[4096 * KIB, 3072 * KIB, 2048 * KIB]);
    assert_kind(&app.upload(&token, "big", &nar).await, "Uploaded");
    app.drain_jobs().await;
    let packs = app.count("packs").await;
    assert!(
        packs >= 6,
        "9 MiB of random data in 1 MiB packs: {packs} packs"
    );
    let n = app.nar_record(&nar).await.chunk_ids.len();
    assert!(n > BATCH, "{n} chunks");

    // In NAR order, each pack's frames follow one another without a gap:
    // the NAR's new chunks are contiguous, so a download reads runs.
    let rec = app.nar_record(&nar).await;
    let mut conn = app.state.db.conn().await.expect("connection");
    let mut prev: Option<(i64, i64)> = None;
    let mut switches = 0;
    for ids in rec.chunk_ids.chunks(BATCH) {
        let found = chunks::get_many(conn.raw(), ids).await.expect("query");
        for id in ids {
            let c = &found[id];
            let (pack, offset) = (c.pack_id.expect("packed"), c.pack_offset.expect("offset"));
            match prev {
                Some((p, end)) if p == pack => assert_eq!(offset, end, "chunk {id} follows"),
                _ => switches += 1,
            }
            prev = Some((pack, offset + i64::from(c.file_size)));
        }
    }
    drop(conn);
    assert_eq!(switches, packs, "each pack is one run of the NAR");
    // So a download reads each pack once, the first window included.
    assert_one_read_per_pack(app, &nar, packs as usize).await;

    let base = app.serve().await;
    let client = Client::new(&base, None);
    let (plain_cuts, zst_cuts) = boundaries(app, &nar).await;
    let url = |ext: &str| format!("/big/nar/{}.{ext}", nar.url_hash());
    check_ranges(&client, &url("nar"), &nar.bytes, &plain_cuts).await;
    let zst = client.get(&url("nar.zst"), &[]).await.body;
    check_ranges(&client, &url("nar.zst"), &zst, &zst_cuts).await;
    app.assert_chunk_store_consistent().await;
}

// --- 3. dedup across packs and layouts -------------------------------------------------

async fn dedup_across_packs_and_the_old_layout(app: &TestApp) {
    app.create_cache("mixed", false).await;
    let token = app.token(&[("mixed", PULL_PUSH_DELETE)]);
    let pool = BlockPool::new(0xdd, 4, 256 * KIB);
    let old = pool.nar("old", 1, &[0, 1]);
    assert_kind(&app.upload(&token, "mixed", &old).await, "Uploaded");
    app.drain_jobs().await;
    assert_eq!(app.count("packs").await, 0, "stored one object per chunk");
    let own_objects = app.object_keys("chunks/").await.len();
    assert!(own_objects > 0);

    // The same store after an upgrade: packs on, old chunks untouched.
    let packed = with_packs(app, MIB as u64);
    let new = pool.nar("new", 2, &[1, 2]);
    let newer = pool.nar("newer", 3, &[2, 3]);
    for n in [&new, &newer] {
        assert_kind(&app.upload(&token, "mixed", n).await, "Uploaded");
        for id in app.staged_nar_ids().await {
            ingest::ingest(&packed, id).await.expect("ingest");
        }
    }
    let packs = app.count("packs").await;
    assert!(packs >= 2, "{packs} packs");
    assert_eq!(app.object_keys("chunks/").await.len(), own_objects);
    let shared = app
        .scalar("SELECT COUNT(*) FROM chunks WHERE refcount > 1")
        .await;
    assert!(
        shared > 0,
        "block 1 and 2 chunks are reused, not stored again"
    );
    for n in [&old, &new, &newer] {
        assert_bytes(app, &token, "mixed", n, "mixed layouts").await;
    }

    // Deleting everything frees both layouts.
    for n in [&old, &new, &newer] {
        delete_path(app, &token, "mixed", n)
            .await
            .assert_status(StatusCode::NO_CONTENT);
    }
    let t1 = unix_now() + grace(app) + 60;
    gc_at(app, t1).await;
    let report = gc_at(app, t1 + grace(app) + 60).await;
    assert_eq!(report.packs_deleted, packs as u64);
    assert_eq!(app.count("chunks").await, 0);
    assert!(app.object_keys("chunks/").await.is_empty());
    assert!(app.object_keys("packs/").await.is_empty());
}

/// The app's services with `[storage] pack-size = size`.
fn with_packs(app: &TestApp, size: u64) -> Services {
    with_config(app, |c| c.storage.pack_size = size)
}

/// The app's services with its configuration changed by `edit` (another
/// worker process of the same deployment).
pub(crate) fn with_config(app: &TestApp, edit: impl FnOnce(&mut Config)) -> Services {
    let mut config: Config = (*app.services.config).clone();
    edit(&mut config);
    Services::new(
        Arc::new(config),
        app.state.db.clone(),
        app.state.storage.clone(),
        app.state.staging.clone(),
    )
}

// --- 4. GC and dead space --------------------------------------------------------------

async fn gc_keeps_a_pack_while_a_chunk_lives(app: &TestApp) {
    app.create_cache("dead", false).await;
    let token = app.token(&[("dead", PULL_PUSH_DELETE)]);
    let pool = BlockPool::new(0xde, 3, 700 * KIB);
    // `a` stores blocks 0 and 1 in its packs; `b` reuses block 1 and adds 2.
    let a = pool.nar("a", 10, &[0, 1]);
    let b = pool.nar("b", 11, &[1, 2]);
    for n in [&a, &b] {
        assert_kind(&app.upload(&token, "dead", n).await, "Uploaded");
        app.drain_jobs().await;
    }
    let live_before = app
        .scalar("SELECT CAST(SUM(live_bytes) AS BIGINT) FROM packs")
        .await;
    let packs_before = app.count("packs").await;

    delete_path(app, &token, "dead", &a)
        .await
        .assert_status(StatusCode::NO_CONTENT);
    let t1 = unix_now() + grace(app) + 60;
    gc_at(app, t1).await;
    let report = gc_at(app, t1 + grace(app) + 60).await;
    assert!(report.chunks_deleted > 0, "{report:?}");
    // Block 0's chunks are dead space now; a pack that held only them went.
    let live_after = app
        .scalar("SELECT CAST(SUM(live_bytes) AS BIGINT) FROM packs")
        .await;
    assert!(live_after < live_before, "{live_after} < {live_before}");
    let dead = app
        .scalar("SELECT CAST(SUM(size - live_bytes) AS BIGINT) FROM packs")
        .await;
    assert!(
        dead > 0,
        "the pack shared by blocks 0 and 1 keeps block 0 as dead bytes"
    );
    assert!(app.count("packs").await <= packs_before);
    assert_eq!(
        app.count("packs").await + report.packs_deleted as i64,
        packs_before
    );
    assert_bytes(app, &token, "dead", &b, "after GC").await;
    app.assert_chunk_store_consistent().await;
    assert_chunk_store_sound(app, "after GC").await;
}

// --- 5. a killed ingest's pack -----------------------------------------------------------

async fn killed_ingest_pack_is_collected(app: &TestApp) {
    app.create_cache("killed", false).await;
    let token = app.token(&[("killed", PULL_PUSH_DELETE)]);
    let nar = TestNar::files("killed-1.0", 55, &[2 * MIB]);
    assert_kind(&app.upload(&token, "killed", &nar).await, "Uploaded");
    let id = app.staged_nar_ids().await[0];
    let pause = BeforeCommit::default();
    let held = {
        let (svc, pause) = (app.services.clone(), pause.clone());
        tokio::spawn(async move { ingest::ingest_pausing(&svc, id, &pause).await })
    };
    pause.reached().await;
    // Killed between sealing its packs and committing.
    held.abort();
    let _ = held.await;
    let written = app.object_keys("packs/").await;
    assert!(
        !written.is_empty(),
        "the packs were sealed before the commit"
    );
    assert_eq!(app.count("packs").await, 0, "no commit, no pack rows");
    assert!(app.count("chunk_intents").await >= written.len() as i64);

    // Within the grace period the intents protect the packs, and verify
    // reports them as pending writes, not as orphans.
    let now = unix_now();
    let report = verify::run(&app.services, now, false)
        .await
        .expect("verify");
    assert!(report.orphan_objects.is_empty(), "{report:?}");
    let mut pending = report.pending_writes.clone();
    pending.sort();
    assert_eq!(pending, written, "{report:?}");
    assert_eq!(gc_at(app, now).await.orphan_objects_deleted, 0);
    assert_eq!(app.object_keys("packs/").await, written);
    // A dead writer's intents age; then GC deletes what it wrote.
    backdate_intents(app, grace(app) + 60).await;
    let report = gc_at(app, now).await;
    assert_eq!(report.orphan_objects_deleted, written.len() as u64);
    assert!(app.object_keys("packs/").await.is_empty());
    assert_eq!(app.count("chunk_intents").await, 0);

    // The NAR is still staged and served; its job's retry stores it again.
    let staged = fetch(
        app,
        &token,
        "killed",
        &format!("nar/{}.nar", nar.url_hash()),
    )
    .await;
    assert!(staged == nar.bytes, "served from staging meanwhile");
    assert_eq!(app.drain_jobs().await, 1);
    assert_bytes(app, &token, "killed", &nar, "ingested again").await;
    app.assert_chunk_store_consistent().await;
}

// --- 6. the index in every pack -------------------------------------------------------------

async fn pack_index_names_the_rows(app: &TestApp) {
    app.create_cache("idx", false).await;
    let token = app.token(&[("idx", PULL_PUSH_DELETE)]);
    let pool = BlockPool::new(0x1d, 3, 300 * KIB);
    for (i, picks) in [[0, 1], [1, 2]].iter().enumerate() {
        let n = pool.nar(&format!("idx-{i}"), 20 + i as u64, picks);
        assert_kind(&app.upload(&token, "idx", &n).await, "Uploaded");
    }
    app.drain_jobs().await;
    let store = app.services.chunks();
    let mut located: HashMap<i64, Vec<(String, i64, i32, i32)>> = HashMap::new();
    let mut conn = app.state.db.conn().await.expect("connection");
    let rows =
        larder_shared::db::verify::chunk_page(conn.raw(), larder_shared::db::ChunkId(0), 10_000)
            .await
            .expect("chunks");
    drop(conn);
    for r in rows {
        let pack = r.pack_id.expect("packed");
        let entry = (
            r.hash.to_string(),
            r.pack_offset.expect("offset"),
            r.file_size,
            r.chunk_size,
        );
        located.entry(pack).or_default().push(entry);
    }
    assert!(!located.is_empty());
    for (pack, mut want) in located {
        let index = store.read_pack_index(pack).await.expect("index");
        let mut got: Vec<(String, i64, i32, i32)> = index
            .iter()
            .map(|e| {
                (
                    e.hash.to_string(),
                    e.offset as i64,
                    e.length as i32,
                    e.chunk_size as i32,
                )
            })
            .collect();
        want.sort();
        got.sort();
        // Every row is in its pack's index; the index may hold more (frames
        // whose rows a concurrent ingest inserted first: dead space).
        for w in &want {
            assert!(got.contains(w), "pack {pack}: {w:?} missing from {got:?}");
        }
    }
}

// --- 7. verify -------------------------------------------------------------------------------

async fn verify_reads_packs(app: &TestApp) {
    app.create_cache("vp", false).await;
    let token = app.token(&[("vp", PULL_PUSH_DELETE)]);
    let damaged = TestNar::files("damaged-2.0", 60, &[1536 * KIB]);
    let fine = TestNar::files("fine-2.0", 61, &[100 * KIB]);
    for n in [&damaged, &fine] {
        assert_kind(&app.upload(&token, "vp", n).await, "Uploaded");
        app.drain_jobs().await;
    }
    let svc = &app.services;
    let chunk_rows = app.count("chunks").await as u64;
    let report = verify::run(svc, unix_now(), false).await.expect("verify");
    assert_eq!(report.chunks_checked, chunk_rows);
    assert!(report.damaged_chunks.is_empty(), "{report:?}");
    assert!(report.orphan_objects.is_empty(), "{report:?}");

    // An orphan pack (no row, no intent), older than the grace period.
    let orphan = layout::pack_key(999_999);
    svc.storage
        .put_bytes(&orphan, Bytes::from_static(b"not a pack"))
        .await
        .expect("put");
    app.age_object(
        orphan.as_str(),
        Duration::from_secs(grace(app) as u64 + 3600),
    );

    // Flip a byte inside one of `damaged`'s frames.
    let rec = app.nar_record(&damaged).await;
    let victim = rec.chunk_ids[rec.chunk_ids.len() / 2];
    let mut conn = app.state.db.conn().await.expect("connection");
    let victim = chunks::get_many(conn.raw(), &[victim])
        .await
        .expect("query")[&victim]
        .clone();
    drop(conn);
    let key = layout::pack_key(victim.pack_id.expect("packed"));
    let path = app.object_path(key.as_str());
    let mut bytes = std::fs::read(&path).expect("pack file");
    let at = victim.pack_offset.expect("offset") as usize + victim.file_size as usize / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&path, &bytes).expect("damage the pack");

    let report = verify::run(svc, unix_now(), true).await.expect("verify");
    assert_eq!(report.orphan_objects, vec![orphan.as_str().to_owned()]);
    assert_eq!(report.orphans_deleted, 1);
    assert!(
        report
            .damaged_chunks
            .iter()
            .any(|(h, _)| *h == victim.hash.to_string()),
        "{report:?}"
    );
    assert_eq!(app.nar_record(&damaged).await.state, NarState::Broken);
    assert_bytes(app, &token, "vp", &fine, "after verify").await;
    let missing = ObjectKey::new(orphan.as_str().to_owned()).expect("key");
    assert!(svc.storage.head(&missing).await.expect("head").is_none());

    // A re-push repairs it, into a new pack.
    assert_kind(&app.upload(&token, "vp", &damaged).await, "Uploaded");
    assert_eq!(app.drain_jobs().await, 1);
    assert_bytes(app, &token, "vp", &damaged, "repaired").await;
    assert_chunk_store_sound(app, "repaired").await;
}

// --- 8. compaction -------------------------------------------------------------------------

async fn compaction_reclaims_dead_space(app: &TestApp) {
    app.create_cache("cmp", false).await;
    let token = app.token(&[("cmp", PULL_PUSH_DELETE)]);
    let (pool, y, t1) = mostly_dead_pack(app, &token, "cmp").await;
    let grace = grace(app);

    // A download of `y` that resolved its chunks' locations before the move.
    let mut body = app
        .router()
        .oneshot(
            common::request(
                axum::http::Method::GET,
                &format!("/cmp/nar/{}.nar", y.url_hash()),
                Some(&token),
            )
            .body(axum::body::Body::empty())
            .expect("request"),
        )
        .await
        .expect("router")
        .into_body();
    let first = body.frame().await.expect("a first frame").expect("ok");
    let mut got = first.into_data().expect("data").to_vec();

    let t2 = t1 + grace + 60;
    let before = app.object_keys("packs/").await;
    // An ingest reusing the chunks compaction moves, running with the GC.
    let z = pool.nar("z", 32, &[2, 3]);
    assert_kind(&app.upload(&token, "cmp", &z).await, "Uploaded");
    let z_id = app.staged_nar_ids().await[0];
    let svc = app.services.clone();
    let ingesting = tokio::spawn(async move { ingest::ingest(&svc, z_id).await });
    let report = gc_at(app, t2).await;
    // A GC at t2 takes the ingest's fresh write intents for stale ones (its
    // clock is a grace period ahead): if it met one, the ingest rolled
    // back, and its job would run it again, as here.
    if let Err(e) = ingesting.await.expect("task") {
        assert!(format!("{e:#}").contains("retrying"), "{e:#}");
        ingest::ingest(&app.services, z_id)
            .await
            .expect("ingest after compaction");
    }
    assert_bytes(app, &token, "cmp", &z, "ingested beside compaction").await;
    assert!(report.chunks_deleted > 0, "{report:?}");
    let c = report.compaction;
    assert!(c.packs_retired >= 1 && c.chunks_moved > 0, "{report:?}");
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM packs WHERE retired_at IS NOT NULL")
            .await as u64,
        c.packs_retired
    );
    // Retired packs stay a grace period: the download in flight finishes.
    for key in &before {
        let packed = larder_shared::storage::layout::parse_pack_key(key).expect("pack key");
        let retired = app
            .scalar(&format!(
                "SELECT COUNT(*) FROM packs WHERE id = {packed} AND retired_at IS NOT NULL"
            ))
            .await;
        if retired == 1 {
            assert!(
                app.object_keys(key).await.len() == 1,
                "{key} kept for the grace period"
            );
        }
    }
    while let Some(frame) = body.frame().await {
        got.extend_from_slice(&frame.expect("frame").into_data().expect("data"));
    }
    assert!(
        got == y.bytes,
        "a download across the move reads the same bytes"
    );
    assert_bytes(app, &token, "cmp", &y, "after compaction").await;
    app.assert_chunk_store_consistent().await;

    // A grace period later the retired packs are deleted.
    let t3 = t2 + grace + 60;
    let report = gc_at(app, t3).await;
    assert!(report.packs_deleted >= c.packs_retired, "{report:?}");
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM packs WHERE retired_at IS NOT NULL")
            .await,
        0
    );
    let dead = app
        .scalar("SELECT CAST(COALESCE(SUM(size - live_bytes), 0) AS BIGINT) FROM packs")
        .await;
    let live = app
        .scalar("SELECT CAST(COALESCE(SUM(live_bytes), 0) AS BIGINT) FROM packs")
        .await;
    assert!(
        dead * 4 < live,
        "dead space reclaimed: {dead} dead, {live} live"
    );
    assert_bytes(app, &token, "cmp", &y, "after the old packs went").await;
    assert_store_clean(app, "compacted").await;
}

/// Two NARs sharing block 2, one of them deleted and its NAR collected, so
/// once its chunks go the 1 MiB pack holding blocks 0, 1 and the start of 2
/// is about a fifth live: (the block pool, the survivor, the time of that
/// GC).
async fn mostly_dead_pack(app: &TestApp, token: &str, cache: &str) -> (BlockPool, TestNar, i64) {
    let pool = BlockPool::new(0xc1, 4, 400 * KIB);
    let x = pool.nar("x", 40, &[0, 1, 2]);
    let y = pool.nar("y", 41, &[2, 3]);
    for n in [&x, &y] {
        assert_kind(&app.upload(token, cache, n).await, "Uploaded");
        app.drain_jobs().await;
    }
    delete_path(app, token, cache, &x)
        .await
        .assert_status(StatusCode::NO_CONTENT);
    let t1 = unix_now() + grace(app) + 60;
    assert_eq!(
        gc_at(app, t1).await.compaction,
        Default::default(),
        "nothing dead yet"
    );
    (pool, y, t1)
}

/// A consistent store whose every object a row needs is there, and that
/// `verify` finds nothing wrong with.
pub(crate) async fn assert_store_clean(app: &TestApp, ctx: &str) {
    app.assert_chunk_store_consistent().await;
    assert_chunk_store_sound(app, ctx).await;
    let report = verify::run(&app.services, unix_now(), false)
        .await
        .expect("verify");
    assert!(
        report.damaged_chunks.is_empty() && report.orphan_objects.is_empty(),
        "{ctx}: {report:?}"
    );
}

async fn killed_compaction_loses_nothing(app: &TestApp) {
    app.create_cache("kc", false).await;
    let token = app.token(&[("kc", PULL_PUSH_DELETE)]);
    let (_, y, t1) = mostly_dead_pack(app, &token, "kc").await;
    let t2 = t1 + grace(app) + 60;
    // The chunk phase first, with compaction off: the dead space is there.
    let no_compaction = with_config(app, |c| c.storage.compaction_threshold = 0.0);
    larder_worker::jobs::gc::run(&no_compaction, t2, "gc-test")
        .await
        .expect("GC")
        .expect("lease");
    let packs_before = app.object_keys("packs/").await;

    // A compaction killed between sealing its new pack and moving rows.
    kill_compaction_before_commit(app, t2).await;
    let after = app.object_keys("packs/").await;
    assert!(after.len() > packs_before.len(), "the new pack was sealed");
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM packs WHERE retired_at IS NOT NULL")
            .await,
        0,
        "no row moved"
    );
    assert_bytes(app, &token, "kc", &y, "after the killed compaction").await;
    app.assert_chunk_store_consistent().await;

    // Its intent ages; the next GC deletes the new pack and compacts again.
    backdate_intents(app, grace(app) + 60).await;
    let report = gc_at(app, t2).await;
    assert!(report.orphan_objects_deleted >= 1, "{report:?}");
    assert!(report.compaction.chunks_moved > 0, "{report:?}");
    assert_bytes(app, &token, "kc", &y, "compacted after the crash").await;
    gc_at(app, t2 + grace(app) + 60).await;
    assert_bytes(app, &token, "kc", &y, "old packs gone").await;
    assert_store_clean(app, "after the killed compaction").await;
}

/// Runs a compaction at `now` until it has sealed its first new pack, kills
/// it there (before its commit), and releases the dead holder's GC lease
/// (it would lapse after its TTL).
pub(crate) async fn kill_compaction_before_commit(app: &TestApp, now: i64) {
    let lease = larder_worker::gc_lease::GcLease::acquire(&app.services, now, "compactor")
        .await
        .expect("lease")
        .expect("free");
    let pause = BeforeCommit::default();
    let held = {
        let (svc, pause) = (app.services.clone(), pause.clone());
        tokio::spawn(async move {
            larder_worker::compaction::compact_pausing(&svc, &lease, now, &pause).await
        })
    };
    pause.reached().await;
    held.abort();
    let _ = held.await;
    larder_worker::gc_lease::GcLease::acquire(&app.services, now, "compactor")
        .await
        .expect("lease")
        .expect("ours")
        .release(&app.services, false)
        .await
        .expect("release");
}

// --- 9. repack ------------------------------------------------------------------------------

async fn repack_moves_old_chunks_into_packs(app: &TestApp) {
    app.create_cache("rp", false).await;
    let token = app.token(&[("rp", PULL_PUSH_DELETE)]);
    let pool = BlockPool::new(0x9e, 3, 300 * KIB);
    let nars = [pool.nar("r0", 50, &[0, 1]), pool.nar("r1", 51, &[1, 2])];
    for n in &nars {
        assert_kind(&app.upload(&token, "rp", n).await, "Uploaded");
    }
    app.drain_jobs().await;
    let rows = app.count("chunks").await;
    let own = app.object_keys("chunks/").await.len() as u64;
    assert_eq!(own as i64, rows, "stored one object per chunk");

    let packed = with_packs(app, MIB as u64);
    let moved = larder_worker::repack::run(&packed, unix_now(), false)
        .await
        .expect("repack");
    assert_eq!((moved.chunks_moved, moved.objects_retired), (own, own));
    assert!(moved.packs_written >= 1);
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM chunks WHERE pack_id IS NULL")
            .await,
        0
    );
    // The old objects stay a grace period, for downloads under way.
    assert_eq!(app.object_keys("chunks/").await.len() as u64, own);
    for n in &nars {
        assert_bytes(app, &token, "rp", n, "repacked").await;
    }
    assert_eq!(
        larder_worker::repack::run(&packed, unix_now(), false)
            .await
            .expect("again")
            .chunks_moved,
        0,
        "nothing left to repack"
    );

    let report = gc_at(app, unix_now() + grace(app) + 60).await;
    assert_eq!(report.orphan_objects_deleted, own, "{report:?}");
    assert!(app.object_keys("chunks/").await.is_empty());
    assert_eq!(app.count("retired_objects").await, 0);
    for n in &nars {
        assert_bytes(app, &token, "rp", n, "old objects gone").await;
    }
    assert_store_clean(app, "repacked").await;
}

// --- 10. a NAR that repeats its own chunks ---------------------------------------------

async fn repeated_chunks_are_read_once(app: &TestApp) {
    app.create_cache("rep", true).await;
    let token = app.token(&[("rep", PULL_PUSH_DELETE)]);
    // Blocks several times the average chunk, repeated: their interior
    // chunks repeat, each frame stored once.
    let pool = BlockPool::new(0x7e9, 6, 256 * KIB);
    let nar = pool.nar("rep-1.0", 31, &[0, 1, 0, 2, 1, 0, 0, 2]);
    assert_kind(&app.upload(&token, "rep", &nar).await, "Uploaded");
    app.drain_jobs().await;
    let (packs, repeats) = packs_and_repeats(app, &nar).await;
    assert!(repeats >= 6, "the NAR repeats {repeats} of its chunks");
    assert_one_read_per_pack(app, &nar, packs).await;

    // A NAR interleaving chunks it shares with the first (in that NAR's
    // pack) with its own (in a new one): one read per pack, plus one where
    // a shared chunk lies behind the last one read (chunk boundaries after
    // a different block match the block's later occurrence in the first).
    let mixed = pool.nar("rep-2.0", 32, &[3, 0, 4, 1, 5, 2]);
    assert_kind(&app.upload(&token, "rep", &mixed).await, "Uploaded");
    app.drain_jobs().await;
    let (packs, _) = packs_and_repeats(app, &mixed).await;
    assert!(packs >= 2, "the second NAR lies in {packs} packs");
    assert_one_read_per_pack(app, &mixed, packs + 1).await;

    let base = app.serve().await;
    let client = Client::new(&base, None);
    for n in [&nar, &mixed] {
        let (plain_cuts, zst_cuts) = boundaries(app, n).await;
        let url = |ext: &str| format!("/rep/nar/{}.{ext}", n.url_hash());
        check_ranges(&client, &url("nar"), &n.bytes, &plain_cuts).await;
        let zst = client.get(&url("nar.zst"), &[]).await.body;
        check_ranges(&client, &url("nar.zst"), &zst, &zst_cuts).await;
    }
}

/// The packs `nar`'s chunks lie in, and how many of its chunks repeat one
/// before them.
async fn packs_and_repeats(app: &TestApp, nar: &TestNar) -> (usize, usize) {
    let rec = app.nar_record(nar).await;
    let (mut packs, mut seen, mut repeats) = (HashSet::new(), HashSet::new(), 0);
    let mut conn = app.state.db.conn().await.expect("connection");
    for ids in rec.chunk_ids.chunks(BATCH) {
        let found = chunks::get_many(conn.raw(), ids).await.expect("query");
        for id in ids {
            packs.insert(found[id].pack_id.expect("packed"));
            repeats += usize::from(!seen.insert(*id));
        }
    }
    (packs.len(), repeats)
}

/// Streams `nar` whole as `.nar` and `.nar.zst` through a chunk store that
/// counts its reads: the right bytes, at most `max_reads` reads.
async fn assert_one_read_per_pack(app: &TestApp, nar: &TestNar, max_reads: usize) {
    let rec = app.nar_record(nar).await;
    let layout = ChunkLayout::load(&app.state.db, &rec)
        .await
        .expect("layout");
    for repr in [Representation::Plain, Representation::Zstd] {
        let counted = Counting::wrap(app.state.storage.clone());
        let len = layout.len(repr);
        let pieces: Vec<Bytes> = layout
            .clone()
            .stream(
                app.state.db.clone(),
                ChunkStore::new(counted.clone()),
                repr,
                0..len,
            )
            .try_collect()
            .await
            .expect("stream");
        let body = pieces.concat();
        assert_eq!(body.len() as u64, len, "{repr:?}");
        let plain = match repr {
            Representation::Plain => body,
            Representation::Zstd => unzstd(&body),
        };
        assert!(
            plain == nar.bytes,
            "{}, {repr:?}: the NAR's bytes",
            nar.base_name
        );
        assert!(
            counted.gets() <= max_reads,
            "{}, {repr:?}: {} reads, at most {max_reads}",
            nar.base_name,
            counted.gets()
        );
    }
}

// --- 10b. chunk rows kept for downloads ----------------------------------------------

/// A whole download keeps the NAR's chunk rows (chunk_store::nar_rows), so
/// the next download reads none: shown by rows that no longer match the
/// NAR's layout, which fail a download that reads them. A ranged download
/// uses the kept rows too. (That a move of the chunks is never read from
/// kept rows, `compaction_reclaims_dead_space` shows: its last download
/// comes after the packs the rows were kept from are deleted.)
async fn downloads_reuse_chunk_rows(app: &TestApp) {
    app.create_cache("rows", false).await;
    let token = app.token(&[("rows", PULL_PUSH_DELETE)]);
    let nar = TestNar::files("rows-1.0", 1400, &[300 * KIB, 200 * KIB]);
    assert_kind(&app.upload(&token, "rows", &nar).await, "Uploaded");
    app.drain_jobs().await;
    let url = format!("/rows/nar/{}.nar", nar.url_hash());
    let get = |range: Option<&str>| {
        let mut req = common::request(axum::http::Method::GET, &url, Some(&token));
        if let Some(r) = range {
            req = req.header("Range", r);
        }
        app.router()
            .oneshot(req.body(axum::body::Body::empty()).expect("request"))
    };
    let read = |resp: axum::response::Response| async move {
        resp.into_body().collect().await.map(|b| b.to_bytes())
    };

    let first = read(get(None).await.expect("router")).await.expect("body");
    assert!(first == nar.bytes, "first download");
    let id = app.nar_record(&nar).await.id;
    let ids = app
        .nar_record(&nar)
        .await
        .chunk_ids
        .iter()
        .map(|c| c.get().to_string())
        .collect::<Vec<_>>()
        .join(",");
    app.execute(&format!(
        "UPDATE chunks SET chunk_size = chunk_size + 1 WHERE id IN ({ids})"
    ))
    .await;
    let again = read(get(None).await.expect("router")).await.expect("body");
    assert!(again == nar.bytes, "read with the kept rows (nar {id:?})");
    let part = read(get(Some("bytes=1000-299999")).await.expect("router"))
        .await
        .expect("body");
    assert!(
        part == nar.bytes[1000..300_000],
        "a range, with the kept rows"
    );

    app.execute(&format!(
        "UPDATE chunks SET chunk_size = chunk_size - 1 WHERE id IN ({ids})"
    ))
    .await;
    assert_bytes(app, &token, "rows", &nar, "rows restored").await;
}

// --- 11. runs sharing a pack --------------------------------------------------------------------

/// Flips one byte in the middle of a NAR's staged copy (same length).
async fn corrupt_staged_copy(app: &TestApp, nar: &TestNar) {
    let key = app.nar_record(nar).await.staging_key.expect("staged");
    let path = app.object_path(key.as_str());
    let mut bytes = std::fs::read(&path).expect("staged copy");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&path, bytes).expect("rewrite staged copy");
}

async fn a_bad_nar_fails_alone_in_its_group(app: &TestApp) {
    app.create_cache("group", false).await;
    let token = app.token(&[("group", PULL_PUSH_DELETE)]);
    let nars: Vec<TestNar> = (0..6)
        .map(|i| TestNar::files(&format!("group-{i}"), 1100 + i, &[5 * KIB, 40 * KIB]))
        .collect();
    for n in &nars {
        assert_kind(&app.upload(&token, "group", n).await, "Uploaded");
    }
    let bad = &nars[2];
    corrupt_staged_copy(app, bad).await;
    let bad_id = app.nar_record(bad).await.id;
    // Two overlapping runs of every NAR at once: they share packs, and the
    // second run of each loses to the first.
    let ids = app.staged_nar_ids().await;
    let runs: Vec<_> = ids
        .iter()
        .chain(ids.iter())
        .map(|&id| {
            let svc = app.services.clone();
            tokio::spawn(async move { (id, ingest::ingest(&svc, id).await) })
        })
        .collect();
    let mut ingested: HashMap<_, usize> = HashMap::new();
    for run in futures::future::join_all(runs).await {
        let (id, outcome) = run.expect("task");
        match outcome {
            Ok(Outcome::Ingested { .. }) => *ingested.entry(id).or_default() += 1,
            Ok(Outcome::Skipped) => assert_ne!(id, bad_id, "the bad NAR is never skipped"),
            Err(e) => assert_eq!(id, bad_id, "only the bad NAR fails: {e:#}"),
        }
    }
    assert_eq!(ingested.get(&bad_id), None);
    assert_eq!(ingested.len(), nars.len() - 1, "{ingested:?}");
    assert!(
        ingested.values().all(|&n| n == 1),
        "one run each: {ingested:?}"
    );
    assert_eq!(app.staged_nar_ids().await, vec![bad_id]);
    let packs = app.count("packs").await;
    assert!(
        (1..nars.len() as i64 - 1).contains(&packs),
        "{} small NARs ingested together made {packs} packs",
        nars.len() - 1
    );
    let rows = app.assert_chunk_store_consistent().await;
    assert_eq!(
        app.total_refcount().await,
        rows,
        "losing runs added no references"
    );
    assert_chunk_store_sound(app, "group with a bad NAR").await;
    for n in nars.iter().filter(|n| !std::ptr::eq(*n, bad)) {
        assert_bytes(app, &token, "group", n, "grouped").await;
    }
}

/// The upload records its staged copy's checksum, and the ingest checks the
/// copy against it; a copy staged without one (before migration 0017) is
/// checked against its NarHash, as before. Either way a damaged copy is
/// refused, and a re-upload repairs it.
async fn a_staged_copy_is_checked_by_its_checksum(app: &TestApp) {
    app.create_cache("sum", false).await;
    let token = app.token(&[("sum", PULL_PUSH_DELETE)]);
    let (fresh, legacy) = (
        TestNar::files("sum-fresh", 1300, &[9 * KIB, 70 * KIB]),
        TestNar::files("sum-legacy", 1301, &[11 * KIB, 90 * KIB]),
    );
    for n in [&fresh, &legacy] {
        assert_kind(&app.upload(&token, "sum", n).await, "Uploaded");
        assert_eq!(
            app.nar_record(n).await.staged_checksum,
            Some(Checksum::of(&n.bytes)),
            "{}",
            n.base_name
        );
    }
    let legacy_id = app.nar_record(&legacy).await.id;
    app.execute(&format!(
        "UPDATE nars SET staged_checksum = NULL WHERE id = {}",
        legacy_id.get()
    ))
    .await;
    for (n, says) in [(&fresh, "checksums to"), (&legacy, "hashes to")] {
        corrupt_staged_copy(app, n).await;
        let id = app.nar_record(n).await.id;
        let err = ingest::ingest(&app.services, id)
            .await
            .expect_err("a damaged copy is refused");
        let err = format!("{err:#}");
        assert!(
            err.contains(says) && err.contains("staging copy corrupt"),
            "{}: {err}",
            n.base_name
        );
    }
    assert_eq!(app.count("chunks").await, 0, "nothing stored");
    // A broken NAR is repaired by a re-upload; here the copy is still
    // staged, so the re-upload is a link and the ingest still fails: make
    // the copy whole again instead, as an operator restoring it would.
    for n in [&fresh, &legacy] {
        let key = app.nar_record(n).await.staging_key.expect("still staged");
        std::fs::write(app.object_path(key.as_str()), &n.bytes).expect("restore");
        let id = app.nar_record(n).await.id;
        let outcome = ingest::ingest(&app.services, id).await.expect("ingest");
        assert!(matches!(outcome, Outcome::Ingested { .. }), "{outcome:?}");
        assert_eq!(app.nar_record(n).await.staged_checksum, None, "cleared");
        assert_bytes(app, &token, "sum", n, "checked and ingested").await;
    }
}

async fn a_killed_run_of_a_group_loses_nothing(app: &TestApp) {
    app.create_cache("gkill", false).await;
    let token = app.token(&[("gkill", PULL_PUSH_DELETE)]);
    let nars: Vec<TestNar> = (0..4)
        .map(|i| TestNar::files(&format!("gkill-{i}"), 1200 + i, &[7 * KIB, 30 * KIB]))
        .collect();
    for n in &nars {
        assert_kind(&app.upload(&token, "gkill", n).await, "Uploaded");
    }
    let ids = app.staged_nar_ids().await;
    let killed = ids[1];
    let pause = BeforeCommit::default();
    let held = {
        let (svc, pause) = (app.services.clone(), pause.clone());
        tokio::spawn(async move { ingest::ingest_pausing(&svc, killed, &pause).await })
    };
    let others: Vec<_> = ids
        .iter()
        .filter(|&&id| id != killed)
        .map(|&id| {
            let svc = app.services.clone();
            tokio::spawn(async move { ingest::ingest(&svc, id).await })
        })
        .collect();
    // Killed after its frames went into the shared pack, before its
    // commit: the others commit without it.
    pause.reached().await;
    held.abort();
    let _ = held.await;
    for run in futures::future::join_all(others).await {
        assert!(matches!(
            run.expect("task").expect("ingest"),
            Outcome::Ingested { .. }
        ));
    }
    assert_eq!(app.staged_nar_ids().await, vec![killed]);
    let staged = fetch(
        app,
        &token,
        "gkill",
        &format!("nar/{}.nar", nars[1].url_hash()),
    )
    .await;
    assert!(staged == nars[1].bytes, "served from staging meanwhile");
    // The dead run's intent ages; GC keeps the shared pack, which rows name.
    backdate_intents(app, grace(app) + 60).await;
    gc_at(app, unix_now()).await;
    assert_eq!(app.count("chunk_intents").await, 0);
    assert_eq!(
        app.object_keys("packs/").await.len() as i64,
        app.count("packs").await
    );
    // Its job's rerun ingests it.
    assert_eq!(app.drain_jobs().await, 1);
    for n in &nars {
        assert_bytes(app, &token, "gkill", n, "after the killed run").await;
    }
    app.assert_chunk_store_consistent().await;
    assert_chunk_store_sound(app, "after the killed run").await;
}
