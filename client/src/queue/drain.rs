//! Pushing queued entries: `larder queue drain` and the pushing half of
//! `larder watch-store`.
//!
//! A pass takes entries, groups them by target (server and cache), and
//! pushes each group's paths as roots through `larder push`'s machinery
//! (closures, upstream filter, references first, `-j` uploads, progress).
//! A group that pushes cleanly leaves the queue. A failure gets each
//! entry an attempt, the error, and a backoff: when the server cannot be
//! reached or refuses (`PushError::Api`), the whole group; otherwise the
//! group's roots are pushed one by one to find which of them fail. A path
//! no longer in the store (garbage-collected) can never be pushed and is
//! dropped with a warning.
//!
//! Two ways to run passes:
//! - [`once`] (`larder queue drain`): every entry now, backoff ignored
//!   (the user asked), each at most once per run, entries queued meanwhile
//!   included; the caller exits non-zero if any failed (they stay queued).
//! - [`watch`] (`larder queue drain --watch`): forever, entries as they
//!   become due (new ones at once, failed ones after their backoff), until
//!   SIGINT or SIGTERM.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::api::ApiClient;
use crate::config::{self, Config};
use crate::push::{self, PushError, PushOptions, Summary};

use super::shutdown::Shutdown;
use super::{Entry, Queue, QueueError, Target, unix_now};

/// How often `--watch` looks for due entries.
pub const POLL: Duration = Duration::from_secs(1);

/// How passes push.
#[derive(Debug, Clone, Copy)]
pub struct DrainOptions {
    /// Uploads in flight at once.
    pub jobs: usize,
}

/// What passes did, in entries (and, summed over pushes, in paths).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Entries pushed and removed.
    pub pushed: usize,
    /// Entries that failed and stay queued.
    pub failed: usize,
    /// Entries dropped because the path is no longer in the store.
    pub gone: usize,
    /// Whether a second signal cut a push short.
    pub interrupted: bool,
    /// The closure paths, as `larder push` counts them.
    pub paths: Summary,
}

impl Report {
    fn add(&mut self, other: Report) {
        self.pushed += other.pushed;
        self.failed += other.failed;
        self.gone += other.gone;
        self.interrupted |= other.interrupted;
        self.paths += other.paths;
    }

    /// Whether the pass touched any entry.
    pub fn is_empty(&self) -> bool {
        self.pushed + self.failed + self.gone == 0
    }
}

impl fmt::Display for Report {
    /// `larder push`'s summary line, then the queue's.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.paths)?;
        write!(
            f,
            "queue: {} entries pushed, {} failed and stay queued",
            self.pushed, self.failed
        )?;
        if self.gone > 0 {
            write!(f, ", {} dropped (no longer in the store)", self.gone)?;
        }
        Ok(())
    }
}

/// `larder queue drain`: every entry, each at most once, until none is
/// left to try or a stop is asked for.
pub async fn once(
    queue: &Queue,
    options: DrainOptions,
    shutdown: &Shutdown,
) -> Result<Report, QueueError> {
    let mut tried = HashSet::new();
    let mut report = Report::default();
    while !shutdown.requested() && !report.interrupted {
        let entries: Vec<Entry> = queue
            .all()
            .await?
            .into_iter()
            .filter(|e| !tried.contains(&e.id))
            .collect();
        if entries.is_empty() {
            break;
        }
        tried.extend(entries.iter().map(|e| e.id));
        report.add(pass(queue, entries, options, shutdown).await?);
    }
    Ok(report)
}

/// `larder queue drain --watch`: due entries as they come, until a stop
/// is asked for. Prints a report after each pass that did something.
pub async fn watch(
    queue: &Queue,
    options: DrainOptions,
    shutdown: &Shutdown,
) -> Result<Report, QueueError> {
    let mut report = Report::default();
    while !shutdown.requested() && !report.interrupted {
        let done = due_pass(queue, options, shutdown).await?;
        if !done.is_empty() {
            println!("{done}");
        }
        report.add(done);
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = shutdown.stop_requested() => {}
        }
    }
    Ok(report)
}

/// One pass over the entries due now.
pub async fn due_pass(
    queue: &Queue,
    options: DrainOptions,
    shutdown: &Shutdown,
) -> Result<Report, QueueError> {
    let entries = queue.due(unix_now()).await?;
    pass(queue, entries, options, shutdown).await
}

/// Pushes `entries`, group by group, recording the outcome of each.
async fn pass(
    queue: &Queue,
    entries: Vec<Entry>,
    options: DrainOptions,
    shutdown: &Shutdown,
) -> Result<Report, QueueError> {
    let mut groups: BTreeMap<Target, Vec<Entry>> = BTreeMap::new();
    for entry in entries {
        groups.entry(entry.target.clone()).or_default().push(entry);
    }
    let mut report = Report::default();
    for (target, entries) in groups {
        if shutdown.requested() {
            break;
        }
        let (present, gone): (Vec<Entry>, Vec<Entry>) = entries
            .into_iter()
            .partition(|e| std::fs::symlink_metadata(&e.path).is_ok());
        if !gone.is_empty() {
            for e in &gone {
                eprintln!("dropping {} from the queue: no longer in the store", e.path);
            }
            queue.remove(&ids(&gone)).await?;
            report.gone += gone.len();
        }
        if present.is_empty() {
            continue;
        }
        tokio::select! {
            done = push_group(queue, &target, &present, options) => report.add(done?),
            () = shutdown.forced() => {
                eprintln!("{target}: push abandoned; its paths stay queued");
                report.interrupted = true;
                break;
            }
        }
    }
    Ok(report)
}

