//! Garbage collection, retention, pins, deletion, verify and statistics
//! (docs/gc.md) through the router and the job handlers, every scenario on
//! SQLite and on PostgreSQL. The clock is injected: `gc::run` takes `now`,
//! access flushes take the access time, and tests backdate the timestamps
//! GC compares (`gc_support::clock`) instead of waiting.
//!
//! 1. idle paths expire by their cache's retention (default, per cache, 0);
//! 2. reads (narinfo GET/HEAD, NAR GET) flushed at T keep a path alive;
//! 3. pins protect closures until unpinned;
//! 4. deleting everything empties `chunks`, `nars` and storage after grace;
//! 5. GC racing ingests of NARs sharing chunks with expiring ones loses
//!    nothing (seeded rounds; `LARDER_GC_RACE_SEED` replays a seed,
//!    `LARDER_GC_RACE_ROUNDS` soaks longer), and its two critical
//!    interleavings, stepped by hand, keep data on every run;
//! 6. a GC killed mid-run is finished by the next, after its lease lapses;
//!    workers that find a scheduled GC due at the same moment run it once;
//! 7. verify reports orphan objects and lost chunks; a re-upload repairs;
//! 8. `DELETE /{cache}/{hash}.narinfo` needs `d` and takes effect at once;
//! 9. statistics report dedup and compression;
//! 10. no chunk-object deletion loses bytes a ready NAR needs (docs/gc.md "Who may delete an object"):
//!     orphans rewritten between a deleter's choice and its delete, an
//!     ingest stalled before its commit against the chunk phase, a killed
//!     ingest's objects found through its intents, a GC killed holding
//!     claims (`gc_support::claims`);
//! 11. closure-aware retention (docs/gc.md "Closures", `gc_support::closure`): a live
//!     root keeps its whole closure, a shared closure stays until both roots
//!     are idle, a pin protects its closure, an unreferenced idle path goes,
//!     uses (get-missing-paths, uploads referring to a path) refresh it, a
//!     replaced NAR's references replace the old ones, a dry run reports
//!     exactly what a GC expires, and pushes racing GC (as `larder push` and
//!     as `nix copy` ask) never leave a served path without part of its
//!     closure (`LARDER_CLOSURE_RACE_ROUNDS` soaks longer).

pub(crate) mod gc_support;

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};

use larder_shared::db::chunk_gc;
use larder_shared::db::chunks;
use larder_shared::db::gc as gc_db;
use larder_shared::db::nars::NarState;
use larder_shared::db::refcounts;
use larder_shared::db::{ChunkId, NarId, leases, stats, unix_now};
use larder_shared::storage::ObjectKey;
use larder_shared::storage::layout;
use larder_shared::token::Permission;
use larder_worker::jobs::gc::{self, GcReport};
use larder_worker::jobs::ingest::{self, Outcome};
use larder_worker::jobs::verify;

use common::nar::{Rng, TestNar};
use common::read::{assert_kind, fetch, narinfo, unzstd};
use common::{TestApp, request};
use gc_support::claims::{
    gc_killed_holding_claims_is_finished_by_the_next,
    killed_ingest_objects_are_found_through_intents, orphans_rewritten_before_their_delete_survive,
    slow_ingest_against_the_chunk_phase,
};
use gc_support::clock::{
    DAY, backdate_nars, backdate_unreferenced_chunks, default_retention, gc_at, grace, poll_until,
    set_path_time,
};
use gc_support::closure::{
    dry_run_reports_what_would_go, live_root_keeps_its_closure, pin_protects_its_closure,
    reference_cycles_go_together, replaced_references_follow_the_new_nar,
    shared_closure_survives_until_both_roots_expire, uploads_racing_gc_keep_closures,
    uses_refresh_what_pushes_rely_on,
};
use gc_support::http::{
    HeldUpload, assert_bytes, assert_cache_stats, assert_served, cache_stats, delete_path,
    destroy_cache, missing_paths, nar_url_statuses, pin, set_retention, unpin,
};
use gc_support::ints;
use gc_support::invariants::{assert_chunk_store_sound, staged_nars, stored_chunk_bytes};
use gc_support::pool::{self, BlockPool};
use gc_support::race::Race;

const KIB: usize = 1024;
const PULL_PUSH: &[Permission] = &[Permission::Pull, Permission::Push];
const PULL_PUSH_DELETE: &[Permission] = &[Permission::Pull, Permission::Push, Permission::Delete];

on_both_backends!(crate::gc::gc_support::default_app =>
    idle_paths_expire_by_retention,
    reads_keep_paths_alive,
    pins_protect_closures,
    deleting_everything_empties_storage,
    interrupted_gc_is_finished_by_the_next,
    scheduled_gc_runs_once_however_many_find_it_due,
    deleting_a_path_hides_it_at_once,
    stats_report_dedup_and_compression,
    gc_steps_interleaved_with_uploads_keep_data,
    live_root_keeps_its_closure,
    shared_closure_survives_until_both_roots_expire,
    pin_protects_its_closure,
    uses_refresh_what_pushes_rely_on,
    dry_run_reports_what_would_go,
    replaced_references_follow_the_new_nar,
    reference_cycles_go_together,
    uploads_racing_gc_keep_closures,
);

