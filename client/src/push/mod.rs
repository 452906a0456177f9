//! `larder push [SERVER:]CACHE PATH...`: upload store paths with their
//! closures, skipping what the cache has and what its upstream serves.
//!
//! Per batch of roots: closure (`nix-store -qR`) → metadata (`nix
//! path-info --json`) → upstream filter (signatures) → `get-missing-paths`
//! → uploads, `-j` at a time, references first. Only `w` is needed (plus
//! `r` or `w` for the cache config), so a push-only CI token works on a
//! private cache.

pub mod chunked;
pub mod closure;
pub mod commit;
pub mod error;
pub mod filter;
pub mod gate;
pub mod inline;
pub mod progress;
mod schedule;
pub mod stdin;
pub mod upload;

use std::collections::HashSet;
use std::fmt;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::oneshot;

use larder_core::CacheName;
use larder_core::nix::store_path::{StoreDir, StorePath};

use crate::api::{ApiClient, ApiError};
use crate::nix::{Nix, NixError};
use filter::UpstreamFilter;
use larder_core::wire::UploadKind;
use progress::Progress;
use schedule::Schedule;

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
    /// Upload every path even if the cache has it, replacing a path it
    /// holds with another NAR (needs `d`; first push wins otherwise).
    pub replace: bool,
    /// Upload whole NARs even to a server with chunk-level push.
    pub whole_nars: bool,
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
    /// Bytes on the wire (NARs, or chunk frames).
    pub bytes_sent: u64,
    /// NAR bytes chunk push did not send: the cache had those chunks.
    pub bytes_deduplicated: u64,
}

/// Totals over several pushes (`larder queue drain` runs one per target).
impl std::ops::AddAssign for Summary {
    fn add_assign(&mut self, s: Summary) {
        self.pushed += s.pushed;
        self.deduplicated += s.deduplicated;
        self.already_present += s.already_present;
        self.upstream += s.upstream;
        self.failed += s.failed;
        self.bytes_sent += s.bytes_sent;
        self.bytes_deduplicated += s.bytes_deduplicated;
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pushed {}, already present {}, deduplicated {}, failed {} ({} sent, {} deduplicated)",
            self.pushed,
            self.already_present,
            self.deduplicated,
            self.failed,
            indicatif::HumanBytes(self.bytes_sent),
            indicatif::HumanBytes(self.bytes_deduplicated),
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
    /// The cache's chunking when the server takes chunk-level push.
    chunking: Option<commit::Chunking>,
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
    let chunking = if options.whole_nars {
        None
    } else {
        chunked::detect(api, cache).await
    };
    let mut pusher = Pusher {
        api,
        cache,
        nix,
        filter,
        progress,
        options,
        chunking,
        seen: HashSet::new(),
        summary: Summary::default(),
    };
    let result = pusher.run().await;
    pusher.progress.finish();
    (pusher.summary.bytes_sent, pusher.summary.bytes_deduplicated) = pusher.progress.totals();
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
        // Replacing must upload what the cache already has.
        let missing = if self.options.replace {
            infos
        } else {
            let (missing, present) = filter::drop_present(self.api, self.cache, infos).await?;
            self.summary.already_present += present;
            missing
        };
        let uploads = closure::references_first(missing);
        let bytes = uploads.iter().map(|i| i.nar_size).sum();
        self.progress.add_work(uploads.len() as u64, bytes);

        let (api, nix, cache, progress) = (self.api, &self.nix, self.cache, &self.progress);
        let replace = self.options.replace;
        let chunking = self.chunking.as_ref();
        let jobs = self.options.jobs.max(1);
        let mut order = Schedule::new(&uploads);
        // Whole NARs start once their references are in (the upload is the
        // commit); chunk-level pushes start in references-first order as
        // soon as a slot is free and only their commits wait ([`gate::Gate`]).
        let pipelined = chunking.is_some();
        let mut gates: Vec<Option<oneshot::Sender<()>>> = std::iter::repeat_with(|| None)
            .take(uploads.len())
            .collect();
        let mut open = vec![false; uploads.len()];
        let mut next = 0;
        // Paths cutting and sending at once (the rest of `-j` wait for
        // their references' commits, or for a turn).
        let turns = Arc::new(tokio::sync::Semaphore::new(chunked::parallelism()));
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < jobs {
                let (i, mut gate) = if pipelined {
                    while next < uploads.len() && order.is_blocked(next) {
                        next += 1;
                    }
                    if next == uploads.len() {
                        break;
                    }
                    next += 1;
                    let i = next - 1;
                    while let Some(r) = order.next_ready() {
                        open[r] = true;
                    }
                    if open[i] {
                        (i, gate::Gate::open())
                    } else {
                        let (tx, rx) = oneshot::channel();
                        gates[i] = Some(tx);
                        (i, gate::Gate::new(rx))
                    }
                } else {
                    let Some(i) = order.next_ready() else { break };
                    (i, gate::Gate::open())
                };
                let info = &uploads[i];
                let turns = turns.clone();
                in_flight.push(async move {
                    if pipelined && let Ok(turn) = turns.acquire_owned().await {
                        gate = gate.with_turn(turn);
                    }
                    let tracker = progress.start(info);
                    let result = upload::upload(
                        api, nix, cache, info, &tracker, replace, chunking, &mut gate,
                    )
                    .await;
                    tracker.done(&result);
                    (i, result)
                });
            }
            let Some((i, result)) = in_flight.next().await else {
                break;
            };
            match result {
                Ok(UploadKind::Deduplicated) => self.summary.deduplicated += 1,
                Ok(UploadKind::Uploaded | UploadKind::Other) => self.summary.pushed += 1,
                // A path a failed reference blocked: counted as skipped.
                Err(_) if order.is_blocked(i) => {}
                Err(_) => self.summary.failed += 1,
            }
            order.finished(i, result.is_ok());
            if pipelined {
                while let Some(r) = order.next_ready() {
                    match gates[r].take() {
                        Some(tx) => {
                            let _ = tx.send(());
                        }
                        None => open[r] = true,
                    }
                }
                if result.is_err() {
                    // Paths waiting on a failed reference hear it and stop.
                    for (j, gate) in gates.iter_mut().enumerate() {
                        if gate.is_some() && order.is_blocked(j) {
                            *gate = None;
                        }
                    }
                }
            }
        }
        // Paths whose references failed were never committed: the cache
        // must not hold a path without its closure.
        self.summary.failed += order.skipped();
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
            ..Summary::default()
        };
        assert_eq!(
            s.to_string(),
            "pushed 2, already present 3, deduplicated 1, failed 0 (0 B sent, 0 B deduplicated)"
        );
        let s = Summary { upstream: 5, ..s };
        assert!(s.to_string().ends_with("(skipped 5 available upstream)"));
    }
}
