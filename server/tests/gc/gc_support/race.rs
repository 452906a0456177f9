//! The GC/ingest race (docs/gc.md "Races with pushes, and how each is closed"), one seeded round at a time.
//!
//! Each round: about half the live paths expire (backdated past retention);
//! every NAR, every unreferenced chunk and every write intent (left by
//! failed ingest runs) is backdated past the 1 s grace period, so the
//! round's GC deletes the chunks earlier rounds left unreferenced and the
//! objects of failed runs; 1–3 new NARs from the same block pool (so they need some
//! of those very chunks) are uploaded; then GC (two runs at real time),
//! ingest of the new NARs, and sometimes a re-push of an expiring NAR under
//! another path run concurrently (spawned, joined). Afterwards nothing may
//! be lost: refcounts match the ready NARs, every chunk row has its object,
//! every live path reads back byte-identical, expired ones are gone, and
//! `verify --repair` finds nothing damaged.
//!
//! Leftovers (docs/gc.md "Who may delete an object"): the objects of chunks a round's GC deletes are
//! saved, and at the next round's start about half are put back with a
//! stale write intent, as an ingest killed before its commit leaves them.
//! The round's GC deletes them through those intents while the round's
//! ingests, whose NARs share those blocks, write the same keys.

use std::collections::HashMap;

use axum::http::StatusCode;

use bytes::Bytes;
use futures::TryStreamExt;

use larder_shared::chunk::ChunkHash;
use larder_shared::db::{chunk_claims, unix_now};
use larder_shared::storage::ObjectKey;
use larder_shared::token::Permission;
use larder_worker::jobs::gc;
use larder_worker::jobs::verify;

use super::clock::{
    DAY, HOLDER, backdate_intents, backdate_nars, backdate_unreferenced_chunks, default_retention,
    gc_at, set_path_time,
};
use super::http::{assert_bytes, assert_served};
use super::invariants::{
    assert_chunk_store_sound, chunk_hashes, ingest_until_done, unreferenced_chunks,
};
use super::pool::BlockPool;
use crate::common::nar::{Rng, TestNar};
use crate::common::read::assert_kind;
use crate::common::{TestApp, send, upload_request};
use larder_shared::db::chunks;
use larder_shared::storage::layout;

const CACHE: &str = "race";
/// Pool blocks; NARs take 1–3 of them.
const BLOCKS: usize = 8;
const BLOCK_SIZE: usize = 256 * 1024;
const MAX_BLOCKS: usize = 3;
/// Passes of [`ingest_until_done`] before a round gives up.
const INGEST_PASSES: usize = 500;

/// How chunks wanted by new NARs fared against the GC racing their ingest.
#[derive(Debug, Default)]
pub struct Contest {
    /// Chunks new NARs list that were unreferenced and past their grace
    /// period when their round began (what the racing GC deletes).
    pub contested: usize,
    /// Of those, kept under the same row: ingest referenced them first.
    pub revived: usize,
    /// Of those, stored again under a new row: GC deleted them first.
    pub restored: usize,
    /// Failed ingest attempts (retried, as the job queue would).
    pub retries: usize,
    /// Objects put back as a killed ingest's leftovers.
    pub leftovers: usize,
}

/// A cache under the race, with what it should hold.
pub struct Race<'a> {
    app: &'a TestApp,
    token: String,
    seed: u64,
    pool: BlockPool,
    rng: Rng,
    next_path: u64,
    retention: i64,
    live: Vec<TestNar>,
    /// Objects of chunks the last round's GC deleted, to put back.
    saved: Vec<(ObjectKey, Bytes)>,
    /// What the rounds so far did.
    pub contest: Contest,
}

impl<'a> Race<'a> {
    /// Creates the cache and pushes a few NARs to start from.
    pub async fn start(app: &'a TestApp, seed: u64) -> Self {
        app.create_cache(CACHE, false).await;
        let mut race = Self {
            app,
            token: app.token(&[(CACHE, &[Permission::Pull, Permission::Push])]),
            seed,
            pool: BlockPool::new(seed, BLOCKS, BLOCK_SIZE),
            rng: Rng::new(seed),
            next_path: seed,
            retention: default_retention(app),
            live: Vec::new(),
            saved: Vec::new(),
            contest: Contest::default(),
        };
        let first = race.new_nars("start", 3);
        for n in &first {
            assert_kind(&app.upload(&race.token, CACHE, n).await, "Uploaded");
        }
        app.drain_jobs().await;
        race.live = first;
        race
    }

