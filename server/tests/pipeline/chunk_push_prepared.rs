//! Chunk-level push's two-step commit and compact chunk lists
//! (docs/protocol.md "Chunk-level push"): a prepared NAR is served only
//! once published, then byte-identical staged and ingested; a publish
//! without its prepare, with another subject's or another NAR's claim, or
//! after the sweeper took the prepared copy is `409 PreparedMissing` with
//! nothing live; a wrong NarHash is refused at prepare leaving nothing; a
//! prepared NAR never published is swept. Hash-list bodies are accepted
//! next to the hex JSON, with the same answers, and a commit may name the
//! lists of its questions instead of listing its chunks again. A prepare's
//! hash list may stream in as its chunks are sent. A NAR of one chunk may
//! come inline, in its commit.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use larder_core::chunk::{Chunk, ChunkHash};
use larder_core::wire::chunk_push::{
    ChunkParamsResponse, HASH_LIST_CONTENT_TYPE, INLINE_NAR_CONTENT_TYPE, chunk_list_hash,
    chunk_list_id, encode_hash_list, encode_inline_nar,
};
use larder_shared::db::unix_now;
use larder_shared::storage::checksum::Checksum;
use larder_shared::token::Permission;
use larder_worker::sweeper;

use super::KIB;
use super::chunk_push::{Pusher, chunks_of, nar_and_update, pusher, served, unique};
use crate::common::nar::TestNar;
use crate::common::read::assert_kind;
use crate::common::{Backend, TestApp, TestResponse, request};

const PULL_PUSH: &[Permission] = &[Permission::Pull, Permission::Push];

impl Pusher<'_> {
    /// Sends `head` and `hashes` as a hash-list body.
    async fn post_hash_list(&self, rest: &str, head: &Value, hashes: &[ChunkHash]) -> TestResponse {
        let body = encode_hash_list(head.to_string().as_bytes(), hashes);
        let req = request(Method::POST, &self.uri(rest), Some(&self.token))
            .header("content-type", HASH_LIST_CONTENT_TYPE)
            .body(Body::from(body))
            .expect("request");
        self.app.send(req).await
    }

    /// A one-step commit with `head`, carrying the NAR as `zstd`.
    async fn post_inline(&self, head: &Value, zstd: &[u8]) -> TestResponse {
        let body = encode_inline_nar(head.to_string().as_bytes(), zstd);
        let req = request(Method::POST, &self.uri("nars"), Some(&self.token))
            .header("content-type", INLINE_NAR_CONTENT_TYPE)
            .body(Body::from(body))
            .expect("request");
        self.app.send(req).await
    }

    /// Sends every chunk of `nar` the server lacks.
    async fn send_missing(&self, nar: &TestNar, chunks: &[Chunk]) {
        let missing = self.missing(nar, chunks).await;
        let to_send: Vec<&Chunk> = unique(chunks)
            .into_iter()
            .filter(|c| missing.contains(&c.hash))
            .collect();
        if !to_send.is_empty() {
            self.send(&to_send).await.assert_status(StatusCode::OK);
        }
    }

    /// Prepares `nar` (hex JSON); the answer.
    async fn prepare(&self, info: Value, chunks: &[Chunk]) -> TestResponse {
        let hashes: Vec<String> = chunks.iter().map(|c| c.hash.to_string()).collect();
        self.post_json(
            "nars",
            &json!({"info": info, "chunks": hashes, "mode": "prepare"}),
        )
        .await
    }

    /// Prepares `nar`; the prepared name.
    async fn prepared(&self, nar: &TestNar, chunks: &[Chunk]) -> String {
        let resp = self.prepare(nar.info(self.cache), chunks).await;
        resp.assert_status(StatusCode::OK);
        let body: Value = resp.json();
        body["prepared"].as_str().expect("prepared name").to_owned()
    }

    async fn publish(&self, info: Value, prepared: &str) -> TestResponse {
        self.post_json(
            "nars",
            &json!({"info": info, "mode": "publish", "prepared": prepared}),
        )
        .await
    }
}

/// No prepared copy, no staging intent, no NAR, no path.
async fn assert_nothing_prepared(app: &TestApp) {
    assert!(prepared_keys(app).await.is_empty(), "no prepared copy left");
    assert_eq!(app.count("staging_intents").await, 0, "no intent left");
    assert_eq!(app.count("nars").await, 0);
    assert_eq!(app.count("objects").await, 0);
}

