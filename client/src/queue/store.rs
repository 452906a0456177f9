//! The queue file: one SQLite table of store paths waiting to be pushed.
//!
//! Written by `larder queue push` from Nix's `post-build-hook`, often by
//! several builds at once, so: WAL (readers never block the writer),
//! a busy timeout (writers wait for each other instead of failing), write
//! transactions that take the write lock first (`BEGIN IMMEDIATE`, which
//! the busy timeout covers), and `synchronous = FULL` (a path the hook
//! acknowledged survives a power loss). The file is created mode 0600 in
//! a 0700 directory: it names the paths the user builds.
//!
//! An entry is the unit of retry: (server, cache, path), with the attempts
//! so far, the last error and when it is next due. An entry is deleted
//! only once its push succeeded, so a crash or a shutdown in the middle of
//! a push leaves it queued.

use std::fmt;
use std::fs;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::Row as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use larder_core::CacheName;

use super::backoff;
use crate::config::ConfigError;
use crate::files::{FileError, PRIVATE_MODE};
use crate::nix::NixError;

/// How long a writer waits for another (a burst of post-build hooks).
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The schema, idempotent: every opener runs it.
const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS entries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        server TEXT NOT NULL,
        cache TEXT NOT NULL,
        path TEXT NOT NULL,
        enqueued_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        next_attempt_at INTEGER NOT NULL,
        UNIQUE (server, cache, path)
    )",
    "CREATE INDEX IF NOT EXISTS entries_due ON entries (next_attempt_at)",
];

/// Why the queue could not be used.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Neither `$XDG_STATE_HOME` nor `$HOME` is set to an absolute path.
    #[error("cannot locate the state directory: set XDG_STATE_HOME or HOME")]
    NoStateDir,
    /// Creating the file or its directory failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// SQLite failed.
    #[error("queue {}: {source}", path.display())]
    Db {
        /// The queue file.
        path: PathBuf,
        /// What SQLite said.
        source: sqlx::Error,
    },
    /// A row that does not hold a valid entry (edited by hand?).
    #[error("queue {}: entry {id} is invalid: {reason}", path.display())]
    Corrupt {
        /// The queue file.
        path: PathBuf,
        /// The row.
        id: i64,
        /// What is wrong.
        reason: String,
    },
    /// The configuration names no such server, or cannot be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A path argument is not a store path.
    #[error(transparent)]
    Nix(#[from] NixError),
    /// The HTTP client could not be set up.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    /// SIGINT and SIGTERM could not be caught.
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
}

/// Where queued paths go: a server (by its configuration name) and a cache.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    /// The server's name in the client configuration, resolved when the
    /// path was queued (a later change of default does not redirect it).
    pub server: String,
    /// The cache.
    pub cache: CacheName,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.server, self.cache)
    }
}

/// One queued path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Row id; increases with enqueue order.
    pub id: i64,
    /// Where it goes.
    pub target: Target,
    /// The absolute store path.
    pub path: String,
    /// Unix seconds when first queued.
    pub enqueued_at: i64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Unix seconds from which it is due.
    pub next_attempt_at: i64,
}

/// An open queue file.
#[derive(Debug, Clone)]
pub struct Queue {
    pool: SqlitePool,
    path: PathBuf,
}

