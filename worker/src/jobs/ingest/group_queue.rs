//! The process's queue of runs waiting for a group commit
//! (`group_commit`), and what its groups did. Kept apart from the committer
//! so the process's services hold it without depending on the jobs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use super::run_commit::RunCommit;

/// Most runs committed in one transaction.
const MAX_GROUP: usize = 64;

/// The process's queue of runs waiting for a group commit.
#[derive(Default)]
pub struct GroupCommit {
    queue: Mutex<Queue>,
    /// Runs committed in a group of two or more.
    grouped_runs: AtomicU64,
    /// Groups that failed (their runs then committed alone).
    failed_groups: AtomicU64,
}

/// What a process's group commits did since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitCounts {
    /// Runs committed in a group of two or more.
    pub grouped_runs: u64,
    /// Groups that failed whole, whose runs then committed alone.
    pub failed_groups: u64,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    /// A task is committing groups (and takes whatever is pending next).
    running: bool,
}

/// A run waiting in the queue, and where its answer goes.
pub(crate) struct Pending {
    pub(crate) run: RunCommit,
    pub(crate) reply: oneshot::Sender<Reply>,
}

/// What became of a queued run.
pub(crate) enum Reply {
    /// Committed with its group: the NAR is ready.
    Done,
    /// Not committed: the run commits alone.
    Alone(RunCommit),
}

impl GroupCommit {
    /// What this process's group commits did so far.
    pub fn counts(&self) -> GroupCommitCounts {
        GroupCommitCounts {
            grouped_runs: self.grouped_runs.load(Ordering::Relaxed),
            failed_groups: self.failed_groups.load(Ordering::Relaxed),
        }
    }

    /// Queues `run`; true if no committer is running, so the caller must
    /// start one.
    pub(crate) fn push(&self, run: RunCommit, reply: oneshot::Sender<Reply>) -> bool {
        let Ok(mut q) = self.queue.lock() else {
            // Poisoned: the reply is dropped and the run retries.
            return false;
        };
        q.pending.push(Pending { run, reply });
        !std::mem::replace(&mut q.running, true)
    }

    /// The next group (at most [`MAX_GROUP`] runs), or `None` when none is
    /// waiting, which ends the committer's turn.
    pub(crate) fn take(&self) -> Option<Vec<Pending>> {
        let mut q = self.queue.lock().ok()?;
        if q.pending.is_empty() {
            q.running = false;
            return None;
        }
        let n = q.pending.len().min(MAX_GROUP);
        Some(q.pending.drain(..n).collect())
    }

    /// Counts a group's outcome.
    pub(crate) fn record(&self, runs: usize, committed: bool) {
        if !committed {
            self.failed_groups.fetch_add(1, Ordering::Relaxed);
        } else if runs > 1 {
            self.grouped_runs.fetch_add(runs as u64, Ordering::Relaxed);
        }
    }
}
