//! Queued jobs: a payload ([`larder_shared::jobs::Job`]: ids only, a
//! persisted queue name), a [`Handler`] here, and one registration list,
//! [`run`]. Each job runs on apalis over the configured database
//! (PostgreSQL or SQLite), so the queue needs nothing but the database.
//!
//! Work on a clock is a periodic task instead ([`crate::periodic`]).

use std::future::Future;
use std::time::Duration;

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use tokio_util::sync::CancellationToken;

use larder_shared::db::Db;
use larder_shared::jobs::{IngestNar, Job};
use larder_shared::metrics::jobs::{self as job_runs, Outcome as Run};

use crate::jobs::ingest::{self, Outcome};
use crate::services::Services;

/// How often a worker proves it is alive; a worker silent for
/// `HEARTBEAT × MISSED_HEARTBEATS` (killed, say) has its jobs re-enqueued.
const HEARTBEAT: Duration = Duration::from_secs(5);
const MISSED_HEARTBEATS: usize = 6;
/// How often an idle worker polls for jobs.
const POLL: Duration = Duration::from_millis(250);
/// How long a stopping worker lets its running jobs finish: below the API's
/// `[http] shutdown-timeout` default and compose's stop grace, so a stop is
/// orderly rather than a SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Jobs a worker takes per fetch, for `concurrency` slots: half its slots.
///
/// apalis locks a fetched batch to the worker that fetched it until it has
/// run them all, so a large batch left the last jobs of a backlog waiting
/// in one busy worker while another sat idle: smaller is fairer. But
/// apalis also sizes the channel of its job events (a lock when a job
/// starts, a completion when it ends) at four times the batch, and a job
/// whose event finds it full waits until the worker drains it; once the
/// worker stops draining (shutdown), it waits forever and so does the
/// process. One job per fetch (four events for eight slots) hung a
/// stopping server with its slots full; with half the slots (two events
/// per slot) it was still seen once in a suite run, so the stop is also
/// bounded ([`STOP_GRACE`]).
fn fetch_batch(concurrency: usize) -> usize {
    concurrency.div_ceil(2).max(1)
}

/// What a worker does with a job of this payload. An error makes apalis
/// retry it (up to [`larder_shared::jobs::MAX_ATTEMPTS`]); handlers re-read
/// state and skip work already done, so a job may run twice.
pub trait Handler: Job {
    /// Runs the job.
    fn handle(self, svc: &Services) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// `kind` of ingests in `larder_jobs_total`.
const J_INGEST: &str = "ingest";

impl Handler for IngestNar {
    async fn handle(self, svc: &Services) -> anyhow::Result<()> {
        let nar_id = self.nar_id.get();
        let _running = job_runs::start(J_INGEST);
        match ingest::ingest(svc, self.nar_id).await {
            Ok(Outcome::Ingested {
                chunks,
                new_chunks,
                stored_bytes,
            }) => {
                tracing::info!(nar_id, chunks, new_chunks, stored_bytes, "ingested NAR");
                job_runs::record(J_INGEST, Run::Ok);
                Ok(())
            }
            Ok(Outcome::Skipped) => {
                tracing::debug!(nar_id, "ingest skipped: nothing to do");
                job_runs::record(J_INGEST, Run::Skipped);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(nar_id, error = %format!("{e:#}"), "ingest failed; will retry");
                job_runs::record(J_INGEST, Run::Error);
                Err(e)
            }
        }
    }
}

/// Runs every queued job with `concurrency` jobs of each at once, as the
/// worker `name`, until `shutdown`. The one registration list: a new job
/// is one more line here.
pub async fn run(
    svc: Services,
    name: &str,
    concurrency: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    job_runs::set_slots(J_INGEST, concurrency.max(1) as u64);
    work::<IngestNar>(svc, name, concurrency, shutdown).await
}

/// apalis's handler for `J`.
async fn handle<J: Handler>(job: J, svc: Data<Services>) -> Result<(), BoxDynError> {
    job.handle(&svc).await.map_err(Into::into)
}

/// One apalis worker for the queue of `J` on the configured backend.
async fn work<J: Handler>(
    svc: Services,
    name: &str,
    concurrency: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let concurrency = concurrency.max(1);
    let name = name.to_owned();
    let stopping = shutdown.clone();
    let signal = async move {
        shutdown.cancelled().await;
        Ok::<(), std::io::Error>(())
    };
    // The two backends' configs and storages are distinct types with the
    // same builder methods: one worker, written once.
    macro_rules! worker_on {
        ($config:ty, $storage:ident, $pool:expr) => {{
            let config = <$config>::default()
                .queue(J::QUEUE)
                .batch_size(fetch_batch(concurrency))
                .heartbeat_interval(HEARTBEAT)
                .missed_heartbeats(MISSED_HEARTBEATS);
            let backend = $storage::<J>::new(&$pool)
                .with_config(config)
                .poll_with_interval(POLL);
            WorkerBuilder::new(name)
                .backend(backend)
                .data(svc)
                .concurrency(concurrency)
                .build(handle::<J>)
                .run_until(signal)
                .await
        }};
    }
    let run = async move {
        match svc.db.clone() {
            Db::Postgres(pool) => worker_on!(apalis_postgres::Config, PostgresStorage, pool),
            Db::Sqlite(pool) => worker_on!(apalis_sqlite::Config, SqliteStorage, pool),
        }
    };
    // Bounded: jobs still running [`STOP_GRACE`] after the signal are left
    // behind, as a crash would leave them (every handler is safe to cut off
    // and run again; apalis re-enqueues them once this worker's heartbeat
    // is missed). apalis's own stop has been seen to wait forever for jobs
    // whose completion could not be recorded (see `fetch_batch`).
    let grace = async move {
        stopping.cancelled().await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    let result = tokio::select! {
        result = run => result,
        () = grace => {
            tracing::warn!(
                grace = ?STOP_GRACE,
                "jobs still running at the end of the stop grace; they will run again"
            );
            return Ok(());
        }
    };
    result.map_err(|e| anyhow::anyhow!("{} worker stopped: {e}", J::QUEUE))
}

#[cfg(test)]
mod tests;
