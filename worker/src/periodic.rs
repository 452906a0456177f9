//! Periodic tasks: one table, [`TASKS`], of everything a worker process
//! runs on a clock, and one loop per row.
//!
//! A row without a lease is an idempotent repair that every worker runs,
//! once at start (start-up recovery) and then every interval: two at once
//! only repeat work. A row with a lease is cluster-wide: every worker
//! checks every [`CHECK`] when the task last finished anywhere (the lease
//! table records it) and runs it once the interval has passed; the task
//! takes the lease itself, so only one runs at a time.
//!
//! Work that arrives with a request is a queued job instead
//! ([`crate::queue`]); `verify` is an operator's command (`larder-admin
//! verify`), not a background task.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use larder_shared::config::Config;
use larder_shared::db::{leases, unix_now};
use larder_shared::metrics::jobs::{self as job_runs, Outcome};

use crate::jobs::{gc, nix_uploads};
use crate::services::Services;
use crate::sweeper;

/// How often a worker checks whether a leased task is due.
pub const CHECK: Duration = Duration::from_secs(60);

/// One periodic task.
pub struct Periodic {
    /// Name in logs.
    pub name: &'static str,
    /// Time between runs.
    pub interval: fn(&Config) -> Duration,
    /// The lease of a cluster-wide task; `None` for one every worker runs.
    pub lease: Option<&'static str>,
    /// One run at `now` (Unix seconds) by the worker `holder`.
    pub run: for<'a> fn(&'a Services, &'a str, i64) -> BoxFuture<'a, anyhow::Result<()>>,
}

/// Every periodic task, registered once.
pub const TASKS: &[Periodic] = &[
    Periodic {
        name: "sweep",
        interval: |_| sweeper::INTERVAL,
        lease: None,
        run: sweep,
    },
    Periodic {
        name: "upload-expiry",
        interval: |_| sweeper::INTERVAL,
        lease: None,
        run: expire_uploads,
    },
    Periodic {
        name: "remove-incomplete-writes",
        interval: |_| sweeper::INCOMPLETE_INTERVAL,
        lease: None,
        run: remove_incomplete,
    },
    Periodic {
        name: "garbage-collection",
        interval: |c| c.garbage_collection.interval.get(),
        lease: Some(gc::LEASE),
        run: collect_garbage,
    },
];

fn sweep<'a>(svc: &'a Services, _: &'a str, now: i64) -> BoxFuture<'a, anyhow::Result<()>> {
    Box::pin(async move { sweeper::sweep(svc, now).await.map(drop) })
}

fn expire_uploads<'a>(
    svc: &'a Services,
    _: &'a str,
    now: i64,
) -> BoxFuture<'a, anyhow::Result<()>> {
    Box::pin(async move { nix_uploads::sweep(svc, now).await.map(drop) })
}

fn remove_incomplete<'a>(
    svc: &'a Services,
    _: &'a str,
    _: i64,
) -> BoxFuture<'a, anyhow::Result<()>> {
    Box::pin(async move { sweeper::remove_incomplete(svc).await.map(drop) })
}

fn collect_garbage<'a>(
    svc: &'a Services,
    holder: &'a str,
    now: i64,
) -> BoxFuture<'a, anyhow::Result<()>> {
    let interval = svc.config.garbage_collection.interval.get().as_secs() as i64;
    Box::pin(async move {
        gc::run_scheduled(svc, now, holder, interval)
            .await
            .map(drop)
    })
}

/// Runs every task of [`TASKS`] until `shutdown`; `holder` names this
/// process in leases.
pub async fn run(svc: Services, holder: String, shutdown: CancellationToken) {
    let loops = TASKS
        .iter()
        .map(|task| run_task(task, svc.clone(), holder.clone(), shutdown.clone()));
    futures::future::join_all(loops).await;
}

async fn run_task(task: &Periodic, svc: Services, holder: String, shutdown: CancellationToken) {
    let interval = (task.interval)(&svc.config);
    // A leased task waits for its first check; the others run at once.
    let mut wait = if task.lease.is_some() {
        CHECK
    } else {
        Duration::ZERO
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = match task.lease {
            Some(_) => CHECK,
            None => interval,
        };
        if let Err(e) = tick(task, &svc, &holder, unix_now()).await {
            tracing::warn!(task = task.name, error = %format!("{e:#}"), "periodic task failed; retrying later");
        }
    }
}

/// Runs `task` at `now` if it is due: always for a task without a lease
/// (its loop keeps the interval), and for a leased one once its interval
/// has passed since the last run finished anywhere. True if it ran; a run
/// counts in `larder_jobs_total` under the task's name.
pub async fn tick(task: &Periodic, svc: &Services, holder: &str, now: i64) -> anyhow::Result<bool> {
    if let Some(lease) = task.lease {
        let interval = (task.interval)(&svc.config).as_secs() as i64;
        let last = {
            let mut conn = svc.db.conn().await?;
            leases::last_finished(conn.raw(), lease).await?
        };
        if last.is_some_and(|t| now - t < interval) {
            return Ok(false);
        }
    }
    let running = job_runs::start(task.name);
    let ran = (task.run)(svc, holder, now).await;
    drop(running);
    let outcome = if ran.is_ok() {
        Outcome::Ok
    } else {
        Outcome::Error
    };
    job_runs::record(task.name, outcome);
    ran.map(|()| true)
}
