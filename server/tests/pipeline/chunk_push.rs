//! Chunk-level push (docs/protocol.md "Chunk-level push") through the
//! router: a round trip byte-identical before and after ingest, an update
//! sending only its new chunks; a wrong NarHash or a broken NAR refused
//! with nothing live; no cross-tenant oracle (another cache's chunks, or
//! another pusher's unfinished batches, never count as present); an
//! interrupted push resumed; bad batches refused; the routes gone when
//! disabled; unused batches expiring.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use larder_core::chunk::{Chunk, ChunkHash, ChunkIter, ChunkingParams};
use larder_core::wire::chunk_push::{ChunkParamsResponse, encode_entry};
use larder_shared::db::nars::NarState;
use larder_shared::db::staged_chunks::{self, StagedChunks};
use larder_shared::db::unix_now;
use larder_shared::token::Permission;
use larder_worker::jobs::ingest::{self, Outcome};
use larder_worker::sweeper;

use crate::common::nar::TestNar;
use crate::common::read::{assert_kind, fetch, narinfo, unzstd};
use crate::common::{TestApp, TestResponse, request};

const KIB: usize = 1024;
const PULL_PUSH: &[Permission] = &[Permission::Pull, Permission::Push];
const PUSH: &[Permission] = &[Permission::Push];

/// One pusher's view of the API: token and cache.
pub(super) struct Pusher<'a> {
    pub(super) app: &'a TestApp,
    pub(super) token: String,
    pub(super) cache: &'a str,
}

impl Pusher<'_> {
    pub(super) fn uri(&self, rest: &str) -> String {
        format!("/_api/larder/v1/caches/{}/{rest}", self.cache)
    }

    pub(super) async fn post_json(&self, rest: &str, body: &Value) -> TestResponse {
        let req = request(Method::POST, &self.uri(rest), Some(&self.token))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        self.app.send(req).await
    }

    pub(super) async fn params(&self) -> TestResponse {
        let req = request(Method::GET, &self.uri("chunk-push"), Some(&self.token))
            .body(Body::empty())
            .expect("request");
        self.app.send(req).await
    }

    /// The chunks of `nar` the server says must be sent.
    pub(super) async fn missing(&self, nar: &TestNar, chunks: &[Chunk]) -> Vec<ChunkHash> {
        let hashes: Vec<String> = chunks.iter().map(|c| c.hash.to_string()).collect();
        let resp = self
            .post_json(
                "chunks/missing",
                &json!({"store_path": nar.store_path(), "chunks": hashes}),
            )
            .await;
        resp.assert_status(StatusCode::OK);
        let body: Value = resp.json();
        body["missing"]
            .as_array()
            .expect("missing list")
            .iter()
            .map(|h| h.as_str().expect("hex").parse().expect("chunk hash"))
            .collect()
    }

    pub(super) async fn send_body(&self, body: Vec<u8>) -> TestResponse {
        let req = request(Method::POST, &self.uri("chunks"), Some(&self.token))
            .header("content-type", "application/x-larder-chunks")
            .body(Body::from(body))
            .expect("request");
        self.app.send(req).await
    }

    /// Sends `chunks` as one batch.
    pub(super) async fn send(&self, chunks: &[&Chunk]) -> TestResponse {
        let mut body = Vec::new();
        for c in chunks {
            let frame = zstd::bulk::compress(&c.data, 3).expect("zstd");
            encode_entry(&mut body, &c.hash, &frame);
        }
        self.send_body(body).await
    }

    pub(super) async fn commit(&self, info: Value, chunks: &[Chunk]) -> TestResponse {
        let hashes: Vec<String> = chunks.iter().map(|c| c.hash.to_string()).collect();
        self.post_json("nars", &json!({"info": info, "chunks": hashes}))
            .await
    }

    /// The whole flow; returns how many chunks went out.
    pub(super) async fn push(&self, nar: &TestNar) -> usize {
        let chunks = chunks_of(nar);
        let missing = self.missing(nar, &chunks).await;
        let to_send: Vec<&Chunk> = unique(&chunks)
            .into_iter()
            .filter(|c| missing.contains(&c.hash))
            .collect();
        if !to_send.is_empty() {
            self.send(&to_send).await.assert_status(StatusCode::OK);
        }
        assert_kind(
            &self.commit(nar.info(self.cache), &chunks).await,
            "Uploaded",
        );
        to_send.len()
    }
}

