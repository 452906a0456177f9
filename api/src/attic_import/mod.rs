//! `larder-admin import-attic`: moves a running Attic deployment into
//! Larder (issue #20). Attic's config names its database and storage; its
//! database is read through its own schema, read-only ([`attic_db`]); each
//! NAR is reassembled from Attic's chunk files ([`nar_source`]) and goes the
//! way an upload goes: streamed into staging while its NarHash, size and
//! NAR syntax are verified ([`crate::staging::stage`]), then recorded with
//! its ingest job in one transaction ([`crate::record`]), so the normal
//! workers chunk and deduplicate it. A NAR Larder already has is linked.
//!
//! Safe to repeat: a path already in the Larder cache with the same NarHash
//! is skipped, each path is one transaction, and a run killed mid-NAR
//! leaves at most an unreferenced staging object (the sweeper removes it).

pub mod attic_db;
pub mod nar_source;
pub mod source;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use larder_core::CacheName;
use larder_core::nix::hash::NarHash;
use larder_core::nix::signing::SigningKey;
use larder_core::nix::store_path::{StoreDir, StorePath, StorePathHash};
use larder_shared::audit::{Actor, AuditEvent, ImportSummary};
use larder_shared::db::audit;
use larder_shared::db::caches::{self, CacheRecord, CacheUpdate, NewCache};
use larder_shared::db::nars::{self, NarState};
use larder_shared::db::objects::{self, ObjectMeta, Replace};
use larder_shared::db::{Db, cache_keys, unix_now};
use larder_shared::signing_keys::Kek;
use larder_shared::signing_keys::rotation::{self, NewKey};
use larder_shared::storage::Storage;

use self::attic_db::{AtticCache, AtticObject};
use self::source::{AtticConfig, AtticStorage};
use crate::record::{self, NewPath, Origin};
use crate::routes::upload_path::staging_key;
use crate::staging::{self, Expected};

/// What to import.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only these caches (all when empty).
    pub caches: Vec<String>,
    /// Read everything, write nothing, say what would happen.
    pub dry_run: bool,
    /// Stop after this many paths were imported or linked (a trial run).
    pub limit: Option<usize>,
}

/// Where imported paths go.
#[derive(Clone)]
pub struct Target {
    /// Larder's database.
    pub db: Db,
    /// Larder's staging storage.
    pub staging: Arc<dyn Storage>,
    /// Seals the imported signing keys.
    pub kek: Kek,
}

/// A path (or cache) that was not imported, and why.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Cache name.
    pub cache: String,
    /// Store path, or `None` for a whole cache.
    pub store_path: Option<String>,
    /// Why.
    pub reason: String,
}

/// What a run did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Caches created.
    pub caches_created: usize,
    /// Caches whose settings were brought in line with Attic's.
    pub caches_updated: usize,
    /// Caches already as in Attic.
    pub caches_unchanged: usize,
    /// Paths whose NAR was reassembled and staged for ingest.
    pub paths_staged: usize,
    /// Paths linked to a NAR Larder already had.
    pub paths_linked: usize,
    /// Paths already in Larder with the same NarHash.
    pub paths_present: usize,
    /// Paths whose NAR is not valid in Attic yet (an upload in progress).
    pub paths_pending: usize,
    /// NAR bytes staged.
    pub bytes_staged: u64,
    /// Paths imported with their Attic uploader (`created_by`).
    pub created_by_carried: usize,
    /// What failed.
    pub failures: Vec<Failure>,
    /// True when the run stopped at `limit`.
    pub stopped_at_limit: bool,
    /// Seconds the run took.
    pub elapsed_secs: f64,
}

impl Report {
    fn fail(&mut self, cache: &str, store_path: Option<&str>, reason: impl Into<String>) {
        let reason = reason.into();
        tracing::warn!(cache, store_path, %reason, "not imported");
        self.failures.push(Failure {
            cache: cache.to_owned(),
            store_path: store_path.map(str::to_owned),
            reason,
        });
    }
}

/// Runs one import pass.
pub async fn run(attic: &AtticConfig, target: &Target, opts: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let root = match &attic.storage {
        AtticStorage::Local(p) => p.clone(),
        AtticStorage::Unsupported(kind) => {
            anyhow::bail!("Attic's storage is {kind:?}; only local storage can be imported so far")
        }
    };
    let source = attic_db::open(&attic.database_url)
        .await
        .context("opening Attic's database read-only")?;
    let mut report = Report::default();
    let all = attic_db::caches(&source)
        .await
        .context("reading Attic's caches")?;
    for wanted in &opts.caches {
        if !all.iter().any(|c| &c.name == wanted) {
            report.fail(wanted, None, "no such cache in Attic");
        }
    }
    let mut pass = Pass {
        source: &source,
        target,
        root,
        opts,
        report,
        would_stage: HashSet::new(),
        done: 0,
    };
    for cache in all
        .iter()
        .filter(|c| opts.caches.is_empty() || opts.caches.contains(&c.name))
    {
        if cache.deleted {
            pass.report.fail(
                &cache.name,
                None,
                "deleted in Attic (soft delete); not imported",
            );
            continue;
        }
        if pass.limit_reached() {
            break;
        }
        pass.cache(cache).await?;
    }
    source.close().await;
    let mut report = pass.report;
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

struct Pass<'a> {
    source: &'a Db,
    target: &'a Target,
    root: PathBuf,
    opts: &'a Options,
    report: Report,
    /// Dry run: NARs a real run would stage (a later path links to them).
    would_stage: HashSet<NarHash>,
    /// Paths staged or linked in this run (for `limit`).
    done: usize,
}

