//! `larder push [SERVER:]CACHE PATH...`: upload store paths with their
//! closures, skipping what the cache has and what its upstream serves.
//!
//! Per batch of roots: closure (`nix-store -qR`) → metadata (`nix
//! path-info --json`) → upstream filter (signatures) → `get-missing-paths`
//! → uploads, `-j` at a time, references first. Only `w` is needed (plus
//! `r` or `w` for the cache config), so a push-only CI token works on a
//! private cache.

pub mod closure;
pub mod filter;
pub mod progress;
pub mod stdin;
pub mod upload;

use std::collections::HashSet;
use std::fmt;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt as _, stream};

use larder_shared::CacheName;
use larder_shared::nix::store_path::{StoreDir, StorePath};

use crate::api::types::UploadKind;
use crate::api::{ApiClient, ApiError};
use crate::nix::{Nix, NixError};
use filter::UpstreamFilter;
use progress::Progress;

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Paths given on the command line.
    pub paths: Vec<PathBuf>,
    /// Push closures (the default) or only the paths themselves.
    pub closure: bool,
    /// Also read paths from stdin as they arrive.
    pub stdin: bool,
    /// Uploads in flight at once (at least 1).
    pub jobs: usize,
    /// Push paths signed by upstream keys too.
    pub ignore_upstream_filter: bool,
}

/// Why a push could not go ahead at all (per-path failures are counted in
/// the [`Summary`] instead).
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The server refused or failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The local Nix failed.
    #[error(transparent)]
    Nix(#[from] NixError),
    /// The cache serves another store directory than the local one: its
    /// narinfos would name paths that do not exist.
    #[error("cache {cache} is for store directory {cache_dir}, but the local store is {local}")]
    StoreDirMismatch {
        /// The cache.
        cache: CacheName,
        /// Its store directory.
        cache_dir: String,
        /// The local one.
        local: StoreDir,
    },
    /// Reading stdin failed.
    #[error("reading paths from stdin: {0}")]
    Stdin(std::io::Error),
}

/// Counts reported at the end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Uploaded, new to the server.
    pub pushed: usize,
    /// Uploaded, but the server already had the NAR (another cache).
    pub deduplicated: usize,
    /// Already in the cache; not uploaded.
    pub already_present: usize,
    /// Signed by an upstream key; not uploaded.
    pub upstream: usize,
    /// Failed.
    pub failed: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pushed {}, already present {}, deduplicated {}, failed {}",
            self.pushed, self.already_present, self.deduplicated, self.failed
        )?;
        if self.upstream > 0 {
            write!(f, " (skipped {} available upstream)", self.upstream)?;
        }
        Ok(())
    }
}

/// State of one `larder push` run.
struct Pusher<'a> {
    api: &'a ApiClient,
    cache: &'a CacheName,
    nix: Nix,
    filter: UpstreamFilter,
    progress: Arc<Progress>,
    options: &'a PushOptions,
    /// Paths already considered in this run (`--stdin` repeats itself).
    seen: HashSet<StorePath>,
    summary: Summary,
}

/// Runs the push and returns its counts.
pub async fn run(
    api: &ApiClient,
    cache: &CacheName,
    options: &PushOptions,
) -> Result<Summary, PushError> {
    let nix = Nix::from_env()?;
    let config = api.get_cache_config(cache).await?;
    if let Some(dir) = config.store_dir.as_deref()
        && dir != nix.store_dir().as_str()
    {
        return Err(PushError::StoreDirMismatch {
            cache: cache.clone(),
            cache_dir: dir.to_owned(),
            local: nix.store_dir().clone(),
        });
    }
    let filter = if options.ignore_upstream_filter {
        UpstreamFilter::default()
    } else {
        UpstreamFilter::new(config.upstream_cache_key_names.unwrap_or_default())
    };
    let progress = Progress::new(std::io::stderr().is_terminal(), nix.store_dir().clone());
    let mut pusher = Pusher {
        api,
        cache,
        nix,
        filter,
        progress,
        options,
        seen: HashSet::new(),
        summary: Summary::default(),
    };
    let result = pusher.run().await;
    pusher.progress.finish();
    result.map(|()| pusher.summary)
}

impl Pusher<'_> {
    async fn run(&mut self) -> Result<(), PushError> {
        if !self.options.paths.is_empty() {
            let roots = self
                .options
                .paths
                .iter()
                .map(|p| self.nix.resolve_path(p))
                .collect::<Result<Vec<_>, _>>()?;
            self.push_batch(&roots).await?;
        }
        if self.options.stdin {
            self.push_stdin().await?;
        }
        Ok(())
    }

    /// `--stdin`: a bad line or a failed batch is reported and counted,
    /// and the run goes on (a post-build hook must not die on one path).
    async fn push_stdin(&mut self) -> Result<(), PushError> {
        let mut rx = stdin::spawn_reader();
        while let Some(batch) = stdin::next_batch(&mut rx).await {
            let mut roots = Vec::new();
            for word in batch {
                let word = word.map_err(PushError::Stdin)?;
                match self.nix.resolve_path(Path::new(&word)) {
                    Ok(path) => roots.push(path),
                    Err(e) => {
                        self.progress.warn(&format!("skipping {word}: {e}"));
                        self.summary.failed += 1;
                    }
                }
            }
            if let Err(e) = self.push_batch(&roots).await {
                self.progress.warn(&format!(
                    "failed to push {} paths from stdin: {e}",
                    roots.len()
                ));
                self.summary.failed += roots.len();
            }
        }
        Ok(())
    }

    /// Pushes `roots` (and their closures unless `--no-closure`).
    async fn push_batch(&mut self, roots: &[StorePath]) -> Result<(), PushError> {
        let infos =
            closure::collect(&self.nix, roots, self.options.closure, &mut self.seen).await?;
        let (infos, upstream) = self.filter.split(infos);
        self.summary.upstream += upstream.len();
        let (missing, present) = filter::drop_present(self.api, self.cache, infos).await?;
        self.summary.already_present += present;
        let uploads = closure::references_first(missing);
        let bytes = uploads.iter().map(|i| i.nar_size).sum();
        self.progress.add_work(uploads.len() as u64, bytes);

        let (api, nix, cache, progress) = (self.api, &self.nix, self.cache, &self.progress);
        let results: Vec<_> = stream::iter(uploads)
            .map(|info| async move {
                let tracker = progress.start(&info);
                let result = upload::upload(api, nix, cache, &info, &tracker).await;
                tracker.done(&result);
                result
            })
            .buffer_unordered(self.options.jobs.max(1))
            .collect()
            .await;
        for result in results {
            match result {
                Ok(UploadKind::Deduplicated) => self.summary.deduplicated += 1,
                Ok(UploadKind::Uploaded | UploadKind::Other) => self.summary.pushed += 1,
                Err(_) => self.summary.failed += 1,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line() {
        let s = Summary {
            pushed: 2,
            deduplicated: 1,
            already_present: 3,
            upstream: 0,
            failed: 0,
        };
        assert_eq!(
            s.to_string(),
            "pushed 2, already present 3, deduplicated 1, failed 0"
        );
        let s = Summary { upstream: 5, ..s };
        assert!(s.to_string().ends_with("(skipped 5 available upstream)"));
    }
}