pub(super) fn pusher<'a>(app: &'a TestApp, token: String, cache: &'a str) -> Pusher<'a> {
    Pusher { app, token, cache }
}

/// `nar` cut as the server cuts (default `[chunking]`).
pub(super) fn chunks_of(nar: &TestNar) -> Vec<Chunk> {
    ChunkIter::new(&nar.bytes[..], nar.nar_size(), &ChunkingParams::default())
        .expect("params")
        .collect::<Result<_, _>>()
        .expect("chunking")
}

/// The NAR as the narinfo's URL serves it, decompressed.
pub(super) async fn served(app: &TestApp, token: &str, cache: &str, nar: &TestNar) -> Vec<u8> {
    let (_, info) = narinfo(app, token, cache, nar).await;
    let body = fetch(app, token, cache, &info.url).await;
    if info.url.ends_with(".zst") {
        unzstd(&body)
    } else {
        body.to_vec()
    }
}

/// First occurrences only.
pub(super) fn unique(chunks: &[Chunk]) -> Vec<&Chunk> {
    let mut seen = std::collections::HashSet::new();
    chunks.iter().filter(|c| seen.insert(c.hash)).collect()
}

/// A NAR and its update: the same files but one, under a new store path of
/// the same package.
pub(super) fn nar_and_update() -> (TestNar, TestNar) {
    let sizes = [300 * KIB, 600 * KIB, 40 * KIB, 900 * KIB];
    let old = TestNar::files("app-1.0", 7, &sizes);
    let mut files: Vec<(String, larder_core::nix::nar::NarNode)> = Vec::new();
    let mut rng = crate::common::nar::Rng::new(7);
    for (i, &len) in sizes.iter().enumerate() {
        let mut data = rng.bytes(len);
        if i == 1 {
            data[1000..1100].fill(0xaa);
        }
        files.push((format!("f{i}"), larder_core::nix::nar::NarNode::file(data)));
    }
    let new = TestNar::from_node(
        "app-1.1",
        8,
        &larder_core::nix::nar::NarNode::directory(files),
    );
    (old, new)
}

/// Round trip: served byte-identical staged and ingested; the update sends
/// only the chunks it changed.
pub async fn chunk_push_round_trip(app: &TestApp) {
    app.create_cache("cp", false).await;
    let p = pusher(app, app.token(&[("cp", PULL_PUSH)]), "cp");
    let params: ChunkParamsResponse = p.params().await.json();
    assert_eq!(params.params(), ChunkingParams::default());

    let (old, new) = nar_and_update();
    let total = unique(&chunks_of(&old)).len();
    assert!(total > 10, "a 1.8 MiB NAR is many chunks");
    assert_eq!(p.push(&old).await, total, "a first push sends everything");
    for stage in ["staged", "ingested"] {
        assert!(
            served(app, &p.token, "cp", &old).await == old.bytes,
            "{stage} NAR differs"
        );
        app.drain_jobs().await;
    }
    assert_eq!(app.count("nars").await, 1);

    // Another pusher of the cache: no batches of its own to lean on, so
    // what it skips comes from the cache's earlier version of the package.
    let p = pusher(app, app.token_as("second", &[("cp", PULL_PUSH)]), "cp");
    let sent = p.push(&new).await;
    assert!(
        (1..=3).contains(&sent),
        "the update sends only its changed chunks, sent {sent} of {total}"
    );
    assert!(served(app, &p.token, "cp", &new).await == new.bytes);
    app.drain_jobs().await;
    assert!(served(app, &p.token, "cp", &new).await == new.bytes);
    app.assert_chunk_store_consistent().await;

    // A chunk pushed for one NAR counts for the next of the same pusher,
    // and a commit of a path the cache has is idempotent.
    assert_eq!(p.push(&new).await, 0);
}

