//! An Attic deployment in miniature (docs/operations.md "Moving from Attic"): Attic's current schema
//! (zhaofengli/attic `server/src/database/migration`, written out as SQL per
//! dialect), its local storage layout (`<root>/<c>/<cc>/<name>.chunk`, one
//! compressed file per chunk, `VERSION` = 1) or S3 storage (one object per
//! chunk, keyed by its name, in the test bucket) and its `server.toml`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::TryStreamExt as _;
use larder_shared::config::S3Config;
use larder_shared::storage::s3::S3Storage;
use larder_shared::storage::{ObjectKey, Storage};

use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, Connection};

use crate::common::Backend;
use crate::common::nar::TestNar;

const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// Attic's schema on PostgreSQL (also the e2e crate's).
const SCHEMA_PG: &str = include_str!("schema-postgres.sql");

const SCHEMA_SQLITE: &str = r#"
CREATE TABLE cache (
  id integer NOT NULL PRIMARY KEY AUTOINCREMENT, name varchar(50) NOT NULL UNIQUE, keypair varchar NOT NULL,
  is_public boolean NOT NULL, store_dir varchar NOT NULL, priority integer NOT NULL,
  upstream_cache_key_names varchar NOT NULL, created_at timestamp_with_timezone_text NOT NULL,
  deleted_at timestamp_with_timezone_text NULL, retention_period integer NULL);
CREATE TABLE nar (
  id integer NOT NULL PRIMARY KEY AUTOINCREMENT, state char(1) NOT NULL, nar_hash varchar NOT NULL,
  nar_size bigint NOT NULL, compression varchar NOT NULL, num_chunks integer NOT NULL,
  completeness_hint boolean NOT NULL DEFAULT TRUE, holders_count integer NOT NULL DEFAULT 0,
  created_at timestamp_with_timezone_text NOT NULL);
CREATE TABLE object (
  id integer NOT NULL PRIMARY KEY AUTOINCREMENT,
  cache_id bigint NOT NULL REFERENCES cache (id) ON DELETE CASCADE,
  nar_id bigint NOT NULL REFERENCES nar (id) ON DELETE CASCADE,
  store_path_hash varchar(32) NOT NULL, store_path varchar NOT NULL, "references" varchar NOT NULL,
  system varchar, deriver varchar, sigs varchar NOT NULL, ca varchar,
  created_at timestamp_with_timezone_text NOT NULL, last_accessed_at timestamp_with_timezone_text NULL,
  created_by varchar NULL);
CREATE UNIQUE INDEX "idx-object-cache-hash" ON object (cache_id, store_path_hash);
CREATE TABLE chunk (
  id integer NOT NULL PRIMARY KEY AUTOINCREMENT, state char(1) NOT NULL, chunk_hash varchar NOT NULL,
  chunk_size bigint NOT NULL, file_hash varchar NULL, file_size bigint NULL,
  compression varchar NOT NULL, remote_file varchar NOT NULL, remote_file_id varchar NOT NULL UNIQUE,
  holders_count integer NOT NULL DEFAULT 0, created_at timestamp_with_timezone_text NOT NULL);
CREATE TABLE chunkref (
  id integer NOT NULL PRIMARY KEY AUTOINCREMENT,
  nar_id bigint NOT NULL REFERENCES nar (id) ON DELETE CASCADE,
  seq integer NOT NULL,
  chunk_id bigint NULL REFERENCES chunk (id) ON DELETE SET NULL,
  chunk_hash varchar NOT NULL, compression varchar NOT NULL);
"#;

/// How a fixture chunk is compressed in Attic's storage.
#[derive(Debug, Clone, Copy)]
pub enum Codec {
    /// `none`.
    None,
    /// `zstd`.
    Zstd,
    /// `br`.
    Brotli,
    /// `xz`.
    Xz,
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Zstd => "zstd",
            Codec::Brotli => "br",
            Codec::Xz => "xz",
        }
    }

    fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Codec::None => data.to_vec(),
            Codec::Zstd => zstd::encode_all(data, 3).expect("zstd"),
            Codec::Brotli => {
                let mut out = Vec::new();
                {
                    let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                    w.write_all(data).expect("brotli");
                }
                out
            }
            Codec::Xz => {
                let mut w = liblzma::write::XzEncoder::new(Vec::new(), 3);
                w.write_all(data).expect("xz");
                w.finish().expect("xz")
            }
        }
    }
}

