//! Prometheus metrics at `GET /metrics`: counters kept in memory per replica.
//!
//! Per-cache labels would reveal private caches' names and activity, so
//! without `[metrics] token` the endpoint is open and private caches are
//! folded into `cache="_private"`; with a token configured, only requests
//! bearing it are answered, with every cache labelled.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use larder_shared::db::caches::CacheRecord;
use larder_shared::db::nars::StagedTotals;
use larder_shared::db::packs::PackTotals;

/// Counter names and help texts.
const HELP: &[(&str, &str)] = &[
    (
        "larder_uploads_total",
        "Uploads accepted, by cache and kind (uploaded, deduplicated).",
    ),
    (
        "larder_upload_bytes_total",
        "Uncompressed NAR bytes of accepted uploads.",
    ),
    (
        "larder_uploads_refused_total",
        "Uploads refused before their body was read, by cache and reason (staging_full: the staging quota).",
    ),
    (
        "larder_narinfo_requests_total",
        "narinfo lookups, by cache and result (hit, miss).",
    ),
    (
        "larder_nar_requests_total",
        "NAR downloads started, by cache and representation (nar, zst).",
    ),
    (
        "larder_nar_bytes_total",
        "Bytes of NAR downloads started (their Content-Length).",
    ),
];

/// Counters of this replica.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, String, &'static str), u64>>,
}

impl Metrics {
    fn add(&self, name: &'static str, cache: &CacheRecord, kind: &'static str, n: u64) {
        let label = if cache.is_public {
            cache.name.to_string()
        } else {
            format!("\u{0}{}", cache.name)
        };
        let mut map = match self.counters.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *map.entry((name, label, kind)).or_default() += n;
    }

    /// An accepted upload.
    pub fn upload(&self, cache: &CacheRecord, deduplicated: bool, nar_size: u64) {
        let kind = if deduplicated {
            "deduplicated"
        } else {
            "uploaded"
        };
        self.add("larder_uploads_total", cache, kind, 1);
        self.add("larder_upload_bytes_total", cache, "", nar_size);
    }

    /// An upload refused because the staging quota was reached.
    pub fn staging_full(&self, cache: &CacheRecord) {
        self.add("larder_uploads_refused_total", cache, "staging_full", 1);
    }

    /// A narinfo lookup.
    pub fn narinfo(&self, cache: &CacheRecord, hit: bool) {
        self.add(
            "larder_narinfo_requests_total",
            cache,
            if hit { "hit" } else { "miss" },
            1,
        );
    }

    /// A NAR download of `len` bytes.
    pub fn nar(&self, cache: &CacheRecord, zstd: bool, len: u64) {
        self.add(
            "larder_nar_requests_total",
            cache,
            if zstd { "zst" } else { "nar" },
            1,
        );
        self.add("larder_nar_bytes_total", cache, "", len);
    }

    /// Prometheus text; private caches are named only when `reveal`.
    pub fn render(&self, reveal: bool) -> String {
        let map = match self.counters.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let mut folded: BTreeMap<(&str, String, &str), u64> = BTreeMap::new();
        for ((name, label, kind), v) in map {
            let label = match label.strip_prefix('\u{0}') {
                Some(private) if reveal => private.to_owned(),
                Some(_) => "_private".to_owned(),
                None => label,
            };
            *folded.entry((name, label, kind)).or_default() += v;
        }
        let mut out = String::new();
        for (name, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((n, cache, kind), v) in folded.iter().filter(|((n, _, _), _)| n == name) {
                let key = match *n {
                    "larder_uploads_total" => "kind",
                    "larder_uploads_refused_total" => "reason",
                    "larder_narinfo_requests_total" => "result",
                    "larder_nar_requests_total" => "representation",
                    _ => "",
                };
                if key.is_empty() {
                    let _ = writeln!(out, "{n}{{cache=\"{cache}\"}} {v}");
                } else {
                    let _ = writeln!(out, "{n}{{cache=\"{cache}\",{key}=\"{kind}\"}} {v}");
                }
            }
        }
        // Storage requests, packs, moves and jobs: process-wide, so the
        // in-process workers' show here once, beside the API's own.
        larder_shared::metrics::render_process(&mut out);
        out
    }
}

/// Cluster-wide pack gauges from the database (every replica reports the
/// same values): compaction and recompression progress is these backlogs
/// shrinking, whichever worker runs the GC.
pub fn render_pack_totals(out: &mut String, t: &PackTotals) {
    for (name, help, v) in [
        ("larder_packs", "Chunk packs in storage.", t.packs),
        (
            "larder_pack_bytes",
            "Bytes of chunk packs in storage.",
            t.bytes,
        ),
        (
            "larder_pack_dead_bytes",
            "Bytes in packs no chunk uses any more: the compaction backlog.",
            t.bytes - t.live_bytes,
        ),
        (
            "larder_packs_retired",
            "Packs compaction emptied, deleted after the grace period.",
            t.retired,
        ),
        (
            "larder_cold_packs",
            "Packs older than archive-after below archive-level: the recompression backlog.",
            t.cold_packs,
        ),
        (
            "larder_cold_pack_bytes",
            "Bytes of the packs awaiting recompression.",
            t.cold_bytes,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
            v.max(0)
        );
    }
}

