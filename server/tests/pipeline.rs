//! The core pipeline end to end through the router (docs/architecture.md "Life of an upload"): upload →
//! staged serving → ingest → chunked serving; deduplication across caches
//! and between similar NARs; concurrent uploads; idempotent ingest; cache
//! isolation; rejected uploads leaving nothing behind; get-missing-paths;
//! the sweeper; byte ranges, validators, HEAD and Cache-Control over real
//! TCP (`pipeline/http.rs`); the audit trail after every audited
//! change (`pipeline/audit.rs`); a real `larder-worker` process serving
//! its `/metrics` (`pipeline/worker_metrics.rs`). Every scenario runs on SQLite and on
//! PostgreSQL; those in `on_s3!` also with chunks and staging on a real S3
//! server (docs/operations.md "S3 storage").

use crate::{attic_support, common};

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use bytes::Bytes;
use futures::FutureExt as _;
use serde_json::{Value, json};

use larder_core::nix::hash::NarHash;
use larder_core::nix::nar::NarNode;
use larder_core::nix::narinfo::Compression;
use larder_shared::db::unix_now;
use larder_shared::token::Permission;
use larder_worker::jobs::ingest::{self, Outcome};
use larder_worker::sweeper::{self, STALE_AFTER, SweepReport};

use common::nar::{Rng, TestNar};
use common::read::{
    assert_kind, assert_ready_readable, assert_signed, fetch, narinfo, narinfo_line, unzstd,
};
use common::{TestApp, request, send, upload_request};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const PULL_PUSH: &[Permission] = &[Permission::Pull, Permission::Push];

/// The scenarios again with chunks and staging on the S3 test server, on
/// both databases, as `s3::<scenario>::sqlite` and `…::postgres`; skipped
/// (with a message) when `LARDER_TEST_S3_ENDPOINT` is unset.
mod s3 {
    use super::*;

    on_both_backends!(crate::common::TestApp::on_s3 =>
    upload_serve_ingest_serve,
    concurrent_uploads_of_one_nar,
    bad_uploads_leave_nothing_behind,
    a_worker_process_serves_its_metrics,
    import_from_attic_on_s3,
    chunk_push_round_trip,
    );
}

on_both_backends!(
    upload_serve_ingest_serve,
    same_nar_in_two_caches_is_stored_once,
    similar_nars_share_chunks,
    concurrent_uploads_of_one_nar,
    ingest_twice_is_a_no_op,
    caches_are_isolated,
    bad_uploads_leave_nothing_behind,
    get_missing_paths_lists_exactly_the_unpushed,
    sweeper_requeues_lost_jobs,
    abandoned_uploads_are_found_through_the_database,
    a_released_copy_is_deleted_at_once,
    ranges_on_every_representation,
    cache_control_matrix,
    import_from_attic,
    import_attic_survives_kill_9,
    a_published_path_keeps_its_nar,
    a_broken_nar_may_be_replaced,
    replacing_needs_the_delete_permission,
    nar_ingested_before_layout_serves_the_same,
    a_corrupt_object_row_is_a_server_error,
    a_path_keeps_the_directory_it_was_pushed_under,
    local_store_moves_to_s3,
    a_worker_process_serves_its_metrics,
    chunk_push_round_trip,
    chunk_push_ingests_its_chunk_list,
    chunk_push_wrong_hash_leaves_nothing,
    chunk_push_no_cross_tenant_oracle,
    chunk_push_resumes,
    unused_chunk_batches_expire,
    chunk_push_prepare_then_publish,
    chunk_push_publish_without_prepared_nar,
    chunk_push_prepare_refuses_a_wrong_hash,
    chunk_push_hash_lists,
    chunk_push_streamed_prepare,
    chunk_push_streamed_prepare_failures_leave_nothing,
    chunk_push_inline_nar,
    expired_token_records_are_pruned,
);

mod attic_kill;
use attic_kill::import_attic_survives_kill_9;
mod s3_upload_fault;
pub(crate) mod staging_quota;
mod worker_metrics;
use worker_metrics::a_worker_process_serves_its_metrics;
mod staging;
mod to_s3;
mod token_records;
use staging::{
    a_released_copy_is_deleted_at_once, abandoned_uploads_are_found_through_the_database,
};
use to_s3::local_store_moves_to_s3;
use token_records::expired_token_records_are_pruned;
pub(crate) mod http;
use http::{cache_control_matrix, ranges_on_every_representation};
mod layout;
use layout::nar_ingested_before_layout_serves_the_same;

mod audit;
mod audit_trail {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::audit::audit_trail(crate::common::Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::audit::audit_trail(crate::common::Backend::Postgres).await
    }
}