/// Attic's bucket and the chunk keys written to it so far.
type AtticBucket = (Arc<dyn Storage>, Mutex<Vec<ObjectKey>>);

/// An Attic database and storage directory.
pub struct AtticFixture {
    /// Which dialect.
    pub backend: Backend,
    /// Attic's `[database] url`.
    pub url: String,
    /// Attic's storage root.
    pub storage: PathBuf,
    /// Attic's server.toml.
    pub config_path: PathBuf,
    /// The bucket, when Attic's storage is S3.
    s3: Option<AtticBucket>,
    pg_database: Option<String>,
    sqlite_path: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

fn hex_sha256(data: &[u8]) -> String {
    larder_core::nix::hash::NarHash::digest(data).to_hex()
}

impl AtticFixture {
    /// An empty Attic (schema only) on `backend` with local storage.
    pub async fn new(backend: Backend) -> Self {
        Self::create(backend, false).await
    }

    /// An empty Attic whose storage is the S3 test server's bucket
    /// (`LARDER_TEST_S3_*`, which must be set).
    pub async fn on_s3(backend: Backend) -> Self {
        Self::create(backend, true).await
    }

    async fn create(backend: Backend, on_s3: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("storage dir");
        std::fs::write(storage.join("VERSION"), "1").expect("VERSION");
        let (url, pg_database, sqlite_path) = match backend {
            Backend::Sqlite => {
                let p = dir.path().join("server.db");
                (format!("sqlite://{}?mode=rwc", p.display()), None, Some(p))
            }
            Backend::Postgres => {
                let name = format!("attic_t_{}", ulid::Ulid::new().to_string().to_lowercase());
                let mut admin = sqlx::PgConnection::connect(&format!("{PG_SERVER}/postgres"))
                    .await
                    .expect("PostgreSQL");
                sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                    .execute(&mut admin)
                    .await
                    .expect("CREATE DATABASE");
                let _ = admin.close().await;
                (format!("{PG_SERVER}/{name}"), Some(name), None)
            }
        };
        let config_path = dir.path().join("server.toml");
        let (storage_toml, s3) = if on_s3 {
            let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} must be set"));
            let json = serde_json::json!({
                "bucket": var("LARDER_TEST_S3_BUCKET"),
                "region": "us-east-1",
                "endpoint": var("LARDER_TEST_S3_ENDPOINT"),
                "credentials": {
                    "access_key_id": var("LARDER_TEST_S3_ACCESS_KEY_ID"),
                    "secret_access_key": var("LARDER_TEST_S3_SECRET_ACCESS_KEY"),
                },
            });
            let toml = format!(
                "type = \"s3\"\nregion = \"us-east-1\"\nbucket = {}\nendpoint = {}\n[storage.credentials]\naccess_key_id = {}\nsecret_access_key = {}\n",
                json["bucket"],
                json["endpoint"],
                json["credentials"]["access_key_id"],
                json["credentials"]["secret_access_key"]
            );
            let config: S3Config = serde_json::from_value(json).expect("S3 config");
            let storage: Arc<dyn Storage> = Arc::new(S3Storage::new(&config).expect("S3 client"));
            (toml, Some((storage, Mutex::new(Vec::new()))))
        } else {
            (
                format!("type = \"local\"\npath = \"{}\"\n", storage.display()),
                None,
            )
        };
        let config = format!(
            r#"listen = "[::]:8080"
soft-delete-caches = false
[database]
url = "{url}"
[storage]
{storage_toml}[chunking]
nar-size-threshold = 65536
min-size = 16384
avg-size = 65536
max-size = 262144
[garbage-collection]
default-retention-period = "30 days"
[jwt]
token-bound-issuer = "attic-test"
[jwt.signing]
token-hs256-secret-base64 = "YXR0aWMtdGVzdC1zZWNyZXQtMzItYnl0ZXMtbG9uZyE="
"#
        );
        std::fs::write(&config_path, config).expect("server.toml");
        let f = Self {
            backend,
            url,
            storage,
            config_path,
            s3,
            pg_database,
            sqlite_path,
            _dir: dir,
        };
        f.exec(match backend {
            Backend::Sqlite => SCHEMA_SQLITE,
            Backend::Postgres => SCHEMA_PG,
        })
        .await;
        f
    }