on_both_backends!(crate::gc::gc_support::short_grace_app =>
    gc_racing_ingest_loses_nothing,
);

/// The per-chunk-object protocol (docs/gc.md "Who may delete an object")
/// on the layout before packs, which existing stores still hold.
mod legacy {
    use super::*;

    on_both_backends!(crate::gc::gc_support::legacy_app =>
        verify_finds_orphans_and_lost_chunks,
        orphans_rewritten_before_their_delete_survive,
        slow_ingest_against_the_chunk_phase,
        killed_ingest_objects_are_found_through_intents,
        gc_killed_holding_claims_is_finished_by_the_next,
    );

    on_both_backends!(crate::gc::gc_support::short_grace_legacy_app =>
        gc_racing_ingest_loses_nothing,
    );
}

// --- 1. retention ---------------------------------------------------------------

async fn idle_paths_expire_by_retention(app: &TestApp) {
    for c in ["ret-default", "ret-hour", "ret-long", "ret-forever"] {
        app.create_cache(c, false).await;
    }
    set_retention(app, "ret-hour", json!({ "Period": 3600 })).await;
    set_retention(app, "ret-long", json!({ "Period": 90 * DAY })).await;
    set_retention(app, "ret-forever", json!({ "Period": 0 })).await;
    let token = app.token(&[("ret-*", PULL_PUSH)]);
    let nar = |i: u64| TestNar::files(&format!("ret-{i}"), 100 + i, &[2 * KIB]);
    let (old, young) = (nar(0), nar(1));
    let (hour_old, hour_young) = (nar(2), nar(3));
    let (long_old, long_mid) = (nar(4), nar(5));
    let ancient = nar(6);
    let placed = [
        ("ret-default", &old),
        ("ret-default", &young),
        ("ret-hour", &hour_old),
        ("ret-hour", &hour_young),
        ("ret-long", &long_old),
        ("ret-long", &long_mid),
        ("ret-forever", &ancient),
    ];
    for (cache, n) in placed {
        assert_kind(&app.upload(&token, cache, n).await, "Uploaded");
    }
    app.drain_jobs().await;

    let now = unix_now();
    let retention = default_retention(app);
    assert_eq!(retention, 30 * DAY, "the default retention");
    set_path_time(app, "ret-default", &old, now - retention - 60).await;
    set_path_time(app, "ret-default", &young, now - retention + 3600).await;
    set_path_time(app, "ret-hour", &hour_old, now - 3600 - 60).await;
    set_path_time(app, "ret-hour", &hour_young, now - 1800).await;
    set_path_time(app, "ret-long", &long_old, now - 90 * DAY - 60).await;
    set_path_time(app, "ret-long", &long_mid, now - 40 * DAY).await;
    set_path_time(app, "ret-forever", &ancient, now - 3650 * DAY).await;

    let report = gc_at(app, now).await;
    assert_eq!(
        report,
        GcReport {
            objects_expired: 3,
            ..GcReport::default()
        },
        "expired paths' data stays for the grace period"
    );
    let ctx = "GC at now";
    assert_served(app, &token, "ret-default", &[&young], &[&old], ctx).await;
    assert_served(app, &token, "ret-hour", &[&hour_young], &[&hour_old], ctx).await;
    assert_served(app, &token, "ret-long", &[&long_mid], &[&long_old], ctx).await;
    assert_served(app, &token, "ret-forever", &[&ancient], &[], ctx).await;

    // Back to the global default: 40 days idle is now too long.
    set_retention(app, "ret-long", json!("Global")).await;
    let report = gc_at(app, now).await;
    assert_eq!(report.objects_expired, 1);
    assert_served(app, &token, "ret-long", &[], &[&long_mid], "after Global").await;
    assert_served(app, &token, "ret-forever", &[&ancient], &[], "after Global").await;
}

// --- 2. reads keep paths alive ------------------------------------------------------