mod typed_rows;
use typed_rows::{
    a_corrupt_object_row_is_a_server_error, a_path_keeps_the_directory_it_was_pushed_under,
};
mod chunk_push;
use chunk_push::{
    chunk_push_ingests_its_chunk_list, chunk_push_no_cross_tenant_oracle, chunk_push_resumes,
    chunk_push_round_trip, chunk_push_wrong_hash_leaves_nothing, unused_chunk_batches_expire,
};
mod chunk_push_prepared;
use chunk_push_prepared::{
    chunk_push_hash_lists, chunk_push_inline_nar, chunk_push_prepare_refuses_a_wrong_hash,
    chunk_push_prepare_then_publish, chunk_push_publish_without_prepared_nar,
    chunk_push_streamed_prepare, chunk_push_streamed_prepare_failures_leave_nothing,
};
mod prepared_nars_count_against_the_staging_quota {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::chunk_push_prepared::prepared_nars_count_against_the_staging_quota(
            crate::common::Backend::Sqlite,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::chunk_push_prepared::prepared_nars_count_against_the_staging_quota(
            crate::common::Backend::Postgres,
        )
        .await
    }
}
mod chunk_push_disabled {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::chunk_push::chunk_push_disabled(crate::common::Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::chunk_push::chunk_push_disabled(crate::common::Backend::Postgres).await
    }
}
mod first_push;
use first_push::{
    a_broken_nar_may_be_replaced, a_published_path_keeps_its_nar,
    replacing_needs_the_delete_permission,
};

// --- 1. upload, serve staged, ingest, serve chunked ---------------------------

async fn upload_serve_ingest_serve(app: &TestApp) {
    app.create_cache("alpha", false).await;
    let token = app.token(&[("alpha", PULL_PUSH)]);
    let dep = TestNar::files("glibc-2.33-56", 2, &[700]);
    let mut nar = TestNar::files("hello-2.10", 1, &[40 * KIB, 300 * KIB, 3 * MIB]);
    nar.references = vec![dep.base_name.clone(), nar.base_name.clone()];
    nar.deriver = Some(format!("{}-hello-2.10.drv", Rng::new(3).store_hash()));

    assert_kind(&app.upload(&token, "alpha", &nar).await, "Uploaded");
    // The preamble form of the same endpoint.
    assert_kind(
        &app.upload_preamble(&token, "alpha", &dep).await,
        "Uploaded",
    );
    let key = app.public_key("alpha").await;

    // Staged: served uncompressed from staging.
    for n in [&nar, &dep] {
        let (text, info) = narinfo(app, &token, "alpha", n).await;
        let url = format!("nar/{}.nar", n.url_hash());
        assert_eq!(narinfo_line(&text, "URL"), Some(url.as_str()), "{text}");
        assert_eq!(narinfo_line(&text, "Compression"), Some("none"), "{text}");
        assert_eq!(info.compression, Compression::None);
        assert_signed(&info, &key, n);
        let body = fetch(app, &token, "alpha", &info.url).await;
        assert!(body == n.bytes, "staged NAR differs");
    }

    assert_eq!(app.drain_jobs().await, 2);
    app.assert_staging_empty().await;

    // Ready: served as the chunks' zstd frames, or decompressed on the fly.
    for n in [&nar, &dep] {
        let (text, info) = narinfo(app, &token, "alpha", n).await;
        let url = format!("nar/{}.nar.zst", n.url_hash());
        assert_eq!(narinfo_line(&text, "URL"), Some(url.as_str()), "{text}");
        assert_eq!(narinfo_line(&text, "Compression"), Some("zstd"), "{text}");
        assert_eq!(info.compression, Compression::Zstd);
        assert_signed(&info, &key, n);
        let file_size = info.file_size.expect("FileSize once ingested");
        let zst = fetch(app, &token, "alpha", &info.url).await;
        assert_eq!(zst.len() as u64, file_size, "FileSize vs .nar.zst length");
        assert!(
            unzstd(&zst) == n.bytes,
            ".nar.zst does not decompress to the NAR"
        );
        let plain = fetch(app, &token, "alpha", &format!("nar/{}.nar", n.url_hash())).await;
        assert!(plain == n.bytes, ".nar after ingest differs");
    }
    assert!(app.num_chunks(&nar).await > 10, "a 3.3 MiB NAR is chunked");
    app.assert_chunk_store_consistent().await;
}

// --- 2. one NAR in two caches --------------------------------------------------

async fn same_nar_in_two_caches_is_stored_once(app: &TestApp) {
    for c in ["dd-a", "dd-b", "dd-c"] {
        app.create_cache(c, false).await;
    }
    let token = app.token(&[("dd-*", PULL_PUSH)]);
    let nar = TestNar::files("shared-1.0", 10, &[300 * KIB, 200 * KIB, 40 * KIB]);

    assert_kind(&app.upload(&token, "dd-a", &nar).await, "Uploaded");
    // Still staged: proof of possession, then linked.
    assert_kind(&app.upload(&token, "dd-b", &nar).await, "Deduplicated");
    assert_eq!(app.count("nars").await, 1);
    assert_eq!(app.count("objects").await, 2);
    assert_eq!(
        app.object_keys("staging/").await.len(),
        1,
        "one staged copy"
    );

    assert_eq!(app.drain_jobs().await, 1);
    let rows = app.assert_chunk_store_consistent().await;
    assert_eq!(
        rows,
        app.num_chunks(&nar).await,
        "one row per chunk of the one NAR"
    );
    assert!(rows > 3, "the NAR is chunked ({rows} chunks)");
    assert_eq!(
        app.total_refcount().await,
        rows,
        "each chunk referenced once"
    );

    // Already ingested: linked too, reporting the stored size.
    let body = assert_kind(&app.upload(&token, "dd-c", &nar).await, "Deduplicated");
    let (_, info) = narinfo(app, &token, "dd-c", &nar).await;
    assert_eq!(body["file_size"].as_u64(), info.file_size);
    assert_eq!(app.drain_jobs().await, 0);
    assert_eq!(app.count("chunks").await, rows);
    // One copy of each chunk's bytes (in a pack, or its own object).
    assert_eq!(app.assert_chunk_store_consistent().await, rows);
    app.assert_staging_empty().await;

    for c in ["dd-a", "dd-b", "dd-c"] {
        assert_ready_readable(app, &token, c, &nar).await;
    }
}