/// Cluster-wide backlog gauges from the database (every replica reports
/// the same values): what tells an operator to add workers
/// (docs/operations.md "Scaling").
pub fn render_backlog(out: &mut String, b: &Backlog) {
    let name = "larder_queue_pending_jobs";
    let _ = writeln!(
        out,
        "# HELP {name} Queued jobs waiting for a worker, by queue.\n# TYPE {name} gauge"
    );
    for (queue, n) in &b.pending_jobs {
        let _ = writeln!(out, "{name}{{queue=\"{queue}\"}} {}", (*n).max(0));
    }
    let lag = b.staged.oldest_created_at.map_or(0, |t| (b.now - t).max(0));
    for (name, help, v) in [
        (
            "larder_staged_nars",
            "NARs staged and not yet ingested.",
            b.staged.nars,
        ),
        (
            "larder_staged_bytes",
            "Uncompressed bytes of the NARs staged and not yet ingested.",
            b.staged.bytes,
        ),
        (
            "larder_ingest_lag_seconds",
            "Age of the oldest NAR staged and not yet ingested (0 when none is).",
            lag,
        ),
        (
            "larder_staging_quota_nars",
            "[staging] max-nars: staged NARs past which Attic-API uploads get 503 (0: no limit).",
            b.quota_nars as i64,
        ),
        (
            "larder_staging_quota_bytes",
            "[staging] max-bytes: staged bytes past which Attic-API uploads get 503 (0: no limit).",
            b.quota_bytes as i64,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
            v.max(0)
        );
    }
}

/// What [`render_backlog`] shows.
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    /// `(queue, waiting jobs)`; every queue Larder has, 0 included.
    pub pending_jobs: Vec<(String, i64)>,
    /// The staged NARs.
    pub staged: StagedTotals,
    /// `[staging] max-nars`.
    pub quota_nars: u64,
    /// `[staging] max-bytes`.
    pub quota_bytes: u64,
    /// Unix seconds, for the lag.
    pub now: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(name: &str, public: bool) -> CacheRecord {
        CacheRecord {
            id: larder_shared::db::CacheId(1),
            name: name.parse().unwrap(),
            is_public: public,
            store_dir: Default::default(),
            priority: 41,
            upstream_cache_key_names: vec![],
            retention_period: None,
            created_at: 0,
        }
    }

    #[test]
    fn private_caches_are_folded_unless_revealed() {
        let m = Metrics::default();
        m.narinfo(&cache("pub", true), true);
        m.narinfo(&cache("secret-a", false), false);
        m.narinfo(&cache("secret-b", false), false);
        m.upload(&cache("secret-a", false), false, 100);
        let open = m.render(false);
        assert!(open.contains("larder_narinfo_requests_total{cache=\"pub\",result=\"hit\"} 1"));
        assert!(
            open.contains("larder_narinfo_requests_total{cache=\"_private\",result=\"miss\"} 2")
        );
        assert!(!open.contains("secret"));
        let full = m.render(true);
        assert!(full.contains("cache=\"secret-a\",result=\"miss\"} 1"));
        assert!(full.contains("larder_upload_bytes_total{cache=\"secret-a\"} 100"));
    }

    #[test]
    fn backlog_gauges() {
        let mut out = String::new();
        let b = Backlog {
            pending_jobs: vec![("larder.ingest-nar".into(), 3)],
            staged: StagedTotals {
                nars: 3,
                bytes: 4096,
                oldest_created_at: Some(1000),
            },
            quota_nars: 10,
            quota_bytes: 0,
            now: 1042,
        };
        render_backlog(&mut out, &b);
        assert!(out.contains("larder_queue_pending_jobs{queue=\"larder.ingest-nar\"} 3\n"));
        assert!(out.contains("\nlarder_staged_bytes 4096\n"), "{out}");
        assert!(out.contains("\nlarder_ingest_lag_seconds 42\n"), "{out}");
        assert!(out.contains("\nlarder_staging_quota_nars 10\n"), "{out}");
        let mut idle = String::new();
        render_backlog(&mut idle, &Backlog::default());
        assert!(idle.contains("\nlarder_ingest_lag_seconds 0\n"), "{idle}");
    }

    /// The API's counters and the process-wide ones, each family once.
    #[test]
    fn every_family_is_rendered_once() {
        let text = Metrics::default().render(true);
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let mut unique = types.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(types.len(), unique.len(), "{text}");
        assert!(text.contains("# TYPE larder_uploads_total counter"));
        assert!(text.contains("# TYPE larder_storage_requests_total counter"));
        assert!(text.contains("# TYPE larder_jobs_total counter"));
    }
}
