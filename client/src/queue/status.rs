//! `larder queue status`: what is pending and what failed.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::Entry;

/// Counts, then one line per entry: never-tried entries are pending,
/// entries with failed attempts show how many, when the next is due
/// (relative to `now`, Unix seconds) and the last error.
pub fn render(queue: &Path, entries: &[Entry], now: i64) -> String {
    let failed = entries.iter().filter(|e| e.attempts > 0).count();
    let pending = entries.len() - failed;
    let mut out = format!(
        "queue {}: {pending} pending, {failed} failed\n",
        queue.display()
    );
    for e in entries {
        let age = since(now, e.enqueued_at);
        if e.attempts == 0 {
            let _ = writeln!(out, "pending {} {} (queued {age} ago)", e.target, e.path);
            continue;
        }
        let next = if e.next_attempt_at > now {
            format!("next attempt in {}", since(e.next_attempt_at, now))
        } else {
            "due now".to_owned()
        };
        let _ = writeln!(
            out,
            "failed  {} {} (queued {age} ago, {} attempts, {next}): {}",
            e.target,
            e.path,
            e.attempts,
            e.last_error.as_deref().unwrap_or("unknown error")
        );
    }
    out
}

/// `later - earlier` seconds, for humans.
fn since(later: i64, earlier: i64) -> String {
    let secs = u64::try_from(later.saturating_sub(earlier)).unwrap_or(0);
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}