// --- 3. similar NARs ----------------------------------------------------------------

async fn similar_nars_share_chunks(app: &TestApp) {
    app.create_cache("sim", false).await;
    let token = app.token(&[("sim", PULL_PUSH)]);
    let mut rng = Rng::new(20);
    let big = rng.bytes(4 * MIB);
    let small = rng.bytes(10 * KIB);
    let mut edited = big.clone();
    let patch = rng.bytes(100);
    edited[2 * MIB..2 * MIB + 100].copy_from_slice(&patch);
    let tree = |big: Vec<u8>| {
        NarNode::directory([
            ("big", NarNode::file(big)),
            ("small", NarNode::file(small.clone())),
        ])
    };
    let v1 = TestNar::from_node("lib-1.0", 21, &tree(big));
    let v2 = TestNar::from_node("lib-1.1", 22, &tree(edited));

    assert_kind(&app.upload(&token, "sim", &v1).await, "Uploaded");
    app.drain_jobs().await;
    let before = app.assert_chunk_store_consistent().await;
    assert!(before >= 16, "4 MiB in 64 KiB average chunks ({before})");

    assert_kind(&app.upload(&token, "sim", &v2).await, "Uploaded");
    app.drain_jobs().await;
    let after = app.assert_chunk_store_consistent().await;
    let new = after - before;
    assert!(
        (1..=3).contains(&new),
        "100 changed bytes made {new} new chunks"
    );
    let old_ids: BTreeSet<_> = app.nar_record(&v1).await.chunk_ids.into_iter().collect();
    let new_ids = app.nar_record(&v2).await.chunk_ids;
    let fresh = new_ids.iter().filter(|id| !old_ids.contains(id)).count();
    assert_eq!(
        fresh as i64, new,
        "the edited NAR lists every other chunk of the original"
    );
    assert_eq!(app.total_refcount().await, before + new_ids.len() as i64);

    let h = v2.url_hash();
    let plain = fetch(app, &token, "sim", &format!("nar/{h}.nar")).await;
    assert!(plain == v2.bytes, "edited NAR differs");
    let plain = fetch(app, &token, "sim", &format!("nar/{}.nar", v1.url_hash())).await;
    assert!(plain == v1.bytes, "original NAR differs");
}

// --- 4. concurrent uploads ------------------------------------------------------

async fn concurrent_uploads_of_one_nar(app: &TestApp) {
    app.create_cache("conc", false).await;
    let token = app.token(&[("conc", PULL_PUSH)]);
    let nar = TestNar::files("popular-1.0", 30, &[300 * KIB, 100 * KIB]);
    let uploads: Vec<_> = (0..20)
        .map(|_| {
            let router = app.router();
            let req = upload_request(&token, &nar.info("conc"), nar.bytes.clone());
            tokio::spawn(async move { send(&router, req).await })
        })
        .collect();
    let mut kinds = Vec::new();
    for u in uploads {
        let resp = u.await.expect("upload task");
        resp.assert_status(StatusCode::OK);
        let body: Value = resp.json();
        kinds.push(body["kind"].as_str().expect("kind").to_owned());
    }
    assert!(
        kinds.iter().all(|k| k == "Uploaded" || k == "Deduplicated"),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().any(|k| k == "Uploaded"),
        "someone uploaded: {kinds:?}"
    );
    assert_eq!(app.count("nars").await, 1);
    assert_eq!(app.count("objects").await, 1);

    assert_eq!(app.drain_jobs().await, 1);
    app.assert_staging_empty().await;
    let rows = app.assert_chunk_store_consistent().await;
    assert_eq!(rows, app.num_chunks(&nar).await);
    assert_eq!(app.total_refcount().await, rows);
    assert_ready_readable(app, &token, "conc", &nar).await;
}

// --- 5. ingest reruns --------------------------------------------------------------

/// What a rerun must leave unchanged.
async fn store_snapshot(app: &TestApp) -> (i64, i64, Vec<String>, i64) {
    (
        app.count("chunks").await,
        app.total_refcount().await,
        [
            app.object_keys("chunks/").await,
            app.object_keys("packs/").await,
        ]
        .concat(),
        app.scalar("SELECT COUNT(*) FROM nars WHERE state = 'ready'")
            .await,
    )
}

