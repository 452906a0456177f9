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

/// Enqueues ingest jobs on the caller's connection (use a transaction).
pub async fn enqueue_ingest(raw: Raw<'_>, nar_ids: &[NarId]) -> Result<(), DbError> {
    let jobs: Vec<IngestNar> = nar_ids.iter().map(|&nar_id| IngestNar { nar_id }).collect();
    enqueue(raw, &jobs).await
}

/// Enqueues `jobs` on the caller's connection (use a transaction, so the
/// jobs exist exactly when the work they name does).
pub async fn enqueue<J: Job>(raw: Raw<'_>, jobs: &[J]) -> Result<(), DbError> {
    let mut payloads = Vec::with_capacity(jobs.len());
    for job in jobs {
        let bytes = serde_json::to_vec(job).map_err(|e| DbError::Queue(e.to_string()))?;
        payloads.push(bytes);
    }
    let build = |args: Vec<u8>| {
        apalis_core::task::builder::TaskBuilder::new(args)
            .max_attempts(MAX_ATTEMPTS)
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
}
