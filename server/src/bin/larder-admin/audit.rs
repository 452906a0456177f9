//! `audit`: reads the audit trail (docs/operations.md "Audit"), and
//! `path-info`: one path with who pushed it.

use anyhow::Context;
use clap::Args;

use larder_core::nix::store_path::StorePathHash;
use larder_shared::config::Config;
use larder_shared::db::audit::{self, AuditFilter, AuditRecord};
use larder_shared::db::{caches, objects, unix_now};
use larder_shared::token::parse_validity;

use crate::tokens::fmt_time;

/// Events read per query.
const PAGE: i64 = 1000;

/// `audit [--since WHEN] [--sub SUBJECT] [--jti ID] [--cache NAME] [--kind KIND] [--json]`.
#[derive(Debug, Args)]
pub struct Audit {
    /// Only events this recent: a duration (`7d`, `36h`, `2 weeks`) or an
    /// RFC 3339 time (`2026-12-01T00:00:00Z`).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only events by this subject (a token's `sub`, `larder-admin:<user>`,
    /// or a GC holder).
    #[arg(long, value_name = "SUBJECT")]
    sub: Option<String>,
    /// Only events by the token with this id.
    #[arg(long, value_name = "ID")]
    jti: Option<String>,
    /// Only events of this cache (destroyed caches included).
    #[arg(long, value_name = "NAME")]
    cache: Option<String>,
    /// Only events of this kind (push, replace, delete, cache-create, …).
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Instead of printing: delete events older than this duration (the
    /// log's only delete; run it from cron to bound its size).
    #[arg(long, value_name = "DURATION", conflicts_with_all = ["since", "sub", "jti", "cache", "kind", "json"])]
    prune_before: Option<String>,
}

/// `--since`: a duration back from `now`, or an absolute RFC 3339 time.
pub fn parse_since(s: &str, now: i64) -> anyhow::Result<i64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s.trim()) {
        let secs = t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        return Ok(secs);
    }
    let d = parse_validity(s).with_context(|| {
        format!("--since {s:?}: expected a duration (7d, 36h) or an RFC 3339 time")
    })?;
    Ok(now - d.as_secs() as i64)
}

impl Audit {
    /// Prints matching events, oldest first, or prunes.
    pub async fn run(self, config: &Config) -> anyhow::Result<()> {
        let db = crate::open_db(config).await?;
        let mut conn = db.conn().await?;
        let now = unix_now();
        if let Some(p) = &self.prune_before {
            let d = parse_validity(p).with_context(|| format!("--prune-before {p:?}"))?;
            let before = now - d.as_secs() as i64;
            let n = audit::prune_before(conn.raw(), before).await?;
            println!("deleted {n} audit events older than {}", fmt_time(before));
            return Ok(());
        }
        let filter = AuditFilter {
            since: self
                .since
                .as_deref()
                .map(|s| parse_since(s, now))
                .transpose()?,
            subject: self.sub,
            jti: self.jti,
            cache: self.cache,
            kind: self.kind,
        };
        if !self.json {
            println!(
                "{:<20}  {:<15}  {:<16}  {:<24}  {:<26}  {:<15}  WHAT",
                "TIME", "KIND", "CACHE", "SUBJECT", "JTI", "CLIENT"
            );
        }
        let mut after = 0;
        loop {
            let page = audit::list(conn.raw(), &filter, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for r in &page {
                if self.json {
                    println!("{}", serde_json::to_string(r)?);
                } else {
                    println!("{}", table_line(r));
                }
            }
        }
        Ok(())
    }
}

/// One event as a table row; `-` for what it does not have.
fn table_line(r: &AuditRecord) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let what = match (&r.store_path, &r.nar_hash) {
        (Some(p), Some(h)) => format!("{p} {h}"),
        (Some(p), None) => p.clone(),
        _ => String::new(),
    };
    let detail = match r.detail.as_object() {
        Some(m) if m.is_empty() => String::new(),
        _ => r.detail.to_string(),
    };
    let what = [what, detail]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{:<20}  {:<15}  {:<16}  {:<24}  {:<26}  {:<15}  {what}",
        fmt_time(r.at),
        r.kind,
        dash(&r.cache),
        dash(&r.subject),
        dash(&r.jti),
        dash(&r.client_addr),
    )
    .trim_end()
    .to_owned()
}

/// `path-info --cache NAME PATH`: one path of a cache, with who pushed it.
#[derive(Debug, Args)]
pub struct PathInfo {
    /// The cache.
    #[arg(long, value_name = "NAME")]
    cache: String,
    /// Store path (`/nix/store/<hash>-<name>`), base name, or hash part.
    path: String,
}

impl PathInfo {
    /// Prints the path's record; fails when the cache lacks it.
    pub async fn run(self, config: &Config) -> anyhow::Result<()> {
        let name = self.cache.parse().context("--cache")?;
        let base = self.path.rsplit('/').next().unwrap_or(&self.path);
        let hash: StorePathHash = base
            .get(..32)
            .unwrap_or(base)
            .parse()
            .with_context(|| format!("{:?} is not a store path or hash", self.path))?;
        let db = crate::open_db(config).await?;
        let mut conn = db.conn().await?;
        let cache = caches::get_by_name(conn.raw(), &name)
            .await?
            .with_context(|| format!("no cache {name}"))?;
        let o = objects::find(conn.raw(), cache.id, &hash)
            .await?
            .with_context(|| format!("cache {name} has no path {hash}"))?;
        println!("store path:     {}", o.meta.store_path);
        println!("nar hash:       {}", o.nar.nar_hash);
        println!("nar size:       {}", o.nar.nar_size);
        println!("nar state:      {:?}", o.nar.state);
        println!("pushed at:      {}", fmt_time(o.created_at));
        println!(
            "pushed by:      {}",
            o.created_by.as_deref().unwrap_or("(not recorded)")
        );
        println!("last accessed:  {}", fmt_time(o.last_accessed_at));
        let references: Vec<String> = o.meta.references.iter().map(|r| r.to_string()).collect();
        println!("references:     {}", references.join(" "));
        Ok(())
    }
}