async fn ingest_twice_is_a_no_op(app: &TestApp) {
    app.create_cache("rerun", false).await;
    let token = app.token(&[("rerun", PULL_PUSH)]);

    // One after the other.
    let first = TestNar::files("first-1.0", 40, &[300 * KIB, 40 * KIB]);
    assert_kind(&app.upload(&token, "rerun", &first).await, "Uploaded");
    let id = app.nar_record(&first).await.id;
    let outcome = ingest::ingest(&app.services, id)
        .await
        .expect("first ingest");
    let Outcome::Ingested {
        chunks, new_chunks, ..
    } = outcome
    else {
        panic!("first run did nothing: {outcome:?}");
    };
    assert_eq!(chunks, new_chunks, "all chunks new");
    let snapshot = store_snapshot(app).await;
    assert_eq!(snapshot.0, chunks as i64);
    let again = ingest::ingest(&app.services, id)
        .await
        .expect("second ingest");
    assert_eq!(again, Outcome::Skipped);
    assert_eq!(
        store_snapshot(app).await,
        snapshot,
        "a rerun changed the store"
    );
    assert_ready_readable(app, &token, "rerun", &first).await;

    // Two at once.
    let second = TestNar::files("second-1.0", 41, &[300 * KIB, 40 * KIB]);
    assert_kind(&app.upload(&token, "rerun", &second).await, "Uploaded");
    let id = app.nar_record(&second).await.id;
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let svc = app.services.clone();
            tokio::spawn(async move { ingest::ingest(&svc, id).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for r in runs {
        outcomes.push(r.await.expect("ingest task").expect("concurrent ingest"));
    }
    let done = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Ingested { .. }))
        .count();
    assert_eq!(done, 1, "exactly one run ingests: {outcomes:?}");
    assert!(outcomes.contains(&Outcome::Skipped), "{outcomes:?}");

    let rows = app.assert_chunk_store_consistent().await;
    assert_eq!(
        rows,
        app.num_chunks(&first).await + app.num_chunks(&second).await
    );
    assert_eq!(
        app.total_refcount().await,
        rows,
        "the losing run added no references"
    );
    assert_eq!(
        ingest::ingest(&app.services, id).await.expect("third run"),
        Outcome::Skipped
    );
    app.assert_staging_empty().await;
    assert_ready_readable(app, &token, "rerun", &second).await;
    assert_ready_readable(app, &token, "rerun", &first).await;
}

// --- 6. isolation ----------------------------------------------------------------------

