//! `larder watch-store [SERVER:]CACHE`: push what the local Nix store
//! gains, as it gains it.
//!
//! Two tasks share the `larder queue` file. The watcher polls Nix's
//! database ([`nix_db`]) every second and queues each new valid path
//! (`.drv` files aside: they are build recipes, not outputs), so a path
//! seen is a path persisted, whatever happens next. The pusher waits until
//! the store has been quiet for `--debounce` (a build registers its
//! outputs in a burst; a store that never goes quiet is pushed every
//! [`MAX_BATCH_WAIT`] anyway), then runs a drain pass over the due entries
//! ([`crate::queue::drain`]): closures, upstream filter, retries inside a
//! push, backoff between passes. A server restart or a network outage only
//! delays paths; they stay queued until pushed.
//!
//! SIGINT or SIGTERM: the watcher queues what registered meanwhile, the
//! push in flight finishes (a second signal abandons it), and the command
//! exits 0 with anything unpushed left in the queue for `larder queue
//! drain` or the next `watch-store`.

pub mod args;
pub mod nix_db;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::queue::drain::{self, DrainOptions};
use crate::queue::shutdown::Shutdown;
use crate::queue::{self, Queue, QueueError, Target, unix_now};
use args::WatchStoreArgs;
use nix_db::{NixDb, NixDbError};

/// How often Nix's database is read.
const POLL: Duration = Duration::from_secs(1);
/// Longest a newly seen path waits for the store to go quiet.
pub const MAX_BATCH_WAIT: Duration = Duration::from_secs(30);

/// Why `watch-store` could not run.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The queue file.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Nix's database, at start.
    #[error(transparent)]
    NixDb(#[from] NixDbError),
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(args: WatchStoreArgs) -> Result<ExitCode, WatchError> {
    let target = queue::target(&args.cache)?;
    let queue = Queue::open(&queue::default_path()?).await?;
    let shutdown = Shutdown::install().map_err(QueueError::Signal)?;
    let db = NixDb::open(&nix_db::default_path(), args.all_paths).await?;
    eprintln!(
        "watching {} for paths registered after id {}; pushing them to {target}",
        db.path().display(),
        db.last_id()
    );
    let (seen_tx, seen_rx) = watch::channel(None);
    let watcher = tokio::spawn(watch_paths(
        db,
        queue.clone(),
        target,
        seen_tx,
        shutdown.clone(),
    ));
    let options = DrainOptions {
        jobs: usize::from(args.jobs),
    };
    let pushed = push_loop(&queue, options, args.debounce, seen_rx, &shutdown).await;
    // The watcher stops on the same signal, after a last poll.
    let _ = watcher.await;
    queue.close().await;
    pushed?;
    eprintln!("stopped; anything not pushed stays queued");
    Ok(ExitCode::SUCCESS)
}

/// Queues new valid paths until a stop is asked for, then once more.
/// Reports the time of each new batch on `seen`.
async fn watch_paths(
    mut db: NixDb,
    queue: Queue,
    target: Target,
    seen: watch::Sender<Option<Instant>>,
    shutdown: Shutdown,
) {
    // Paths read but not yet queued (the queue was busy or failing).
    let mut pending: Vec<String> = Vec::new();
    let mut db_failing = false;
    loop {
        let last_round = shutdown.requested();
        match db.poll().await {
            Ok(paths) => {
                db_failing = false;
                pending.extend(paths.into_iter().filter(|p| !p.ends_with(".drv")));
            }
            Err(e) if !db_failing => {
                eprintln!("{e} (retrying)");
                db_failing = true;
            }
            Err(_) => {}
        }
        if !pending.is_empty() {
            match queue.enqueue(&target, &pending, unix_now()).await {
                Ok(()) => {
                    eprintln!("queued {} new paths for {target}", pending.len());
                    pending.clear();
                    seen.send_replace(Some(Instant::now()));
                }
                Err(e) => eprintln!("{e} (retrying)"),
            }
        }
        if last_round {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = shutdown.stop_requested() => {}
        }
    }
}

/// Drain passes whenever the store is quiet (or a batch waited too long),
/// until a stop is asked for.
async fn push_loop(
    queue: &Queue,
    options: DrainOptions,
    debounce: Duration,
    mut seen: watch::Receiver<Option<Instant>>,
    shutdown: &Shutdown,
) -> Result<(), QueueError> {
    let tick = debounce.clamp(Duration::from_millis(100), POLL);
    // When the oldest path not yet pushed was seen.
    let mut batch_started: Option<Instant> = None;
    while !shutdown.requested() {
        if seen.has_changed().unwrap_or(false) {
            let _ = seen.borrow_and_update();
            batch_started.get_or_insert_with(Instant::now);
        }
        let last_seen = *seen.borrow();
        let quiet = last_seen.is_none_or(|t| t.elapsed() >= debounce);
        let overdue = batch_started.is_some_and(|t| t.elapsed() >= MAX_BATCH_WAIT);
        if quiet || overdue {
            batch_started = None;
            let report = drain::due_pass(queue, options, shutdown).await?;
            if !report.is_empty() {
                println!("{report}");
            }
            if report.interrupted {
                break;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = shutdown.stop_requested() => {}
        }
    }
    Ok(())
}