fn ids(entries: &[Entry]) -> Vec<i64> {
    entries.iter().map(|e| e.id).collect()
}

/// Pushes one target's entries and records the outcome in the queue.
async fn push_group(
    queue: &Queue,
    target: &Target,
    entries: &[Entry],
    options: DrainOptions,
) -> Result<Report, QueueError> {
    let mut report = Report::default();
    eprintln!("{target}: pushing {} queued paths", entries.len());
    let api = match api_for(target) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{target}: {e}");
            queue
                .fail(&ids(entries), &e.to_string(), unix_now())
                .await?;
            report.failed = entries.len();
            return Ok(report);
        }
    };
    let outcome = push_roots(&api, target, entries, options).await;
    // The group's counts stand when it got that far; the one-by-one
    // pushes below only tell which roots fail.
    if let Ok(summary) = &outcome {
        report.paths += *summary;
    }
    match outcome {
        Err(PushError::Api(e)) => {
            eprintln!("{target}: {e}");
            queue
                .fail(&ids(entries), &e.to_string(), unix_now())
                .await?;
            report.failed = entries.len();
        }
        Ok(summary) if summary.failed > 0 && entries.len() > 1 => {
            report.add(one_by_one(queue, &api, target, entries, options, true).await?);
        }
        Err(_) if entries.len() > 1 => {
            report.add(one_by_one(queue, &api, target, entries, options, false).await?);
        }
        outcome => {
            let mut done = record(queue, entries, outcome).await?;
            done.paths = Summary::default();
            report.add(done);
        }
    }
    Ok(report)
}

/// Pushes each entry on its own and records its outcome; counts its paths
/// unless the group's counts already stand.
async fn one_by_one(
    queue: &Queue,
    api: &ApiClient,
    target: &Target,
    entries: &[Entry],
    options: DrainOptions,
    counted: bool,
) -> Result<Report, QueueError> {
    let mut report = Report::default();
    for (i, entry) in entries.iter().enumerate() {
        let one = std::slice::from_ref(entry);
        let outcome = push_roots(api, target, one, options).await;
        if let Err(PushError::Api(e)) = &outcome {
            // The server went away: the rest would only wait for it too.
            eprintln!("{target}: {e}");
            let rest = &entries[i..];
            queue.fail(&ids(rest), &e.to_string(), unix_now()).await?;
            report.failed += rest.len();
            break;
        }
        let mut done = record(queue, one, outcome).await?;
        if counted {
            done.paths = Summary::default();
        }
        report.add(done);
    }
    Ok(report)
}

/// The API of the target's server, as the configuration has it now (not
/// through `Session`, whose error is the whole command's).
fn api_for(target: &Target) -> Result<ApiClient, QueueError> {
    let config = Config::load(&config::default_path()?)?;
    let (_, settings) = config.server(Some(&target.server))?;
    let token = settings.resolve_token(|var| std::env::var(var).ok())?;
    Ok(ApiClient::new(&settings.endpoint, token)?)
}

/// Records the outcome of pushing `entries` as one batch.
async fn record(
    queue: &Queue,
    entries: &[Entry],
    outcome: Result<Summary, PushError>,
) -> Result<Report, QueueError> {
    let mut report = Report::default();
    if let Ok(s) = &outcome {
        report.paths = *s;
    }
    let error = match outcome {
        Ok(s) if s.failed == 0 => {
            queue.remove(&ids(entries)).await?;
            report.pushed = entries.len();
            return Ok(report);
        }
        Ok(s) => format!("{} paths of the closure failed to upload", s.failed),
        Err(e) => e.to_string(),
    };
    for e in entries {
        eprintln!("failed {}: {error}", e.path);
    }
    queue.fail(&ids(entries), &error, unix_now()).await?;
    report.failed = entries.len();
    Ok(report)
}

/// `larder push` of the entries' paths, with closures and the upstream
/// filter.
async fn push_roots(
    api: &ApiClient,
    target: &Target,
    entries: &[Entry],
    options: DrainOptions,
) -> Result<Summary, PushError> {
    let push = PushOptions {
        paths: entries.iter().map(|e| PathBuf::from(&e.path)).collect(),
        closure: true,
        stdin: false,
        jobs: options.jobs.max(1),
        ignore_upstream_filter: false,
        replace: false,
        whole_nars: false,
    };
    push::run(api, &target.cache, &push).await
}
