//! Jobs this process ran, by kind and outcome: queued jobs (`ingest`) and
//! periodic tasks (`garbage-collection`, `sweep`, …), so an operator sees
//! work failing and retrying without reading logs; and the jobs running
//! now against the slots the process has for them, so a worker that is
//! always full shows it needs company.

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

/// `kind` → jobs of it running in this process now.
static IN_FLIGHT: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());
/// Queue kind → how many of its jobs this process runs at once.
static SLOTS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// One job of a kind running; counted in [`in_flight`] until dropped.
///
/// The decrement is in `Drop` so that a job that fails, panics or is
/// cancelled at shutdown still leaves the gauge: it touches only this
/// process's memory, nothing that could be lost in a crash.
#[derive(Debug)]
#[must_use = "the job counts as running only while this is held"]
pub struct Running {
    kind: &'static str,
}

/// Counts a job of `kind` as running until the returned guard is dropped.
pub fn start(kind: &'static str) -> Running {
    let mut map = IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner());
    *map.entry(kind).or_default() += 1;
    Running { kind }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut map = IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(self.kind) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Records that this process runs up to `slots` jobs of `kind` at once
/// (its worker's concurrency for that queue).
pub fn set_slots(kind: &'static str, slots: u64) {
    SLOTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(kind, slots);
}

/// `(kind, running)` for every kind that has run here, by kind.
pub fn in_flight() -> Vec<(&'static str, u64)> {
    let map = IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner());
    map.iter().map(|(&k, &n)| (k, n)).collect()
}

/// `(kind, slots)` for every queue this process works, by kind.
pub fn slots() -> Vec<(&'static str, u64)> {
    let map = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
    map.iter().map(|(&k, &n)| (k, n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(kind: &str) -> u64 {
        in_flight()
            .into_iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| n)
    }

    #[test]
    fn a_job_counts_while_its_guard_lives() {
        assert_eq!(running("in-flight-test"), 0);
        let a = start("in-flight-test");
        let b = start("in-flight-test");
        assert_eq!(running("in-flight-test"), 2);
        drop(a);
        assert_eq!(running("in-flight-test"), 1);
        // A job that panics still leaves the gauge.
        let panicked = std::panic::catch_unwind(|| {
            let _running = start("in-flight-test");
            panic!("job failed");
        });
        assert!(panicked.is_err());
        assert_eq!(running("in-flight-test"), 1);
        drop(b);
        assert_eq!(running("in-flight-test"), 0);
    }
}
