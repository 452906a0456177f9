//! What a push shows while it runs.
//!
//! On a terminal: indicatif bars (paths done / total, bytes with MB/s, one
//! line per upload in flight), failures and retries printed above them.
//! Otherwise (CI logs, post-build hooks): one plain line per uploaded path
//! on stdout, warnings on stderr, nothing that redraws.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use larder_core::nix::store_path::StoreDir;

use crate::nix::PathInfo;
use larder_core::wire::UploadKind;

use super::error::UploadError;

const TICK: Duration = Duration::from_millis(200);

/// The progress display of one push.
pub struct Progress {
    bars: Option<Bars>,
    store_dir: StoreDir,
    /// NAR bytes sent so far, over all uploads (a retry takes its bytes back).
    bytes_sent: AtomicU64,
    /// Bytes that went on the wire (whole NARs, or compressed chunk frames),
    /// retries included: what the summary reports as sent.
    wire_bytes: AtomicU64,
    /// NAR bytes chunk push did not send because the cache had them.
    dedup_bytes: AtomicU64,
}

struct Bars {
    multi: MultiProgress,
    paths: ProgressBar,
    bytes: ProgressBar,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Progress {
    /// Bars when `terminal`, plain lines otherwise.
    pub fn new(terminal: bool, store_dir: StoreDir) -> Arc<Self> {
        let bars = terminal.then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let paths = multi.add(ProgressBar::new(0));
            paths.set_style(style(
                "{spinner} {pos}/{len} paths [{elapsed_precise}] {msg}",
            ));
            paths.enable_steady_tick(TICK);
            let bytes = multi.add(ProgressBar::new(0));
            bytes.set_style(style(
                "  {bytes}/{total_bytes} {bytes_per_sec} [{wide_bar}] eta {eta}",
            ));
            Bars {
                multi,
                paths,
                bytes,
            }
        });
        Arc::new(Self {
            bars,
            store_dir,
            bytes_sent: AtomicU64::new(0),
            wire_bytes: AtomicU64::new(0),
            dedup_bytes: AtomicU64::new(0),
        })
    }

    /// Announces `paths` more uploads totalling `bytes` NAR bytes.
    pub fn add_work(&self, paths: u64, bytes: u64) {
        if let Some(b) = &self.bars {
            b.paths.inc_length(paths);
            b.bytes.inc_length(bytes);
        }
    }

    /// A message for the user, kept apart from the bars (stderr).
    pub fn warn(&self, line: &str) {
        match &self.bars {
            Some(b) => b.multi.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Starts tracking the upload of `info`.
    pub fn start(self: &Arc<Self>, info: &PathInfo) -> PathProgress {
        let bar = self.bars.as_ref().map(|b| {
            let bar = b.multi.add(ProgressBar::new(info.nar_size));
            bar.set_style(style("  {msg:.dim} {bytes}/{total_bytes} {bytes_per_sec}"));
            bar.set_message(info.path.name.to_string());
            bar
        });
        PathProgress {
            inner: Arc::new(PathState {
                progress: self.clone(),
                bar,
                path: info.path.to_absolute(&self.store_dir),
                sent: AtomicU64::new(0),
                started: Mutex::new(Instant::now()),
            }),
        }
    }

    fn add_bytes(&self, n: u64) {
        let total = self.bytes_sent.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(b) = &self.bars {
            b.bytes.set_position(total);
        }
    }

    fn take_bytes(&self, n: u64) {
        let total = self
            .bytes_sent
            .fetch_sub(n, Ordering::Relaxed)
            .saturating_sub(n);
        if let Some(b) = &self.bars {
            b.bytes.set_position(total);
        }
    }

    /// Bytes sent on the wire, and NAR bytes not sent because the cache had
    /// them, over the whole push.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.wire_bytes.load(Ordering::Relaxed),
            self.dedup_bytes.load(Ordering::Relaxed),
        )
    }

    /// Removes the bars (the summary is printed after).
    pub fn finish(&self) {
        if let Some(b) = &self.bars {
            b.paths.finish_and_clear();
            b.bytes.finish_and_clear();
            let _ = b.multi.clear();
        }
    }
}

