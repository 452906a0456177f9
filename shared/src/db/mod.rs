//! Metadata in PostgreSQL (production) or SQLite (embedded), through one code path.
//!
//! Every query is written once, in SQL both dialects accept (`$n` parameters,
//! `ON CONFLICT`, `RETURNING`), and run through [`crate::on_conn!`], which expands the
//! same body for each backend. A dialect branch, where one is unavoidable,
//! stays inside the one function that needs it. Times are Unix seconds
//! (`BIGINT`), so tests can inject a clock.

mod applied;
pub mod audit;
pub mod build_logs;
pub mod cache_keys;
pub mod caches;
pub mod chunk_claims;
pub mod chunk_gc;
pub mod chunks;
pub mod gc;
pub mod ids;
pub mod layout_epoch;
pub mod leases;
pub mod listings;
pub mod nar_candidates;
pub mod nar_layout;
pub mod nars;
mod object_meta;
pub mod object_refs;
pub mod objects;
pub mod oidc_policies;
pub mod packs;
mod pg_options;
pub mod pins;
pub mod pushed_chunks;
pub mod queue;
pub mod realisations;
pub mod refcounts;
pub mod replaced_frames;
pub mod staged_chunks;
pub mod staging_intents;
pub mod stats;
pub mod tokens;
pub mod uploads;
pub mod verify;

pub use ids::{CacheId, ChunkId, NarId, ObjectId};

use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::{PoolConnection, PoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{PgConnection, PgPool, Postgres, Sqlite, SqliteConnection, SqlitePool, Transaction};

/// Database errors, typed so the API can map them in one place.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The driver failed (connection, constraint, syntax).
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The job queue's own tables could not be set up.
    #[error("job queue setup failed: {0}")]
    Queue(String),
    /// A stored value does not decode (corruption or a bug).
    #[error("corrupt database value in {column}: {message}")]
    Corrupt {
        /// Where.
        column: &'static str,
        /// What.
        message: String,
    },
    /// The URL names neither PostgreSQL nor SQLite.
    #[error("unsupported database URL (expected postgres:// or sqlite:)")]
    UnsupportedUrl,
}

impl DbError {
    /// True for a transaction the database aborted only because it raced
    /// another (PostgreSQL's deadlock detector, `40P01`, or a serialization
    /// failure, `40001`): running it again is the standard remedy.
    pub fn is_transient_conflict(&self) -> bool {
        match self {
            Self::Sqlx(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("40P01" | "40001"))
            }
            _ => false,
        }
    }
}

/// A connection pool of either backend.
#[derive(Clone, Debug)]
pub enum Db {
    /// Production.
    Postgres(PgPool),
    /// Embedded.
    Sqlite(SqlitePool),
}

/// A transaction of either backend.
pub enum Tx {
    /// PostgreSQL transaction.
    Postgres(Transaction<'static, Postgres>),
    /// SQLite transaction.
    Sqlite(Transaction<'static, Sqlite>),
}

/// A pooled connection of either backend, for reads outside a transaction.
pub enum Conn {
    /// PostgreSQL connection.
    Postgres(PoolConnection<Postgres>),
    /// SQLite connection.
    Sqlite(PoolConnection<Sqlite>),
}

/// A borrowed raw connection: what every query function takes, so the same
/// function runs inside or outside a transaction.
pub enum Raw<'a> {
    /// PostgreSQL.
    Postgres(&'a mut PgConnection),
    /// SQLite.
    Sqlite(&'a mut SqliteConnection),
}

/// Runs the same body against whichever backend `raw` holds; `$c` is bound
/// to `&mut PgConnection` or `&mut SqliteConnection`.
#[macro_export]
macro_rules! on_conn {
    ($raw:expr, $c:ident => $body:expr) => {
        match $raw {
            $crate::db::Raw::Postgres($c) => $body,
            $crate::db::Raw::Sqlite($c) => $body,
        }
    };
}

impl Raw<'_> {
    /// The same connection for one more query function, so a function can
    /// run several (in its caller's transaction, if any).
    pub fn reborrow(&mut self) -> Raw<'_> {
        match self {
            Raw::Postgres(c) => Raw::Postgres(c),
            Raw::Sqlite(c) => Raw::Sqlite(c),
        }
    }
}

impl Tx {
    /// The connection to pass to query functions.
    pub fn raw(&mut self) -> Raw<'_> {
        match self {
            Tx::Postgres(t) => Raw::Postgres(t),
            Tx::Sqlite(t) => Raw::Sqlite(t),
        }
    }

