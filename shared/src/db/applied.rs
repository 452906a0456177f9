//! Whether a PostgreSQL database already has every migration this binary
//! carries, Larder's and the job queue's, so that a process can start
//! without running the migrators.
//!
//! Each migrator run takes a database-wide advisory lock and checks every
//! migration under it, one process at a time: workers and API replicas
//! started together (`docker compose up --scale worker=N`, a rollout) queued
//! behind each other for that, though nothing was to be applied. This check
//! is two plain reads; when anything is missing or differs (a new version,
//! an edited migration, a table not there yet), the migrators run as before
//! and decide.

use std::collections::HashMap;

use sqlx::migrate::Migrator;
use sqlx::{AssertSqlSafe, PgPool, Row};

/// Where apalis-postgres records its own migrations (sqlx's default table
/// name, in apalis's schema). `db::tests` checks this after a real
/// migration, so an apalis upgrade that moves it is caught.
pub(super) const QUEUE_MIGRATIONS_TABLE: &str = "apalis._sqlx_migrations";

/// True when, for each `(migrator, table)`, every up migration is recorded
/// in `table` as applied with the same checksum. False on any error.
pub(super) async fn all_applied(pool: &PgPool, migrators: &[(&Migrator, &str)]) -> bool {
    for (migrator, table) in migrators {
        let sql = format!("SELECT version, checksum FROM {table} WHERE success");
        let Ok(rows) = sqlx::query(AssertSqlSafe(sql)).fetch_all(pool).await else {
            return false;
        };
        let mut applied: HashMap<i64, Vec<u8>> = HashMap::with_capacity(rows.len());
        for row in rows {
            let (Ok(version), Ok(checksum)) = (row.try_get("version"), row.try_get("checksum"))
            else {
                return false;
            };
            applied.insert(version, checksum);
        }
        let current = migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .all(|m| applied.get(&m.version).map(Vec::as_slice) == Some(&*m.checksum));
        if !current {
            return false;
        }
    }
    true
}
