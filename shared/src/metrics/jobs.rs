//! Jobs this process ran, by kind and outcome: queued jobs (`ingest`) and
//! periodic tasks (`garbage-collection`, `sweep`, …), so an operator sees
//! work failing and retrying without reading logs.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// How a job run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// It did its work.
    Ok,
    /// It found nothing to do (an ingest of a NAR already ingested).
    Skipped,
    /// It failed; a queued job is retried, a periodic task runs again later.
    Error,
}

impl Outcome {
    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Skipped => "skipped",
            Outcome::Error => "error",
        }
    }
}

/// `(kind, outcome)` → runs. Kinds are the static names of jobs and tasks.
static RUNS: Mutex<BTreeMap<(&'static str, Outcome), u64>> = Mutex::new(BTreeMap::new());

/// Records one run of `kind`.
pub fn record(kind: &'static str, outcome: Outcome) {
    let mut runs = RUNS.lock().unwrap_or_else(|p| p.into_inner());
    *runs.entry((kind, outcome)).or_default() += 1;
}

/// Every counter, ordered by kind then outcome.
pub fn snapshot() -> Vec<(&'static str, Outcome, u64)> {
    let runs = RUNS.lock().unwrap_or_else(|p| p.into_inner());
    runs.iter().map(|(&(k, o), &n)| (k, o, n)).collect()
}

/// Runs of `kind` that ended with `outcome` (tests).
pub fn count(kind: &'static str, outcome: Outcome) -> u64 {
    let runs = RUNS.lock().unwrap_or_else(|p| p.into_inner());
    runs.get(&(kind, outcome)).copied().unwrap_or(0)
}
