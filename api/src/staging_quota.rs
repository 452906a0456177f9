//! The staging quota (`[staging] max-bytes`, `max-nars`): backpressure for
//! pushes while workers fall behind, so a backlog cannot fill the staging
//! disk or bucket (docs/operations.md "Scaling").
//!
//! Checked before an Attic-API upload's body is read (and before a
//! chunk-level push's prepare reads its chunks back), against the
//! database's staged-not-ingested totals, read at most once a second per
//! replica. Those count verified copies no NAR row holds yet too (a
//! prepared NAR waiting for its publish, a `nix copy` NAR for its
//! narinfo): they fill staging as much as a NAR waiting for ingest. The
//! quota is soft: uploads admitted in the same second, and those already
//! streaming, may pass it. Stock `nix copy` uploads are never refused by
//! it (docs/protocol.md "Staging quota": Nix 2.8 hangs on a retried PUT,
//! and any other refusal fails the push), but they count.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use larder_shared::config::StagingConfig;
use larder_shared::db::Db;
use larder_shared::db::nars::{self, StagedTotals};
use larder_shared::db::staging_intents;

use crate::error::{ApiError, ApiResult};

/// How long one reading of the totals is trusted.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// What a refused client is told to wait (`Retry-After`), in seconds:
/// short enough that a drained backlog is noticed soon, long enough that
/// a crowd of waiting clients costs the server little.
pub const RETRY_AFTER_SECS: u64 = 5;

/// The configured limits and the last reading of the staged totals.
#[derive(Debug)]
pub struct StagingQuota {
    max_bytes: u64,
    max_nars: u64,
    last: Mutex<Option<(Instant, StagedTotals)>>,
}

impl StagingQuota {
    /// The quota of `[staging]`; 0 means no limit of that kind.
    pub fn new(config: &StagingConfig) -> Self {
        Self {
            max_bytes: config.max_bytes,
            max_nars: config.max_nars,
            last: Mutex::new(None),
        }
    }

    /// Whether either limit is set (else [`Self::admit`] reads nothing).
    pub fn is_limited(&self) -> bool {
        self.max_bytes > 0 || self.max_nars > 0
    }

    /// `Ok` when a new NAR may be staged, [`ApiError::StagingFull`] when
    /// staging already holds the quota's worth of NARs awaiting ingest.
    pub async fn admit(&self, db: &Db) -> ApiResult<()> {
        if !self.is_limited() {
            return Ok(());
        }
        let totals = self.totals(db).await?;
        let full_nars = self.max_nars > 0 && totals.nars.max(0) as u64 >= self.max_nars;
        let full_bytes = self.max_bytes > 0 && totals.bytes.max(0) as u64 >= self.max_bytes;
        if full_nars || full_bytes {
            return Err(ApiError::StagingFull {
                staged_nars: totals.nars.max(0) as u64,
                staged_bytes: totals.bytes.max(0) as u64,
                retry_after: RETRY_AFTER_SECS,
            });
        }
        Ok(())
    }

    /// Counts a NAR this replica just staged into the last reading, so its
    /// own uploads in the same second see it (others' and ingests show at
    /// the next reading).
    pub fn note_staged(&self, nar_size: u64) {
        if let Some((_, totals)) = self.lock().as_mut() {
            totals.nars += 1;
            totals.bytes = totals.bytes.saturating_add(nar_size as i64);
        }
    }

    async fn totals(&self, db: &Db) -> ApiResult<StagedTotals> {
        if let Some((at, totals)) = *self.lock()
            && at.elapsed() < FRESH_FOR
        {
            return Ok(totals);
        }
        let totals = {
            let mut conn = db.conn().await?;
            let mut totals = nars::staged_totals(conn.raw()).await?;
            let (copies, bytes) = staging_intents::verified_totals(conn.raw()).await?;
            totals.nars += copies;
            totals.bytes = totals.bytes.saturating_add(bytes);
            totals
        };
        *self.lock() = Some((Instant::now(), totals));
        Ok(totals)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, StagedTotals)>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}