/// A wrong NarHash, a wrong size or a broken NAR: refused, nothing live.
pub async fn chunk_push_wrong_hash_leaves_nothing(app: &TestApp) {
    app.create_cache("cp", false).await;
    let p = pusher(app, app.token(&[("cp", PULL_PUSH)]), "cp");
    let (nar, _) = nar_and_update();
    let chunks = chunks_of(&nar);
    p.send(&unique(&chunks)).await.assert_status(StatusCode::OK);

    let mut info = nar.info("cp");
    info["nar_hash"] = json!(format!("sha256:{}", "0".repeat(64)));
    p.commit(info, &chunks)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
    let mut info = nar.info("cp");
    info["nar_size"] = json!(nar.nar_size() + 1);
    p.commit(info, &chunks)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
    // Chunks in the wrong order: right size, wrong hash.
    let mut swapped = chunks.clone();
    swapped.swap(0, 1);
    p.commit(nar.info("cp"), &swapped)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
    // Not a NAR at all, with its true hash claimed.
    let junk = TestNar::from_bytes("junk-1", 9, vec![7u8; 200 * KIB]);
    let junk_chunks = chunks_of(&junk);
    p.send(&unique(&junk_chunks))
        .await
        .assert_status(StatusCode::OK);
    p.commit(junk.info("cp"), &junk_chunks)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidNar");

    assert_eq!(app.count("nars").await, 0, "no NAR row");
    assert_eq!(app.count("objects").await, 0, "no path");
    let staged = app.object_keys("staging/").await;
    assert!(
        staged.iter().all(|k| k.ends_with(".chunks")),
        "only chunk batches in staging: {staged:?}"
    );
    p.app
        .get(&format!("/cp/{}.narinfo", nar.store_hash()), Some(&p.token))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");
}

/// Chunks of another tenant's private cache, and another pusher's batches,
/// are not present for a push; a commit cannot borrow them either.
pub async fn chunk_push_no_cross_tenant_oracle(app: &TestApp) {
    app.create_cache("alice", false).await;
    app.create_cache("bob", false).await;
    let alice = pusher(app, app.token_as("alice", &[("alice", PULL_PUSH)]), "alice");
    let bob = pusher(app, app.token_as("bob", &[("bob", PULL_PUSH)]), "bob");
    let (secret, _) = nar_and_update();
    alice.push(&secret).await;
    app.drain_jobs().await;

    // Bob guesses Alice's file: same package name, same bytes.
    let guess = secret.with_path(&secret.base_name[33..], 99);
    let chunks = chunks_of(&guess);
    assert_eq!(bob.missing(&guess, &chunks).await.len(), chunks.len());
    bob.commit(guess.info("bob"), &chunks)
        .await
        .assert_error(StatusCode::CONFLICT, "ChunksMissing");
    assert_eq!(app.count("objects").await, 1, "nothing linked for bob");

    // A push-only token cannot use the cache's own NARs either (it may not
    // read them), and another pusher's unfinished batch is theirs alone.
    app.create_cache("team", false).await;
    let carol = pusher(app, app.token_as("carol", &[("team", PULL_PUSH)]), "team");
    let dave = pusher(app, app.token_as("dave", &[("team", PULL_PUSH)]), "team");
    let writer = pusher(app, app.token_as("erin", &[("team", PUSH)]), "team");
    carol.push(&secret.with_path("app-1.0", 5)).await;
    app.drain_jobs().await;
    let next = secret.with_path("app-1.2", 6);
    assert_eq!(carol.missing(&next, &chunks).await.len(), 0);
    assert_eq!(writer.missing(&next, &chunks).await.len(), chunks.len());
    let (_, update) = nar_and_update();
    let update_chunks = chunks_of(&update);
    dave.send(&unique(&update_chunks))
        .await
        .assert_status(StatusCode::OK);
    let fresh = update.with_path("other-1", 12);
    assert_eq!(dave.missing(&fresh, &update_chunks).await.len(), 0);
    assert_eq!(
        writer.missing(&fresh, &update_chunks).await.len(),
        update_chunks.len()
    );
}

