//! Process-wide Prometheus counters and their text, shared by every process
//! that serves `GET /metrics`: `larder-api` (with its in-process workers)
//! and `larder-worker` (`[worker] metrics-listen`). Counters are statics, so
//! a process renders each once however many workers it runs.
//!
//! What is counted lives beside what does the work (storage requests in
//! [`crate::storage::requests`], sealed packs in
//! [`crate::chunk_store::pack_writer`]); jobs and pack moves, done by the
//! worker crate, are counted here because the API process renders them too
//! and the API does not depend on the worker.

pub mod access;
pub mod jobs;
pub mod moves;
mod render;

pub use render::{CONTENT_TYPE, render_process};