async fn reads_keep_paths_alive(app: &TestApp) {
    app.create_cache("acc", false).await;
    app.create_cache("acc-other", false).await;
    let token = app.token(&[("acc*", PULL_PUSH)]);
    let nar = |i: u64, name: &str| TestNar::files(name, 150 + i, &[100 * KIB]);
    let by_narinfo = nar(0, "read-narinfo");
    let by_head = nar(1, "read-head");
    let by_nar = nar(2, "read-nar");
    let idle = nar(3, "idle");
    for n in [&by_narinfo, &by_head, &by_nar, &idle] {
        assert_kind(&app.upload(&token, "acc", n).await, "Uploaded");
    }
    // The same path in another cache, never read there.
    assert_kind(
        &app.upload(&token, "acc-other", &by_nar).await,
        "Deduplicated",
    );
    app.drain_jobs().await;
    let pushed = unix_now();
    let retention = default_retention(app);

    narinfo(app, &token, "acc", &by_narinfo).await;
    let head = request(
        Method::HEAD,
        &format!("/acc/{}.narinfo", by_head.store_hash()),
        Some(&token),
    )
    .body(Body::empty())
    .expect("request");
    app.send(head).await.assert_status(StatusCode::OK);
    let zst = fetch(
        app,
        &token,
        "acc",
        &format!("nar/{}.nar.zst", by_nar.url_hash()),
    )
    .await;
    assert!(unzstd(&zst) == by_nar.bytes);

    // The reads are written as having happened 20 days after the push.
    let read_at = pushed + 20 * DAY;
    app.state
        .access
        .flush(&app.state.db, read_at)
        .await
        .expect("flushing accesses");
    let touched = ints(
        &app.state.db,
        &format!("SELECT id FROM objects WHERE last_accessed_at = {read_at}"),
    )
    .await;
    assert_eq!(
        touched.len(),
        3,
        "three reads recorded in acc, none in acc-other"
    );

    // The push is past retention, the reads are not.
    let report = gc_at(app, pushed + retention + 5 * DAY).await;
    assert_eq!(
        report.objects_expired, 2,
        "idle in acc, by_nar in acc-other"
    );
    let kept = [&by_narinfo, &by_head, &by_nar];
    assert_served(app, &token, "acc", &kept, &[&idle], "reads 15 days old").await;
    assert_served(
        app,
        &token,
        "acc-other",
        &[],
        &[&by_nar],
        "never read there",
    )
    .await;
    assert_bytes(app, &token, "acc", &by_nar, "kept by a read").await;

    // Reads age too (the GETs just made are not flushed).
    let report = gc_at(app, read_at + retention + 60).await;
    assert_eq!(report.objects_expired, 3);
    assert_served(app, &token, "acc", &[], &kept, "reads past retention").await;
}

// --- 3. pins -------------------------------------------------------------------------

async fn pins_protect_closures(app: &TestApp) {
    app.create_cache("pin", false).await;
    app.create_cache("pin-other", false).await;
    let token = app.token(&[("pin*", PULL_PUSH)]);
    let lib = TestNar::files("lib-1.0", 200, &[3 * KIB]);
    let mut dep = TestNar::files("dep-1.0", 201, &[3 * KIB]);
    dep.references = vec![lib.base_name.clone()];
    let mut top = TestNar::files("app-1.0", 202, &[3 * KIB]);
    let never_pushed = format!("{}-glibc-2.40", Rng::new(299).store_hash());
    top.references = vec![dep.base_name.clone(), never_pushed, top.base_name.clone()];
    let junk = TestNar::files("junk-1.0", 203, &[3 * KIB]);
    for n in [&lib, &dep, &top, &junk] {
        assert_kind(&app.upload(&token, "pin", n).await, "Uploaded");
    }
    assert_kind(&app.upload(&token, "pin-other", &lib).await, "Deduplicated");
    app.drain_jobs().await;

    // A pin names a path of its cache.
    let stranger = TestNar::files("stranger-1.0", 204, &[10]);
    pin(app, &token, "pin", "nope", &stranger.store_path())
        .await
        .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");
    pin(app, &token, "pin", "release", &top.store_path())
        .await
        .assert_status(StatusCode::NO_CONTENT);
    let pins: Value = app
        .get("/_api/v1/caches/pin/pins", Some(&token))
        .await
        .json();
    assert_eq!(pins.as_array().map(Vec::len), Some(1), "{pins}");
    assert_eq!(pins[0]["name"], json!("release"));
    assert_eq!(pins[0]["store_path"], json!(top.store_path()));

    let later = unix_now() + default_retention(app) + DAY;
    let report = gc_at(app, later).await;
    assert_eq!(report.objects_expired, 2, "junk, and lib in pin-other");
    let closure = [&top, &dep, &lib];
    assert_served(app, &token, "pin", &closure, &[&junk], "pinned").await;
    assert_served(app, &token, "pin-other", &[], &[&lib], "pins are per cache").await;

    unpin(app, &token, "pin", "release")
        .await
        .assert_status(StatusCode::NO_CONTENT);
    unpin(app, &token, "pin", "release")
        .await
        .assert_status(StatusCode::NOT_FOUND);
    let report = gc_at(app, later).await;
    assert_eq!(report.objects_expired, 3);
    assert_served(app, &token, "pin", &[], &closure, "unpinned").await;
}

// --- 4. deleting everything -------------------------------------------------------------

