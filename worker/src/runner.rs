//! Runs apalis workers for every queue on the configured backend
//! (PostgreSQL or SQLite), plus the sweeper, until shutdown.

use std::time::Duration;

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use tokio_util::sync::CancellationToken;

use larder_shared::db::Db;
use larder_shared::jobs::{INGEST_QUEUE, IngestNar};

use crate::jobs::ingest::{self, Outcome};
use crate::services::Services;
use crate::{scheduler, sweeper};

/// How often a worker proves it is alive; a worker silent for
/// `HEARTBEAT × MISSED_HEARTBEATS` (killed, say) has its jobs re-enqueued.
const HEARTBEAT: Duration = Duration::from_secs(5);
const MISSED_HEARTBEATS: usize = 6;
/// How often an idle worker polls for jobs.
const POLL: Duration = Duration::from_millis(250);

/// The ingest job's apalis handler.
async fn handle_ingest(job: IngestNar, svc: Data<Services>) -> Result<(), BoxDynError> {
    match ingest::ingest(&svc, job.nar_id).await {
        Ok(Outcome::Ingested {
            chunks,
            new_chunks,
            stored_bytes,
        }) => {
            tracing::info!(
                nar_id = job.nar_id,
                chunks,
                new_chunks,
                stored_bytes,
                "ingested NAR"
            );
            Ok(())
        }
        Ok(Outcome::Skipped) => {
            tracing::debug!(nar_id = job.nar_id, "ingest skipped: nothing to do");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(nar_id = job.nar_id, error = %format!("{e:#}"), "ingest failed; will retry");
            Err(e.into())
        }
    }
}

fn worker_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "larder".into());
    format!("{host}-{}", ulid::Ulid::new())
}

/// Runs `concurrency` concurrent ingest jobs, the sweeper and the GC
/// scheduler until `shutdown`.
pub async fn run(
    svc: Services,
    concurrency: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let concurrency = concurrency.max(1);
    let name = worker_name();
    let sweeper = tokio::spawn(sweeper::run(svc.clone(), shutdown.clone()));
    let scheduler = tokio::spawn(scheduler::run(svc.clone(), name.clone(), shutdown.clone()));
    let signal = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            Ok::<(), std::io::Error>(())
        }
    };
    let result = match svc.db.clone() {
        Db::Postgres(pool) => {
            let config = apalis_postgres::Config::default()
                .queue(INGEST_QUEUE)
                .batch_size(concurrency)
                .heartbeat_interval(HEARTBEAT)
                .missed_heartbeats(MISSED_HEARTBEATS);
            let backend = PostgresStorage::<IngestNar>::new(&pool)
                .with_config(config)
                .poll_with_interval(POLL);
            WorkerBuilder::new(name)
                .backend(backend)
                .data(svc)
                .concurrency(concurrency)
                .build(handle_ingest)
                .run_until(signal)
                .await
        }
        Db::Sqlite(pool) => {
            let config = apalis_sqlite::Config::default()
                .queue(INGEST_QUEUE)
                .batch_size(concurrency)
                .heartbeat_interval(HEARTBEAT)
                .missed_heartbeats(MISSED_HEARTBEATS);
            let backend = SqliteStorage::<IngestNar>::new(&pool)
                .with_config(config)
                .poll_with_interval(POLL);
            WorkerBuilder::new(name)
                .backend(backend)
                .data(svc)
                .concurrency(concurrency)
                .build(handle_ingest)
                .run_until(signal)
                .await
        }
    };
    shutdown.cancel();
    let _ = sweeper.await;
    let _ = scheduler.await;
    result.map_err(|e| anyhow::anyhow!("worker stopped: {e}"))
}
