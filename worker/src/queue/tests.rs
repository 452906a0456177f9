//! The real queue, end to end on each database: a job enqueued in the
//! transaction that records its NAR is picked up by [`super::run`] and its
//! outcome lands in the database, as in production (not by calling the
//! handler directly).

use std::sync::Arc;
use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection};
use tokio_util::sync::CancellationToken;

use larder_core::nix::hash::NarHash;
use larder_core::nix::nar::NarNode;
use larder_shared::config::Config;
use larder_shared::db::nars::{self, NarState};
use larder_shared::db::{Db, NarId, unix_now};
use larder_shared::jobs;
use larder_shared::storage::layout;
use larder_shared::storage::local::LocalStorage;
use larder_shared::storage::{ObjectKey, Storage, StorageError};

use crate::services::Services;

/// PostgreSQL of the test machines (trust auth).
const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A scratch database on `backend`: its URL, and the PostgreSQL database
/// to drop afterwards.
async fn database(postgres: bool, dir: &std::path::Path) -> (String, Option<String>) {
    if !postgres {
        let url = format!("sqlite://{}?mode=rwc", dir.join("larder.db").display());
        return (url, None);
    }
    let name = format!("larder_w_{}", ulid::Ulid::new().to_string().to_lowercase());
    let mut admin = sqlx::PgConnection::connect(&format!("{PG_SERVER}/postgres"))
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (user postgres)");
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .expect("CREATE DATABASE");
    let _ = admin.close().await;
    (format!("{PG_SERVER}/{name}"), Some(name))
}

async fn drop_database(name: &str) {
    if let Ok(mut admin) = sqlx::PgConnection::connect(&format!("{PG_SERVER}/postgres")).await {
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let _ = sqlx::query(AssertSqlSafe(drop)).execute(&mut admin).await;
        let _ = admin.close().await;
    }
}

async fn services(url: &str, dir: &std::path::Path) -> Services {
    let storage_dir = dir.join("storage");
    let config = Config::parse_toml(&format!(
        r#"
[database]
url = "{url}"
[storage]
type = "local"
path = "{}"
[jwt.signing]
token-hs256-secret-base64 = "c2VjcmV0"
"#,
        storage_dir.display()
    ))
    .expect("config");
    let db = Db::connect(url, 4).await.expect("database");
    db.migrate().await.expect("migrations");
    let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(storage_dir).expect("storage"));
    Services::new(Arc::new(config), db, storage.clone(), storage)
}

/// A NAR large enough to be cut into several chunks.
fn nar() -> Vec<u8> {
    let mut seed = 0x5eed_u64;
    let mut bytes = vec![0u8; 600 * 1024];
    for b in bytes.iter_mut() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *b = (seed >> 56) as u8;
    }
    NarNode::directory([
        ("data", NarNode::file(bytes)),
        (
            "hello",
            NarNode::executable(b"#!/bin/sh\necho hi\n".to_vec()),
        ),
    ])
    .to_bytes()
}

/// Stages `nars` and enqueues their ingest jobs, in one transaction, as an
/// upload does: their row ids and staging keys.
async fn stage(svc: &Services, nars: &[Vec<u8>]) -> Vec<(NarId, ObjectKey)> {
    let mut tx = svc.db.begin().await.expect("begin");
    let mut staged = Vec::with_capacity(nars.len());
    for nar in nars {
        let key = layout::new_staging_key();
        svc.staging
            .put_bytes(&key, nar.clone().into())
            .await
            .expect("staged");
        let id = nars::insert_staged(
            tx.raw(),
            &NarHash::digest(nar),
            nar.len() as i64,
            key.as_str(),
            unix_now(),
        )
        .await
        .expect("insert")
        .expect("new NAR");
        let job = jobs::StagedNar {
            nar_id: id,
            nar_size: nar.len() as u64,
        };
        jobs::enqueue_ingest(tx.raw(), &[job])
            .await
            .expect("enqueue");
        staged.push((id, key));
    }
    tx.commit().await.expect("commit");
    staged
}

