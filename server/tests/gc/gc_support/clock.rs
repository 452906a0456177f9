//! The test clock: GC takes `now` as an argument, so time passes by
//! handing it a later `now` or by backdating the timestamps it compares
//! (`objects.created_at`/`last_accessed_at`, `nars.updated_at`,
//! `chunks.zero_since`, `chunk_intents.updated_at`) with direct SQL. Nothing waits on a timer.

use std::time::Duration;

use larder_worker::jobs::gc::{self, GcReport};

use super::exec;
use crate::common::TestApp;
use crate::common::nar::TestNar;

/// One day in seconds.
pub const DAY: i64 = 86_400;
/// Holder name of GC runs made by these tests.
pub const HOLDER: &str = "gc-test";

/// `[garbage-collection] grace-period` of the app's jobs, in seconds.
pub fn grace(app: &TestApp) -> i64 {
    app.services
        .config
        .garbage_collection
        .grace_period
        .as_secs() as i64
}

/// `[garbage-collection] default-retention-period`, in seconds.
pub fn default_retention(app: &TestApp) -> i64 {
    app.services
        .config
        .garbage_collection
        .default_retention_period
        .as_secs() as i64
}

/// Runs one GC at `now`, which must get the lease and succeed.
/// The API then refreshes its cache catalog, as every replica does within
/// `[jwt] revocation-refresh` of a GC (the narinfos it keeps rendered go
/// with it, `larder_api::narinfo_texts`).
pub async fn gc_at(app: &TestApp, now: i64) -> GcReport {
    let report = gc::run(&app.services, now, HOLDER)
        .await
        .unwrap_or_else(|e| panic!("GC at {now} failed: {e:#}"))
        .unwrap_or_else(|| panic!("GC at {now} did not get the lease"));
    app.refresh_catalog().await;
    report
}

/// Makes a path of `cache` look pushed, and last read, at `at`.
pub async fn set_path_time(app: &TestApp, cache: &str, nar: &TestNar, at: i64) {
    let changed = exec(
        app,
        &format!(
            "UPDATE objects SET created_at = {at}, last_accessed_at = {at}
             WHERE store_path_hash = '{}' AND cache_id = (SELECT id FROM caches WHERE name = '{cache}')",
            nar.store_hash()
        ),
    )
    .await;
    assert_eq!(changed, 1, "{cache} holds {}", nar.base_name);
}

/// Moves every NAR's last touch `secs` into the past.
pub async fn backdate_nars(app: &TestApp, secs: i64) {
    exec(
        app,
        &format!("UPDATE nars SET updated_at = updated_at - {secs}"),
    )
    .await;
}

/// Moves `zero_since` of every unreferenced chunk `secs` into the past.
pub async fn backdate_unreferenced_chunks(app: &TestApp, secs: i64) {
    exec(
        app,
        &format!("UPDATE chunks SET zero_since = zero_since - {secs} WHERE refcount = 0"),
    )
    .await;
}

/// Moves every write intent's last refresh `secs` into the past (intents
/// a failed ingest left are then stale: their writer is taken for dead).
pub async fn backdate_intents(app: &TestApp, secs: i64) {
    exec(
        app,
        &format!("UPDATE chunk_intents SET updated_at = updated_at - {secs}"),
    )
    .await;
}

/// Polls the integer `sql` returns every 10 ms until `ok` holds, for at
/// most 10 s; returns the value that satisfied it.
pub async fn poll_until(app: &TestApp, sql: &str, ok: impl Fn(i64) -> bool) -> i64 {
    for _ in 0..1000 {
        let v = app.scalar(sql).await;
        if ok(v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("still not the awaited value after 10 s: {sql}");
}