/// Progress of one upload; clones share it (the NAR stream holds one).
#[derive(Clone)]
pub struct PathProgress {
    inner: Arc<PathState>,
}

struct PathState {
    progress: Arc<Progress>,
    bar: Option<ProgressBar>,
    path: String,
    sent: AtomicU64,
    started: Mutex<Instant>,
}

impl PathProgress {
    /// `n` more NAR bytes went out whole.
    pub fn sent(&self, n: u64) {
        self.inner
            .progress
            .wire_bytes
            .fetch_add(n, Ordering::Relaxed);
        self.advance(n);
    }

    /// Chunk push: `wire` bytes of compressed frames went out.
    pub fn frames_sent(&self, wire: u64) {
        self.inner
            .progress
            .wire_bytes
            .fetch_add(wire, Ordering::Relaxed);
    }

    /// Chunk push: `nar` more bytes of the NAR are dealt with, `dedup` of
    /// them without sending (the cache has those chunks).
    pub fn chunks_done(&self, nar: u64, dedup: u64) {
        self.inner
            .progress
            .dedup_bytes
            .fetch_add(dedup, Ordering::Relaxed);
        self.advance(nar);
    }

    /// The bars move by `n` NAR bytes.
    fn advance(&self, n: u64) {
        let s = &self.inner;
        s.sent.fetch_add(n, Ordering::Relaxed);
        s.progress.add_bytes(n);
        if let Some(bar) = &s.bar {
            bar.inc(n);
        }
    }

    /// A new attempt starts: the previous one's bytes no longer count.
    pub fn restart(&self) {
        let s = &self.inner;
        let previous = s.sent.swap(0, Ordering::Relaxed);
        s.progress.take_bytes(previous);
        if let Some(bar) = &s.bar {
            bar.set_position(0);
        }
        if let Ok(mut started) = s.started.lock() {
            *started = Instant::now();
        }
    }

    /// A transient failure that will be retried after `wait`.
    pub fn retrying(&self, error: &UploadError, wait: Duration) {
        self.inner.progress.warn(&format!(
            "retrying {} in {}: {error}",
            self.inner.path,
            humantime::format_duration(wait)
        ));
    }

    /// The server's staging is full: the upload waits `wait`, then tries
    /// again.
    pub fn waiting(&self, refusal: &crate::api::ApiError, wait: Duration) {
        let message = match refusal {
            crate::api::ApiError::Status { message, .. } => message.as_str(),
            _ => "staging is full",
        };
        self.inner.progress.warn(&format!(
            "waiting {} for the server to ingest its backlog before uploading {} ({message})",
            humantime::format_duration(Duration::from_secs(wait.as_secs().max(1))),
            self.inner.path,
        ));
    }

    /// The upload ended: counts it and, without bars, prints its line.
    pub fn done(&self, result: &Result<UploadKind, UploadError>) {
        let s = &self.inner;
        if let Some(bar) = &s.bar {
            bar.finish_and_clear();
            if let Some(b) = &s.progress.bars {
                b.multi.remove(bar);
            }
        }
        if let Some(b) = &s.progress.bars {
            b.paths.inc(1);
        }
        match result {
            Err(e) => s.progress.warn(&format!("failed {}: {e}", s.path)),
            Ok(kind) if s.progress.bars.is_none() => {
                let bytes = s.sent.load(Ordering::Relaxed);
                let secs = s
                    .started
                    .lock()
                    .map(|t| t.elapsed().as_secs_f64())
                    .unwrap_or_default();
                let rate = if secs > 0.0 { bytes as f64 / secs } else { 0.0 };
                let verb = match kind {
                    UploadKind::Deduplicated => "deduplicated",
                    UploadKind::Uploaded | UploadKind::Other => "pushed",
                };
                println!(
                    "{verb} {} ({}, {}/s)",
                    s.path,
                    HumanBytes(bytes),
                    HumanBytes(rate as u64)
                );
            }
            Ok(_) => {}
        }
    }
}
