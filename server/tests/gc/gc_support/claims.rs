//! Scenarios of docs/gc.md "Who may delete an object" (`tests/gc.rs` section 10): no deletion of a
//! chunk object may lose bytes a ready NAR needs, whatever runs between a
//! deleter's choice and its delete. Each interleaving is stepped by hand
//! (the deleter's phases called one by one, ingest held before its commit
//! with [`ingest::BeforeCommit`]); nothing sleeps.

use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use futures::TryStreamExt;

use larder_shared::db::chunk_claims;
use larder_shared::db::unix_now;
use larder_shared::storage::ObjectKey;
use larder_shared::storage::layout;
use larder_shared::token::Permission;
use larder_worker::chunk_deletion::{self, Doomed};
use larder_worker::gc_lease::{GcLease, LEASE_TTL};
use larder_worker::jobs::ingest::{self, BeforeCommit, Outcome};
use larder_worker::jobs::{gc, verify};

use super::clock::{
    HOLDER, backdate_nars, backdate_unreferenced_chunks, gc_at, grace, set_path_time,
};
use super::http::{assert_bytes, delete_path};
use super::invariants::{assert_chunk_store_sound, chunk_hashes};
use super::pool::BlockPool;
use crate::common::TestApp;
use crate::common::nar::TestNar;
use crate::common::read::assert_kind;

const KIB: usize = 1024;
const PULL_PUSH_DELETE: &[Permission] = &[Permission::Pull, Permission::Push, Permission::Delete];

