//! The job queue's depth, read from apalis's own table (`apalis.jobs` on
//! PostgreSQL, `Jobs` on SQLite): an operator's signal to add workers.
//! Nothing else here reads or writes apalis's tables; enqueueing is
//! [`crate::jobs`].

use sqlx::Row;

use super::{DbError, Raw};
use crate::on_conn;

/// Jobs waiting to be picked up, per queue (apalis's `job_type`, e.g.
/// [`crate::jobs::INGEST_QUEUE`]), sorted by queue. A waiting job is
/// `Pending`, or `Failed` with attempts left (it runs again); jobs being run
/// are the workers' `larder_jobs_in_flight`. The condition is apalis's own
/// fetch predicate, which its partial index covers on PostgreSQL, so the
/// count never reads the finished jobs the table keeps.
pub async fn pending_jobs(raw: Raw<'_>) -> Result<Vec<(String, i64)>, DbError> {
    const WAITING: &str = "(status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts))";
    let sql = match &raw {
        Raw::Postgres(_) => format!(
            "SELECT job_type, COUNT(*) AS n FROM apalis.jobs WHERE {WAITING} GROUP BY job_type ORDER BY job_type"
        ),
        Raw::Sqlite(_) => format!(
            "SELECT job_type, COUNT(*) AS n FROM Jobs WHERE {WAITING} GROUP BY job_type ORDER BY job_type"
        ),
    };
    on_conn!(raw, c => {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *c).await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>("job_type")?, r.try_get::<i64, _>("n")?)))
            .collect()
    })
}