async fn caches_are_isolated(app: &TestApp) {
    app.create_cache("iso-a", false).await;
    app.create_cache("iso-b", false).await;
    app.create_cache("iso-pub", true).await;
    let reader = app.token(&[
        ("iso-a", &[Permission::Pull]),
        ("iso-b", &[Permission::Pull]),
    ]);
    let pusher = app.token(&[("iso-*", PULL_PUSH)]);
    let stranger = app.token(&[("iso-pub", PULL_PUSH)]);
    let nar = TestNar::files("secret-1.0", 50, &[100 * KIB]);
    assert_kind(&app.upload(&pusher, "iso-a", &nar).await, "Uploaded");

    // Knowing the NAR hash and size without the bytes links nothing.
    let forged = app
        .upload_with(
            &pusher,
            &nar.info("iso-b"),
            Bytes::from(vec![0u8; nar.bytes.len()]),
        )
        .await;
    forged.assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
    assert_eq!(app.count("objects").await, 1);

    let h = nar.url_hash();
    for phase in ["staged", "ready"] {
        if phase == "ready" {
            assert_eq!(app.drain_jobs().await, 1);
        }
        // Through A, the owner: readable.
        let ok = app.get(&format!("/iso-a/nar/{h}.nar"), Some(&reader)).await;
        ok.assert_status(StatusCode::OK);
        // Through B, even with `r` on both: not there.
        for url in [
            format!("/iso-b/nar/{h}.nar"),
            format!("/iso-b/nar/{h}.nar.zst"),
        ] {
            app.get(&url, Some(&reader))
                .await
                .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");
            app.get(&url, Some(&pusher))
                .await
                .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");
        }
        let info_b = format!("/iso-b/{}.narinfo", nar.store_hash());
        app.get(&info_b, Some(&reader))
            .await
            .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");
        // Through a public cache: not there either.
        let info_pub = format!("/iso-pub/{}.narinfo", nar.store_hash());
        app.get(&info_pub, None)
            .await
            .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");
        app.get(&format!("/iso-pub/nar/{h}.nar"), None)
            .await
            .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");
        // Strangers to A: 401, anonymous or with a token for other caches.
        for token in [None, Some(stranger.as_str())] {
            for url in [
                format!("/iso-a/nar/{h}.nar"),
                format!("/iso-a/{}.narinfo", nar.store_hash()),
            ] {
                app.get(&url, token)
                    .await
                    .assert_error(StatusCode::UNAUTHORIZED, "Unauthorized");
            }
        }
        // …and the same 401 for a cache that does not exist.
        app.get(&format!("/iso-nope/nar/{h}.nar"), Some(&stranger))
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    assert_ready_readable(app, &reader, "iso-a", &nar).await;
}

// --- 7. rejected uploads ------------------------------------------------------------

async fn bad_uploads_leave_nothing_behind(app: &TestApp) {
    app.create_cache("rej", false).await;
    let token = app.token(&[("rej", PULL_PUSH), ("ghost", PULL_PUSH)]);
    // One good NAR, ingested, so the dedup path has something to guard.
    let known = TestNar::files("known-1.0", 60, &[100 * KIB]);
    assert_kind(&app.upload(&token, "rej", &known).await, "Uploaded");
    app.drain_jobs().await;
    let baseline = (
        app.count("nars").await,
        app.count("objects").await,
        app.count("chunks").await,
    );

    let nar = TestNar::files("bad-1.0", 61, &[100 * KIB]);
    let other_hash = format!("sha256:{}", NarHash::digest(b"something else").to_hex());
    let garbage = Rng::new(62).bytes(nar.bytes.len());
    let garbage_nar = TestNar::from_bytes("garbage-1.0", 63, garbage);
    let mut longer = nar.bytes.to_vec();
    longer.extend_from_slice(&[0u8; 100]);

    let with = |mut info: Value, key: &str, value: Value| {
        info[key] = value;
        info
    };
    let cases: Vec<(&str, Value, Bytes, StatusCode, &str)> = vec![
        (
            "wrong nar_hash",
            with(nar.info("rej"), "nar_hash", json!(other_hash)),
            nar.bytes.clone(),
            StatusCode::BAD_REQUEST,
            "InvalidNar",
        ),
        (
            "body shorter than nar_size",
            nar.info("rej"),
            nar.bytes.slice(..nar.bytes.len() - 100),
            StatusCode::BAD_REQUEST,
            "InvalidNar",
        ),
        (
            "body longer than nar_size",
            nar.info("rej"),
            Bytes::from(longer),
            StatusCode::BAD_REQUEST,
            "InvalidNar",
        ),
        (
            "malformed NAR with its own hash",
            garbage_nar.info("rej"),
            garbage_nar.bytes.clone(),
            StatusCode::BAD_REQUEST,
            "InvalidNar",
        ),
        (
            "bad store path",
            with(
                nar.info("rej"),
                "store_path",
                json!("/nix/store/not-a-store-path"),
            ),
            nar.bytes.clone(),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            "store path outside the store dir",
            with(
                nar.info("rej"),
                "store_path",
                json!(format!("relative/{}", nar.base_name)),
            ),
            nar.bytes.clone(),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        // docs/operations.md "What uploads must look like": metadata that Nix would refuse after the fact.
        (
            "store path in another store dir",
            with(
                nar.info("rej"),
                "store_path",
                json!(format!("/gnu/store/{}", nar.base_name)),
            ),
            nar.bytes.clone(),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            "content address Nix cannot parse",
            with(nar.info("rej"), "ca", json!("definitely not a CA")),
            nar.bytes.clone(),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            "content address with a digest of the wrong length",
            with(nar.info("rej"), "ca", json!("fixed:r:sha256:abcd")),
            nar.bytes.clone(),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            "signature that is not base64",
            with(
                nar.info("rej"),
                "sigs",
                json!(["cache.nixos.org-1:!!!not-base64!!!"]),
            ),
            nar.bytes.clone(),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            "signature of 32 bytes",
            with(
                nar.info("rej"),
                "sigs",
                json!(["k-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="]),
            ),
            nar.bytes.clone(),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            "store_path_hash not the path's",
            with(
                nar.info("rej"),
                "store_path_hash",
                json!(known.store_hash()),
            ),
            nar.bytes.clone(),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            "cache that does not exist",
            nar.info("ghost"),
            nar.bytes.clone(),
            StatusCode::NOT_FOUND,
            "NoSuchCache",
        ),
        // A known NAR's metadata without its bytes: no link.
        (
            "known hash, wrong bytes",
            known.with_path("claimed-1.0", 64).info("rej"),
            Bytes::from(vec![7u8; known.bytes.len()]),
            StatusCode::BAD_REQUEST,
            "InvalidNar",
        ),
    ];
    for (what, info, body, status, kind) in cases {
        let resp = app.upload_with(&token, &info, body).await;
        assert_eq!(resp.status, status, "{what}: {}", resp.text());
        resp.assert_error(status, kind);
        assert_left_nothing(app, what, baseline).await;
    }

    // A preamble over 1 MiB is refused before it is read.
    let req = request(Method::PUT, "/_api/v1/upload-path", Some(&token))
        .header("x-attic-nar-info-preamble-size", 1024 * 1024 + 1)
        .body(Body::from(vec![b'{'; 1024 * 1024 + 1]))
        .expect("request");
    app.send(req)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    assert_left_nothing(app, "oversized preamble", baseline).await;

    // The same NAR, pushed properly, still goes through; a well-formed CA
    // in any of Nix's digest encodings is stored in Nix's canonical form.
    let hex = NarHash::digest(b"ca").to_hex();
    let canonical = format!("fixed:r:sha256:{}", NarHash::digest(b"ca").to_base32());
    let info = with(
        nar.info("rej"),
        "ca",
        json!(format!("fixed:r:sha256:{hex}")),
    );
    assert_kind(
        &app.upload_with(&token, &info, nar.bytes.clone()).await,
        "Uploaded",
    );
    app.drain_jobs().await;
    assert_ready_readable(app, &token, "rej", &nar).await;
    let (text, _) = narinfo(app, &token, "rej", &nar).await;
    assert_eq!(narinfo_line(&text, "CA"), Some(canonical.as_str()));
}

async fn assert_left_nothing(app: &TestApp, what: &str, baseline: (i64, i64, i64)) {
    let now = (
        app.count("nars").await,
        app.count("objects").await,
        app.count("chunks").await,
    );
    assert_eq!(
        now, baseline,
        "{what}: rows (nars, objects, chunks) changed"
    );
    app.assert_staging_empty().await;
    assert!(
        app.staged_nar_ids().await.is_empty(),
        "{what}: a NAR was staged"
    );
}

// --- 8. get-missing-paths ----------------------------------------------------------

async fn get_missing_paths_lists_exactly_the_unpushed(app: &TestApp) {
    app.create_cache("mp", false).await;
    app.create_cache("mp-other", false).await;
    let token = app.token(&[("mp*", PULL_PUSH)]);
    let nars: Vec<TestNar> = (0..5)
        .map(|i| TestNar::files(&format!("p{i}"), 80 + i, &[500]))
        .collect();
    for i in [0, 2] {
        assert_kind(&app.upload(&token, "mp", &nars[i]).await, "Uploaded");
    }
    // In another cache only: still missing here.
    assert_kind(&app.upload(&token, "mp-other", &nars[3]).await, "Uploaded");

    let expected: BTreeSet<String> = [1, 3, 4]
        .iter()
        .map(|&i| nars[i].store_hash().to_owned())
        .collect();
    for phase in ["staged", "ready"] {
        if phase == "ready" {
            app.drain_jobs().await;
        }
        let body = json!({
            "cache": "mp",
            "store_path_hashes": nars.iter().map(|n| n.store_hash()).collect::<Vec<_>>(),
        });
        let req = request(Method::POST, "/_api/v1/get-missing-paths", Some(&token))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        let resp = app.send(req).await;
        resp.assert_status(StatusCode::OK);
        let answer: Value = resp.json();
        let missing: Vec<String> =
            serde_json::from_value(answer["missing_paths"].clone()).expect("missing_paths");
        assert_eq!(
            missing.len(),
            expected.len(),
            "{phase}: no duplicates: {missing:?}"
        );
        assert_eq!(
            missing.into_iter().collect::<BTreeSet<_>>(),
            expected,
            "{phase}"
        );
    }
}

// --- 9. sweeper --------------------------------------------------------------------------

/// A staged NAR whose job was lost gets a fresh one once stale, and its
/// copy (held by its `nars` row, not by a staging intent) survives every
/// sweep. Abandoned uploads: `pipeline/staging.rs`.
async fn sweeper_requeues_lost_jobs(app: &TestApp) {
    app.create_cache("sw", false).await;
    let token = app.token(&[("sw", PULL_PUSH)]);
    let nar = TestNar::files("orphaned-job-1.0", 90, &[100 * KIB]);
    assert_kind(&app.upload(&token, "sw", &nar).await, "Uploaded");
    assert_eq!(app.ingest_jobs().await, 1, "upload enqueued its ingest");
    app.lose_ingest_jobs().await;
    assert_eq!(app.ingest_jobs().await, 0);
    let staged = app.object_keys("staging/").await;
    assert_eq!(staged.len(), 1);

    let now = unix_now();
    let svc = &app.services;
    let report = sweeper::sweep(svc, now).await.expect("sweep");
    assert_eq!(report, SweepReport::default(), "fresh NAR left alone");

    // Past the staleness limit: a fresh job, once.
    let later = now + STALE_AFTER.as_secs() as i64 + 60;
    let report = sweeper::sweep(svc, later).await.expect("sweep");
    assert_eq!(
        report,
        SweepReport {
            requeued: 1,
            ..SweepReport::default()
        }
    );
    assert_eq!(app.ingest_jobs().await, 1, "the lost job is back");
    let report = sweeper::sweep(svc, later + 60).await.expect("sweep");
    assert_eq!(report.requeued, 0, "just re-enqueued: not stale again yet");
    assert_eq!(app.ingest_jobs().await, 1);

    // Past the staging max-age: the NAR's copy stays.
    let max_age = svc.config.staging.max_age.as_secs() as i64;
    let report = sweeper::sweep(svc, now + max_age + 3600)
        .await
        .expect("sweep");
    assert_eq!(report.staging_deleted, 0);
    assert_eq!(app.object_keys("staging/").await, staged);

    // The re-enqueued job does its work.
    assert_eq!(app.drain_jobs().await, 1);
    app.assert_staging_empty().await;
    assert_ready_readable(app, &token, "sw", &nar).await;
}

// --- S3 server down during ingest ------------------------------------------------

/// SeaweedFS killed after an upload was staged and restarted while the ingest
/// is running: `/_ready` says 503 meanwhile, the client's retries carry the
/// ingest through, and the NAR is then served byte-identical from the chunks
/// in the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_restarted_during_ingest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(mut server) = common::s3_server::S3Server::start(18433, dir.path()).await else {
        return;
    };
    let storage = common::s3_storage_toml_at(&server.endpoint(), 200);
    let app = TestApp::builder(common::Backend::Sqlite)
        .storage(storage)
        .build()
        .await;
    let outcome = std::panic::AssertUnwindSafe(async {
        app.create_cache("fault", false).await;
        let token = app.token(&[("fault", PULL_PUSH)]);
        let nar = TestNar::files("fault-1.0", 11, &[200 * KIB, 700 * KIB]);
        assert_kind(&app.upload(&token, "fault", &nar).await, "Uploaded");
        let id = app.staged_nar_ids().await[0];

        server.stop();
        let services = app.services.clone();
        let ingest = tokio::spawn(async move { ingest::ingest(&services, id).await });
        // Meanwhile the ingest hits the dead server and backs off; the
        // readiness probe reports the outage (within its bound).
        app.get("/_ready", None)
            .await
            .assert_status(StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            !ingest.is_finished(),
            "the ingest ended while the server was down: {:?}",
            ingest.await
        );
        server.restart().await;
        let done = ingest.await.expect("ingest task");
        assert!(
            matches!(done, Ok(Outcome::Ingested { .. })),
            "ingest did not complete: {done:?}"
        );
        app.get("/_ready", None).await.assert_status(StatusCode::OK);
        assert_ready_readable(&app, &token, "fault", &nar).await;
        app.assert_staging_empty().await;
    })
    .catch_unwind()
    .await;
    server.stop();
    app.teardown().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

// --- 10. import from Attic (docs/operations.md "Moving from Attic") -------------

/// An Attic (local storage) with a public and a private cache sharing a NAR and a chunk,
/// chunked and unchunked NARs in every compression Attic writes, and two
/// broken NARs (a chunk row gone, a chunk file gone), imported in two
/// passes (the first interrupted after one path), then once more.
async fn import_from_attic(app: &TestApp) {
    import_from(app, attic_support::AtticFixture::new(app.backend).await).await
}

/// [`import_from_attic`] with Attic's chunks in the S3 test server's bucket.
async fn import_from_attic_on_s3(app: &TestApp) {
    import_from(app, attic_support::AtticFixture::on_s3(app.backend).await).await
}

async fn import_from(app: &TestApp, attic: attic_support::AtticFixture) {
    use larder_api::attic_import::source::AtticConfig;
    use larder_api::attic_import::{self, Options, Target};
    use larder_core::nix::signing::SigningKey;
    use larder_core::nix::store_path::StorePathHash;
    use larder_shared::db::{caches, objects};

    use attic_support::Codec;

    let pub_key = SigningKey::generate("attic-pub-1").unwrap();
    let priv_key = SigningKey::generate("attic-priv-1").unwrap();
    attic
        .cache(
            1,
            "attic-pub",
            &pub_key.export_secret(),
            true,
            41,
            &[],
            None,
        )
        .await;
    attic
        .cache(
            2,
            "attic-priv",
            &priv_key.export_secret(),
            false,
            30,
            &["cache.nixos.org-1"],
            Some(7 * 86400),
        )
        .await;
    // c: one small chunk; a: three chunks; b shares a's first chunk.
    let c = TestNar::files("small", 31, &[3 * KIB]);
    let mut a = TestNar::files("big", 32, &[150 * KIB, 20 * KIB]);
    a.references = vec![c.base_name.clone()];
    a.deriver = Some(
        TestNar::files("drv", 39, &[1])
            .base_name
            .replace("-drv", "-big.drv"),
    );
    let b = TestNar::files("big", 32, &[150 * KIB, 40 * KIB]).with_path("other", 33);
    let d = TestNar::files("lost-row", 34, &[10 * KIB]);
    let e = TestNar::files("lost-file", 35, &[10 * KIB]);
    let cut = 64 * KIB;
    assert_eq!(a.bytes[..cut], b.bytes[..cut], "a and b share a prefix");
    attic.chunk(1, &c.bytes, Codec::Zstd).await;
    attic.chunk(2, &a.bytes[..cut], Codec::Zstd).await;
    attic.chunk(3, &a.bytes[cut..2 * cut], Codec::None).await;
    attic.chunk(4, &a.bytes[2 * cut..], Codec::Brotli).await;
    attic.chunk(5, &b.bytes[cut..], Codec::Xz).await;
    attic.chunk(6, &d.bytes, Codec::Zstd).await;
    attic.chunk(7, &e.bytes, Codec::Zstd).await;
    attic.nar(1, &c, &[Some(1)]).await;
    attic.nar(2, &a, &[Some(2), Some(3), Some(4)]).await;
    attic.nar(3, &b, &[Some(2), Some(5)]).await;
    attic.nar(4, &d, &[None]).await;
    attic.nar(5, &e, &[Some(7)]).await;
    attic.lose_chunk(7).await;
    let now = unix_now();
    let (created, accessed) = (now - 5 * 86400, now - 86400);
    attic.object(1, 1, &c, created, accessed).await;
    attic.object(1, 2, &a, created, accessed).await;
    attic.object(1, 4, &d, created, accessed).await;
    attic.object(2, 2, &a, created, accessed).await;
    attic.object(2, 3, &b, created, accessed).await;
    attic.object(2, 5, &e, created, accessed).await;
    let before = attic.fingerprint().await;

    let config = AtticConfig::load(&attic.config_path, |_| None).unwrap();
    assert!(
        config
            .jwt
            .larder_toml()
            .contains("token-bound-issuer = \"attic-test\"")
    );
    let target = Target {
        db: app.state.db.clone(),
        staging: app.state.staging.clone(),
        kek: app.state.keys.kek().clone(),
    };
    let broken = |r: &attic_import::Report| {
        let mut v: Vec<String> = r
            .failures
            .iter()
            .filter_map(|f| f.store_path.clone())
            .collect();
        v.sort();
        v
    };
    let mut want_broken = vec![d.store_path(), e.store_path()];
    want_broken.sort();

    // Dry run: says what would happen, writes nothing.
    let dry = attic_import::run(
        &config,
        &target,
        &Options {
            dry_run: true,
            ..Options::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (dry.caches_created, dry.paths_staged, dry.paths_linked),
        (2, 3, 1),
        "{dry:?}"
    );
    assert_eq!(broken(&dry), want_broken);
    assert_eq!(app.count("caches").await, 0);

    // Interrupted after one path, then completed.
    let first = attic_import::run(
        &config,
        &target,
        &Options {
            limit: Some(1),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    assert!(
        first.stopped_at_limit && first.paths_staged == 1,
        "{first:?}"
    );
    let second = attic_import::run(&config, &target, &Options::default())
        .await
        .unwrap();
    assert_eq!(
        (
            second.paths_present,
            second.paths_staged,
            second.paths_linked
        ),
        (1, 2, 1),
        "{second:?}"
    );
    assert_eq!(broken(&second), want_broken, "{second:?}");
    assert_eq!(second.created_by_carried, 3);
    assert_eq!(app.drain_jobs().await, 3);
    assert_eq!(app.count("objects").await, 4);
    assert_eq!(app.count("nars").await, 3);
    app.assert_staging_empty().await;

    // Caches as in Attic, signed with Attic's keys.
    let mut conn = app.state.db.conn().await.unwrap();
    let lp = caches::get_by_name(conn.raw(), &"attic-pub".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let lq = caches::get_by_name(conn.raw(), &"attic-priv".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (lp.is_public, lp.priority, lp.retention_period),
        (true, 41, None)
    );
    assert_eq!(
        (lq.is_public, lq.priority, lq.retention_period),
        (false, 30, Some(7 * 86400))
    );
    assert_eq!(
        lq.upstream_cache_key_names,
        vec!["cache.nixos.org-1".to_string()]
    );
    let obj = objects::find(
        conn.raw(),
        lq.id,
        &b.store_hash().parse::<StorePathHash>().unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!((obj.created_at, obj.last_accessed_at), (created, accessed));
    // Attic's uploader carried over (`created_by`).
    assert_eq!(obj.created_by.as_deref(), Some("alice"));
    assert_eq!(obj.meta.sigs, vec!["someone-else-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==".to_string()]);
    drop(conn);
    let token = app.root_token();
    for (cache, key, nar) in [
        ("attic-pub", &pub_key, &c),
        ("attic-pub", &pub_key, &a),
        ("attic-priv", &priv_key, &a),
        ("attic-priv", &priv_key, &b),
    ] {
        let (_, info) = narinfo(app, &token, cache, nar).await;
        assert_signed(&info, &key.public_key(), nar);
        assert_ready_readable(app, &token, cache, nar).await;
        // Attic's URL shape, as hosts' cached narinfos say.
        let body = fetch(app, &token, cache, &format!("nar/{}.nar", nar.store_hash())).await;
        assert!(body == nar.bytes, "{cache}: Attic-shaped NAR URL");
    }
    let stranger = app
        .get(&format!("/attic-pub/nar/{}.nar", c.store_hash()), None)
        .await;
    stranger.assert_status(StatusCode::OK);
    let stranger = app
        .get(&format!("/attic-priv/nar/{}.nar", b.store_hash()), None)
        .await;
    stranger.assert_status(StatusCode::UNAUTHORIZED);
    // Not in this cache: the same answer as any unknown path.
    app.get(
        &format!("/attic-pub/nar/{}.nar", b.store_hash()),
        Some(&token),
    )
    .await
    .assert_status(StatusCode::NOT_FOUND);
    let missing = app
        .get(
            &format!("/attic-pub/{}.narinfo", d.store_hash()),
            Some(&token),
        )
        .await;
    missing.assert_status(StatusCode::NOT_FOUND);

    // Once more: nothing changes.
    let counts = (
        app.count("objects").await,
        app.count("nars").await,
        app.count("chunks").await,
    );
    let third = attic_import::run(&config, &target, &Options::default())
        .await
        .unwrap();
    assert_eq!(
        (third.paths_present, third.paths_staged, third.paths_linked),
        (4, 0, 0),
        "{third:?}"
    );
    assert_eq!(
        (
            third.caches_created,
            third.caches_updated,
            third.caches_unchanged
        ),
        (0, 0, 2)
    );
    assert_eq!(app.staged_nar_ids().await.len(), 0);
    assert_eq!(
        counts,
        (
            app.count("objects").await,
            app.count("nars").await,
            app.count("chunks").await
        )
    );

    // Attic's database and storage are exactly as before.
    assert_eq!(attic.fingerprint().await, before);
    attic.teardown().await;
}