/// The stored objects of a ready NAR's chunks, by key.
async fn chunk_objects(app: &TestApp, nar: &TestNar) -> Vec<(ObjectKey, Bytes)> {
    let ids = app.nar_record(nar).await.chunk_ids;
    let mut out = Vec::new();
    for hash in chunk_hashes(app, &ids).await.into_values() {
        let key = layout::chunk_key(&hash);
        let parts: Vec<Bytes> = app
            .services
            .storage
            .get(&key, None)
            .await
            .expect("chunk object")
            .try_collect()
            .await
            .expect("read");
        out.push((key, Bytes::from(parts.concat())));
    }
    out.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// Deletes the path and lets GC remove its NAR, chunk rows and objects.
async fn collect_all(app: &TestApp, token: &str, cache: &str, nar: &TestNar) {
    delete_path(app, token, cache, nar)
        .await
        .assert_status(StatusCode::NO_CONTENT);
    backdate_nars(app, grace(app) + 60).await;
    assert_eq!(gc_at(app, unix_now()).await.nars_deleted, 1);
    backdate_unreferenced_chunks(app, grace(app) + 60).await;
    gc_at(app, unix_now()).await;
    assert_eq!(app.count("chunks").await, 0);
    assert!(app.files_on_disk("chunks").is_empty());
}

/// Puts objects back as an ingest killed before its commit, or an older
/// version, leaves them: no row, no intent, older than the grace period.
async fn put_back(app: &TestApp, saved: &[(ObjectKey, Bytes)]) -> Vec<Doomed> {
    let age = Duration::from_secs(grace(app) as u64 + 3600);
    let mut doomed = Vec::new();
    for (key, bytes) in saved {
        app.services
            .storage
            .put_bytes(key, bytes.clone())
            .await
            .expect("put");
        app.age_object(key.as_str(), age);
        doomed.push(Doomed::orphan(key.as_str()).expect("a chunk key"));
    }
    doomed
}

/// The GC lease, taken now (what every deleter holds).
async fn lease(app: &TestApp, holder: &str) -> GcLease {
    GcLease::acquire(&app.services, unix_now(), holder)
        .await
        .expect("lease")
        .expect("the lease is free")
}

/// Verify finds nothing wrong and nothing to delete.
async fn assert_verify_clean(app: &TestApp, ctx: &str) {
    let report = verify::run(&app.services, unix_now(), true)
        .await
        .expect("verify");
    assert!(report.orphan_objects.is_empty(), "{ctx}: {report:?}");
    assert!(report.damaged_chunks.is_empty(), "{ctx}: {report:?}");
    assert_eq!(report.nars_marked_broken, 0, "{ctx}");
}

/// The staged NAR's id (exactly one staged).
async fn staged(app: &TestApp) -> larder_shared::db::NarId {
    let ids = app.staged_nar_ids().await;
    assert_eq!(ids.len(), 1, "one staged NAR");
    ids[0]
}

/// The deletion protocol exactly: orphan objects (as a killed ingest leaves them) are
/// chosen for deletion from a listing; before the delete, the same NAR is
/// pushed again and ingested. Then the two narrower orders: the deleter's
/// claim first (the ingest backs off and retries), and the ingest's
/// objects written but not committed (the deleter keeps them).
pub async fn orphans_rewritten_before_their_delete_survive(app: &TestApp) {
    app.create_cache("orph", false).await;
    let token = app.token(&[("orph", PULL_PUSH_DELETE)]);
    let nar = TestNar::files("orphan-1.0", 700, &[500 * KIB]);
    assert_kind(&app.upload(&token, "orph", &nar).await, "Uploaded");
    app.drain_jobs().await;
    let saved = chunk_objects(app, &nar).await;
    assert!(saved.len() > 3, "{} chunks", saved.len());
    let svc = &app.services;
    let grace = grace(app);

    // 1. Listing and candidate selection done (as verify --repair makes
    //    them: chunk objects no row names, older than the grace period)…
    collect_all(app, &token, "orph", &nar).await;
    let doomed = put_back(app, &saved).await;
    let listed = app.object_keys("chunks/").await;
    assert_eq!(listed.len(), saved.len());
    // …then the same NAR is pushed and ingested: it writes the objects
    // again and commits their rows…
    assert_kind(&app.upload(&token, "orph", &nar).await, "Uploaded");
    assert_eq!(app.drain_jobs().await, 1);
    // …then the delete.
    let lease1 = lease(app, HOLDER).await;
    let done = chunk_deletion::delete(svc, &lease1, doomed, unix_now() - grace)
        .await
        .expect("delete");
    lease1.release(svc, false).await.expect("release");
    assert_eq!((done.objects, done.kept), (0, saved.len() as u64));
    assert_bytes(app, &token, "orph", &nar, "re-pushed during the delete").await;
    assert_chunk_store_sound(app, "re-pushed during the delete").await;
    assert_verify_clean(app, "re-pushed during the delete").await;

    // 2. The deleter's claim is committed first: the ingest must not write
    //    (it withdraws its intents and fails, to be retried); the deletion
    //    goes ahead; the retry stores the chunks afresh.
    collect_all(app, &token, "orph", &nar).await;
    let doomed = put_back(app, &saved).await;
    let lease2 = lease(app, HOLDER).await;
    let claimed = chunk_deletion::claim(svc, &lease2, doomed)
        .await
        .expect("claim");
    assert_kind(&app.upload(&token, "orph", &nar).await, "Uploaded");
    let id = staged(app).await;
    let err = ingest::ingest(svc, id)
        .await
        .expect_err("ingest must not write claimed objects");
    assert!(format!("{err:#}").contains("garbage-collected"), "{err:#}");
    assert_eq!(app.count("chunk_intents").await, 0, "intents withdrawn");
    let done = claimed
        .finish(svc, &lease2, unix_now() - grace)
        .await
        .expect("finish");
    lease2.release(svc, false).await.expect("release");
    assert_eq!(done.objects, saved.len() as u64);
    assert!(app.files_on_disk("chunks").is_empty());
    assert_eq!(app.count("chunk_deletions").await, 0);
    assert!(matches!(
        ingest::ingest(svc, id).await.expect("retry"),
        Outcome::Ingested { .. }
    ));
    assert_bytes(app, &token, "orph", &nar, "ingested after the claim").await;
    assert_verify_clean(app, "ingested after the claim").await;

    // 3. The ingest has committed its intents and written its objects but
    //    not committed its rows when the deleter comes: the objects stay.
    collect_all(app, &token, "orph", &nar).await;
    let doomed = put_back(app, &saved).await;
    assert_kind(&app.upload(&token, "orph", &nar).await, "Uploaded");
    let id = staged(app).await;
    let pause = BeforeCommit::default();
    let held = {
        let (svc, pause) = (svc.clone(), pause.clone());
        tokio::spawn(async move { ingest::ingest_pausing(&svc, id, &pause).await })
    };
    pause.reached().await;
    let lease3 = lease(app, HOLDER).await;
    let done = chunk_deletion::delete(svc, &lease3, doomed, unix_now() - grace)
        .await
        .expect("delete");
    lease3.release(svc, false).await.expect("release");
    assert_eq!((done.objects, done.kept), (0, saved.len() as u64));
    assert_eq!(app.count("chunk_deletions").await, 0, "claims released");
    pause.resume();
    let outcome = held.await.expect("task").expect("ingest");
    assert!(matches!(outcome, Outcome::Ingested { .. }));
    assert_bytes(app, &token, "orph", &nar, "written during the delete").await;
    assert_eq!(app.count("chunk_intents").await, 0);
    assert_chunk_store_sound(app, "written during the delete").await;
    assert_verify_clean(app, "written during the delete").await;
}

/// Y looks its chunks up before X recorded the ones they share, writes
/// them and stalls before its commit. X is ingested, deleted, and GC's
/// chunk phase deletes the shared chunks (objects, then rows). If Y
/// outlived the grace period, GC reclaims its intents and Y's commit must
/// fail (else it would insert rows whose objects are gone); if not, GC
/// keeps the shared chunks for Y. Either way Y ends up whole.
pub async fn slow_ingest_against_the_chunk_phase(app: &TestApp) {
    app.create_cache("slow", false).await;
    let token = app.token(&[("slow", PULL_PUSH_DELETE)]);
    let svc = &app.services;
    let grace = grace(app);
    for (seed, past_grace) in [(0x510_u64, true), (0x511, false)] {
        let ctx = format!("ingest stalled past the grace period: {past_grace}");
        let pool = BlockPool::new(seed, 3, 256 * KIB);
        let y = pool.nar("y", seed * 10, &[0, 1]);
        let x = pool.nar("x", seed * 10 + 1, &[1, 2]);

        assert_kind(&app.upload(&token, "slow", &y).await, "Uploaded");
        let y_id = staged(app).await;
        let pause = BeforeCommit::default();
        let held = {
            let (svc, pause) = (svc.clone(), pause.clone());
            tokio::spawn(async move { ingest::ingest_pausing(&svc, y_id, &pause).await })
        };
        pause.reached().await;

        assert_kind(&app.upload(&token, "slow", &x).await, "Uploaded");
        let x_id = app.nar_record(&x).await.id;
        ingest::ingest(svc, x_id).await.expect("ingest X");
        let x_chunks = app.nar_record(&x).await.chunk_ids.len();
        delete_path(app, &token, "slow", &x)
            .await
            .assert_status(StatusCode::NO_CONTENT);

        let report = if past_grace {
            // GC runs well after Y's intents were last refreshed.
            let t1 = unix_now() + grace + 60;
            assert_eq!(gc_at(app, t1).await.nars_deleted, 1, "{ctx}");
            gc_at(app, t1 + grace + 60).await
        } else {
            // X's NAR and chunks are past the grace period; Y is not.
            backdate_nars(app, grace + 60).await;
            assert_eq!(gc_at(app, unix_now()).await.nars_deleted, 1, "{ctx}");
            backdate_unreferenced_chunks(app, grace + 60).await;
            gc_at(app, unix_now()).await
        };
        pause.resume();
        let outcome = held.await.expect("task");
        if past_grace {
            assert_eq!(report.chunks_deleted as usize, x_chunks, "{ctx}");
            let err = outcome.expect_err("a commit after its intents were reclaimed");
            assert!(format!("{err:#}").contains("reclaimed"), "{ctx}: {err:#}");
            ingest::ingest(svc, y_id).await.expect("retry of Y");
        } else {
            assert!(
                (report.chunks_deleted as usize) < x_chunks,
                "{ctx}: the shared chunks are kept: {report:?}"
            );
            assert!(matches!(outcome.expect("Y"), Outcome::Ingested { .. }));
        }
        assert_bytes(app, &token, "slow", &y, &ctx).await;
        assert_chunk_store_sound(app, &ctx).await;
        assert_verify_clean(app, &ctx).await;
        // Start the next round from an empty store.
        let now = unix_now();
        set_path_time(app, "slow", &y, 0).await;
        gc_at(app, now).await;
        backdate_nars(app, grace + 60).await;
        gc_at(app, now).await;
        backdate_unreferenced_chunks(app, grace + 60).await;
        gc_at(app, now).await;
        assert_eq!(app.count("chunks").await, 0, "{ctx}");
    }
}

/// An ingest killed after committing intents and writing objects: GC finds
/// the objects through the database once the intents are older than the
/// grace period, and deletes them; the rerun stores them again.
pub async fn killed_ingest_objects_are_found_through_intents(app: &TestApp) {
    app.create_cache("kill", false).await;
    let token = app.token(&[("kill", PULL_PUSH_DELETE)]);
    let nar = TestNar::files("killed-1.0", 720, &[400 * KIB]);
    assert_kind(&app.upload(&token, "kill", &nar).await, "Uploaded");
    let id = staged(app).await;
    let svc = &app.services;
    let pause = BeforeCommit::default();
    let held = {
        let (svc, pause) = (svc.clone(), pause.clone());
        tokio::spawn(async move { ingest::ingest_pausing(&svc, id, &pause).await })
    };
    pause.reached().await;
    held.abort();
    assert!(held.await.is_err_and(|e| e.is_cancelled()));
    let written = app.files_on_disk("chunks").len();
    assert!(written > 2, "{written} objects written");
    assert_eq!(app.count("chunk_intents").await, written as i64);
    assert_eq!(app.count("chunks").await, 0);

    // Within the grace period the writer may be alive: nothing goes.
    assert_eq!(gc_at(app, unix_now()).await.orphan_objects_deleted, 0);
    assert_eq!(app.files_on_disk("chunks").len(), written);
    // After it, its objects go, found without listing storage.
    let later = unix_now() + grace(app) + 60;
    let report = gc_at(app, later).await;
    assert_eq!(report.orphan_objects_deleted, written as u64);
    assert!(app.files_on_disk("chunks").is_empty());
    assert_eq!(app.count("chunk_intents").await, 0);

    // The staged NAR is still served and ingests again.
    assert_eq!(app.drain_jobs().await, 1);
    assert_bytes(app, &token, "kill", &nar, "after the rerun").await;
    assert_chunk_store_sound(app, "after the rerun").await;
    assert_verify_clean(app, "after the rerun").await;
}

/// A GC killed holding deletion claims: writers of those keys back off
/// until the next GC (once the dead one's lease lapsed) finishes them.
pub async fn gc_killed_holding_claims_is_finished_by_the_next(app: &TestApp) {
    app.create_cache("claim", false).await;
    let token = app.token(&[("claim", PULL_PUSH_DELETE)]);
    let nar = TestNar::files("claimed-1.0", 730, &[400 * KIB]);
    assert_kind(&app.upload(&token, "claim", &nar).await, "Uploaded");
    app.drain_jobs().await;
    let saved = chunk_objects(app, &nar).await;
    collect_all(app, &token, "claim", &nar).await;
    let svc = &app.services;
    let now = unix_now();

    // Objects a killed ingest left, with its intents long stale.
    let doomed = put_back(app, &saved).await;
    let keys: Vec<ObjectKey> = saved.iter().map(|(k, _)| k.clone()).collect();
    let mut conn = svc.db.conn().await.expect("connection");
    chunk_claims::insert_intents(conn.raw(), "ingest-killed", &keys, now - grace(app) - 60)
        .await
        .expect("intents");
    drop(conn);
    // A GC claims them and dies.
    let dead = GcLease::acquire(svc, now, "crashed-worker")
        .await
        .expect("lease")
        .expect("free");
    drop(
        chunk_deletion::claim(svc, &dead, doomed)
            .await
            .expect("claim"),
    );
    assert_eq!(app.count("chunk_deletions").await, saved.len() as i64);

    // The NAR pushed again cannot be ingested while the claims stand.
    assert_kind(&app.upload(&token, "claim", &nar).await, "Uploaded");
    let id = staged(app).await;
    let err = ingest::ingest(svc, id).await.expect_err("claimed");
    assert!(format!("{err:#}").contains("garbage-collected"), "{err:#}");
    // The dead GC's lease keeps others out until it lapses…
    assert!(
        gc::run(svc, now + 60, "other-worker")
            .await
            .expect("GC")
            .is_none()
    );
    // …then the next GC finishes its claims first.
    let report = gc::run(svc, now + LEASE_TTL + 1, "other-worker")
        .await
        .expect("GC")
        .expect("the lapsed lease is taken over");
    assert_eq!(report.orphan_objects_deleted, saved.len() as u64);
    assert_eq!(app.count("chunk_deletions").await, 0);
    assert_eq!(app.count("chunk_intents").await, 0);
    assert!(app.files_on_disk("chunks").is_empty());

    assert!(matches!(
        ingest::ingest(svc, id).await.expect("ingest"),
        Outcome::Ingested { .. }
    ));
    assert_bytes(app, &token, "claim", &nar, "after recovery").await;
    assert_chunk_store_sound(app, "after recovery").await;
    assert_verify_clean(app, "after recovery").await;
}