/// An Attic cache, validated as Larder needs it.
struct ParsedCache {
    name: CacheName,
    key: SigningKey,
    upstream: Vec<String>,
}

fn parse_cache(c: &AtticCache) -> Result<ParsedCache, String> {
    let name: CacheName = c.name.parse().map_err(|e| format!("cache name: {e}"))?;
    let key = c
        .keypair
        .parse::<SigningKey>()
        .map_err(|e| format!("keypair: {e}"))?;
    c.store_dir
        .parse::<StoreDir>()
        .map_err(|e| format!("store_dir: {e}"))?;
    let upstream: Vec<String> = serde_json::from_str(&c.upstream_cache_key_names)
        .map_err(|e| format!("upstream_cache_key_names: {e}"))?;
    Ok(ParsedCache {
        name,
        key,
        upstream,
    })
}

/// An Attic object, validated as an upload would be.
struct ParsedObject {
    hash: StorePathHash,
    meta: ObjectMeta,
    nar_hash: NarHash,
    nar_size: u64,
}

fn parse_object(o: &AtticObject) -> Result<ParsedObject, String> {
    let hash: StorePathHash = o
        .store_path_hash
        .parse()
        .map_err(|e| format!("store_path_hash: {e}"))?;
    let (dir, base) = o
        .store_path
        .rsplit_once('/')
        .ok_or_else(|| format!("store path {:?} is not absolute", o.store_path))?;
    let dir: StoreDir = dir.parse().map_err(|e| format!("store dir: {e}"))?;
    let path = StorePath::from_base_name(base).map_err(|e| format!("store path: {e}"))?;
    if path.hash != hash {
        return Err("store_path_hash does not match store_path".into());
    }
    let references: Vec<String> =
        serde_json::from_str(&o.references).map_err(|e| format!("references: {e}"))?;
    for r in &references {
        StorePath::from_base_name(r).map_err(|e| format!("reference {r:?}: {e}"))?;
    }
    let sigs: Vec<String> = serde_json::from_str(&o.sigs).map_err(|e| format!("sigs: {e}"))?;
    if sigs
        .iter()
        .any(|s| s.is_empty() || s.contains(char::is_whitespace))
    {
        return Err("a signature is empty or contains whitespace".into());
    }
    // Attic keeps the deriver as Nix sent it: a base name (or a full path).
    let deriver = o
        .deriver
        .as_deref()
        .filter(|d| !d.is_empty())
        .map(|d| d.rsplit('/').next().unwrap_or(d).to_owned());
    if let Some(d) = &deriver {
        StorePath::from_base_name(d).map_err(|e| format!("deriver {d:?}: {e}"))?;
    }
    for (field, v) in [("system", &o.system), ("ca", &o.ca)] {
        if v.as_deref().is_some_and(|v| v.contains(['\n', '\r'])) {
            return Err(format!("{field} contains a line break"));
        }
    }
    let nar_hash: NarHash = o.nar_hash.parse().map_err(|e| format!("nar_hash: {e}"))?;
    let nar_size = u64::try_from(o.nar_size)
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("nar_size {} is not positive", o.nar_size))?;
    Ok(ParsedObject {
        hash,
        meta: ObjectMeta {
            store_path: path.to_absolute(&dir),
            references,
            deriver,
            sigs,
            ca: o.ca.clone(),
            system: o.system.clone(),
        },
        nar_hash,
        nar_size,
    })
}

