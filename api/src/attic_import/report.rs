//! What an import run did, path by path.

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
    pub(super) fn fail(
        &mut self,
        cache: &str,
        store_path: Option<&str>,
        reason: impl Into<String>,
    ) {
        let reason = reason.into();
        tracing::warn!(cache, store_path, %reason, "not imported");
        self.failures.push(Failure {
            cache: cache.to_owned(),
            store_path: store_path.map(str::to_owned),
            reason,
        });
    }
}
