//! An Attic deployment as its users run it (docs/operations.md "Moving from
//! Attic"), for `larder-admin import-attic`: a PostgreSQL database in
//! Attic's schema (the SQL `server/tests/attic_support` uses, one file for
//! both), local storage with one zstd file per chunk under `<c>/<cc>/`, a
//! `server.toml` whose RS256 key is made as Attic's docs say (`openssl genrsa
//! -traditional`, base64), and tokens minted as `atticadm make-token` mints
//! them: RS256 over `sub`, `exp`, `nbf` and the `https://jwt.attic.rs/v1`
//! claim, nothing else.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::nix::run;
use crate::path_info::{base_name, hash_part};
use crate::replica::PgDatabase;

/// Attic's schema (zhaofengli/attic `server/src/database/migration`).
const SCHEMA: &str = include_str!("../../server/tests/attic_support/schema-postgres.sql");

/// A path as Attic recorded it.
pub struct AtticPath<'a> {
    /// Absolute store path.
    pub store_path: &'a str,
    /// Its NAR (`nix-store --dump`).
    pub nar: &'a [u8],
    /// Absolute store paths it refers to.
    pub references: &'a [String],
}

/// Attic's database, storage and config.
pub struct AtticDeployment {
    db: PgDatabase,
    dir: tempfile::TempDir,
    next_id: std::cell::Cell<i64>,
}

impl AtticDeployment {
    /// An empty Attic: schema, storage (`VERSION` 1), RS256 key, config.
    pub async fn create() -> anyhow::Result<Self> {
        let db = PgDatabase::create("attic_e2e").await?;
        db.query(SCHEMA).await.context("Attic's schema")?;
        let dir = tempfile::Builder::new()
            .prefix("larder-e2e-attic-")
            .tempdir()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        std::fs::write(storage.join("VERSION"), "1")?;
        let mut genrsa = tokio::process::Command::new("openssl");
        genrsa.args(["genrsa", "-traditional", "2048"]);
        let pem = run(genrsa).await.context("openssl genrsa")?;
        std::fs::write(dir.path().join("rs256.pem"), &pem)?;
        let config = format!(
            "listen = \"[::]:8080\"\n[database]\nurl = \"{}\"\n[storage]\ntype = \"local\"\npath = \"{}\"\n\
             [chunking]\nnar-size-threshold = 65536\nmin-size = 16384\navg-size = 65536\nmax-size = 262144\n\
             [jwt.signing]\ntoken-rs256-secret-base64 = \"{}\"\n",
            db.url(),
            storage.display(),
            STANDARD.encode(pem.as_bytes())
        );
        std::fs::write(dir.path().join("server.toml"), config)?;
        Ok(Self {
            db,
            dir,
            next_id: std::cell::Cell::new(1),
        })
    }