/// An interrupted push sends, when resumed, only what did not arrive; a
/// batch with a bad frame is refused whole.
pub async fn chunk_push_resumes(app: &TestApp) {
    app.create_cache("cp", false).await;
    let p = pusher(app, app.token(&[("cp", PULL_PUSH)]), "cp");
    let (nar, _) = nar_and_update();
    let chunks = chunks_of(&nar);
    let all = unique(&chunks);
    let (first, rest) = all.split_at(all.len() / 2);
    p.send(first).await.assert_status(StatusCode::OK);
    // The client dies here; a new one asks again.
    let missing = p.missing(&nar, &chunks).await;
    let rest_hashes: Vec<ChunkHash> = rest.iter().map(|c| c.hash).collect();
    assert_eq!(missing, rest_hashes, "only the unsent half");
    p.commit(nar.info("cp"), &chunks)
        .await
        .assert_error(StatusCode::CONFLICT, "ChunksMissing");

    // A frame whose bytes do not hash to its name spoils its batch.
    let mut body = Vec::new();
    for c in rest {
        let frame = zstd::bulk::compress(&c.data, 3).expect("zstd");
        encode_entry(&mut body, &c.hash, &frame);
    }
    let liar = zstd::bulk::compress(b"not what the name says", 3).expect("zstd");
    encode_entry(&mut body, &rest[0].hash, &liar);
    p.send_body(body)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    p.send_body(b"truncated".to_vec())
        .await
        .assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    assert_eq!(p.missing(&nar, &chunks).await, rest_hashes);

    assert_eq!(p.push(&nar).await, rest.len());
    assert!(served(app, &p.token, "cp", &nar).await == nar.bytes);
}

/// Batches nobody commits go a grace period after they arrived: rows,
/// then objects.
pub async fn unused_chunk_batches_expire(app: &TestApp) {
    app.create_cache("cp", false).await;
    let p = pusher(app, app.token(&[("cp", PULL_PUSH)]), "cp");
    let (nar, _) = nar_and_update();
    let chunks = chunks_of(&nar);
    p.send(&unique(&chunks)).await.assert_status(StatusCode::OK);
    assert_eq!(app.object_keys("staging/").await.len(), 1);
    assert_eq!(app.count("staging_intents").await, 0, "adopted by its rows");

    let now = unix_now();
    let report = sweeper::sweep(&app.services, now).await.expect("sweep");
    assert_eq!(report.pushed_batches_expired, 0, "fresh batch kept");
    let grace = app
        .services
        .config
        .garbage_collection
        .grace_period
        .as_secs() as i64;
    let report = sweeper::sweep(&app.services, now + grace + 1)
        .await
        .expect("sweep");
    assert_eq!(report.pushed_batches_expired, 1);
    assert_eq!(app.count("pushed_chunks").await, 0);
    app.assert_staging_empty().await;
    assert_eq!(p.missing(&nar, &chunks).await.len(), unique(&chunks).len());
}

/// `[chunk-push] enabled = false`: every route is a 404, as on a server
/// that never had them; `upload-path` works as before.
pub async fn chunk_push_disabled(backend: crate::common::Backend) {
    let app = TestApp::builder(backend)
        .config("[chunk-push]\nenabled = false\n")
        .build()
        .await;
    app.run(async |app: &TestApp| {
        app.create_cache("cp", false).await;
        let p = pusher(app, app.token(&[("cp", PULL_PUSH)]), "cp");
        p.params()
            .await
            .assert_error(StatusCode::NOT_FOUND, "NotFound");
        let (nar, _) = nar_and_update();
        let chunks = chunks_of(&nar);
        p.send(&unique(&chunks)[..1])
            .await
            .assert_error(StatusCode::NOT_FOUND, "NotFound");
        p.commit(nar.info("cp"), &chunks)
            .await
            .assert_error(StatusCode::NOT_FOUND, "NotFound");
        assert_kind(&app.upload(&p.token, "cp", &nar).await, "Uploaded");
    })
    .await;
}

