//! Job payloads and enqueueing. Payloads carry ids only; handlers re-read
//! state and skip work already done, so every job may run twice.
//!
//! Jobs are enqueued on the caller's connection, inside the transaction that
//! records the work, so a crash can never separate the two. The sweeper
//! (`larder-worker`) still re-enqueues staged NARs whose job went missing.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::db::{DbError, NarId, Raw};

/// Queue of [`IngestNar`]; persisted name, never change it.
pub const INGEST_QUEUE: &str = "larder.ingest-nar";

/// Attempts before apalis gives up on a job (the sweeper re-enqueues later).
pub const MAX_ATTEMPTS: usize = 10;

/// Chunk, deduplicate, compress and store one staged NAR.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct IngestNar {
    /// `nars.id`; serialized as the bare number (`{"nar_id": 5}`), as
    /// jobs queued before the type existed were.
    pub nar_id: NarId,
}

/// A queued job's payload: ids only (handlers re-read state), and the
/// persisted name of its queue. Its handler lives in the worker crate.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    /// Queue name as stored in the database; never change it.
    const QUEUE: &'static str;
}

impl Job for IngestNar {
    const QUEUE: &'static str = INGEST_QUEUE;
}

/// A staged NAR to ingest, and its size, which orders the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagedNar {
    /// `nars.id`.
    pub nar_id: NarId,
    /// Its uncompressed size.
    pub nar_size: u64,
}

/// Where an ingest goes in the queue: larger NARs first (apalis takes
/// higher priorities first, then the oldest). A backlog is then finished by
/// many small jobs that spread over every worker, not by one large NAR that
/// one worker ingests while the others sit idle (longest job first, the
/// classic rule for finishing a batch on parallel machines). Classes double
/// from 1 MiB, so NARs of like size stay in arrival order. Under a sustained
/// overload of large NARs, small ones wait; they are served from staging
/// meanwhile, and the staging quota bounds the backlog.
pub fn ingest_priority(nar_size: u64) -> usize {
    const MIB: u64 = 1024 * 1024;
    if nar_size < MIB {
        0
    } else {
        1 + (nar_size / MIB).ilog2() as usize
    }
}

/// Enqueues ingest jobs on the caller's connection (use a transaction).
pub async fn enqueue_ingest(raw: Raw<'_>, nars: &[StagedNar]) -> Result<(), DbError> {
    let jobs: Vec<(IngestNar, usize)> = nars
        .iter()
        .map(|n| (IngestNar { nar_id: n.nar_id }, ingest_priority(n.nar_size)))
        .collect();
    enqueue_prioritized(raw, jobs.iter().map(|(j, p)| (j, *p))).await
}

/// Enqueues `jobs` on the caller's connection (use a transaction, so the
/// jobs exist exactly when the work they name does).
pub async fn enqueue<J: Job>(raw: Raw<'_>, jobs: &[J]) -> Result<(), DbError> {
    enqueue_prioritized(raw, jobs.iter().map(|j| (j, 0))).await
}

/// Enqueues each job with its priority (higher runs first).
async fn enqueue_prioritized<'j, J: Job>(
    raw: Raw<'_>,
    jobs: impl Iterator<Item = (&'j J, usize)>,
) -> Result<(), DbError> {
    let mut payloads = Vec::new();
    for (job, priority) in jobs {
        let bytes = serde_json::to_vec(job).map_err(|e| DbError::Queue(e.to_string()))?;
        payloads.push((bytes, priority));
    }
    let build = |(args, priority): (Vec<u8>, usize)| {
        apalis_core::task::builder::TaskBuilder::new(args)
            .max_attempts(MAX_ATTEMPTS)
            .priority(priority)
            .build()
    };
    match raw {
        Raw::Postgres(c) => {
            let tasks = payloads.into_iter().map(build).collect();
            apalis_postgres::queries::push_tasks(c, J::QUEUE, tasks)
                .await
                .map_err(|e| DbError::Queue(e.to_string()))
        }
        Raw::Sqlite(c) => {
            let tasks: Vec<_> = payloads.into_iter().map(build).collect();
            apalis_sqlite::queries::push_tasks(c, J::QUEUE, &tasks)
                .await
                .map_err(|e| DbError::Queue(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_payload_is_the_bare_id() {
        let job = IngestNar { nar_id: NarId(5) };
        assert_eq!(serde_json::to_string(&job).unwrap(), r#"{"nar_id":5}"#);
        // A job queued before the id was typed still decodes.
        let queued: IngestNar = serde_json::from_str(r#"{"nar_id": 5}"#).unwrap();
        assert_eq!(queued, job);
    }

    #[test]
    fn larger_nars_come_first_in_classes_doubling_from_a_mib() {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(ingest_priority(0), 0);
        assert_eq!(ingest_priority(MIB - 1), 0);
        assert_eq!(ingest_priority(MIB), 1);
        assert_eq!(ingest_priority(2 * MIB - 1), 1);
        assert_eq!(ingest_priority(2 * MIB), 2);
        assert_eq!(ingest_priority(94 * MIB), 7);
        assert_eq!(ingest_priority(u64::MAX), 1 + 43);
    }
}