    /// Runs SQL (several statements) against Attic's database, as Attic would.
    pub async fn exec(&self, sql: &str) {
        match self.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("sqlite");
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                    .execute(&mut c)
                    .await
                    .expect("sql");
                let _ = c.close().await;
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.expect("pg");
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                    .execute(&mut c)
                    .await
                    .expect("sql");
                let _ = c.close().await;
            }
        }
    }

    /// A timestamp literal for Unix seconds `t`, as Attic's ORM stores it.
    pub fn ts(&self, t: i64) -> String {
        match self.backend {
            Backend::Postgres => format!("to_timestamp({t})"),
            Backend::Sqlite => {
                format!("strftime('%Y-%m-%dT%H:%M:%S.123456+00:00', {t}, 'unixepoch')")
            }
        }
    }

    /// Adds a cache; returns its id (ids are assigned in insertion order).
    #[allow(clippy::too_many_arguments)]
    pub async fn cache(
        &self,
        id: i64,
        name: &str,
        keypair: &str,
        is_public: bool,
        priority: i64,
        upstream: &[&str],
        retention: Option<i64>,
    ) {
        let upstream = serde_json::to_string(upstream).expect("json");
        let retention = retention.map_or("NULL".into(), |r| r.to_string());
        let public = if is_public { "TRUE" } else { "FALSE" };
        self.exec(&format!(
            "INSERT INTO cache (id, name, keypair, is_public, store_dir, priority, upstream_cache_key_names, created_at, deleted_at, retention_period)
             VALUES ({id}, '{name}', '{keypair}', {public}, '/nix/store', {priority}, '{upstream}', {}, NULL, {retention})",
            self.ts(1_700_000_000)
        ))
        .await;
    }

    /// Writes a chunk file and row; returns the chunk's id.
    pub async fn chunk(&self, id: i64, data: &[u8], codec: Codec) {
        let file = codec.compress(data);
        let name = format!("{}.chunk", ulid::Ulid::new().to_string().to_lowercase());
        let remote = match &self.s3 {
            Some((storage, keys)) => {
                let key: ObjectKey = name.parse().expect("key");
                storage
                    .put_bytes(&key, Bytes::from(file.clone()))
                    .await
                    .expect("chunk object");
                keys.lock().expect("keys").push(key);
                let bucket = std::env::var("LARDER_TEST_S3_BUCKET").expect("bucket");
                serde_json::json!({"S3": {"region": "us-east-1", "bucket": bucket, "key": name}})
                    .to_string()
            }
            None => {
                let dir = self.storage.join(&name[0..1]).join(&name[0..2]);
                std::fs::create_dir_all(&dir).expect("chunk dir");
                std::fs::write(dir.join(&name), &file).expect("chunk file");
                serde_json::json!({"Local": {"name": name}}).to_string()
            }
        };
        self.exec(&format!(
            "INSERT INTO chunk (id, state, chunk_hash, chunk_size, file_hash, file_size, compression, remote_file, remote_file_id, holders_count, created_at)
             VALUES ({id}, 'V', 'sha256:{}', {}, 'sha256:{}', {}, '{}', '{remote}', 'local:{name}', 0, {})",
            hex_sha256(data),
            data.len(),
            hex_sha256(&file),
            file.len(),
            codec.name(),
            self.ts(1_700_000_000)
        ))
        .await;
    }

    /// Deletes a chunk's file or object: a chunk lost from Attic's storage.
    pub async fn lose_chunk(&self, id: i64) {
        match &self.s3 {
            Some((storage, keys)) => {
                let name = self.chunk_name(id, "S3", "key").await;
                let key: ObjectKey = name.parse().expect("key");
                storage.delete(&key).await.expect("delete");
                keys.lock().expect("keys").retain(|k| k != &key);
            }
            None => {
                let name = self.chunk_name(id, "Local", "name").await;
                let path = self.storage.join(&name[0..1]).join(&name[0..2]).join(name);
                std::fs::remove_file(path).expect("chunk file");
            }
        }
    }

    /// The file name or key a chunk row's `remote_file` names.
    async fn chunk_name(&self, id: i64, kind: &str, field: &str) -> String {
        let sql = format!("SELECT remote_file FROM chunk WHERE id = {id}");
        let json: String = match self.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("sqlite");
                sqlx::query_scalar(AssertSqlSafe(sql))
                    .fetch_one(&mut c)
                    .await
                    .expect("row")
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.expect("pg");
                sqlx::query_scalar(AssertSqlSafe(sql))
                    .fetch_one(&mut c)
                    .await
                    .expect("row")
            }
        };
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        v[kind][field].as_str().expect("chunk name").to_owned()
    }

    /// A valid NAR row listing `chunks` (chunk ids; `None` = chunk row gone).
    pub async fn nar(&self, id: i64, nar: &TestNar, chunks: &[Option<i64>]) {
        self.exec(&format!(
            "INSERT INTO nar (id, state, nar_hash, nar_size, compression, num_chunks, completeness_hint, holders_count, created_at)
             VALUES ({id}, 'V', 'sha256:{}', {}, 'zstd', {}, TRUE, 0, {})",
            nar.nar_hash.to_hex(),
            nar.nar_size(),
            chunks.len(),
            self.ts(1_700_000_000)
        ))
        .await;
        for (seq, c) in chunks.iter().enumerate() {
            let chunk_id = c.map_or("NULL".into(), |c| c.to_string());
            self.exec(&format!(
                "INSERT INTO chunkref (nar_id, seq, chunk_id, chunk_hash, compression) VALUES ({id}, {seq}, {chunk_id}, 'sha256:00', 'zstd')"
            ))
            .await;
        }
    }

    /// An object of `cache` pointing at NAR row `nar_id`.
    pub async fn object(
        &self,
        cache: i64,
        nar_id: i64,
        nar: &TestNar,
        created: i64,
        accessed: i64,
    ) {
        let refs = serde_json::to_string(&nar.references).expect("json");
        let deriver = nar
            .deriver
            .as_ref()
            .map_or("NULL".into(), |d| format!("'{d}'"));
        self.exec(&format!(
            "INSERT INTO object (cache_id, nar_id, store_path_hash, store_path, \"references\", system, deriver, sigs, ca, created_at, last_accessed_at, created_by)
             VALUES ({cache}, {nar_id}, '{}', '{}', '{refs}', 'x86_64-linux', {deriver}, '[\"someone-else-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\"]', NULL, {}, {}, 'alice')",
            nar.store_hash(),
            nar.store_path(),
            self.ts(created),
            self.ts(accessed)
        ))
        .await;
    }

    /// Everything in Attic's database and storage, hashed: equal before and
    /// after an import proves it wrote nothing.
    pub async fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        match self.backend {
            Backend::Sqlite => {
                let path = self.sqlite_path.as_ref().expect("sqlite path");
                h.update(std::fs::read(path).expect("db file"));
                for ext in ["-wal", "-journal"] {
                    let mut p = path.clone().into_os_string();
                    p.push(ext);
                    h.update([Path::new(&p).exists() as u8]);
                }
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.expect("pg");
                for t in ["cache", "nar", "object", "chunk", "chunkref"] {
                    let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
                        "SELECT CAST(t AS TEXT) FROM {t} t ORDER BY id"
                    )))
                    .fetch_all(&mut c)
                    .await
                    .expect("dump");
                    for r in rows {
                        h.update(r.as_bytes());
                        h.update(b"\n");
                    }
                }
                let _ = c.close().await;
            }
        }
        let mut files: Vec<(PathBuf, Vec<u8>)> = walk(&self.storage)
            .into_iter()
            .map(|p| {
                let data = std::fs::read(&p).expect("file");
                (p, data)
            })
            .collect();
        if let Some((storage, keys)) = &self.s3 {
            let keys = keys.lock().expect("keys").clone();
            for key in keys {
                let body = storage.get(&key, None).await.expect("chunk object");
                let parts: Vec<Bytes> = body.try_collect().await.expect("chunk body");
                files.push((PathBuf::from(key.as_str()), parts.concat()));
            }
        }
        files.sort();
        for (p, data) in files {
            h.update(p.to_string_lossy().as_bytes());
            h.update(Sha256::digest(&data));
        }
        format!("{:x}", h.finalize())
    }

    /// Drops the PostgreSQL database (best effort).
    pub async fn teardown(self) {
        if let Some(name) = &self.pg_database
            && let Ok(mut admin) =
                sqlx::PgConnection::connect(&format!("{PG_SERVER}/postgres")).await
        {
            let _ = sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await;
            let _ = admin.close().await;
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