async fn deleting_everything_empties_storage(app: &TestApp) {
    app.create_cache("all-a", false).await;
    app.create_cache("all-b", false).await;
    let token = app.token(&[("all-*", PULL_PUSH_DELETE)]);
    let pool = BlockPool::new(0xa11, 4, 256 * KIB);
    let nars = [
        pool.nar("n0", 300, &[0, 1]),
        pool.nar("n1", 301, &[1, 2]),
        pool.nar("n2", 302, &[2, 3, 0]),
        pool.nar("n3", 303, &[3]),
    ];
    for n in &nars[..3] {
        assert_kind(&app.upload(&token, "all-a", n).await, "Uploaded");
    }
    assert_kind(&app.upload(&token, "all-b", &nars[1]).await, "Deduplicated");
    assert_kind(&app.upload(&token, "all-b", &nars[3]).await, "Uploaded");
    app.drain_jobs().await;
    // One more, still staged when it is deleted.
    let staged = pool.nar("n4", 304, &[0, 3]);
    assert_kind(&app.upload(&token, "all-b", &staged).await, "Uploaded");
    let staged_id = app.nar_record(&staged).await.id;

    let mut listed = 0;
    for n in &nars {
        listed += app.num_chunks(n).await;
    }
    let rows = app.assert_chunk_store_consistent().await;
    assert!(
        rows < listed,
        "the NARs share chunks: {rows} rows, {listed} listed"
    );
    let stored = stored_chunk_bytes(app).await;
    let packs = app.count("packs").await;
    assert!(packs > 0, "ingest wrote packs");
    assert_eq!(app.count("nars").await, 5);

    destroy_cache(app, "all-a").await;
    for n in [&nars[1], &nars[3], &staged] {
        delete_path(app, &token, "all-b", n)
            .await
            .assert_status(StatusCode::NO_CONTENT);
    }
    assert_served(
        app,
        &token,
        "all-b",
        &[],
        &[&nars[1], &nars[3], &staged],
        "deleted",
    )
    .await;
    assert_eq!(app.count("objects").await, 0);

    // Right away: nothing is old enough to go.
    let now = unix_now();
    assert_eq!(gc_at(app, now).await, GcReport::default());
    assert_eq!(app.count("nars").await, 5);
    assert_eq!(app.assert_chunk_store_consistent().await, rows);

    // After the grace period the NARs go; their chunks start theirs.
    let grace = grace(app);
    let t1 = now + grace + 60;
    let report = gc_at(app, t1).await;
    assert_eq!(
        report,
        GcReport {
            nars_deleted: 5,
            ..GcReport::default()
        }
    );
    assert_eq!(app.count("nars").await, 0);
    app.assert_staging_empty().await;
    let zero = app
        .scalar(&format!(
            "SELECT COUNT(*) FROM chunks WHERE refcount = 0 AND zero_since = {t1}"
        ))
        .await;
    assert_eq!(zero, rows, "every chunk unreferenced since the GC's now");

    let t2 = t1 + grace + 60;
    let report = gc_at(app, t2).await;
    assert_eq!(
        report,
        GcReport {
            chunks_deleted: rows as u64,
            bytes_freed: stored as u64,
            packs_deleted: packs as u64,
            ..GcReport::default()
        }
    );
    assert_eq!(app.count("chunks").await, 0);
    assert_eq!(app.count("packs").await, 0);
    for dir in ["chunks", "packs"] {
        let left = app.files_on_disk(dir);
        assert!(left.is_empty(), "{dir} files left: {left:?}");
    }
    assert_eq!(
        gc_at(app, t2).await,
        GcReport::default(),
        "nothing left to do"
    );

    // The deleted staged NAR's job finds nothing to do.
    let outcome = ingest::ingest(&app.services, staged_id)
        .await
        .expect("ingest");
    assert_eq!(outcome, Outcome::Skipped);
}

// --- 5. GC racing ingests ------------------------------------------------------------------

/// Rounds of the race, each small (1–3 new NARs of 256–768 KiB);
/// `LARDER_GC_RACE_ROUNDS` overrides it (a longer soak).
const RACE_ROUNDS: u64 = 20;
/// Seed of the race; `LARDER_GC_RACE_SEED` overrides it (replaying a failure).
const RACE_SEED: u64 = 0x6c61_7264_6572_0005;