    fn new_nars(&mut self, name: &str, count: u64) -> Vec<TestNar> {
        (0..count)
            .map(|_| {
                self.next_path = self.next_path.wrapping_add(1);
                self.pool
                    .random_nar(&mut self.rng, name, self.next_path, MAX_BLOCKS)
            })
            .collect()
    }

    fn ctx(&self, round: &str) -> String {
        format!("{:?}, seed {}, {round}", self.app.backend, self.seed)
    }

    /// One round (see the module doc).
    pub async fn round(&mut self, round: u64) {
        let app = self.app;
        let ctx = self.ctx(&format!("round {round}"));
        let now = unix_now();
        let rng = &mut self.rng;
        let (expiring, staying): (Vec<TestNar>, Vec<TestNar>) = self
            .live
            .drain(..)
            .partition(|_| rng.next_u64().is_multiple_of(2));
        for n in &expiring {
            set_path_time(app, CACHE, n, now - self.retention - DAY).await;
        }
        self.put_back_leftovers(round, now).await;
        backdate_nars(app, 10).await;
        backdate_unreferenced_chunks(app, 10).await;
        backdate_intents(app, 10).await;
        let doomed = unreferenced_chunks(app).await;
        self.saved = saved_objects(app, doomed.keys()).await;
        let count = 1 + self.rng.next_u64() % 3;
        let fresh = self.new_nars("fresh", count);
        for n in &fresh {
            assert_kind(&app.upload(&self.token, CACHE, n).await, "Uploaded");
        }
        let again = if !expiring.is_empty() && self.rng.next_u64().is_multiple_of(3) {
            let e = &expiring[(self.rng.next_u64() as usize) % expiring.len()];
            self.next_path = self.next_path.wrapping_add(1);
            Some(e.with_path("again", self.next_path))
        } else {
            None
        };
        let stagger: [u64; 3] = std::array::from_fn(|_| self.rng.next_u64() % 16);

        let expired = self.run_concurrently(&ctx, stagger, again.clone()).await;
        assert_eq!(expired, expiring.len() as u64, "{ctx}: paths expired");
        // The re-pushed NAR may have been staged after the ingest task ended.
        let errors = ingest_until_done(&app.services, INGEST_PASSES)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        self.contest.retries += errors.len();
        self.score(&fresh, &doomed).await;

        self.live = staying;
        self.live.extend(fresh);
        self.live.extend(again);
        let unready = app
            .scalar("SELECT COUNT(*) FROM nars WHERE state <> 'ready'")
            .await;
        assert_eq!(unready, 0, "{ctx}: NARs not ready");
        assert_chunk_store_sound(app, &ctx).await;
        for n in &self.live {
            assert_bytes(app, &self.token, CACHE, n, &ctx).await;
        }
        let gone: Vec<&TestNar> = expiring.iter().collect();
        assert_served(app, &self.token, CACHE, &[], &gone, &ctx).await;
        let report = verify::run(&app.services, unix_now(), true)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: verify: {e:#}"));
        assert!(report.damaged_chunks.is_empty(), "{ctx}: {report:?}");
        assert_eq!(report.nars_marked_broken, 0, "{ctx}: {report:?}");
    }

    /// Puts about half the saved objects back, each with a write intent of
    /// a dead ingest (stale once backdated).
    async fn put_back_leftovers(&mut self, round: u64, now: i64) {
        let saved = std::mem::take(&mut self.saved);
        let mut keys = Vec::new();
        for (key, bytes) in saved {
            if self.rng.next_u64().is_multiple_of(2) {
                continue;
            }
            let storage = &self.app.services.storage;
            storage.put_bytes(&key, bytes).await.expect("put back");
            keys.push(key);
        }
        self.contest.leftovers += keys.len();
        let mut conn = self.app.state.db.conn().await.expect("connection");
        for batch in keys.chunks(chunks::BATCH) {
            chunk_claims::insert_intents(conn.raw(), &format!("killed-{round}"), batch, now)
                .await
                .expect("intents");
        }
    }

    /// GC, ingest and the optional re-push, spawned and joined. Returns the
    /// paths the GC runs expired.
    async fn run_concurrently(
        &mut self,
        ctx: &str,
        stagger: [u64; 3],
        again: Option<TestNar>,
    ) -> u64 {
        let app = self.app;
        let gc_task = {
            let svc = app.services.clone();
            tokio::spawn(async move {
                yields(stagger[0]).await;
                let mut reports = Vec::new();
                for _ in 0..2 {
                    let r = gc::run(&svc, unix_now(), HOLDER).await;
                    reports.push(r.map_err(|e| format!("{e:#}")));
                }
                reports
            })
        };
        let ingest_task = {
            let svc = app.services.clone();
            tokio::spawn(async move {
                yields(stagger[1]).await;
                ingest_until_done(&svc, INGEST_PASSES).await
            })
        };
        let push_task = {
            let (svc, router, token) = (app.services.clone(), app.router(), self.token.clone());
            tokio::spawn(async move {
                let Some(n) = again else {
                    return Ok((StatusCode::OK, Vec::new()));
                };
                yields(stagger[2]).await;
                let req = upload_request(&token, &n.info(CACHE), n.bytes.clone());
                let status = send(&router, req).await.status;
                ingest_until_done(&svc, INGEST_PASSES)
                    .await
                    .map(|e| (status, e))
            })
        };
        let (gc_out, ingested, pushed) = tokio::join!(gc_task, ingest_task, push_task);

        let mut expired = 0;
        for r in gc_out.expect("GC task") {
            let report = r
                .unwrap_or_else(|e| panic!("{ctx}: GC failed: {e}"))
                .unwrap_or_else(|| panic!("{ctx}: GC did not get the lease"));
            expired += report.objects_expired;
        }
        let errors = ingested
            .expect("ingest task")
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        self.contest.retries += errors.len();
        let (status, errors) = pushed
            .expect("push task")
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(status, StatusCode::OK, "{ctx}: upload pushed again");
        self.contest.retries += errors.len();
        expired
    }

    /// Counts the contested chunks of `fresh` NARs and who won each.
    async fn score(
        &mut self,
        fresh: &[TestNar],
        doomed: &HashMap<ChunkHash, larder_shared::db::ChunkId>,
    ) {
        for n in fresh {
            let ids = self.app.nar_record(n).await.chunk_ids;
            for (id, hash) in chunk_hashes(self.app, &ids).await {
                if let Some(&old) = doomed.get(&hash) {
                    self.contest.contested += 1;
                    if old == id {
                        self.contest.revived += 1;
                    } else {
                        self.contest.restored += 1;
                    }
                }
            }
        }
    }

    /// Expires everything and checks that storage empties: rows and the
    /// objects of failed ingest runs (through their intents) by GC, objects
    /// written after GC reclaimed their intent by `verify --repair`.
    pub async fn finish(self) {
        let app = self.app;
        let ctx = self.ctx("cleanup");
        let now = unix_now();
        for n in &self.live {
            set_path_time(app, CACHE, n, now - self.retention - DAY).await;
        }
        backdate_nars(app, 10).await;
        backdate_intents(app, 10).await;
        let report = gc_at(app, now).await;
        assert_eq!(report.objects_expired, self.live.len() as u64, "{ctx}");
        backdate_unreferenced_chunks(app, 10).await;
        gc_at(app, now).await;
        assert_eq!(app.count("nars").await, 0, "{ctx}");
        assert_eq!(app.count("chunks").await, 0, "{ctx}");
        let left = app.files_on_disk("chunks").len();
        let report = verify::run(&app.services, unix_now() + 10, true)
            .await
            .expect("verify");
        assert_eq!(report.orphans_deleted as usize, left, "{ctx}");
        assert!(report.damaged_chunks.is_empty(), "{ctx}: {report:?}");
        assert!(app.files_on_disk("chunks").is_empty(), "{ctx}");
        app.assert_staging_empty().await;
    }
}

/// The stored objects of these chunks (those still stored).
async fn saved_objects<'h>(
    app: &TestApp,
    hashes: impl Iterator<Item = &'h ChunkHash>,
) -> Vec<(ObjectKey, Bytes)> {
    let mut out = Vec::new();
    for hash in hashes {
        let key = layout::chunk_key(hash);
        let Ok(stream) = app.services.storage.get(&key, None).await else {
            continue;
        };
        let parts: Vec<Bytes> = stream.try_collect().await.expect("read");
        out.push((key, Bytes::from(parts.concat())));
    }
    out
}

/// Yields `n` times: a seeded stagger between the racing tasks.
async fn yields(n: u64) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}