fn hashes(chunks: &[Chunk]) -> Vec<ChunkHash> {
    chunks.iter().map(|c| c.hash).collect()
}

async fn prepared_keys(app: &TestApp) -> Vec<String> {
    let keys = app.object_keys("staging/").await;
    keys.into_iter()
        .filter(|k| k.ends_with(".prepared.nar"))
        .collect()
}

/// Prepare, then publish: nothing visible in between, served byte-identical
/// staged and ingested after; a repeated publish (its answer lost) links
/// again and keeps the staged copy the first one recorded.
pub async fn chunk_push_prepare_then_publish(app: &TestApp) {
    app.create_cache("cp", false).await;
    let p = pusher(app, app.token(&[("cp", PULL_PUSH)]), "cp");
    let params: ChunkParamsResponse = p.params().await.json();
    assert!(params.prepare_publish && params.hash_lists && params.chunk_list_refs);
    let (nar, _) = nar_and_update();
    let chunks = chunks_of(&nar);
    p.send_missing(&nar, &chunks).await;
    let prepared = p.prepared(&nar, &chunks).await;

    assert_eq!(prepared_keys(app).await.len(), 1, "one prepared copy");
    assert_eq!(app.count("nars").await, 0, "no NAR row before publish");
    assert_eq!(app.count("objects").await, 0, "no path before publish");
    p.app
        .get(&format!("/cp/{}.narinfo", nar.store_hash()), Some(&p.token))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");

    let publish = p.publish(nar.info("cp"), &prepared).await;
    assert_kind(&publish, "Uploaded");
    assert_eq!(
        app.nar_record(&nar).await.staged_checksum,
        Some(Checksum::of(&nar.bytes)),
        "the prepare's checksum went to the NAR row"
    );
    assert!(
        served(app, &p.token, "cp", &nar).await == nar.bytes,
        "staged"
    );
    assert_kind(&p.publish(nar.info("cp"), &prepared).await, "Uploaded");
    assert!(
        served(app, &p.token, "cp", &nar).await == nar.bytes,
        "again"
    );
    app.drain_jobs().await;
    assert!(
        served(app, &p.token, "cp", &nar).await == nar.bytes,
        "ingested"
    );
    assert_eq!(app.count("nars").await, 1);
    app.assert_chunk_store_consistent().await;
    assert!(prepared_keys(app).await.is_empty(), "ingest released it");
}

/// A publish that finds no prepared NAR of its claims: never prepared,
/// prepared by another subject or for another NAR, or swept.
pub async fn chunk_push_publish_without_prepared_nar(app: &TestApp) {
    app.create_cache("cp", false).await;
    let p = pusher(app, app.token_as("one", &[("cp", PULL_PUSH)]), "cp");
    let other = pusher(app, app.token_as("two", &[("cp", PULL_PUSH)]), "cp");
    let (nar, update) = nar_and_update();
    let chunks = chunks_of(&nar);
    p.publish(nar.info("cp"), "01jf0000000000000000000000")
        .await
        .assert_error(StatusCode::CONFLICT, "PreparedMissing");
    p.send_missing(&nar, &chunks).await;
    let prepared = p.prepared(&nar, &chunks).await;
    other
        .publish(nar.info("cp"), &prepared)
        .await
        .assert_error(StatusCode::CONFLICT, "PreparedMissing");
    p.publish(update.info("cp"), &prepared)
        .await
        .assert_error(StatusCode::CONFLICT, "PreparedMissing");
    p.publish(nar.info("cp"), "../../etc")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    assert_eq!(app.count("objects").await, 0, "nothing live");

    // Never published: the sweeper takes it after an hour (or [staging]
    // max-age, if shorter), and a late publish records nothing.
    let now = unix_now();
    sweeper::sweep(&app.services, now).await.expect("sweep");
    assert_eq!(prepared_keys(app).await.len(), 1, "a fresh one stays");
    let max_age = app.services.config.staging.max_age.get();
    let prepared_max_age = sweeper::PREPARED_MAX_AGE.min(max_age).as_secs() as i64;
    assert!(
        prepared_max_age < 24 * 3600,
        "sooner than other abandoned uploads"
    );
    sweeper::sweep(&app.services, now + prepared_max_age + 1)
        .await
        .expect("sweep");
    assert!(prepared_keys(app).await.is_empty(), "swept");
    assert_eq!(app.count("staging_intents").await, 0);
    p.publish(nar.info("cp"), &prepared)
        .await
        .assert_error(StatusCode::CONFLICT, "PreparedMissing");
    assert_eq!(app.count("nars").await, 0);
    assert_eq!(app.count("objects").await, 0);
    p.app
        .get(&format!("/cp/{}.narinfo", nar.store_hash()), Some(&p.token))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");
    // The whole flow again still works.
    p.push(&nar).await;
    assert!(served(app, &p.token, "cp", &nar).await == nar.bytes);
}