    /// Commits; nothing is visible to others before this.
    pub async fn commit(self) -> Result<(), DbError> {
        match self {
            Tx::Postgres(t) => t.commit().await?,
            Tx::Sqlite(t) => t.commit().await?,
        }
        Ok(())
    }
}

impl Conn {
    /// The connection to pass to query functions.
    pub fn raw(&mut self) -> Raw<'_> {
        match self {
            Conn::Postgres(c) => Raw::Postgres(c),
            Conn::Sqlite(c) => Raw::Sqlite(c),
        }
    }
}

/// Migrations live in `migrations/<dialect>/` with shared numbered names, in a
/// table of their own so they never collide with the job queue's.
const MIGRATIONS_TABLE: &str = "larder_migrations";

/// Pool options for every pool Larder opens: sqlx's background reaper off.
///
/// sqlx 0.9.0's reaper (run when `idle-timeout` or `max-lifetime` is set,
/// as they are by default) can spin a core at 100 % forever, and hang the
/// runtime's shutdown, once its idle count underflows in a race between a
/// connection's release and another task's acquire (sqlx issue #3645; the
/// fix, PR #4289, is in no release yet). Seen here as a test process stuck
/// at 100 % CPU after its test had passed. Without the reaper, idle
/// connections stay open; one the server closed is found by the check
/// before each use (`test_before_acquire`, sqlx's default) and replaced.
pub fn pool_options<DB: sqlx::Database>() -> PoolOptions<DB> {
    PoolOptions::new()
        .idle_timeout(None)
        .max_lifetime(None)
        .min_connections(0)
}

impl Db {
    /// Connects to `url` (`postgres://…` or `sqlite:…`).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = pg_options::pg_options(url)?;
            let pool = pool_options::<Postgres>()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await?;
            Ok(Db::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let options = sqlite_options(url)?;
            let pool = pool_options::<Sqlite>()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(60))
                .connect_with(options)
                .await?;
            Ok(Db::Sqlite(pool))
        } else {
            Err(DbError::UnsupportedUrl)
        }
    }

    /// Applies Larder's migrations and sets up the job queue's tables.
    pub async fn migrate(&self) -> Result<(), DbError> {
        match self {
            Db::Postgres(pool) => {
                let mut m = sqlx::migrate!("../migrations/postgres");
                m.dangerous_set_table_name(MIGRATIONS_TABLE);
                // Rolling upgrades: an older binary accepts a schema a newer
                // one has already extended (migrations only add).
                m.set_ignore_missing(true);
                let queue = apalis_postgres::PostgresStorage::<()>::migrations();
                let both = [
                    (&m, MIGRATIONS_TABLE),
                    (&queue, applied::QUEUE_MIGRATIONS_TABLE),
                ];
                if applied::all_applied(pool, &both).await {
                    return Ok(());
                }
                m.run(pool).await?;
                apalis_postgres::PostgresStorage::<()>::setup(pool)
                    .await
                    .map_err(|e| DbError::Queue(e.to_string()))?;
            }
            Db::Sqlite(pool) => {
                let mut m = sqlx::migrate!("../migrations/sqlite");
                m.dangerous_set_table_name(MIGRATIONS_TABLE);
                m.set_ignore_missing(true);
                m.run(pool).await?;
                // apalis' setup switches its connection to `synchronous = OFF`;
                // run it on a throwaway connection so the pool keeps FULL.
                let opts = (*pool.connect_options()).clone();
                let single = pool_options::<Sqlite>()
                    .max_connections(1)
                    .connect_with(opts)
                    .await?;
                apalis_sqlite::SqliteStorage::<()>::setup(&single)
                    .await
                    .map_err(|e| DbError::Queue(e.to_string()))?;
                single.close().await;
            }
        }
        Ok(())
    }

    /// Starts a transaction.
    pub async fn begin(&self) -> Result<Tx, DbError> {
        Ok(match self {
            Db::Postgres(p) => Tx::Postgres(p.begin().await?),
            Db::Sqlite(p) => Tx::Sqlite(p.begin().await?),
        })
    }

    /// Takes a connection from the pool.
    pub async fn conn(&self) -> Result<Conn, DbError> {
        Ok(match self {
            Db::Postgres(p) => Conn::Postgres(p.acquire().await?),
            Db::Sqlite(p) => Conn::Sqlite(p.acquire().await?),
        })
    }

    /// Readiness probe: one round trip.
    pub async fn ping(&self) -> Result<(), DbError> {
        let mut c = self.conn().await?;
        on_conn!(c.raw(), c => sqlx::query("SELECT 1").execute(&mut *c).await.map(|_| ()))?;
        Ok(())
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        match self {
            Db::Postgres(p) => p.close().await,
            Db::Sqlite(p) => p.close().await,
        }
    }
}