/// A chunk-level push's NAR is ingested from the chunk list its commit
/// verified: the list is recorded with the staged copy, only the chunks
/// the store lacks are read from the copy (each checked against its hash),
/// and the list is cleared once the NAR is ready. A list that does not fit
/// the store's chunking is not trusted: the copy is cut anew.
pub async fn chunk_push_ingests_its_chunk_list(app: &TestApp) {
    app.create_cache("cl", false).await;
    let p = pusher(app, app.token(&[("cl", PULL_PUSH)]), "cl");
    let (old, new) = nar_and_update();
    p.push(&old).await;
    let cut = chunks_of(&old);
    let list = staged_list(app, &old)
        .await
        .expect("the commit records its list");
    let expected: Vec<(ChunkHash, u32)> =
        cut.iter().map(|c| (c.hash, c.data.len() as u32)).collect();
    let recorded: Vec<(ChunkHash, u32)> = list.0.iter().map(|c| (c.hash, c.size)).collect();
    assert_eq!(recorded, expected);
    let id = app.nar_record(&old).await.id;
    let outcome = ingest::ingest(&app.services, id).await.expect("ingest");
    assert!(matches!(outcome, Outcome::Ingested { .. }), "{outcome:?}");
    assert_eq!(staged_list(app, &old).await, None, "cleared once ready");
    assert_eq!(
        app.count("nar_listings").await,
        0,
        "a listed ingest leaves the listing to the first request"
    );
    assert!(served(app, &p.token, "cl", &old).await == old.bytes);

    // The update: damage its copy inside a chunk the store lacks.
    let p = pusher(app, app.token_as("second", &[("cl", PULL_PUSH)]), "cl");
    p.push(&new).await;
    let known: std::collections::HashSet<_> = cut.iter().map(|c| c.hash).collect();
    let fresh = chunks_of(&new)
        .into_iter()
        .find(|c| !known.contains(&c.hash))
        .expect("the update has a new chunk");
    let key = app.nar_record(&new).await.staging_key.expect("staged");
    let path = app.object_path(key.as_str());
    let mut bytes = std::fs::read(&path).expect("staged copy");
    bytes[fresh.offset as usize + 10] ^= 0x55;
    std::fs::write(&path, &bytes).expect("damage");
    let id = app.nar_record(&new).await.id;
    let err = ingest::ingest(&app.services, id)
        .await
        .expect_err("a damaged new chunk is refused");
    assert!(
        format!("{err:#}").contains("staged copy corrupt"),
        "{err:#}"
    );
    assert_eq!(app.nar_record(&new).await.state, NarState::Staged);

    // A list one chunk short of the NAR does not fit: cut anew (the cut
    // ingest makes the listing in its pass).
    let drop_first = match app.backend {
        crate::common::Backend::Postgres => "substring(staged_chunks from 37)",
        crate::common::Backend::Sqlite => "substr(staged_chunks, 37)",
    };
    app.execute(&format!(
        "UPDATE nars SET staged_chunks = {drop_first} WHERE id = {}",
        id.get()
    ))
    .await;
    std::fs::write(&path, &new.bytes).expect("restore");
    let outcome = ingest::ingest(&app.services, id).await.expect("ingest");
    assert!(matches!(outcome, Outcome::Ingested { .. }), "{outcome:?}");
    assert_eq!(app.count("nar_listings").await, 1, "cut, with its listing");
    assert!(served(app, &p.token, "cl", &new).await == new.bytes);
    app.assert_chunk_store_consistent().await;
}

/// The chunk list recorded with `nar`'s staged copy, if any.
pub(super) async fn staged_list(app: &TestApp, nar: &TestNar) -> Option<StagedChunks> {
    let id = app.nar_record(nar).await.id;
    let mut conn = app.state.db.conn().await.expect("connection");
    staged_chunks::of_nar(conn.raw(), id).await.expect("list")
}