/// Prepared NARs count against the staging quota (here two NARs) from
/// their prepare until ingest, once only after their publish: past it,
/// a whole-NAR upload and another prepare are refused with `503
/// StagingFull`, and accepted again once ingest drains staging.
pub async fn prepared_nars_count_against_the_staging_quota(backend: Backend) {
    let app = &super::staging_quota::with_quota(backend).await;
    app.create_cache("cq", false).await;
    let p = pusher(app, app.token(&[("cq", PULL_PUSH)]), "cq");
    let nars: Vec<TestNar> = (0..3)
        .map(|i| TestNar::files(&format!("prepared-{i}"), 500 + i, &[40 * KIB]))
        .collect();
    let mut names = Vec::new();
    for nar in &nars[..2] {
        let chunks = chunks_of(nar);
        p.send_missing(nar, &chunks).await;
        names.push(p.prepared(nar, &chunks).await);
    }
    // The quota trusts its reading of the totals for a second: the next
    // one is the database's, which holds no NAR row yet.
    assert_eq!(app.count("nars").await, 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.upload(&p.token, "cq", &nars[2])
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "StagingFull");
    let third = chunks_of(&nars[2]);
    p.send_missing(&nars[2], &third).await;
    p.prepare(nars[2].info("cq"), &third)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "StagingFull");
    assert_eq!(
        prepared_keys(app).await.len(),
        2,
        "the refused prepare staged nothing"
    );

    // Published and ingested, the first leaves staging; the second still
    // counts, so there is room for exactly one more.
    assert_kind(&p.publish(nars[0].info("cq"), &names[0]).await, "Uploaded");
    app.drain_jobs().await;
    super::staging_quota::upload_once_admitted(app, &p.token, "cq", &nars[2]).await;
    assert_kind(&p.publish(nars[1].info("cq"), &names[1]).await, "Uploaded");
    app.drain_jobs().await;
    for nar in &nars {
        assert!(served(app, &p.token, "cq", nar).await == nar.bytes);
    }
}

/// A wrong NarHash or size is refused at prepare, leaving no prepared copy
/// and no intent.
pub async fn chunk_push_prepare_refuses_a_wrong_hash(app: &TestApp) {
    app.create_cache("cp", false).await;
    let p = pusher(app, app.token(&[("cp", PULL_PUSH)]), "cp");
    let (nar, _) = nar_and_update();
    let chunks = chunks_of(&nar);
    p.send_missing(&nar, &chunks).await;
    let mut info = nar.info("cp");
    info["nar_hash"] = json!(format!("sha256:{}", "0".repeat(64)));
    p.prepare(info, &chunks)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
    let mut info = nar.info("cp");
    info["nar_size"] = json!(nar.nar_size() - 1);
    p.prepare(info, &chunks)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
    assert_nothing_prepared(app).await;
}