fn sqlite_options(url: &str) -> Result<SqliteConnectOptions, DbError> {
    Ok(SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: an acknowledged upload survives power loss, not just a crash.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(true))
}

/// Current Unix time in seconds; the one clock production code reads.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `$start, $start+1, …` for `n` bound values (both dialects accept `$n`).
/// Locks the rows of `table` whose `id` is in `ids`, in ascending id order,
/// in the caller's transaction (`FOR UPDATE`), on PostgreSQL; a no-op on
/// SQLite, whose write transaction holds the whole database. The one place
/// the ascending lock order of docs/gc.md is written in SQL.
pub(crate) async fn lock_rows_in_order<T>(
    raw: Raw<'_>,
    table: &'static str,
    ids: &[T],
) -> Result<(), DbError>
where
    T: Copy + Send + sqlx::Type<Postgres> + for<'q> sqlx::Encode<'q, Postgres>,
{
    let Raw::Postgres(c) = raw else {
        return Ok(());
    };
    if ids.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "SELECT id FROM {table} WHERE id IN ({}) ORDER BY id FOR UPDATE",
        placeholders(1, ids.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(&*sql));
    for id in ids {
        q = q.bind(*id);
    }
    q.fetch_all(&mut *c).await?;
    Ok(())
}

pub(crate) fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A storage key column (staging and upload files), validated as an
/// [`crate::storage::ObjectKey`] when the row is read rather than where the
/// key is used.
pub(crate) fn key_column(
    column: &'static str,
    key: Option<String>,
) -> Result<Option<crate::storage::ObjectKey>, DbError> {
    key.map(crate::storage::ObjectKey::new)
        .transpose()
        .map_err(|e| corrupt(column, e))
}

/// Maps a column decode failure to [`DbError::Corrupt`].
pub(crate) fn corrupt(column: &'static str, e: impl std::fmt::Display) -> DbError {
    DbError::Corrupt {
        column,
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    fn names(dialect: &str) -> BTreeSet<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../migrations")
            .join(dialect);
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// After a real migration, a start finds everything applied and skips
    /// the migrators; this also pins where apalis records its migrations.
    #[tokio::test]
    async fn a_migrated_postgres_database_is_current() {
        use sqlx::Connection;
        let server = "postgres://postgres@127.0.0.1:5432";
        let name = format!(
            "larder_applied_{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (user postgres)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE");
        let db = super::Db::connect(&format!("{server}/{name}"), 2)
            .await
            .expect("connect");
        let super::Db::Postgres(pool) = &db else {
            unreachable!("a postgres:// URL")
        };
        let mut m = sqlx::migrate!("../migrations/postgres");
        m.dangerous_set_table_name(super::MIGRATIONS_TABLE);
        let queue = apalis_postgres::PostgresStorage::<()>::migrations();
        let both = [
            (&m, super::MIGRATIONS_TABLE),
            (&queue, super::applied::QUEUE_MIGRATIONS_TABLE),
        ];
        assert!(!super::applied::all_applied(pool, &both).await, "empty");
        db.migrate().await.expect("migrate");
        assert!(super::applied::all_applied(pool, &both).await, "migrated");
        // One migration missing: not current, so the migrators would run.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {} WHERE version = (SELECT max(version) FROM {})",
            super::applied::QUEUE_MIGRATIONS_TABLE,
            super::applied::QUEUE_MIGRATIONS_TABLE
        )))
        .execute(pool)
        .await
        .expect("forget one");
        assert!(
            !super::applied::all_applied(pool, &both).await,
            "one missing"
        );
        db.close().await;
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&mut admin)
            .await;
    }

    #[test]
    fn both_dialects_have_the_same_numbered_migrations() {
        let pg = names("postgres");
        assert!(!pg.is_empty());
        assert_eq!(pg, names("sqlite"));
    }
}