fn env_or(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// See `gc_support::race` for what a round does and checks.
async fn gc_racing_ingest_loses_nothing(app: &TestApp) {
    assert_eq!(grace(app), 1, "the race needs a short grace period");
    let seed = env_or("LARDER_GC_RACE_SEED", RACE_SEED);
    let rounds = env_or("LARDER_GC_RACE_ROUNDS", RACE_ROUNDS);
    let mut race = Race::start(app, seed).await;
    for round in 0..rounds {
        race.round(round).await;
    }
    let c = &race.contest;
    eprintln!("{:?}, seed {seed}: {rounds} rounds: {c:?}", app.backend);
    // Deterministic for a seed: which chunks are unreferenced at a round's
    // start and which blocks its NARs use do not depend on timing.
    assert!(
        c.contested > 0,
        "seed {seed}: no chunk was raced for: {c:?}"
    );
    // Leftover objects of dead ingests are chunk objects; packs leave none
    // to put back (a dead writer's pack is never sealed, or is a pack GC
    // finds through its intents, `packs::killed_ingest_pack_is_collected`).
    if app.services.config.storage.pack_size == 0 {
        assert!(c.leftovers > 0, "seed {seed}: no leftovers put back: {c:?}");
    }
    race.finish().await;
}

/// The race's two critical interleavings, stepped by hand so they happen
/// every run: an upload relinking a NAR between GC's orphan scan and its
/// delete keeps the NAR; an ingest referencing unreferenced chunks between
/// GC's chunk scan and its mark keeps those chunks.
async fn gc_steps_interleaved_with_uploads_keep_data(app: &TestApp) {
    app.create_cache("mix", false).await;
    let token = app.token(&[("mix", PULL_PUSH_DELETE)]);
    let pool = BlockPool::new(0x313, 3, 256 * KIB);
    let x = pool.nar("x", 450, &[0, 1]);
    let y = pool.nar("y", 451, &[1, 2]);
    assert_kind(&app.upload(&token, "mix", &x).await, "Uploaded");
    app.drain_jobs().await;
    let x_id = app.nar_record(&x).await.id;
    delete_path(app, &token, "mix", &x)
        .await
        .assert_status(StatusCode::NO_CONTENT);
    let grace = grace(app);
    backdate_nars(app, grace + 60).await;
    let now = unix_now();
    let cutoff = now - grace;

    // GC scans orphans and finds X's NAR; an upload of the same NAR under
    // another path looks it up (touching it) before GC's delete and links
    // it after: the delete must leave it alone.
    let mut conn = app.state.db.conn().await.expect("connection");
    let (orphans, _) = gc_db::orphan_nars(conn.raw(), NarId(0), cutoff, 100)
        .await
        .expect("scan");
    drop(conn);
    assert_eq!(orphans.iter().map(|n| n.id).collect::<Vec<_>>(), [x_id]);
    let x_again = x.with_path("x-again", 452);
    let upload = HeldUpload::start(app, &token, "mix", &x_again);
    let touched = format!("SELECT updated_at FROM nars WHERE id = {x_id}");
    poll_until(app, &touched, |t| t >= cutoff).await;
    let mut tx = app.state.db.begin().await.expect("transaction");
    let deleted = gc_db::delete_orphan_nar(tx.raw(), x_id, cutoff)
        .await
        .expect("delete");
    tx.commit().await.expect("commit");
    assert!(!deleted, "a NAR an upload is about to link is kept");
    assert_kind(&upload.release().await, "Deduplicated");
    assert_bytes(app, &token, "mix", &x_again, "relinked").await;

    // Now X's NAR goes for real; its chunks become unreferenced.
    delete_path(app, &token, "mix", &x_again)
        .await
        .assert_status(StatusCode::NO_CONTENT);
    backdate_nars(app, grace + 60).await;
    assert_eq!(gc_at(app, now).await.nars_deleted, 1);
    backdate_unreferenced_chunks(app, grace + 60).await;

    // GC scans unreferenced chunks; Y, sharing some, is ingested; GC's mark
    // must skip the chunks Y now references.
    let mut conn = app.state.db.conn().await.expect("connection");
    let candidates = chunk_gc::unreferenced_chunks(conn.raw(), cutoff, 1000)
        .await
        .expect("scan");
    drop(conn);
    let scanned: BTreeSet<ChunkId> = candidates.iter().map(|c| c.id).collect();
    assert_kind(&app.upload(&token, "mix", &y).await, "Uploaded");
    assert_eq!(app.drain_jobs().await, 1);
    let y_chunks: BTreeSet<ChunkId> = app.nar_record(&y).await.chunk_ids.into_iter().collect();
    let shared: BTreeSet<ChunkId> = scanned.intersection(&y_chunks).copied().collect();
    assert!(!shared.is_empty(), "Y reuses chunks of X");
    let ids: Vec<ChunkId> = scanned.iter().copied().collect();
    let mut marked = BTreeSet::new();
    for batch in ids.chunks(chunks::BATCH) {
        let mut tx = app.state.db.begin().await.expect("transaction");
        marked.extend(
            refcounts::mark_deleting(tx.raw(), batch, cutoff)
                .await
                .expect("mark"),
        );
        tx.commit().await.expect("commit");
    }
    let expected: BTreeSet<ChunkId> = scanned.difference(&shared).copied().collect();
    assert_eq!(marked, expected, "chunks Y references are not marked");
    // The next GC finishes the marked ones and leaves Y whole.
    let report = gc_at(app, now).await;
    assert_eq!(report.chunks_deleted, expected.len() as u64);
    assert_bytes(app, &token, "mix", &y, "after GC").await;
    assert_eq!(
        app.assert_chunk_store_consistent().await,
        y_chunks.len() as i64
    );
    assert_chunk_store_sound(app, "after GC").await;
}

// --- 6. a GC killed mid-run ------------------------------------------------------------------

async fn interrupted_gc_is_finished_by_the_next(app: &TestApp) {
    app.create_cache("crash", false).await;
    let token = app.token(&[("crash", PULL_PUSH_DELETE)]);
    let pool = BlockPool::new(0xc7a5, 3, 256 * KIB);
    let nars = [pool.nar("c0", 400, &[0, 1]), pool.nar("c1", 401, &[1, 2])];
    for n in &nars {
        assert_kind(&app.upload(&token, "crash", n).await, "Uploaded");
    }
    app.drain_jobs().await;
    let rows = app.assert_chunk_store_consistent().await;
    let stored = stored_chunk_bytes(app).await;
    let packs = app.count("packs").await;
    for n in &nars {
        delete_path(app, &token, "crash", n)
            .await
            .assert_status(StatusCode::NO_CONTENT);
    }
    let grace = grace(app);
    let t1 = unix_now() + grace + 60;
    assert_eq!(gc_at(app, t1).await.nars_deleted, 2);

    // A GC at t2 takes the lease, marks every chunk, deletes every other
    // object, and dies before deleting rows or releasing the lease.
    let t2 = t1 + grace + 60;
    let svc = &app.services;
    let mut conn = app.state.db.conn().await.expect("connection");
    let took = leases::try_acquire(conn.raw(), gc::LEASE, "crashed-worker", t2, gc::LEASE_TTL)
        .await
        .expect("lease");
    assert!(took, "the lease was free");
    let candidates = chunk_gc::unreferenced_chunks(conn.raw(), t2 - grace, 1000)
        .await
        .expect("query");
    assert_eq!(candidates.len() as i64, rows);
    drop(conn);
    let ids: Vec<ChunkId> = candidates.iter().map(|c| c.id).collect();
    let mut marked = 0;
    for batch in ids.chunks(chunks::BATCH) {
        let mut tx = app.state.db.begin().await.expect("transaction");
        marked += refcounts::mark_deleting(tx.raw(), batch, t2 - grace)
            .await
            .expect("mark")
            .len();
        tx.commit().await.expect("commit");
    }
    assert_eq!(marked as i64, rows);
    for rec in candidates.iter().step_by(2) {
        svc.storage
            .delete(&layout::chunk_key(&rec.hash))
            .await
            .expect("delete object");
    }

    // Its lease has not lapsed: another worker's GC stays out.
    let outcome = gc::run(svc, t2 + 60, "other-worker").await.expect("GC");
    assert!(outcome.is_none(), "a live lease keeps other GCs out");
    let still = ints(&app.state.db, "SELECT id FROM chunks WHERE refcount < 0").await;
    assert_eq!(still.len() as i64, rows, "nothing touched meanwhile");

    // Meanwhile an upload needing a marked chunk is not ingested from it.
    let again = nars[0].with_path("c0-again", 410);
    assert_kind(&app.upload(&token, "crash", &again).await, "Uploaded");
    let staged = staged_nars(svc).await;
    assert_eq!(staged.len(), 1);
    let err = ingest::ingest(svc, staged[0])
        .await
        .expect_err("ingest must not reuse a chunk being deleted");
    assert!(format!("{err:#}").contains("garbage-collected"), "{err:#}");

    // Once the dead worker's lease lapses, the next GC takes over and
    // finishes the marked chunks first.
    let t3 = t2 + gc::LEASE_TTL + 1;
    let report = gc::run(svc, t3, "other-worker")
        .await
        .expect("GC")
        .expect("the expired lease is taken over");
    assert_eq!(
        report,
        GcReport {
            chunks_deleted: rows as u64,
            bytes_freed: stored as u64,
            packs_deleted: packs as u64,
            ..GcReport::default()
        }
    );
    assert_eq!(app.count("chunks").await, 0);
    assert_eq!(app.count("packs").await, 0);
    for dir in ["chunks", "packs"] {
        let left = app.files_on_disk(dir);
        assert!(left.is_empty(), "{dir} files left: {left:?}");
    }
    let mut conn = app.state.db.conn().await.expect("connection");
    let last = leases::last_finished(conn.raw(), gc::LEASE)
        .await
        .expect("query");
    assert_eq!(last, Some(t3));
    drop(conn);

    // The waiting upload now ingests and reads back.
    assert_eq!(app.drain_jobs().await, 1);
    assert_bytes(app, &token, "crash", &again, "after recovery").await;
    assert_chunk_store_sound(app, "after recovery").await;
}

// --- 7. verify --------------------------------------------------------------------------------

async fn verify_finds_orphans_and_lost_chunks(app: &TestApp) {
    app.create_cache("vf", false).await;
    let token = app.token(&[("vf", PULL_PUSH)]);
    let damaged = TestNar::files("damaged-1.0", 500, &[400 * KIB]);
    let fine = TestNar::files("fine-1.0", 501, &[200 * KIB]);
    for n in [&damaged, &fine] {
        assert_kind(&app.upload(&token, "vf", n).await, "Uploaded");
    }
    app.drain_jobs().await;
    let svc = &app.services;
    let grace = Duration::from_secs(grace(app) as u64);

    // Two chunk-shaped objects no row knows: one older than the grace period.
    let old_key = format!("chunks/ab/cd/abcd{}.zst", "0".repeat(60));
    let young_key = format!("chunks/ab/cd/abcd{}.zst", "1".repeat(60));
    for k in [&old_key, &young_key] {
        let key = ObjectKey::new(k.clone()).expect("key");
        svc.storage
            .put_bytes(&key, Bytes::from_static(b"not a chunk"))
            .await
            .expect("put");
    }
    app.age_object(&old_key, grace + Duration::from_secs(3600));
    let chunk_rows = app.count("chunks").await as u64;

    let report = verify::run(svc, unix_now(), false).await.expect("verify");
    let orphans: BTreeSet<&str> = report.orphan_objects.iter().map(String::as_str).collect();
    assert_eq!(
        orphans,
        BTreeSet::from([old_key.as_str(), young_key.as_str()])
    );
    assert_eq!(report.orphans_deleted, 0, "only listed without repair");
    assert_eq!(report.chunks_checked, chunk_rows);
    assert!(report.damaged_chunks.is_empty(), "{report:?}");
    assert_eq!(report.nars_marked_broken, 0);

    let report = verify::run(svc, unix_now(), true).await.expect("verify");
    assert_eq!(report.orphans_deleted, 1, "only the old orphan");
    let keys = app.object_keys("chunks/ab/cd/abcd").await;
    assert_eq!(keys, vec![young_key.clone()]);

    // Lose one chunk object of `damaged`.
    let rec = app.nar_record(&damaged).await;
    assert!(rec.chunk_ids.len() > 3, "{} chunks", rec.chunk_ids.len());
    let victim = rec.chunk_ids[rec.chunk_ids.len() / 2];
    let mut conn = app.state.db.conn().await.expect("connection");
    let victim = chunks::get_many(conn.raw(), &[victim])
        .await
        .expect("query")[&victim]
        .clone();
    drop(conn);
    svc.storage
        .delete(&layout::chunk_key(&victim.hash))
        .await
        .expect("delete");

    let report = verify::run(svc, unix_now(), false).await.expect("verify");
    let hashes: Vec<&str> = report
        .damaged_chunks
        .iter()
        .map(|(h, _)| h.as_str())
        .collect();
    assert_eq!(hashes, vec![victim.hash.to_string().as_str()], "{report:?}");
    assert_eq!(report.nars_marked_broken, 1);
    assert_eq!(
        report.affected_paths,
        vec![("vf".to_owned(), damaged.store_path())]
    );
    assert_eq!(app.nar_record(&damaged).await.state, NarState::Broken);
    assert_served(app, &token, "vf", &[&fine], &[&damaged], "after verify").await;
    assert_eq!(
        nar_url_statuses(app, &token, "vf", &damaged).await,
        [StatusCode::NOT_FOUND; 2]
    );
    assert_bytes(app, &token, "vf", &fine, "after verify").await;
    let missing = missing_paths(app, &token, "vf", &[&damaged, &fine]).await;
    assert_eq!(missing, BTreeSet::from([damaged.store_hash().to_owned()]));

    // Pushing it again repairs it: served from the staged copy at once…
    assert_kind(&app.upload(&token, "vf", &damaged).await, "Uploaded");
    assert_served(app, &token, "vf", &[&damaged], &[], "re-pushed, staged").await;
    let plain = fetch(
        app,
        &token,
        "vf",
        &format!("nar/{}.nar", damaged.url_hash()),
    )
    .await;
    assert!(plain == damaged.bytes, "staged copy differs");
    // …and chunked again by ingest at once: verify deleted the lost chunk's
    // row, so nothing waits for a GC.
    assert_eq!(app.drain_jobs().await, 1);
    assert_eq!(app.nar_record(&damaged).await.state, NarState::Ready);
    assert_bytes(app, &token, "vf", &damaged, "repaired").await;
    assert!(
        missing_paths(app, &token, "vf", &[&damaged, &fine])
            .await
            .is_empty()
    );
    assert_chunk_store_sound(app, "repaired").await;
}

// --- 8. DELETE narinfo ----------------------------------------------------------------------

async fn deleting_a_path_hides_it_at_once(app: &TestApp) {
    app.create_cache("del", false).await;
    app.create_cache("del-twin", false).await;
    let rw = app.token(&[("del*", PULL_PUSH)]);
    let rwd = app.token(&[("del*", PULL_PUSH_DELETE)]);
    let secret = TestNar::files("secret-1.0", 600, &[150 * KIB]);
    let keep = TestNar::files("keep-1.0", 601, &[5 * KIB]);
    assert_kind(&app.upload(&rw, "del", &secret).await, "Uploaded");
    assert_kind(&app.upload(&rw, "del", &keep).await, "Uploaded");
    assert_kind(&app.upload(&rw, "del-twin", &secret).await, "Deduplicated");
    app.drain_jobs().await;

    delete_path(app, &rw, "del", &secret)
        .await
        .assert_error(StatusCode::FORBIDDEN, "PermissionDenied");
    assert_served(app, &rw, "del", &[&secret], &[], "delete refused").await;

    delete_path(app, &rwd, "del", &secret)
        .await
        .assert_status(StatusCode::NO_CONTENT);
    assert_served(app, &rw, "del", &[&keep], &[&secret], "deleted").await;
    assert_eq!(
        nar_url_statuses(app, &rw, "del", &secret).await,
        [StatusCode::NOT_FOUND; 2]
    );
    assert_bytes(app, &rw, "del-twin", &secret, "the twin keeps it").await;
    delete_path(app, &rwd, "del", &secret)
        .await
        .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");

    // A path still staged goes just as fast, and GC removes its staged copy.
    let oops = TestNar::files("oops-1.0", 602, &[1000]);
    assert_kind(&app.upload(&rw, "del", &oops).await, "Uploaded");
    delete_path(app, &rwd, "del", &oops)
        .await
        .assert_status(StatusCode::NO_CONTENT);
    assert_served(app, &rw, "del", &[], &[&oops], "deleted while staged").await;
    assert_eq!(
        nar_url_statuses(app, &rw, "del", &oops).await,
        [StatusCode::NOT_FOUND; 2]
    );
    let report = gc_at(app, unix_now() + grace(app) + 60).await;
    assert_eq!(report.nars_deleted, 1, "only the staged orphan");
    app.assert_staging_empty().await;
    assert_bytes(app, &rw, "del-twin", &secret, "after GC").await;
}

// --- 9. statistics --------------------------------------------------------------------------

async fn stats_report_dedup_and_compression(app: &TestApp) {
    app.create_cache("st-a", false).await;
    app.create_cache("st-b", false).await;
    let token = app.token(&[("st-*", PULL_PUSH_DELETE)]);
    let shared = pool::text_nar("shared-1.0", 700, 600 * KIB);
    let only_a = pool::text_nar("only-a-1.0", 701, 300 * KIB);
    let size = shared.nar_size() as i64;
    assert_kind(&app.upload(&token, "st-a", &shared).await, "Uploaded");
    assert_kind(&app.upload(&token, "st-b", &shared).await, "Deduplicated");

    // Staged NARs count uncompressed.
    assert_cache_stats(&cache_stats(app, &token, "st-b").await, 1, 1, size, size);
    let global = {
        let mut conn = app.state.db.conn().await.expect("connection");
        stats::global(conn.raw()).await.expect("stats")
    };
    assert_eq!((global.staged_nars, global.staged_bytes), (1, size));

    app.drain_jobs().await;
    let file = app.nar_record(&shared).await.file_size.expect("file size");
    let compression = size as f64 / file as f64;
    assert!(compression > 1.5, "text compresses: {compression}");
    for c in ["st-a", "st-b"] {
        assert_cache_stats(&cache_stats(app, &token, c).await, 1, 1, size, file);
    }
    let global = {
        let mut conn = app.state.db.conn().await.expect("connection");
        stats::global(conn.raw()).await.expect("stats")
    };
    assert_eq!((global.caches, global.objects, global.nars), (2, 2, 1));
    assert_eq!(
        (global.nar_bytes, global.unique_nar_bytes),
        (2 * size, size)
    );
    assert_eq!((global.staged_nars, global.staged_bytes), (0, 0));
    assert_eq!(global.stored_bytes, file, "the shared NAR is stored once");
    assert_eq!(global.chunks, app.count("chunks").await);
    assert!(
        (global.dedup_ratio - 2.0 * compression).abs() < 1e-9,
        "dedup ratio {} = 2 × compression {compression}",
        global.dedup_ratio
    );

    assert_kind(&app.upload(&token, "st-a", &only_a).await, "Uploaded");
    app.drain_jobs().await;
    let (size_a, file_a) = (
        only_a.nar_size() as i64,
        app.nar_record(&only_a).await.file_size.expect("file size"),
    );
    assert_cache_stats(
        &cache_stats(app, &token, "st-a").await,
        2,
        2,
        size + size_a,
        file + file_a,
    );
    assert_cache_stats(&cache_stats(app, &token, "st-b").await, 1, 1, size, file);
    let global = {
        let mut conn = app.state.db.conn().await.expect("connection");
        stats::global(conn.raw()).await.expect("stats")
    };
    assert_eq!(global.nar_bytes, 2 * size + size_a);
    assert_eq!(global.stored_bytes, file + file_a);

    delete_path(app, &token, "st-b", &shared)
        .await
        .assert_status(StatusCode::NO_CONTENT);
    assert_cache_stats(&cache_stats(app, &token, "st-b").await, 0, 0, 0, 0);
    assert_cache_stats(
        &cache_stats(app, &token, "st-a").await,
        2,
        2,
        size + size_a,
        file + file_a,
    );
}

/// Three workers whose schedulers all found GC due at `now`: the first
/// runs it, the others find a run finished since and skip; an interval
/// later it is due again. (`larder-admin gc` runs whenever the lease is
/// free.)
async fn scheduled_gc_runs_once_however_many_find_it_due(app: &TestApp) {
    let svc = &app.services;
    let interval = 3600;
    let now = unix_now();
    let ran: Vec<bool> = futures::future::join_all(
        ["w1", "w2", "w3"].map(|w| gc::run_scheduled(svc, now, w, interval)),
    )
    .await
    .into_iter()
    .map(|r| r.expect("GC").is_some())
    .collect();
    assert_eq!(ran.iter().filter(|r| **r).count(), 1, "{ran:?}");
    for w in ["w2", "w3"] {
        let again = gc::run_scheduled(svc, now + 5, w, interval)
            .await
            .expect("GC");
        assert!(again.is_none(), "a GC finished within the interval");
    }
    assert!(gc::run(svc, now + 5, "admin").await.expect("GC").is_some());
    let due = gc::run_scheduled(svc, now + 5 + interval, "w2", interval)
        .await
        .expect("GC");
    assert!(due.is_some(), "due again an interval after the last run");
}