/// Hash-list bodies get the answers hex JSON gets, for the question, a
/// one-step commit, a prepare and a publish; malformed ones are refused.
pub async fn chunk_push_hash_lists(app: &TestApp) {
    app.create_cache("cp", false).await;
    let p = pusher(app, app.token(&[("cp", PULL_PUSH)]), "cp");
    let (nar, update) = nar_and_update();
    let chunks = chunks_of(&nar);
    let head = json!({"store_path": nar.store_path()});
    let resp = p
        .post_hash_list("chunks/missing", &head, &hashes(&chunks))
        .await;
    resp.assert_status(StatusCode::OK);
    let compact: Value = resp.json();
    let missing = p.missing(&nar, &chunks).await;
    let as_hex: Vec<String> = missing.iter().map(ToString::to_string).collect();
    assert_eq!(compact["missing"], json!(as_hex));
    p.send_missing(&nar, &chunks).await;

    let commit = json!({"info": nar.info("cp")});
    let resp = p.post_hash_list("nars", &commit, &hashes(&chunks)).await;
    assert_kind(&resp, "Uploaded");
    assert!(served(app, &p.token, "cp", &nar).await == nar.bytes);

    // The update's prepare names the list its question sent.
    let chunks = chunks_of(&update);
    let question = json!({"store_path": update.store_path()});
    p.post_hash_list("chunks/missing", &question, &hashes(&chunks))
        .await
        .assert_status(StatusCode::OK);
    p.send_missing(&update, &chunks).await;
    let unknown = json!({"info": update.info("cp"), "mode": "prepare",
        "chunk_lists": ["00".repeat(32)]});
    p.post_hash_list("nars", &unknown, &[])
        .await
        .assert_error(StatusCode::CONFLICT, "ChunkListUnknown");
    // An id that is no list id at all is the caller's mistake, not a
    // forgotten list: repeating with hashes would not mend it.
    for id in ["00".repeat(31), "AB".repeat(32), "not hex".into()] {
        let malformed = json!({"info": update.info("cp"), "mode": "prepare",
            "chunk_lists": [id]});
        p.post_hash_list("nars", &malformed, &[])
            .await
            .assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    }
    let prepare = json!({"info": update.info("cp"), "mode": "prepare",
        "chunk_lists": [chunk_list_id(&hashes(&chunks))]});
    p.post_hash_list("nars", &prepare, &hashes(&chunks))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    let resp = p.post_hash_list("nars", &prepare, &[]).await;
    resp.assert_status(StatusCode::OK);
    let prepared: Value = resp.json();
    let publish = json!({"info": update.info("cp"), "mode": "publish",
        "prepared": prepared["prepared"]});
    assert_kind(&p.post_hash_list("nars", &publish, &[]).await, "Uploaded");
    assert!(served(app, &p.token, "cp", &update).await == update.bytes);

    // A head listing hex hashes, a ragged list, a truncated head.
    let both = json!({"store_path": nar.store_path(), "chunks": [chunks[0].hash.to_string()]});
    p.post_hash_list("chunks/missing", &both, &hashes(&chunks))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    let mut ragged = encode_hash_list(head.to_string().as_bytes(), &hashes(&chunks));
    ragged.pop();
    for body in [ragged, vec![0, 0, 1, 0, b'{']] {
        let req = request(Method::POST, &p.uri("chunks/missing"), Some(&p.token))
            .header("content-type", HASH_LIST_CONTENT_TYPE)
            .body(Body::from(body))
            .expect("request");
        p.app
            .send(req)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    }
}

