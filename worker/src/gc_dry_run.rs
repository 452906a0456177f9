//! `larder-admin gc --dry-run`: the mark of a GC run, per cache, without
//! deleting anything or taking the lease, and how it is printed.

use std::collections::HashMap;

use serde::Serialize;

use larder_shared::db::chunks::BATCH;
use larder_shared::db::{ObjectId, caches, gc};
use larder_shared::retention::Retention;

use crate::closure::Graph;
use crate::services::Services;

/// A path a GC would expire, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoomedPath {
    /// Absolute store path.
    pub store_path: String,
    /// Last push or recorded use (Unix seconds).
    pub last_accessed_at: i64,
}

/// What a GC would expire in one cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheDryRun {
    /// Cache name.
    pub cache: String,
    /// Retention period in seconds (0 = forever).
    pub retention_period: i64,
    /// Paths last used before this are idle.
    pub idle_before: Option<i64>,
    /// Paths in the cache.
    pub paths: u64,
    /// Idle paths kept because a live (pinned or recently used) path needs them.
    pub idle_kept_by_referrers: u64,
    /// Paths that would go: idle, and needed by no live path.
    pub expiring: Vec<DoomedPath>,
}

/// Renders a dry run as `larder-admin gc --dry-run` prints it: per cache a
/// header, then one line per path that would go with its reason, then a
/// summary line.
pub fn render_dry_run(caches: &[CacheDryRun]) -> String {
    use std::fmt::Write as _;
    let time = |t: i64| {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
        humantime::format_rfc3339_seconds(at).to_string()
    };
    let mut out = String::new();
    let (mut expiring, mut kept) = (0, 0);
    for c in caches {
        let Some(before) = c.idle_before else {
            let _ = writeln!(
                out,
                "cache {}: retention forever; {} paths, none expire",
                c.cache, c.paths
            );
            continue;
        };
        let retention =
            humantime::format_duration(std::time::Duration::from_secs(c.retention_period as u64));
        let _ = writeln!(
            out,
            "cache {}: retention {retention} (idle = unused since before {}); {} paths, {} would expire, {} idle kept because live paths need them",
            c.cache,
            time(before),
            c.paths,
            c.expiring.len(),
            c.idle_kept_by_referrers,
        );
        for p in &c.expiring {
            let _ = writeln!(
                out,
                "  expire {}: idle since {}, past retention {retention}, no live path refers to it",
                p.store_path,
                time(p.last_accessed_at),
            );
        }
        expiring += c.expiring.len();
        kept += c.idle_kept_by_referrers;
    }
    let _ = writeln!(
        out,
        "summary: {expiring} paths would expire; {kept} idle paths kept because live paths need them"
    );
    out
}

/// The same mark as [`crate::jobs::gc::run`], without deleting (and without the lease):
/// what `larder-admin gc --dry-run` prints.
pub async fn dry_run(svc: &Services, now: i64) -> anyhow::Result<Vec<CacheDryRun>> {
    let all = {
        let mut conn = svc.db.conn().await?;
        caches::list(conn.raw()).await?
    };
    let mut out = Vec::new();
    for cache in all {
        let retention = Retention::of(&cache, &svc.config.garbage_collection);
        let graph = Graph::load(&svc.db, cache.id).await?;
        let mut report = CacheDryRun {
            cache: cache.name.to_string(),
            retention_period: retention.secs(),
            idle_before: retention.cutoff(now),
            paths: graph.len() as u64,
            idle_kept_by_referrers: 0,
            expiring: Vec::new(),
        };
        if let Some(cutoff) = retention.cutoff(now) {
            let plan = graph.mark(cutoff);
            report.idle_kept_by_referrers = plan.idle_kept;
            let slots: Vec<usize> = plan.doomed().collect();
            let mut conn = svc.db.conn().await?;
            for batch in slots.chunks(BATCH) {
                let ids: Vec<ObjectId> = batch.iter().map(|&s| graph.id(s)).collect();
                let paths: HashMap<ObjectId, String> = gc::store_paths(conn.raw(), &ids)
                    .await?
                    .into_iter()
                    .collect();
                for &s in batch {
                    if let Some(p) = paths.get(&graph.id(s)) {
                        report.expiring.push(DoomedPath {
                            store_path: p.clone(),
                            last_accessed_at: graph.last_used(s),
                        });
                    }
                }
            }
        }
        out.push(report);
    }
    Ok(out)
}
