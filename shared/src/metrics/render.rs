//! The Prometheus text of the process-wide counters.

use std::fmt::Write as _;

use crate::chunk_store::pack_writer;
use crate::storage::requests;

use super::{jobs, moves};

/// `Content-Type` of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Appends every process-wide counter: storage requests, packs sealed,
/// chunks moved by compaction and recompression, jobs run; and the gauges
/// of jobs running now.
pub fn render_process(out: &mut String) {
    storage_requests(out);
    let (packs, bytes) = pack_writer::sealed_totals();
    let moved = moves::totals();
    for (name, help, v) in [
        (
            "larder_packs_written_total",
            "Chunk packs sealed by this process (ingest, compaction, recompression).",
            packs,
        ),
        (
            "larder_pack_bytes_written_total",
            "Bytes of chunk packs sealed by this process.",
            bytes,
        ),
        (
            "larder_chunks_moved_total",
            "Chunks compaction and recompression moved into new packs in this process.",
            moved.chunks_moved,
        ),
        (
            "larder_chunk_bytes_moved_total",
            "Stored bytes of those chunks, before the move.",
            moved.bytes_moved,
        ),
        (
            "larder_chunks_recompressed_total",
            "Chunks recompressed smaller at the archive level in this process.",
            moved.chunks_recompressed,
        ),
        (
            "larder_recompression_bytes_saved_total",
            "Stored bytes recompression shed in this process.",
            moved.bytes_saved,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    jobs_run(out);
    jobs_running(out);
}

/// `larder_storage_requests_total{op,result}`: requests this process sent to
/// a remote object store, however they ended.
fn storage_requests(out: &mut String) {
    let name = "larder_storage_requests_total";
    let _ = writeln!(
        out,
        "# HELP {name} Requests to remote object storage (S3), by operation and result (ok, error); a retried request counts once.\n# TYPE {name} counter"
    );
    for c in requests::snapshot() {
        let result = if c.ok { "ok" } else { "error" };
        let _ = writeln!(
            out,
            "{name}{{op=\"{}\",result=\"{result}\"}} {}",
            c.op.label(),
            c.count
        );
    }
}

/// `larder_jobs_total{kind,outcome}`.
fn jobs_run(out: &mut String) {
    let name = "larder_jobs_total";
    let _ = writeln!(
        out,
        "# HELP {name} Jobs and periodic tasks this process ran, by kind and outcome (ok, skipped, error).\n# TYPE {name} counter"
    );
    for (kind, outcome, n) in jobs::snapshot() {
        let _ = writeln!(
            out,
            "{name}{{kind=\"{kind}\",outcome=\"{}\"}} {n}",
            outcome.label()
        );
    }
}

/// `larder_jobs_in_flight{kind}` and `larder_job_slots{kind}`: in flight
/// near the slots, all the time, means this worker is saturated.
fn jobs_running(out: &mut String) {
    for (name, help, samples) in [
        (
            "larder_jobs_in_flight",
            "Jobs and periodic tasks running in this process now, by kind.",
            jobs::in_flight(),
        ),
        (
            "larder_job_slots",
            "Queued jobs of each kind this process runs at once (its worker concurrency).",
            jobs::slots(),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (kind, n) in samples {
            let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::moves::MoveCounts;

    fn rendered() -> String {
        let mut out = String::new();
        render_process(&mut out);
        out
    }

    #[test]
    fn storage_requests_are_counted_by_operation() {
        requests::record(requests::Op::UploadPart, false);
        let text = rendered();
        assert!(text.contains("# TYPE larder_storage_requests_total counter"));
        assert!(
            text.contains("larder_storage_requests_total{op=\"upload_part\",result=\"error\"} "),
            "{text}"
        );
    }

    #[test]
    fn jobs_are_counted_by_kind_and_outcome() {
        jobs::record("render-test", jobs::Outcome::Skipped);
        jobs::record("render-test", jobs::Outcome::Skipped);
        jobs::record("render-test", jobs::Outcome::Error);
        let text = rendered();
        assert!(
            text.contains("larder_jobs_total{kind=\"render-test\",outcome=\"skipped\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("larder_jobs_total{kind=\"render-test\",outcome=\"error\"} 1\n"));
    }

    #[test]
    fn moves_add_up() {
        let before = moves::totals();
        let m = MoveCounts {
            chunks_moved: 3,
            bytes_moved: 300,
            chunks_recompressed: 2,
            bytes_saved: 50,
        };
        moves::record(m);
        let after = moves::totals();
        assert!(after.chunks_moved >= before.chunks_moved + 3);
        assert!(after.bytes_saved >= before.bytes_saved + 50);
        let text = rendered();
        assert!(text.contains("# TYPE larder_recompression_bytes_saved_total counter\n"));
    }

    /// Every family once, each `# TYPE` line before its samples, every
    /// sample line `name{labels} value` or `name value`.
    #[test]
    fn text_is_well_formed() {
        jobs::record("render-test", jobs::Outcome::Ok);
        let text = rendered();
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or("");
                assert!(!families.contains(&name), "{name} twice:\n{text}");
                families.push(name);
            } else if !line.starts_with("# HELP ") {
                let (series, value) = line.rsplit_once(' ').expect("sample line");
                assert!(value.parse::<u64>().is_ok(), "{line}");
                let name = series.split('{').next().unwrap_or("");
                assert_eq!(families.last(), Some(&name), "{line} outside its family");
            }
        }
        assert_eq!(families.len(), 10, "{text}");
    }
}