/// A prepare whose hash list is opened first and sent piece by piece, with
/// chunks sent in between (as `larder push` streams it): the server only
/// answers once the list ends, then the publish serves the NAR
/// byte-identical, staged and ingested, with the whole list recorded for
/// the ingest. The same with the list sent as its questions' list ids.
pub async fn chunk_push_streamed_prepare(app: &TestApp) {
    app.create_cache("cp", false).await;
    let p = pusher(app, app.token(&[("cp", PULL_PUSH)]), "cp");
    let params: ChunkParamsResponse = p.params().await.json();
    assert!(params.streamed_prepare);
    let (nar, update) = nar_and_update();
    let chunks = chunks_of(&nar);
    assert!(chunks.len() >= 4, "several pieces");
    let (first, second) = chunks.split_at(chunks.len() / 2);

    let head = json!({"info": nar.info("cp"), "mode": "prepare"});
    let (list, answer) = p.open_streamed(&head);
    p.send_missing(&nar, first).await;
    list.send(Ok(raw(first))).expect("piece");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!answer.is_finished(), "no answer before the list ends");
    p.send_missing(&nar, second).await;
    // A piece may end inside a hash: the next one completes it.
    let second = raw(second);
    let (a, b) = second.split_at(45);
    list.send(Ok(a.to_vec())).expect("piece");
    list.send(Ok(b.to_vec())).expect("piece");
    drop(list);
    let resp = answer.await.expect("prepare task");
    resp.assert_status(StatusCode::OK);
    let prepared: Value = resp.json();
    let prepared = prepared["prepared"].as_str().expect("name").to_owned();
    assert_eq!(app.count("objects").await, 0, "nothing live before publish");

    assert_kind(&p.publish(nar.info("cp"), &prepared).await, "Uploaded");
    assert!(served(app, &p.token, "cp", &nar).await == nar.bytes);
    let listed = super::chunk_push::staged_list(app, &nar).await;
    let listed = listed.expect("the streamed list went to the NAR row");
    assert_eq!(
        listed.0.iter().map(|c| c.hash).collect::<Vec<_>>(),
        hashes(&chunks)
    );
    app.drain_jobs().await;
    assert!(served(app, &p.token, "cp", &nar).await == nar.bytes);

    // The update's list as the ids of its two questions' lists.
    let chunks = chunks_of(&update);
    let (first, second) = chunks.split_at(chunks.len() / 2);
    let head = json!({"info": update.info("cp"), "mode": "prepare", "list_ids_follow": true});
    let (list, answer) = p.open_streamed(&head);
    for group in [first, second] {
        let question = json!({"store_path": update.store_path()});
        p.post_hash_list("chunks/missing", &question, &hashes(group))
            .await
            .assert_status(StatusCode::OK);
        p.send_missing(&update, group).await;
        let id = chunk_list_hash(&hashes(group));
        list.send(Ok(id.as_bytes().to_vec())).expect("piece");
    }
    drop(list);
    let resp = answer.await.expect("prepare task");
    resp.assert_status(StatusCode::OK);
    let prepared: Value = resp.json();
    let prepared = prepared["prepared"].as_str().expect("name");
    assert_kind(&p.publish(update.info("cp"), prepared).await, "Uploaded");
    assert!(served(app, &p.token, "cp", &update).await == update.bytes);
    app.drain_jobs().await;
    assert!(served(app, &p.token, "cp", &update).await == update.bytes);
    app.assert_chunk_store_consistent().await;
}

/// A streamed prepare that names a chunk not present or a list not known,
/// that ends inside a hash, that breaks off, or that claims the wrong
/// NarHash leaves nothing:
/// no prepared copy, no intent, no NAR.
pub async fn chunk_push_streamed_prepare_failures_leave_nothing(app: &TestApp) {
    app.create_cache("cp", false).await;
    let p = pusher(app, app.token(&[("cp", PULL_PUSH)]), "cp");
    let (nar, update) = nar_and_update();
    let chunks = chunks_of(&nar);
    p.send_missing(&nar, &chunks).await;
    let head = json!({"info": nar.info("cp"), "mode": "prepare"});

    // The update's changed chunk was never sent.
    let (list, answer) = p.open_streamed(&json!({"info": update.info("cp"), "mode": "prepare"}));
    list.send(Ok(raw(&chunks_of(&update)))).expect("piece");
    let resp = answer.await.expect("prepare task");
    resp.assert_error(StatusCode::CONFLICT, "ChunksMissing");
    drop(list);

    // A list id this server never heard.
    let ids = json!({"info": nar.info("cp"), "mode": "prepare", "list_ids_follow": true});
    let (list, answer) = p.open_streamed(&ids);
    list.send(Ok(vec![7; 32])).expect("piece");
    let resp = answer.await.expect("prepare task");
    resp.assert_error(StatusCode::CONFLICT, "ChunkListUnknown");
    drop(list);

    let (list, answer) = p.open_streamed(&head);
    let mut ragged = raw(&chunks);
    ragged.pop();
    list.send(Ok(ragged)).expect("piece");
    drop(list);
    let resp = answer.await.expect("prepare task");
    resp.assert_error(StatusCode::BAD_REQUEST, "BadRequest");

    let (list, answer) = p.open_streamed(&head);
    list.send(Ok(raw(&chunks[..1]))).expect("piece");
    list.send(Err(std::io::Error::other("connection reset")))
        .expect("break");
    let resp = answer.await.expect("prepare task");
    resp.assert_error(StatusCode::BAD_REQUEST, "BadRequest");

    let mut info = nar.info("cp");
    info["nar_hash"] = json!(format!("sha256:{}", "0".repeat(64)));
    let (list, answer) = p.open_streamed(&json!({"info": info, "mode": "prepare"}));
    list.send(Ok(raw(&chunks))).expect("piece");
    drop(list);
    let resp = answer.await.expect("prepare task");
    resp.assert_error(StatusCode::BAD_REQUEST, "InvalidNar");

    assert_nothing_prepared(app).await;
}

