//! Looking behind the API: rows, job queue entries and stored objects, to
//! check what a request or a job left behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use sqlx::AssertSqlSafe;

use larder_shared::db::Db;
use larder_shared::db::nars::{self, NarRecord};
use larder_shared::jobs::INGEST_QUEUE;

use super::nar::TestNar;
use super::{Backend, Store, TestApp};

impl TestApp {
    // --- database -------------------------------------------------------------

    /// One integer from a query (`COUNT(*)`, `SUM(…)` cast to BIGINT).
    pub async fn scalar(&self, sql: &str) -> i64 {
        let sql = AssertSqlSafe(sql.to_owned());
        match &self.state.db {
            Db::Postgres(p) => sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await,
            Db::Sqlite(p) => sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await,
        }
        .unwrap_or_else(|e| panic!("query failed: {e}"))
    }

    /// Rows in `table`.
    pub async fn count(&self, table: &str) -> i64 {
        self.scalar(&format!("SELECT COUNT(*) FROM {table}")).await
    }

    /// Runs a statement.
    pub async fn execute(&self, sql: &str) {
        let sql = AssertSqlSafe(sql.to_owned());
        match &self.state.db {
            Db::Postgres(p) => sqlx::query(sql).execute(p).await.map(drop),
            Db::Sqlite(p) => sqlx::query(sql).execute(p).await.map(drop),
        }
        .unwrap_or_else(|e| panic!("statement failed: {e}"));
    }

    /// Ids of NARs in state `staged`.
    pub async fn staged_nar_ids(&self) -> Vec<larder_shared::db::NarId> {
        let sql = "SELECT id FROM nars WHERE state = 'staged' ORDER BY id";
        match &self.state.db {
            Db::Postgres(p) => sqlx::query_scalar(sql).fetch_all(p).await,
            Db::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(p).await,
        }
        .expect("listing staged NARs")
    }

    /// The `nars` row of this NAR, which must exist.
    pub async fn nar_record(&self, nar: &TestNar) -> NarRecord {
        let mut conn = self.state.db.conn().await.expect("connection");
        nars::find_by_hash(conn.raw(), &nar.nar_hash)
            .await
            .expect("query")
            .unwrap_or_else(|| panic!("no nars row for {}", nar.base_name))
    }

    /// The NAR's chunk count (`nars.num_chunks`, checked against its list).
    pub async fn num_chunks(&self, nar: &TestNar) -> i64 {
        let rec = self.nar_record(nar).await;
        let n = self
            .scalar(&format!(
                "SELECT num_chunks FROM nars WHERE id = {}",
                rec.id
            ))
            .await;
        assert_eq!(n, rec.chunk_ids.len() as i64, "num_chunks vs chunk_list");
        n
    }

    /// Σ `refcount` over all chunks.
    pub async fn total_refcount(&self) -> i64 {
        self.scalar("SELECT CAST(COALESCE(SUM(refcount), 0) AS BIGINT) FROM chunks")
            .await
    }

    // --- job queue ------------------------------------------------------------

    fn jobs_table(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "apalis.jobs",
            Backend::Sqlite => "Jobs",
        }
    }

    /// Ingest jobs in the apalis queue (any status).
    pub async fn ingest_jobs(&self) -> i64 {
        let table = self.jobs_table();
        self.scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE job_type = '{INGEST_QUEUE}'"
        ))
        .await
    }

    /// Deletes every ingest job: what a lost job looks like.
    pub async fn lose_ingest_jobs(&self) {
        let table = self.jobs_table();
        self.execute(&format!(
            "DELETE FROM {table} WHERE job_type = '{INGEST_QUEUE}'"
        ))
        .await;
    }

    // --- storage --------------------------------------------------------------

    /// Keys of objects under `prefix`, sorted: staged uploads for
    /// `staging/…` (the staging backend), chunk objects otherwise.
    pub async fn object_keys(&self, prefix: &str) -> Vec<String> {
        let backend = if prefix.starts_with("staging/") {
            &self.state.staging
        } else {
            &self.state.storage
        };
        let mut keys: Vec<String> = backend
            .list(prefix)
            .map_ok(|m| m.key.as_str().to_owned())
            .try_collect()
            .await
            .expect("listing storage");
        keys.sort();
        keys
    }

    /// Every file under `dir` of the storage root, temp files included
    /// (the test config sets no `[staging] path`, so staging is there too).
    pub fn files_on_disk(&self, dir: &str) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(p) else {
                return;
            };
            for e in entries.flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.storage_root.join(dir), &mut out);
        out
    }

    /// The file of an object of the local storage backend.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.storage_root.join(key)
    }

    /// Sets an object's modification time `age` into the past.
    pub fn age_object(&self, key: &str, age: Duration) {
        let file = std::fs::File::options()
            .write(true)
            .open(self.storage_root.join(key))
            .expect("object file");
        file.set_modified(SystemTime::now() - age)
            .expect("set mtime");
    }

    /// Asserts no staged copy, finished or half-written, is left, and no
    /// staging intent (docs/gc.md "Staging objects"). On S3, where nothing
    /// half-written is visible, lists `staging/`.
    pub async fn assert_staging_empty(&self) {
        let left: Vec<String> = match self.store {
            Store::Local => self
                .files_on_disk("staging")
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            Store::S3 => self.object_keys("staging/").await,
        };
        assert!(left.is_empty(), "staging is not empty: {left:?}");
        let intents = self.count("staging_intents").await;
        assert_eq!(intents, 0, "staging intents are left");
    }

    /// Asserts the chunk store holds each chunk once and every row's bytes
    /// exist: one object per chunk stored on its own, one pack object per
    /// `packs` row, each packed row's pack recorded, and every pack's live
    /// counts equal to the rows located in it. Returns the number of chunks.
    pub async fn assert_chunk_store_consistent(&self) -> i64 {
        let rows = self.count("chunks").await;
        let own = self
            .scalar("SELECT COUNT(*) FROM chunks WHERE pack_id IS NULL")
            .await;
        let objects = self.object_keys("chunks/").await;
        assert_eq!(
            objects.len() as i64,
            own,
            "chunk objects vs unpacked chunk rows"
        );
        let dups = self
            .scalar("SELECT COUNT(*) FROM (SELECT chunk_hash FROM chunks GROUP BY chunk_hash HAVING COUNT(*) > 1) d")
            .await;
        assert_eq!(dups, 0, "duplicate chunk rows");
        let homeless = self
            .scalar("SELECT COUNT(*) FROM chunks c WHERE c.pack_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM packs p WHERE p.id = c.pack_id)")
            .await;
        assert_eq!(homeless, 0, "packed chunk rows whose pack has no row");
        let drifted = self
            .scalar(
                "SELECT COUNT(*) FROM packs p WHERE p.live_chunks <> (SELECT COUNT(*) FROM chunks c WHERE c.pack_id = p.id)
                 OR p.live_bytes <> (SELECT COALESCE(SUM(c.file_size), 0) FROM chunks c WHERE c.pack_id = p.id)",
            )
            .await;
        assert_eq!(drifted, 0, "packs whose live counts differ from their rows");
        let pack_objects = self.object_keys("packs/").await;
        let pack_rows = self.count("packs").await;
        assert!(
            pack_objects.len() as i64 >= pack_rows,
            "{pack_rows} pack rows but {} pack objects",
            pack_objects.len()
        );
        rows
    }
}