async fn staged_nar_is_ingested_by_a_running_worker(postgres: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, pg) = database(postgres, dir.path()).await;
    let svc = services(&url, dir.path()).await;

    let nar = nar();
    let (id, key) = stage(&svc, std::slice::from_ref(&nar)).await.remove(0);

    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(super::run(svc.clone(), "queue-test", 2, shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let ready = loop {
        let rec = {
            let mut conn = svc.db.conn().await.expect("conn");
            nars::get(conn.raw(), id).await.expect("get").expect("row")
        };
        if rec.state == NarState::Ready || tokio::time::Instant::now() > deadline {
            break rec;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    shutdown.cancel();
    worker
        .await
        .expect("worker task")
        .expect("worker stops cleanly");

    assert_eq!(ready.state, NarState::Ready, "the worker ingested the NAR");
    assert!(ready.staging_key.is_none());
    assert!(
        ready.chunk_ids.len() > 1,
        "cut into chunks, got {}",
        ready.chunk_ids.len()
    );
    let left = svc.staging.head(&key).await.expect("head");
    assert!(left.is_none(), "the staged copy is deleted after ingest");
    assert!(matches!(
        svc.staging.get(&key, None).await.err(),
        Some(StorageError::NotFound(_))
    ));

    svc.db.close().await;
    if let Some(name) = pg {
        drop_database(&name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_nar_is_ingested_by_a_running_worker_on_sqlite() {
    staged_nar_is_ingested_by_a_running_worker(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_nar_is_ingested_by_a_running_worker_on_postgres() {
    staged_nar_is_ingested_by_a_running_worker(true).await;
}

/// A NAR of about `size` bytes, distinct per `seed`.
fn nar_of(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let bytes = (0..size)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect::<Vec<u8>>();
    NarNode::directory([("data", NarNode::file(bytes))]).to_bytes()
}

/// Jobs of the ingest queue: (priority, status, lock_by) of each.
async fn ingest_jobs(db: &Db) -> Vec<(i64, String, Option<String>)> {
    let sql = |table: &str| {
        format!(
            "SELECT CAST(priority AS BIGINT) AS priority, status, lock_by FROM {table} \
             WHERE job_type = '{}'",
            jobs::INGEST_QUEUE
        )
    };
    let rows: Vec<(i64, String, Option<String>)> = match db {
        Db::Postgres(pool) => sqlx::query_as(AssertSqlSafe(sql("apalis.jobs")))
            .fetch_all(pool)
            .await
            .expect("jobs"),
        Db::Sqlite(pool) => sqlx::query_as(AssertSqlSafe(sql("Jobs")))
            .fetch_all(pool)
            .await
            .expect("jobs"),
    };
    rows
}

/// A backlog is taken largest NAR first.
async fn largest_first(postgres: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, pg) = database(postgres, dir.path()).await;
    let svc = services(&url, dir.path()).await;

    // Enqueued smallest first: a FIFO queue would take the 64 KiB one first.
    const KIB: usize = 1024;
    let sizes = [64 * KIB, 1536 * KIB, 6 * 1024 * KIB, 3 * 1024 * KIB];
    let backlog: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, size)| nar_of(*size, i as u64 + 1))
        .collect();
    stage(&svc, &backlog).await;
    let mut priorities: Vec<i64> = ingest_jobs(&svc.db).await.iter().map(|j| j.0).collect();
    priorities.sort_unstable();
    assert_eq!(priorities, vec![0, 1, 2, 3], "classes double from 1 MiB");

    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(super::run(svc.clone(), "one-slot", 1, shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut first_taken = None;
    loop {
        let jobs = ingest_jobs(&svc.db).await;
        if first_taken.is_none() {
            first_taken = jobs.iter().filter(|j| j.2.is_some()).map(|j| j.0).max();
        }
        if jobs.iter().all(|j| j.1 == "Done") || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    worker
        .await
        .expect("worker task")
        .expect("worker stops cleanly");
    assert_eq!(first_taken, Some(3), "the 6 MiB NAR is taken first");
    let jobs = ingest_jobs(&svc.db).await;
    assert!(jobs.iter().all(|j| j.1 == "Done"), "all ingested: {jobs:?}");

    svc.db.close().await;
    if let Some(name) = pg {
        drop_database(&name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_first_on_sqlite() {
    largest_first(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_first_on_postgres() {
    largest_first(true).await;
}

/// A worker asked to stop with every slot busy stops: once its jobs are
/// done, or at the end of its stop grace if apalis's stop hangs on their
/// completions (its event channel; see `fetch_batch`).
async fn stops_with_every_slot_busy(postgres: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, pg) = database(postgres, dir.path()).await;
    let svc = services(&url, dir.path()).await;
    const SLOTS: usize = 8;
    let backlog: Vec<Vec<u8>> = (0..3 * SLOTS)
        .map(|i| nar_of(512 * 1024, 100 + i as u64))
        .collect();
    stage(&svc, &backlog).await;
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(super::run(svc.clone(), "busy", SLOTS, shutdown.clone()));
    // Stop once a few jobs are done and others are running.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = ingest_jobs(&svc.db).await;
        let done = jobs.iter().filter(|j| j.1 == "Done").count();
        if done >= 2 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(60), worker).await;
    assert!(
        stopped.is_ok(),
        "the worker did not stop within a minute of shutdown"
    );
    stopped
        .expect("stopped")
        .expect("worker task")
        .expect("worker stops cleanly");

    svc.db.close().await;
    if let Some(name) = pg {
        drop_database(&name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_with_every_slot_busy_on_sqlite() {
    stops_with_every_slot_busy(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_with_every_slot_busy_on_postgres() {
    stops_with_every_slot_busy(true).await;
}
