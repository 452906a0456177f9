//! `gc`, `stats`, `verify`, `repack`: maintenance run from the operator's shell.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use larder_shared::bootstrap;
use larder_shared::config::Config;
use larder_shared::db::{stats, unix_now};
use larder_worker::jobs::{gc, verify};
use larder_worker::repack;
use larder_worker::{Services, gc_dry_run};

async fn services(config: &Config) -> anyhow::Result<Services> {
    let opened = bootstrap::open(config, 4)
        .await
        .context("opening database and storage")?;
    opened.db.migrate().await.context("applying migrations")?;
    larder_shared::bootstrap::prepare_signing_keys(config, &opened.db)
        .await
        .context("sealing signing keys")?;
    Ok(Services::new(
        Arc::new(config.clone()),
        opened.db,
        opened.storage,
        opened.staging,
    ))
}

fn holder() -> String {
    format!("larder-admin-{}", std::process::id())
}

/// Runs one GC now and prints what it freed; with `dry_run`, prints what
/// would expire instead (text, or JSON with `json`).
pub async fn run_gc(config: &Config, dry_run: bool, json: bool) -> anyhow::Result<()> {
    let svc = services(config).await?;
    if dry_run {
        let report = gc_dry_run::dry_run(&svc, unix_now()).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", gc_dry_run::render_dry_run(&report));
        }
        return Ok(());
    }
    match gc::run(&svc, unix_now(), &holder()).await? {
        Some(r) => {
            println!("expired paths:   {}", r.objects_expired);
            println!("deleted NARs:    {}", r.nars_deleted);
            println!("deleted chunks:  {}", r.chunks_deleted);
            println!(
                "freed bytes:     {} ({})",
                r.bytes_freed,
                human_bytes(r.bytes_freed)
            );
            println!("orphan objects:  {}", r.orphan_objects_deleted);
            Ok(())
        }
        None => {
            anyhow::bail!("another garbage collection is running; try again when it has finished")
        }
    }
}

/// Prints global statistics (and per cache).
pub async fn run_stats(config: &Config, json: bool) -> anyhow::Result<()> {
    let svc = services(config).await?;
    let mut conn = svc.db.conn().await?;
    let g = stats::global(conn.raw()).await?;
    let caches = larder_shared::db::caches::list(conn.raw()).await?;
    let mut per = Vec::new();
    for c in &caches {
        per.push((c.name.to_string(), stats::cache(conn.raw(), c.id).await?));
    }
    if json {
        let v = serde_json::json!({"global": g, "caches": per.iter().map(|(n, s)| serde_json::json!({"name": n, "stats": s})).collect::<Vec<_>>()});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("caches:            {}", g.caches);
    println!("paths:             {}", g.objects);
    println!(
        "logical NAR bytes: {} ({})",
        g.nar_bytes,
        human_bytes(g.nar_bytes as u64)
    );
    println!(
        "distinct NARs:     {} ({})",
        g.nars,
        human_bytes(g.unique_nar_bytes as u64)
    );
    println!(
        "chunks:            {} ({} uncompressed)",
        g.chunks,
        human_bytes(g.chunk_bytes as u64)
    );
    println!(
        "stored bytes:      {} ({})",
        g.stored_bytes,
        human_bytes(g.stored_bytes as u64)
    );
    println!(
        "packs:             {} ({}, of which {} dead: the compaction backlog)",
        g.packs,
        human_bytes(g.pack_bytes as u64),
        human_bytes(g.pack_dead_bytes as u64)
    );
    println!("unpacked chunks:   {} (one object each)", g.unpacked_chunks);
    println!(
        "staged:            {} NARs ({})",
        g.staged_nars,
        human_bytes(g.staged_bytes as u64)
    );
    println!("dedup ratio:       {:.2} (logical / stored)", g.dedup_ratio);
    for (name, s) in per {
        println!(
            "  {name}: {} paths, {} logical, {} stored, ratio {:.2}",
            s.objects,
            human_bytes(s.nar_bytes as u64),
            human_bytes(s.stored_bytes as u64),
            s.dedup_ratio
        );
    }
    Ok(())
}

/// `repack [--archive]`: moves chunks stored one per object into packs (and
/// recompresses packs below the archive level) and prints what it did.
pub async fn run_repack(config: &Config, archive: bool) -> anyhow::Result<()> {
    let svc = services(config).await?;
    let r = repack::run(&svc, unix_now(), archive).await?;
    println!(
        "chunks moved:     {} ({}) into {} packs",
        r.chunks_moved,
        human_bytes(r.bytes_moved),
        r.packs_written
    );
    println!(
        "objects retired:  {} (GC deletes them once the grace period has passed)",
        r.objects_retired
    );
    if archive {
        println!(
            "recompressed:     {} chunks, {} smaller",
            r.chunks_recompressed,
            human_bytes(r.bytes_saved)
        );
    }
    Ok(())
}

/// `verify [--repair]`.
#[derive(Debug, Args)]
pub struct Verify {
    /// Delete storage objects the database does not know (chunks and packs
    /// older than the grace period, staging objects older than `[staging] max-age`).
    #[arg(long)]
    repair: bool,
}

impl Verify {
    /// Runs verify and prints its report; exit status 1 if anything was wrong.
    pub async fn run(self, config: &Config) -> anyhow::Result<bool> {
        let svc = services(config).await?;
        let r = verify::run(&svc, unix_now(), self.repair).await?;
        println!("chunks checked:       {}", r.chunks_checked);
        println!("orphan objects:       {}", r.orphan_objects.len());
        for k in &r.orphan_objects {
            println!("  {k}");
        }
        if self.repair {
            println!("orphans deleted:      {}", r.orphans_deleted);
        }
        // Not a fault: a writer's intent names them (docs/gc.md).
        println!("pending writes:       {}", r.pending_writes.len());
        for k in &r.pending_writes {
            println!(
                "  {k} (being written, or left by a killed writer: GC deletes it after the grace period)"
            );
        }
        println!("orphan staging:       {}", r.orphan_staging.len());
        for k in &r.orphan_staging {
            println!("  {k}");
        }
        if self.repair {
            println!("staging deleted:      {}", r.orphan_staging_deleted);
        }
        println!("damaged chunks:       {}", r.damaged_chunks.len());
        for (h, p) in &r.damaged_chunks {
            println!("  {h}: {p}");
        }
        println!("NARs marked broken:   {}", r.nars_marked_broken);
        for (cache, path) in &r.affected_paths {
            println!("  {cache}: {path} (push it again to repair)");
        }
        Ok(r.orphan_objects.is_empty()
            && r.orphan_staging.is_empty()
            && r.damaged_chunks.is_empty())
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", UNITS[i])
}
