//! Cold recompression (docs/gc.md "Recompression"), on SQLite and
//! PostgreSQL: GC rewrites packs older than `[compression] archive-after`
//! at `archive-level`.
//!
//! 1. the stored bytes shrink, every NAR reads the same bytes (`.nar`, and
//!    `.nar.zst` decompressed) with a new `.nar.zst` length and ETag, and a
//!    download that laid its NAR out before the move still gets exactly the
//!    frames its `Content-Length` promised (from the retired pack); a grace
//!    period later the old packs and their frame records are gone, and
//!    nothing is recompressed twice;
//! 2. a recompression killed before its commit loses nothing and leaks
//!    nothing; `larder-admin repack --archive` finishes the job at once.

use crate::common;
use crate::gc::gc_support::clock::{backdate_intents, gc_at, grace};
use crate::gc::gc_support::http::assert_bytes;
use crate::packs::with_config;

use axum::http::header;
use futures::TryStreamExt;

use larder_core::nix::nar::NarNode;
use larder_shared::chunk_store::nar::{ChunkLayout, Representation};
use larder_shared::db::nars;
use larder_shared::db::unix_now;
use larder_shared::metrics::moves;
use larder_shared::token::Permission;
use larder_worker::Services;
use larder_worker::jobs::ingest;

use common::nar::{Rng, TestNar};
use common::read::{assert_kind, fetch, unzstd};
use common::{Backend, TestApp};

const KIB: usize = 1024;
const MIB: u64 = 1024 * 1024;
const PULL_PUSH: &[Permission] = &[Permission::Pull, Permission::Push];

async fn app(backend: Backend) -> TestApp {
    TestApp::builder(backend).pack_size(MIB).build().await
}

on_both_backends!(crate::recompression::app =>
    cold_packs_are_recompressed,
    killed_recompression_loses_nothing,
);

/// `len` bytes of words, as source code and text files are: compresses
/// well, and better at high levels.
fn words(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "lib", "share", "nix", "store", "bin", "include", "glibc", "x86_64", "linux", "gnu", "doc",
        "man", "python3", "import", "return", "static", "const", "void", "int", "char", "struct",
        "#define", "#ifdef", "#endif", "{", "}", "(", ");", "self", "fn", "let",
    ];
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        let w = WORDS[(rng.next_u64() % WORDS.len() as u64) as usize];
        out.extend_from_slice(w.as_bytes());
        out.push(if rng.next_u64().is_multiple_of(8) {
            b'\n'
        } else {
            b' '
        });
    }
    out.truncate(len);
    out
}

fn words_nar(name: &str, seed: u64, len: usize) -> TestNar {
    let node = NarNode::directory([("src", NarNode::file(words(seed, len)))]);
    TestNar::from_node(name, seed, &node)
}

/// A worker chunking small (1–4 KiB chunks), so a NAR of some hundred KiB
/// has hundreds of chunks: more rows than a download resolves at once.
fn small_chunks(app: &TestApp) -> Services {
    with_config(app, |c| {
        c.chunking.nar_size_threshold = 4096;
        c.chunking.min_size = 1024;
        c.chunking.avg_size = 2048;
        c.chunking.max_size = 4096;
    })
}

/// Uploads and ingests `nars` into `cache` with [`small_chunks`].
async fn push(app: &TestApp, token: &str, cache: &str, nars: &[&TestNar]) {
    let svc = small_chunks(app);
    for n in nars {
        assert_kind(&app.upload(token, cache, n).await, "Uploaded");
    }
    for id in app.staged_nar_ids().await {
        ingest::ingest(&svc, id).await.expect("ingest");
    }
}

/// A time at which every pack written so far is cold.
fn cold(app: &TestApp) -> i64 {
    let c = &app.services.config;
    unix_now() + c.compression.archive_after.as_secs() as i64 + grace(app) + 60
}

async fn stored_bytes(app: &TestApp) -> i64 {
    app.scalar("SELECT CAST(COALESCE(SUM(live_bytes), 0) AS BIGINT) FROM packs")
        .await
}

/// Live packs still below the archive level.
async fn warm_packs(app: &TestApp) -> i64 {
    let level = app.services.config.compression.archive_level;
    app.scalar(&format!(
        "SELECT COUNT(*) FROM packs WHERE live_chunks > 0 AND COALESCE(level, 0) < {level}"
    ))
    .await
}

/// A gauge's value in `/metrics`.
async fn gauge(app: &TestApp, name: &str) -> i64 {
    let text = app.get("/metrics", None).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics:\n{text}"))
}

async fn etag(app: &TestApp, token: &str, url: &str) -> String {
    let resp = app.get(url, Some(token)).await;
    let tag = resp.headers.get(header::ETAG).expect("ETag");
    tag.to_str().expect("ASCII").to_owned()
}

/// `nar`'s stored layout as a download loads it before its first byte.
async fn layout_now(app: &TestApp, nar: &TestNar) -> ChunkLayout {
    let mut conn = app.state.db.conn().await.expect("conn");
    let rec = nars::find_by_hash(conn.raw(), &nar.nar_hash)
        .await
        .expect("query")
        .expect("the NAR");
    drop(conn);
    ChunkLayout::load(&app.state.db, &rec)
        .await
        .expect("layout")
}

async fn stream_all(app: &TestApp, layout: ChunkLayout) -> Vec<u8> {
    let len = layout.len(Representation::Zstd);
    let chunks = app.state.chunks();
    let parts: Vec<bytes::Bytes> = layout
        .stream(app.state.db.clone(), chunks, Representation::Zstd, 0..len)
        .try_collect()
        .await
        .expect("the download laid out before the move completes");
    parts.concat()
}