    /// Attic's `server.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("server.toml")
    }

    fn id(&self) -> i64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// A cache with `keypair` (Nix's `name:base64` secret key, as
    /// `nix-store --generate-binary-cache-key` writes it); its id.
    pub async fn add_cache(
        &self,
        name: &str,
        keypair: &str,
        is_public: bool,
        priority: i64,
    ) -> anyhow::Result<i64> {
        let id = self.id();
        self.db
            .query(&format!(
                "INSERT INTO cache (id, name, keypair, is_public, store_dir, priority, upstream_cache_key_names, created_at, retention_period)
                 VALUES ({id}, '{name}', '{keypair}', {is_public}, '/nix/store', {priority}, '[]', now(), NULL)"
            ))
            .await?;
        Ok(id)
    }

    /// A path of cache `cache`, its NAR cut into chunks of `chunk` bytes,
    /// each compressed by `zstd` into its own file.
    pub async fn add_path(
        &self,
        cache: i64,
        path: &AtticPath<'_>,
        chunk: usize,
    ) -> anyhow::Result<()> {
        let nar_id = self.id();
        let pieces: Vec<&[u8]> = path.nar.chunks(chunk.max(1)).collect();
        let mut sql = format!(
            "INSERT INTO nar (id, state, nar_hash, nar_size, compression, num_chunks, created_at)
             VALUES ({nar_id}, 'V', 'sha256:{}', {}, 'zstd', {}, now());",
            hex::encode(Sha256::digest(path.nar)),
            path.nar.len(),
            pieces.len()
        );
        for (seq, piece) in pieces.iter().enumerate() {
            let chunk_id = self.id();
            let file = zstd(piece).await?;
            let name = format!("{:016x}-{chunk_id}.chunk", crate::tree::random_seed());
            let dir = self.storage().join(&name[0..1]).join(&name[0..2]);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(&name), &file)?;
            let chunk_hash = hex::encode(Sha256::digest(piece));
            sql.push_str(&format!(
                "INSERT INTO chunk (id, state, chunk_hash, chunk_size, file_hash, file_size, compression, remote_file, remote_file_id, created_at)
                 VALUES ({chunk_id}, 'V', 'sha256:{chunk_hash}', {}, 'sha256:{}', {}, 'zstd', '{{\"Local\":{{\"name\":\"{name}\"}}}}', 'local:{name}', now());
                 INSERT INTO chunkref (nar_id, seq, chunk_id, chunk_hash, compression)
                 VALUES ({nar_id}, {seq}, {chunk_id}, 'sha256:{chunk_hash}', 'zstd');",
                piece.len(),
                hex::encode(Sha256::digest(&file)),
                file.len()
            ));
        }
        let refs: Vec<&str> = path.references.iter().map(|r| base_name(r)).collect();
        sql.push_str(&format!(
            "INSERT INTO object (cache_id, nar_id, store_path_hash, store_path, \"references\", system, deriver, sigs, ca, created_at, last_accessed_at, created_by)
             VALUES ({cache}, {nar_id}, '{}', '{}', '{}', 'x86_64-linux', NULL, '[]', NULL, now() - interval '2 days', now() - interval '1 day', 'ci');",
            hash_part(path.store_path),
            path.store_path,
            serde_json::to_string(&refs)?
        ));
        self.db.query(&sql).await?;
        Ok(())
    }

    fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Every row of Attic's tables and every storage file's name and hash:
    /// equal before and after an import shows it wrote nothing.
    pub async fn dump(&self) -> anyhow::Result<String> {
        let mut out = String::new();
        for table in ["cache", "nar", "object", "chunk", "chunkref"] {
            out.push_str(
                &self
                    .db
                    .query(&format!(
                        "SELECT CAST(t AS TEXT) FROM {table} t ORDER BY id"
                    ))
                    .await?,
            );
        }
        let mut files = Vec::new();
        walk(&self.storage(), &mut files)?;
        files.sort();
        for f in files {
            let digest = Sha256::digest(std::fs::read(&f)?);
            out.push_str(&format!("{} {}\n", f.display(), hex::encode(digest)));
        }
        Ok(out)
    }

    /// A token as `atticadm make-token --sub SUB --validity 1d --pull CACHE`
    /// makes it with this deployment's RS256 key.
    pub async fn make_token(&self, sub: &str, pull: &str) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"RS256"}"#);
        let claims = serde_json::json!({
            "sub": sub,
            "exp": now + 86400,
            "nbf": now,
            "https://jwt.attic.rs/v1": { "caches": { pull: { "r": 1 } } },
        });
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?);
        let signing_input = format!("{header}.{payload}");
        let input = self.dir.path().join("jwt-input");
        std::fs::write(&input, &signing_input)?;
        let sig = tokio::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(self.dir.path().join("rs256.pem"))
            .arg(&input)
            .output()
            .await?;
        anyhow::ensure!(sig.status.success(), "openssl dgst -sign failed");
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.stdout)
        ))
    }

    /// Drops Attic's database.
    pub async fn drop_now(self) -> anyhow::Result<()> {
        self.db.drop_now().await
    }
}

/// `zstd -3` of `data`, as Attic's chunk files are.
async fn zstd(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut child = tokio::process::Command::new("zstd")
        .args(["-q", "-3", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("zstd (Debian's zstd package)")?;
    let mut stdin = child.stdin.take().context("zstd stdin")?;
    let data = data.to_vec();
    let feed = tokio::spawn(async move {
        stdin.write_all(&data).await?;
        stdin.shutdown().await
    });
    let out = child.wait_with_output().await?;
    feed.await??;
    anyhow::ensure!(out.status.success(), "zstd failed");
    Ok(out.stdout)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}
