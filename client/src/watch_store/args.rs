//! `larder watch-store`'s command line.

use clap::Args;

use crate::cache_ref::CacheRef;

/// `larder watch-store`.
#[derive(Debug, Args)]
#[command(
    after_help = "Polls Nix's database ($NIX_STATE_DIR/db/db.sqlite, default \
/nix/var/nix/db/db.sqlite, read-only) every second for paths registered after the start \
(.drv files aside), queues them in the `larder queue` file, and pushes them with their \
closures once the store has been quiet for --debounce; failures are retried with backoff, \
other queued entries are pushed too. SIGINT or SIGTERM: the push in flight finishes (a \
second signal abandons it), queued paths stay queued for the next run, exit status 0."
)]
pub struct WatchStoreArgs {
    /// The cache, `[SERVER:]CACHE`.
    pub cache: CacheRef,
    /// Uploads in parallel.
    #[arg(short = 'j', long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// Push once no new path appeared for this long (e.g. `2s`, `500ms`).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub debounce: std::time::Duration,
    /// Also queue every path already in the store when starting.
    #[arg(long)]
    pub all_paths: bool,
}