// --- 1. recompression ------------------------------------------------------------------

async fn cold_packs_are_recompressed(app: &TestApp) {
    app.create_cache("rc", false).await;
    let token = app.token(&[("rc", PULL_PUSH)]);
    let a = words_nar("a", 0xa1, 600 * KIB);
    let b = words_nar("b", 0xb2, 300 * KIB);
    push(app, &token, "rc", &[&a, &b]).await;
    let zst_url = format!("/rc/nar/{}.nar.zst", a.url_hash());
    let zst_before = fetch(app, &token, "rc", &zst_url[4..]).await;
    let etag_before = etag(app, &token, &zst_url).await;
    let stored_before = stored_bytes(app).await;
    assert!(warm_packs(app).await > 0);
    let packs = app.count("packs").await;
    assert_eq!(gauge(app, "larder_packs").await, packs);
    assert_eq!(gauge(app, "larder_cold_packs").await, 0, "a week to go");
    // A download that has laid `a` out (its Content-Length is sent).
    let in_flight = layout_now(app, &a).await;
    assert_eq!(in_flight.len(Representation::Zstd), zst_before.len() as u64);

    let t = cold(app);
    let counted = moves::totals();
    let report = gc_at(app, t).await;
    let c = report.compaction;
    assert!(
        c.chunks_recompressed > 100 && c.bytes_saved > 0,
        "{report:?}"
    );
    // The process-wide counters of `/metrics` saw it (other tests of this
    // binary may add to them meanwhile, hence at least).
    let now = moves::totals();
    assert!(now.chunks_recompressed - counted.chunks_recompressed >= c.chunks_recompressed);
    assert!(now.bytes_saved - counted.bytes_saved >= c.bytes_saved);
    assert!(now.chunks_moved - counted.chunks_moved >= c.chunks_moved);
    assert!(now.bytes_moved - counted.bytes_moved >= c.bytes_moved);
    let stored_after = stored_bytes(app).await;
    assert_eq!(stored_before - stored_after, c.bytes_saved as i64);
    assert_eq!(warm_packs(app).await, 0, "every cold pack recompressed");
    assert!(gauge(app, "larder_packs_retired").await >= 1);
    app.assert_chunk_store_consistent().await;

    // The download under way reads the old frames, byte for byte.
    assert!(
        stream_all(app, in_flight).await == zst_before,
        "the frames its Content-Length promised"
    );
    // New downloads: the same NAR, smaller `.nar.zst`, new ETag.
    for n in [&a, &b] {
        assert_bytes(app, &token, "rc", n, "recompressed").await;
    }
    let zst_after = fetch(app, &token, "rc", &zst_url[4..]).await;
    assert!(zst_after.len() < zst_before.len());
    assert!(unzstd(&zst_after) == a.bytes);
    assert_ne!(etag(app, &token, &zst_url).await, etag_before);
    let file_size = app
        .scalar(&format!(
            "SELECT file_size FROM nars WHERE chunk_sizes IS NOT NULL AND nar_size = {}",
            a.nar_size()
        ))
        .await;
    assert_eq!(
        file_size as usize,
        zst_after.len(),
        "narinfo FileSize follows"
    );

    // A grace period later: old packs and frame records gone; nothing
    // recompressed twice.
    let report = gc_at(app, t + grace(app) + 60).await;
    assert_eq!(report.compaction.chunks_recompressed, 0, "{report:?}");
    assert!(report.packs_deleted >= 1, "{report:?}");
    assert_eq!(app.count("replaced_frames").await, 0);
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM packs WHERE retired_at IS NOT NULL")
            .await,
        0
    );
    for n in [&a, &b] {
        assert_bytes(app, &token, "rc", n, "old packs gone").await;
    }
    crate::packs::assert_store_clean(app, "recompressed").await;
}

// --- 2. crash ---------------------------------------------------------------------------

async fn killed_recompression_loses_nothing(app: &TestApp) {
    app.create_cache("kr", false).await;
    let token = app.token(&[("kr", PULL_PUSH)]);
    let a = words_nar("a", 0xc3, 400 * KIB);
    push(app, &token, "kr", &[&a]).await;
    let stored_before = stored_bytes(app).await;
    let t = cold(app);

    // Killed between sealing its recompressed pack and moving rows.
    crate::packs::kill_compaction_before_commit(app, t).await;
    assert_eq!(stored_bytes(app).await, stored_before, "no row moved");
    assert_eq!(app.count("replaced_frames").await, 0);
    assert_bytes(app, &token, "kr", &a, "after the killed recompression").await;
    app.assert_chunk_store_consistent().await;

    // `repack --archive` recompresses now; the dead writer's pack is
    // collected once its intent is stale.
    let moved = larder_worker::repack::run(&app.services, t, true)
        .await
        .expect("repack --archive");
    assert!(moved.chunks_recompressed > 0, "{moved:?}");
    assert_eq!(warm_packs(app).await, 0);
    assert_bytes(app, &token, "kr", &a, "archived").await;
    backdate_intents(app, grace(app) + 60).await;
    let report = gc_at(app, t + grace(app) + 60).await;
    assert!(report.orphan_objects_deleted >= 1, "{report:?}");
    assert_bytes(app, &token, "kr", &a, "after GC").await;
    crate::packs::assert_store_clean(app, "after the killed recompression").await;
}