/// The raw hashes of `chunks`, as a hash list's tail carries them.
fn raw(chunks: &[Chunk]) -> Vec<u8> {
    chunks.iter().flat_map(|c| *c.hash.as_bytes()).collect()
}

/// A streamed body's pieces.
type Pieces = tokio::sync::mpsc::UnboundedSender<std::io::Result<Vec<u8>>>;

impl Pusher<'_> {
    /// Opens a prepare whose hash-list body is `head`, then what is sent
    /// on the returned channel, until it is dropped; the answer's task.
    fn open_streamed(&self, head: &Value) -> (Pieces, tokio::task::JoinHandle<TestResponse>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let head = encode_hash_list(head.to_string().as_bytes(), &[]);
        let pieces = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|piece| (piece, rx))
        });
        let body = futures::StreamExt::chain(futures::stream::once(async { Ok(head) }), pieces);
        let req = request(Method::POST, &self.uri("nars"), Some(&self.token))
            .header("content-type", HASH_LIST_CONTENT_TYPE)
            .body(Body::from_stream(body))
            .expect("request");
        let router = self.app.router();
        let answer = tokio::spawn(async move { crate::common::send(&router, req).await });
        (tx, answer)
    }
}

/// A NAR of one chunk committed with its bytes (docs/protocol.md "Inline
/// NARs"): refused with nothing left when its claims do not hold, it is too
/// large for one chunk, or its bytes are not zstd of at most its NarSize;
/// otherwise served byte-identical staged and ingested, and a repeat links.
pub async fn chunk_push_inline_nar(app: &TestApp) {
    app.create_cache("cp", false).await;
    let p = pusher(app, app.token(&[("cp", PULL_PUSH)]), "cp");
    let params: ChunkParamsResponse = p.params().await.json();
    assert!(params.inline_nars);
    let nar = TestNar::files("tiny-1.0", 11, &[20 * KIB]);
    assert!(nar.nar_size() < u64::from(params.nar_size_threshold));
    let zstd = zstd::bulk::compress(&nar.bytes, 3).expect("zstd");
    let head = |info: Value| json!({ "info": info });

    let mut info = nar.info("cp");
    info["nar_hash"] = json!(format!("sha256:{}", "0".repeat(64)));
    p.post_inline(&head(info), &zstd)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
    let mut info = nar.info("cp");
    info["nar_size"] = json!(nar.nar_size() + 1);
    p.post_inline(&head(info), &zstd)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
    // Inflating past the NarSize it claims, and not zstd at all.
    let mut info = nar.info("cp");
    info["nar_size"] = json!(nar.nar_size() - 1);
    p.post_inline(&head(info), &zstd)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
    p.post_inline(&head(nar.info("cp")), &nar.bytes)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
    // Too large to be one chunk, or not a one-step commit.
    let large = TestNar::files("large-1.0", 12, &[80 * KIB]);
    let large_zstd = zstd::bulk::compress(&large.bytes, 3).expect("zstd");
    p.post_inline(&head(large.info("cp")), &large_zstd)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    let prepare = json!({ "info": nar.info("cp"), "mode": "prepare" });
    p.post_inline(&prepare, &zstd)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    let pull_only = pusher(app, app.token(&[("cp", &[Permission::Pull])]), "cp");
    pull_only
        .post_inline(&head(nar.info("cp")), &zstd)
        .await
        .assert_status(StatusCode::FORBIDDEN);
    assert_nothing_prepared(app).await;
    assert!(app.object_keys("staging/").await.is_empty());

    assert_kind(
        &p.post_inline(&head(nar.info("cp")), &zstd).await,
        "Uploaded",
    );
    assert!(
        served(app, &p.token, "cp", &nar).await == nar.bytes,
        "staged"
    );
    app.drain_jobs().await;
    assert!(
        served(app, &p.token, "cp", &nar).await == nar.bytes,
        "ingested"
    );
    assert_kind(
        &p.post_inline(&head(nar.info("cp")), &zstd).await,
        "Uploaded",
    );
    assert_eq!(
        (app.count("nars").await, app.count("objects").await),
        (1, 1)
    );
    app.assert_chunk_store_consistent().await;
}