impl Pass<'_> {
    fn limit_reached(&mut self) -> bool {
        let hit = self.opts.limit.is_some_and(|l| self.done >= l);
        if hit {
            self.report.stopped_at_limit = true;
        }
        hit
    }

    /// The Larder cache for an Attic cache: created, or brought in line.
    /// `None` when it cannot be (reported).
    async fn ensure_cache(&mut self, c: &AtticCache) -> anyhow::Result<Option<i64>> {
        let parsed = match parse_cache(c) {
            Ok(p) => p,
            Err(e) => {
                self.report.fail(&c.name, None, e);
                return Ok(None);
            }
        };
        let mut conn = self.target.db.conn().await?;
        let existing = caches::get_by_name(conn.raw(), &parsed.name).await?;
        drop(conn);
        let Some(existing) = existing else {
            self.report.caches_created += 1;
            if self.opts.dry_run {
                return Ok(Some(-1));
            }
            let new = NewCache {
                name: &parsed.name,
                is_public: c.is_public,
                store_dir: &c.store_dir,
                priority: c.priority,
                upstream_cache_key_names: &parsed.upstream,
                retention_period: c.retention_period,
            };
            // The cache and its key (sealed with Larder's KEK) in one
            // transaction: no cache without a key.
            let now = unix_now();
            let mut tx = self.target.db.begin().await?;
            if let Some(r) = caches::create(tx.raw(), &new, now).await? {
                let key = NewKey::Import(Box::new(parsed.key.clone()));
                rotation::add_key(&mut tx, &self.target.kek, &parsed.name, r.id, key, now, now)
                    .await?;
                tx.commit().await?;
                return Ok(Some(r.id));
            }
            drop(tx);
            // Created concurrently (another import run): check it below.
            let mut conn = self.target.db.conn().await?;
            let existing = caches::get_by_name(conn.raw(), &parsed.name)
                .await?
                .context("cache vanished while importing")?;
            return Ok(self
                .same_key(&existing, &parsed, c)
                .await?
                .then_some(existing.id));
        };
        if !self.same_key(&existing, &parsed, c).await? {
            return Ok(None);
        }
        let update = differences(&existing, c, &parsed.upstream);
        if update_is_empty(&update) {
            self.report.caches_unchanged += 1;
        } else {
            self.report.caches_updated += 1;
            if !self.opts.dry_run {
                let mut conn = self.target.db.conn().await?;
                caches::update(conn.raw(), existing.id, &update).await?;
            }
        }
        Ok(Some(existing.id))
    }

    /// Whether the Larder cache has Attic's key among its keys (else the
    /// cache is reported and left alone).
    async fn same_key(
        &mut self,
        existing: &CacheRecord,
        parsed: &ParsedCache,
        c: &AtticCache,
    ) -> anyhow::Result<bool> {
        let mut conn = self.target.db.conn().await?;
        let public = parsed.key.public_key().to_string();
        let keys = cache_keys::of_cache(conn.raw(), existing.id).await?;
        if keys.iter().any(|k| k.public_key == public) {
            return Ok(true);
        }
        self.report.fail(
            &c.name,
            None,
            "a Larder cache of this name exists with a different signing key; not touched",
        );
        Ok(false)
    }

    async fn cache(&mut self, c: &AtticCache) -> anyhow::Result<()> {
        let created_before = self.report.caches_created;
        let Some(cache_id) = self.ensure_cache(c).await? else {
            return Ok(());
        };
        let before = (
            self.report.paths_staged,
            self.report.paths_linked,
            self.report.failures.len(),
        );
        self.import_objects(c, cache_id).await?;
        if self.opts.dry_run {
            return Ok(());
        }
        // One summary per cache, after its paths (each its own transaction).
        let summary = ImportSummary {
            cache_created: self.report.caches_created > created_before,
            paths_staged: (self.report.paths_staged - before.0) as u64,
            paths_linked: (self.report.paths_linked - before.1) as u64,
            paths_failed: (self.report.failures.len() - before.2) as u64,
        };
        let event = AuditEvent::ImportAttic {
            cache: parse_cache(c).map_err(anyhow::Error::msg)?.name,
            summary,
        };
        let mut conn = self.target.db.conn().await?;
        audit::insert(conn.raw(), unix_now(), &Actor::operator(), &event).await?;
        Ok(())
    }

    async fn import_objects(&mut self, c: &AtticCache, cache_id: i64) -> anyhow::Result<()> {
        let objects = attic_db::objects(self.source, c.id)
            .await
            .with_context(|| format!("reading Attic's objects of {}", c.name))?;
        let total: u64 = objects.iter().map(|o| o.nar_size.max(0) as u64).sum();
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        for (i, o) in objects.iter().enumerate() {
            if self.limit_reached() {
                break;
            }
            bar.set_message(format!("{}: {}/{} paths", c.name, i + 1, objects.len()));
            self.object(c, cache_id, o).await?;
            bar.inc(o.nar_size.max(0) as u64);
        }
        bar.finish_and_clear();
        Ok(())
    }

    async fn object(
        &mut self,
        c: &AtticCache,
        cache_id: i64,
        o: &AtticObject,
    ) -> anyhow::Result<()> {
        if o.nar_state != "V" {
            self.report.paths_pending += 1;
            return Ok(());
        }
        let p = match parse_object(o) {
            Ok(p) => p,
            Err(e) => {
                self.report.fail(&c.name, Some(&o.store_path), e);
                return Ok(());
            }
        };
        let mut conn = self.target.db.conn().await?;
        let present = if cache_id < 0 {
            None
        } else {
            objects::find(conn.raw(), cache_id, &p.hash).await?
        };
        if let Some(x) = present.filter(|x| x.nar.state != NarState::Broken) {
            if x.nar.nar_hash == p.nar_hash {
                self.report.paths_present += 1;
            } else {
                // First push wins (docs/protocol.md): Larder's copy stays.
                self.report.fail(
                    &c.name,
                    Some(&o.store_path),
                    "already in Larder with a different NarHash; not replaced",
                );
            }
            return Ok(());
        }
        let known = nars::find_by_hash(conn.raw(), &p.nar_hash)
            .await?
            .filter(|n| n.state != NarState::Broken);
        drop(conn);
        let created_at = o.created_at;
        let accessed_at = o.last_accessed_at.unwrap_or(created_at).max(created_at);
        let path = NewPath {
            cache_id,
            hash: &p.hash,
            meta: &p.meta,
            nar_hash: &p.nar_hash,
            nar_size: p.nar_size,
            replace: Replace::Never,
            origin: Origin::Import {
                created_by: o.created_by.as_deref(),
            },
            retention: None,
        };
        if known.is_some() || self.would_stage.contains(&p.nar_hash) {
            if !self.opts.dry_run {
                let nar_id = known.map(|n| n.id).context("known NAR")?;
                let mut tx = self.target.db.begin().await?;
                match record::link_existing(&mut tx, &path, nar_id, unix_now()).await? {
                    Some(object_id) => {
                        objects::set_times(tx.raw(), object_id, created_at, accessed_at).await?;
                        tx.commit().await?;
                    }
                    None => {
                        self.report.fail(
                            &c.name,
                            Some(&o.store_path),
                            "NAR vanished in Larder; run again",
                        );
                        return Ok(());
                    }
                }
            }
            self.report.paths_linked += 1;
            self.imported(o);
            return Ok(());
        }
        let chunks = attic_db::chunks(self.source, o.nar_id).await?;
        let files = match nar_source::plan(&self.root, &chunks, o.num_chunks) {
            Ok(f) => f,
            Err(e) => {
                self.report.fail(
                    &c.name,
                    Some(&o.store_path),
                    format!("broken in Attic: {e}"),
                );
                return Ok(());
            }
        };
        if self.opts.dry_run {
            self.would_stage.insert(p.nar_hash);
            self.report.paths_staged += 1;
            self.report.bytes_staged += p.nar_size;
            self.imported(o);
            return Ok(());
        }
        let key = staging_key()?;
        let expected = Expected {
            nar_hash: p.nar_hash,
            nar_size: p.nar_size,
        };
        if let Err(e) = staging::stage(
            &self.target.staging,
            &key,
            nar_source::stream(files),
            expected,
        )
        .await
        {
            self.report.fail(
                &c.name,
                Some(&o.store_path),
                format!("broken in Attic: {e}"),
            );
            return Ok(());
        }
        let recorded = async {
            let mut tx = self.target.db.begin().await?;
            let r = record::record_staged(&mut tx, &path, &key, unix_now()).await?;
            objects::set_times(tx.raw(), r.object_id, created_at, accessed_at).await?;
            tx.commit().await?;
            anyhow::Ok(r)
        }
        .await;
        match recorded {
            Ok(r) if r.used_staged_copy => {}
            Ok(_) => self.target.staging.delete(&key).await?,
            Err(e) => {
                let _ = self.target.staging.delete(&key).await;
                return Err(e);
            }
        }
        self.report.paths_staged += 1;
        self.report.bytes_staged += p.nar_size;
        self.imported(o);
        Ok(())
    }

    fn imported(&mut self, o: &AtticObject) {
        self.done += 1;
        if o.created_by.is_some() {
            self.report.created_by_carried += 1;
        }
    }
}

fn differences(l: &CacheRecord, a: &AtticCache, upstream: &[String]) -> CacheUpdate {
    CacheUpdate {
        is_public: (l.is_public != a.is_public).then_some(a.is_public),
        store_dir: (l.store_dir != a.store_dir).then(|| a.store_dir.clone()),
        priority: (l.priority != a.priority).then_some(a.priority),
        upstream_cache_key_names: (l.upstream_cache_key_names != upstream)
            .then(|| upstream.to_vec()),
        retention_period: (l.retention_period != a.retention_period).then_some(a.retention_period),
    }
}

fn update_is_empty(u: &CacheUpdate) -> bool {
    u.is_public.is_none()
        && u.store_dir.is_none()
        && u.priority.is_none()
        && u.upstream_cache_key_names.is_none()
        && u.retention_period.is_none()
}
