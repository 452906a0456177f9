//! One import pass over Attic's caches and objects.

use std::collections::HashSet;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use larder_core::nix::hash::NarHash;
use larder_shared::audit::{Actor, AuditEvent, ImportSummary};
use larder_shared::db::audit;
use larder_shared::db::caches::{self, CacheRecord, CacheUpdate, NewCache};
use larder_shared::db::nars::{self, NarState};
use larder_shared::db::objects::{self, Replace};
use larder_shared::db::{CacheId, Db, cache_keys, unix_now};
use larder_shared::signing_keys::rotation::{self, NewKey};

use super::attic_db::{AtticCache, AtticObject};
use crate::record::{self, NewPath, Origin};
use crate::staging::{self, Expected};

use super::attic_db;
use super::nar_source;
use super::options::{Options, Target};
use super::parse::{ParsedCache, parse_cache, parse_object};
use super::report::Report;

pub(super) struct Pass<'a> {
    pub(super) db: &'a Db,
    pub(super) target: &'a Target,
    pub(super) source: nar_source::ChunkSource,
    pub(super) opts: &'a Options,
    pub(super) report: Report,
    /// Dry run: NARs a real run would stage (a later path links to them).
    pub(super) would_stage: HashSet<NarHash>,
    /// Paths staged or linked in this run (for `limit`).
    pub(super) done: usize,
}

impl Pass<'_> {
    pub(super) fn limit_reached(&mut self) -> bool {
        let hit = self.opts.limit.is_some_and(|l| self.done >= l);
        if hit {
            self.report.stopped_at_limit = true;
        }
        hit
    }

    /// The Larder cache for an Attic cache: created, or brought in line.
    /// `None` when it cannot be (reported).
    async fn ensure_cache(&mut self, c: &AtticCache) -> anyhow::Result<Option<CacheId>> {
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
                return Ok(Some(CacheId(-1)));
            }
            let new = NewCache {
                name: &parsed.name,
                is_public: c.is_public,
                store_dir: &parsed.store_dir,
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
        let update = differences(&existing, c, &parsed);
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

    pub(super) async fn cache(&mut self, c: &AtticCache) -> anyhow::Result<()> {
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

    async fn import_objects(&mut self, c: &AtticCache, cache_id: CacheId) -> anyhow::Result<()> {
        let objects = attic_db::objects(self.db, c.id)
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
        cache_id: CacheId,
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
        let present = if cache_id.get() < 0 {
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
        let chunks = attic_db::chunks(self.db, o.nar_id).await?;
        let files = match nar_source::plan(&self.source, &chunks, o.num_chunks) {
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
            if let Err(e) = nar_source::first_missing(&self.source, &files).await {
                let reason = format!("broken in Attic: {e}");
                self.report.fail(&c.name, Some(&o.store_path), reason);
                return Ok(());
            }
            self.would_stage.insert(p.nar_hash);
            self.report.paths_staged += 1;
            self.report.bytes_staged += p.nar_size;
            self.imported(o);
            return Ok(());
        }
        let key = staging::reserve(&self.target.db).await?;
        let expected = Expected {
            nar_hash: p.nar_hash,
            nar_size: p.nar_size,
        };
        if let Err(e) = staging::stage(
            &self.target.db,
            &self.target.staging,
            &key,
            nar_source::stream(&self.source, files),
            expected,
            None,
        )
        .await
        {
            let _ = staging::discard(&self.target.db, &self.target.staging, &key).await;
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
            Ok(_) => staging::discard(&self.target.db, &self.target.staging, &key).await?,
            Err(e) => {
                let _ = staging::discard(&self.target.db, &self.target.staging, &key).await;
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

fn differences(l: &CacheRecord, a: &AtticCache, parsed: &ParsedCache) -> CacheUpdate {
    let upstream = &parsed.upstream;
    CacheUpdate {
        is_public: (l.is_public != a.is_public).then_some(a.is_public),
        store_dir: (l.store_dir != parsed.store_dir).then(|| parsed.store_dir.clone()),
        priority: (l.priority != a.priority).then_some(a.priority),
        upstream_cache_key_names: (l.upstream_cache_key_names != *upstream)
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
