//! New valid paths, as Nix's own database records them.
//!
//! Nix registers every path it builds, substitutes or adds in table
//! `ValidPaths` of `$NIX_STATE_DIR/db/db.sqlite` (default
//! `/nix/var/nix/db/db.sqlite`), whose `id` is `AUTOINCREMENT`: ids are
//! never reused, and since SQLite has one writer at a time, a path with a
//! lower id is never committed after one with a higher id is visible. So
//! "paths with an id above the last one seen" is exactly "registered
//! since". Watching the store directory with inotify instead would see
//! outputs before they are valid (Nix writes, then registers) and miss
//! nothing more, so polling this table is the reliable choice. The file
//! is opened read-only and only read.

use std::path::{Path, PathBuf};

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions as _, Connection as _};

/// Most rows read per poll, so a huge `--all-paths` start stays bounded.
const BATCH: i64 = 10_000;

/// Why Nix's database could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading Nix's database {}: {source}", path.display())]
pub struct NixDbError {
    /// The database file.
    pub path: PathBuf,
    /// What SQLite said.
    pub source: sqlx::Error,
}

/// `$NIX_STATE_DIR/db/db.sqlite`, as Nix itself finds it.
pub fn default_path() -> PathBuf {
    let state = std::env::var_os("NIX_STATE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/nix/var/nix"));
    state.join("db").join("db.sqlite")
}

/// A read-only view of `ValidPaths`, remembering the last id seen.
pub struct NixDb {
    path: PathBuf,
    conn: Option<SqliteConnection>,
    last_id: i64,
}

impl NixDb {
    /// Watches `path` for paths registered from now on (or, with
    /// `from_start`, every path). A database that does not exist yet
    /// (Nix never ran) is empty: everything it will hold is new.
    pub async fn open(path: &Path, from_start: bool) -> Result<Self, NixDbError> {
        let mut db = Self {
            path: path.to_owned(),
            conn: None,
            last_id: 0,
        };
        if !from_start && db.path.exists() {
            let max: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM ValidPaths")
                .fetch_one(db.conn().await?)
                .await
                .map_err(|e| db.error(e))?;
            db.last_id = max.unwrap_or(0);
        }
        Ok(db)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id after which paths count as new.
    pub fn last_id(&self) -> i64 {
        self.last_id
    }

    fn error(&self, source: sqlx::Error) -> NixDbError {
        NixDbError {
            path: self.path.clone(),
            source,
        }
    }

    async fn conn(&mut self) -> Result<&mut SqliteConnection, NixDbError> {
        if self.conn.is_none() {
            let conn = SqliteConnectOptions::new()
                .filename(&self.path)
                .read_only(true)
                .create_if_missing(false)
                .connect()
                .await
                .map_err(|e| self.error(e))?;
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or_else(|| NixDbError {
            path: self.path.clone(),
            source: sqlx::Error::PoolClosed,
        })
    }

    /// Paths registered since the last call, in registration order. A
    /// failed read drops the connection (a reopen may succeed: the file
    /// may have been created or replaced) and loses nothing: the ids
    /// were not consumed.
    pub async fn poll(&mut self) -> Result<Vec<String>, NixDbError> {
        if self.conn.is_none() && !self.path.exists() {
            return Ok(Vec::new());
        }
        let last_id = self.last_id;
        let result: Result<Vec<(i64, String)>, sqlx::Error> = match self.conn().await {
            Ok(conn) => {
                sqlx::query_as("SELECT id, path FROM ValidPaths WHERE id > ?1 ORDER BY id LIMIT ?2")
                    .bind(last_id)
                    .bind(BATCH)
                    .fetch_all(conn)
                    .await
            }
            Err(e) => Err(e.source),
        };
        let rows = match result {
            Ok(rows) => rows,
            Err(e) => {
                if let Some(conn) = self.conn.take() {
                    let _ = conn.close().await;
                }
                return Err(self.error(e));
            }
        };
        if let Some((id, _)) = rows.last() {
            self.last_id = *id;
        }
        Ok(rows.into_iter().map(|(_, path)| path).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::sqlite::SqliteJournalMode;

    /// A database shaped like Nix's (its `ValidPaths` columns), in WAL
    /// mode as Nix keeps it, written by a connection of its own.
    async fn nix_writer(path: &Path) -> SqliteConnection {
        let mut conn = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .connect()
            .await
            .unwrap();
        sqlx::query(
            "CREATE TABLE ValidPaths (id integer primary key autoincrement not null,
             path text unique not null, hash text not null, registrationTime integer not null,
             deriver text, narSize integer, ultimate integer, sigs text, ca text)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn
    }

    async fn register(conn: &mut SqliteConnection, name: &str) {
        sqlx::query("INSERT INTO ValidPaths (path, hash, registrationTime) VALUES (?1, 'h', 0)")
            .bind(format!("/nix/store/{name}"))
            .execute(conn)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn sees_only_paths_registered_after_opening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let mut nix = nix_writer(&path).await;
        register(&mut nix, "a").await;
        register(&mut nix, "b").await;

        let mut db = NixDb::open(&path, false).await.unwrap();
        assert_eq!(db.last_id(), 2);
        assert!(db.poll().await.unwrap().is_empty());
        register(&mut nix, "c").await;
        register(&mut nix, "d").await;
        assert_eq!(db.poll().await.unwrap(), ["/nix/store/c", "/nix/store/d"]);
        assert!(db.poll().await.unwrap().is_empty());

        let mut all = NixDb::open(&path, true).await.unwrap();
        assert_eq!(all.poll().await.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn a_database_created_later_is_all_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let mut db = NixDb::open(&path, false).await.unwrap();
        assert!(db.poll().await.unwrap().is_empty());
        let mut nix = nix_writer(&path).await;
        register(&mut nix, "first").await;
        assert_eq!(db.poll().await.unwrap(), ["/nix/store/first"]);
    }
}
