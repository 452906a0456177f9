//! `import-attic --from ATTIC_SERVER_TOML [--cache NAME]... [--dry-run]`:
//! the operator's side of [`larder_api::attic_import`]: opens both sides,
//! runs one pass, prints the summary, the `[jwt]` lines and what could not
//! be carried over.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use larder_api::attic_import::source::AtticConfig;
use larder_api::attic_import::{self, Options, Report, Target};
use larder_shared::bootstrap;
use larder_shared::config::Config;
use larder_shared::signing_keys::Kek;

/// `import-attic`.
#[derive(Debug, Args)]
pub struct ImportAttic {
    /// Attic's server.toml (its database URL, storage and JWT settings are read from it).
    #[arg(long)]
    from: PathBuf,
    /// Import only this cache (repeatable; default: every cache).
    #[arg(long = "cache")]
    caches: Vec<String>,
    /// Read everything, write nothing: print what a run would do.
    #[arg(long)]
    dry_run: bool,
    /// Stop after this many paths (a trial run; run again to continue).
    #[arg(long)]
    limit: Option<usize>,
}

impl ImportAttic {
    /// Runs one pass; `Ok(false)` when anything failed (exit status 1).
    pub async fn run(self, config: &Config) -> anyhow::Result<bool> {
        let attic = AtticConfig::load(&self.from, |k| std::env::var(k).ok())?;
        let opened = bootstrap::open(config, 4)
            .await
            .context("opening Larder's database and storage")?;
        opened.db.migrate().await.context("applying migrations")?;
        larder_shared::bootstrap::prepare_signing_keys(config, &opened.db)
            .await
            .context("sealing signing keys")?;
        let target = Target {
            db: opened.db.clone(),
            staging: opened.staging.clone(),
            kek: Kek::require(&config.signing)?,
        };
        let opts = Options {
            caches: self.caches,
            dry_run: self.dry_run,
            limit: self.limit,
        };
        let report = attic_import::run(&attic, &target, &opts).await?;
        opened.db.close().await;
        print_report(&report, self.dry_run);
        println!();
        println!("# Keep every Attic token valid: put these lines in larder.toml");
        print!("{}", attic.jwt.larder_toml());
        let mut notes = attic.not_carried.clone();
        if let Some(p) = &attic.default_retention_period {
            match humantime::parse_duration(p) {
                Ok(d)
                    if d.as_secs()
                        != config.garbage_collection.default_retention_period.as_secs() =>
                {
                    notes.push(format!(
                        "garbage-collection.default-retention-period: Attic {p:?}, Larder {}s (caches without their own period follow Larder's)",
                        config.garbage_collection.default_retention_period.as_secs()
                    ));
                }
                _ => {}
            }
        }
        if !notes.is_empty() {
            println!();
            println!("# Attic settings not carried over:");
            for n in notes {
                println!("#   {n}");
            }
        }
        Ok(report.failures.is_empty())
    }
}

fn print_report(r: &Report, dry_run: bool) {
    let would = if dry_run { "would be " } else { "" };
    println!(
        "{}",
        if dry_run {
            "Dry run: nothing was written."
        } else {
            "Import pass finished."
        }
    );
    println!("caches {would}created:  {}", r.caches_created);
    println!("caches {would}updated:  {}", r.caches_updated);
    println!("caches unchanged:   {}", r.caches_unchanged);
    println!(
        "paths {would}staged:   {} ({} NAR bytes, ingested by the workers)",
        r.paths_staged, r.bytes_staged
    );
    println!(
        "paths {would}linked:   {} (NAR already in Larder)",
        r.paths_linked
    );
    println!(
        "paths present:      {} (same NarHash; skipped)",
        r.paths_present
    );
    println!(
        "paths pending:      {} (upload unfinished in Attic; run again later)",
        r.paths_pending
    );
    if !dry_run && r.elapsed_secs > 0.0 {
        println!(
            "rate:               {:.1} MiB/s over {:.1} s",
            r.bytes_staged as f64 / r.elapsed_secs / (1024.0 * 1024.0),
            r.elapsed_secs
        );
    }
    if r.stopped_at_limit {
        println!("stopped at --limit: run again to continue");
    }
    println!("failures:           {}", r.failures.len());
    for f in &r.failures {
        match &f.store_path {
            Some(p) => println!("  {}: {p}: {}", f.cache, f.reason),
            None => println!("  {}: {}", f.cache, f.reason),
        }
    }
}