/// Current Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Queue {
    /// Opens `path`, creating it (mode 0600, directory 0700) and its table
    /// if needed.
    pub async fn open(path: &Path) -> Result<Self, QueueError> {
        create_private(path)?;
        // Openers racing on a new file can be refused at once while one of
        // them switches it to WAL (SQLite does not call the busy handler
        // there): such an open is retried until the busy timeout.
        let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match Self::open_once(path).await {
                Err(QueueError::Db { source, .. })
                    if is_busy(&source) && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                result => return result,
            }
        }
    }

    async fn open_once(path: &Path) -> Result<Self, QueueError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT);
        let queue = Self {
            // No idle reaper: sqlx 0.9.0's can spin a core forever (sqlx
            // issue #3645; see larder_shared::db::pool_options).
            pool: SqlitePoolOptions::new()
                .idle_timeout(None)
                .max_lifetime(None)
                .max_connections(2)
                .connect_with(options)
                .await
                .map_err(|source| QueueError::Db {
                    path: path.to_owned(),
                    source,
                })?,
            path: path.to_owned(),
        };
        // Under the write lock: a `CREATE … IF NOT EXISTS` that read the
        // schema before another opener created the table would have to
        // upgrade a stale read to a write, which SQLite refuses at once
        // ("database is locked") instead of waiting the busy timeout.
        let mut tx = queue.write_tx().await?;
        for statement in SCHEMA {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(|e| queue.db(e))?;
        }
        tx.commit().await.map_err(|e| queue.db(e))?;
        Ok(queue)
    }

    /// A transaction holding SQLite's write lock from its start (`BEGIN
    /// IMMEDIATE`): one that reads first and writes later would have to
    /// upgrade its lock, which SQLite refuses at once when another writer
    /// holds it, instead of waiting the busy timeout.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'_, sqlx::Sqlite>, QueueError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.db(e))
    }

    fn db(&self, source: sqlx::Error) -> QueueError {
        QueueError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// Queues `paths` for `target`, due at `now`, in one transaction. A
    /// path already queued for the target becomes due at `now` (asked
    /// again: try it now) and keeps its attempts and error.
    pub async fn enqueue(
        &self,
        target: &Target,
        paths: &[String],
        now: i64,
    ) -> Result<(), QueueError> {
        let mut tx = self.write_tx().await?;
        for path in paths {
            sqlx::query(
                "INSERT INTO entries (server, cache, path, enqueued_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (server, cache, path)
                 DO UPDATE SET next_attempt_at = excluded.next_attempt_at",
            )
            .bind(&target.server)
            .bind(target.cache.as_str())
            .bind(path)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
        }
        tx.commit().await.map_err(|e| self.db(e))
    }

    /// Entries due at `now` (all of them with `now = i64::MAX`), oldest
    /// first.
    pub async fn due(&self, now: i64) -> Result<Vec<Entry>, QueueError> {
        let rows = sqlx::query(
            "SELECT id, server, cache, path, enqueued_at, attempts, last_error, next_attempt_at
             FROM entries WHERE next_attempt_at <= ?1 ORDER BY id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        rows.iter().map(|r| self.entry(r)).collect()
    }

    /// Every entry, oldest first.
    pub async fn all(&self) -> Result<Vec<Entry>, QueueError> {
        self.due(i64::MAX).await
    }

    /// Removes entries (pushed, or dropped by `larder queue drop`).
    pub async fn remove(&self, ids: &[i64]) -> Result<(), QueueError> {
        let mut tx = self.write_tx().await?;
        for id in ids {
            sqlx::query("DELETE FROM entries WHERE id = ?1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
        }
        tx.commit().await.map_err(|e| self.db(e))
    }

    /// Records a failed attempt of each entry: one more attempt, the error,
    /// and the next attempt after [`backoff::delay`] from `now`.
    pub async fn fail(&self, ids: &[i64], error: &str, now: i64) -> Result<(), QueueError> {
        let mut tx = self.write_tx().await?;
        for id in ids {
            let attempts: Option<i64> = sqlx::query_scalar(
                "UPDATE entries SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1
                 RETURNING attempts",
            )
            .bind(id)
            .bind(error)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
            let Some(attempts) = attempts else { continue };
            let wait = backoff::delay(u32::try_from(attempts).unwrap_or(u32::MAX));
            let wait = i64::try_from(wait.as_secs()).unwrap_or(i64::MAX);
            sqlx::query("UPDATE entries SET next_attempt_at = ?2 WHERE id = ?1")
                .bind(id)
                .bind(now.saturating_add(wait))
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
        }
        tx.commit().await.map_err(|e| self.db(e))
    }

    /// Closes the file (checkpointing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn entry(&self, r: &SqliteRow) -> Result<Entry, QueueError> {
        let id: i64 = r.try_get("id").map_err(|e| self.db(e))?;
        let corrupt = |reason: String| QueueError::Corrupt {
            path: self.path.clone(),
            id,
            reason,
        };
        let cache: String = r.try_get("cache").map_err(|e| self.db(e))?;
        let attempts: i64 = r.try_get("attempts").map_err(|e| self.db(e))?;
        Ok(Entry {
            id,
            target: Target {
                server: r.try_get("server").map_err(|e| self.db(e))?,
                cache: cache
                    .parse()
                    .map_err(|e| corrupt(format!("cache {cache:?}: {e}")))?,
            },
            path: r.try_get("path").map_err(|e| self.db(e))?,
            enqueued_at: r.try_get("enqueued_at").map_err(|e| self.db(e))?,
            attempts: u32::try_from(attempts)
                .map_err(|_| corrupt(format!("attempts {attempts}")))?,
            last_error: r.try_get("last_error").map_err(|e| self.db(e))?,
            next_attempt_at: r.try_get("next_attempt_at").map_err(|e| self.db(e))?,
        })
    }
}

/// Creates `path` mode 0600 (and its directory 0700) if missing, and
/// narrows an existing file's mode: SQLite would create it with the umask,
/// and its `-wal` and `-shm` files copy the database file's mode.
/// SQLITE_BUSY (5) or one of its extended codes.
fn is_busy(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| c & 0xff == 5)
}

fn create_private(path: &Path) -> Result<(), FileError> {
    let err = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| FileError {
            action,
            path,
            source,
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err("creating directory", dir))?;
    }
    let file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(PRIVATE_MODE)
        .open(path)
        .map_err(err("creating", path))?;
    file.set_permissions(fs::Permissions::from_mode(PRIVATE_MODE))
        .map_err(err("setting permissions of", path))
}
