//! `larder-admin import-attic`: moves a running Attic deployment into
//! Larder (docs/operations.md "Moving from Attic"). Attic's config names its database and storage
//! (local or S3); its database is read through its own schema, read-only ([`attic_db`]); each
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
mod options;
mod parse;
mod pass;
mod report;
pub mod source;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use larder_shared::storage::s3::S3Storage;

use self::nar_source::ChunkSource;
use self::source::{AtticConfig, AtticStorage};

pub use self::options::{Options, Target};
use self::pass::Pass;
pub use self::report::{Failure, Report};

/// Runs one import pass.
pub async fn run(attic: &AtticConfig, target: &Target, opts: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let source = match &attic.storage {
        AtticStorage::Local(p) => ChunkSource::Local(p.clone()),
        AtticStorage::S3(s3) => ChunkSource::S3 {
            bucket: s3.bucket.clone(),
            storage: Arc::new(S3Storage::new(s3).context("Attic's S3 storage")?),
        },
        AtticStorage::Unsupported(kind) => {
            anyhow::bail!("Attic's storage is {kind:?}; only local and S3 storage can be imported")
        }
    };
    let db = attic_db::open(&attic.database_url)
        .await
        .context("opening Attic's database read-only")?;
    let mut report = Report::default();
    let all = attic_db::caches(&db)
        .await
        .context("reading Attic's caches")?;
    for wanted in &opts.caches {
        if !all.iter().any(|c| &c.name == wanted) {
            report.fail(wanted, None, "no such cache in Attic");
        }
    }
    let mut pass = Pass {
        db: &db,
        target,
        source,
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
    db.close().await;
    let mut report = pass.report;
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}
