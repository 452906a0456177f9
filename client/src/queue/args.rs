//! `larder queue`'s command line.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::cache_ref::CacheRef;

/// `larder queue …`.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Queue paths (no network, no Nix: for a post-build-hook).
    Push(QueuePushArgs),
    /// Push the queue: every entry once, exit 1 if any failed; or with
    /// --watch, entries as they become due until SIGINT or SIGTERM.
    Drain(DrainArgs),
    /// Show what is pending and what failed.
    Status,
    /// Remove entries without pushing them: the failed ones, or those of
    /// the given store paths (for every cache), or all.
    Drop(DropArgs),
}

/// `larder queue drop`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).multiple(true))]
pub struct DropArgs {
    /// Entries that failed at least once.
    #[arg(long, group = "which")]
    pub failed: bool,
    /// Every entry.
    #[arg(long, group = "which", conflicts_with_all = ["failed", "paths"])]
    pub all: bool,
    /// Entries of these store paths, as `larder queue status` prints them.
    #[arg(group = "which")]
    pub paths: Vec<String>,
}

impl DropArgs {
    /// Whether `entry` is one to drop: failed (with --failed) or of a given
    /// path; with both, an entry must be both.
    pub fn selects(&self, entry: &super::Entry) -> bool {
        if self.all {
            return true;
        }
        let by_state = !self.failed || entry.attempts > 0;
        let by_path = self.paths.is_empty() || self.paths.contains(&entry.path);
        by_state && by_path
    }
}

/// `larder queue push`.
#[derive(Debug, Args)]
#[command(after_help = "The queue is $XDG_STATE_HOME/larder/queue.db (default \
~/.local/state/larder/queue.db, mode 0600).")]
pub struct QueuePushArgs {
    /// The cache, `[SERVER:]CACHE`.
    pub cache: CacheRef,
    /// Store paths, or links to them such as ./result.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// `larder queue drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// Keep running (for a service): push entries as they are queued,
    /// retry failures after their backoff.
    #[arg(long)]
    pub watch: bool,
    /// Uploads in parallel.
    #[arg(short = 'j', long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
}
