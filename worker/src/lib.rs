//! larder-worker: runs the jobs that API servers enqueue (ingest), and the
//! periodic maintenance (sweeper). Used by the `larder-worker` binary and by
//! `larder-api` for its in-process workers.

pub mod chunk_deletion;
pub mod closure;
pub mod compaction;
pub mod gc_dry_run;
pub mod gc_lease;
pub mod jobs;
pub mod pack_mover;
pub mod periodic;
pub mod queue;
pub mod recompress;
pub mod repack;
pub mod runner;
pub mod services;
pub mod sweeper;
mod write_intents;

pub use runner::run;
pub use services::Services;
