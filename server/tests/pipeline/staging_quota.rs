//! The staging quota (`[staging] max-nars`, `max-bytes`; docs/operations.md
//! "Scaling"): past it, `upload-path` answers 503 `StagingFull` with
//! `Retry-After` before reading the body and stages nothing; a NAR the store
//! already has is still linked; once ingest drains the backlog, uploads are
//! accepted again. `/metrics` shows the backlog (queue depth, staged NARs
//! and bytes, ingest lag) and the refusals. Stock `nix copy` is never
//! refused (`nix_upload::the_staging_quota_lets_nix_copy_through`).

use std::time::{Duration, Instant};

use axum::http::StatusCode;

use super::{KIB, PULL_PUSH};
use crate::common::nar::TestNar;
use crate::common::read::{assert_kind, assert_ready_readable};
use crate::common::{Backend, TestApp, TestResponse};

/// Bound on waiting for the quota's one-second reading to see the drain.
const LIMIT: Duration = Duration::from_secs(20);

/// An app whose staging holds at most two NARs awaiting ingest.
pub(crate) async fn with_quota(backend: Backend) -> TestApp {
    TestApp::builder(backend)
        .config("[staging]\nmax-nars = 2\n")
        .build()
        .await
}

/// An app whose staging holds at most 100 KiB awaiting ingest.
async fn with_byte_quota(backend: Backend) -> TestApp {
    TestApp::builder(backend)
        .config("[staging]\nmax-bytes = 102400\n")
        .build()
        .await
}

/// The value of the sample `series` (`name{labels}`) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn assert_staging_full(resp: &TestResponse) {
    resp.assert_error(StatusCode::SERVICE_UNAVAILABLE, "StagingFull");
    assert_eq!(
        resp.headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5"),
        "{:?}",
        resp.headers
    );
    let body: serde_json::Value = resp.json();
    assert_eq!(body["code"], 503, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("staging is full") && message.contains("waiting for ingest"),
        "the message says why: {message}"
    );
}

/// Uploads `nar` as soon as the quota admits it (once this replica's
/// reading of the totals, at most a second old, sees room), refused with
/// `StagingFull` until then.
pub(crate) async fn upload_once_admitted(app: &TestApp, token: &str, cache: &str, nar: &TestNar) {
    let started = Instant::now();
    loop {
        let resp = app.upload(token, cache, nar).await;
        if resp.status == StatusCode::OK {
            assert_kind(&resp, "Uploaded");
            return;
        }
        assert_staging_full(&resp);
        assert!(started.elapsed() < LIMIT, "still refused after the drain");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn the_staging_quota_refuses_uploads_until_ingest_drains(app: &TestApp) {
    app.create_cache("quota", false).await;
    app.create_cache("quota-other", false).await;
    let token = app.token(&[("quota*", PULL_PUSH)]);
    let nars: Vec<TestNar> = (0..3)
        .map(|i| TestNar::files(&format!("backlog-{i}"), 300 + i, &[20 * KIB]))
        .collect();

    // Under the quota: accepted as always.
    for nar in &nars[..2] {
        assert_kind(&app.upload(&token, "quota", nar).await, "Uploaded");
    }
    let staged_before = app.object_keys("staging/").await;
    assert_eq!(staged_before.len(), 2);

    // At the quota: 503 with Retry-After, and nothing staged or recorded.
    let refused = app.upload(&token, "quota", &nars[2]).await;
    assert_staging_full(&refused);
    assert_eq!(app.staged_nar_ids().await.len(), 2);
    assert_eq!(app.object_keys("staging/").await, staged_before);
    assert_eq!(app.count("staging_intents").await, 0);
    assert_eq!(app.ingest_jobs().await, 2);
    app.get(
        &format!("/quota/{}.narinfo", nars[2].store_hash()),
        Some(&token),
    )
    .await
    .assert_status(StatusCode::NOT_FOUND);

    // A NAR the store already has stages nothing: still linked.
    assert_kind(
        &app.upload(&token, "quota-other", &nars[0]).await,
        "Deduplicated",
    );

    // The backlog and the refusal in /metrics (private caches folded).
    let text = app.get("/metrics", None).await.text();
    assert_eq!(sample(&text, "larder_staged_nars"), Some(2), "{text}");
    assert_eq!(
        sample(&text, "larder_staged_bytes"),
        Some((nars[0].nar_size() + nars[1].nar_size()) as i64),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "larder_queue_pending_jobs{queue=\"larder.ingest-nar\"}"
        ),
        Some(2),
        "{text}"
    );
    assert!(
        sample(&text, "larder_ingest_lag_seconds").is_some_and(|s| s >= 0),
        "{text}"
    );
    assert_eq!(sample(&text, "larder_staging_quota_nars"), Some(2));
    assert_eq!(
        sample(
            &text,
            "larder_uploads_refused_total{cache=\"_private\",reason=\"staging_full\"}"
        ),
        Some(1),
        "{text}"
    );

    // Workers catch up: accepted again.
    assert_eq!(app.drain_jobs().await, 2);
    upload_once_admitted(app, &token, "quota", &nars[2]).await;
    let text = app.get("/metrics", None).await.text();
    assert_eq!(sample(&text, "larder_staged_nars"), Some(1), "{text}");
    app.drain_jobs().await;
    for nar in &nars {
        assert_ready_readable(app, &token, "quota", nar).await;
    }
    let text = app.get("/metrics", None).await.text();
    assert_eq!(sample(&text, "larder_staged_nars"), Some(0), "{text}");
    assert_eq!(
        sample(&text, "larder_ingest_lag_seconds"),
        Some(0),
        "{text}"
    );
    // (`drain_jobs` ingests without the queue, so its jobs stay pending
    // here; `worker_metrics` sees a real worker empty the queue.)
}

/// `max-bytes`: the NAR that takes staging past the quota is accepted (the
/// quota is soft), the next one is refused.
async fn the_byte_quota_counts_staged_bytes(app: &TestApp) {
    app.create_cache("bytes", true).await;
    let token = app.token(&[("bytes", PULL_PUSH)]);
    let big = TestNar::files("big-1.0", 320, &[120 * KIB]);
    let small = TestNar::files("small-1.0", 321, &[KIB]);
    assert_kind(&app.upload(&token, "bytes", &big).await, "Uploaded");
    assert_staging_full(&app.upload(&token, "bytes", &small).await);
    assert_eq!(app.staged_nar_ids().await.len(), 1);
    let text = app.get("/metrics", None).await.text();
    assert_eq!(
        sample(
            &text,
            "larder_uploads_refused_total{cache=\"bytes\",reason=\"staging_full\"}"
        ),
        Some(1),
        "a public cache is named: {text}"
    );
    assert_eq!(sample(&text, "larder_staging_quota_bytes"), Some(102400));
}

on_both_backends!(super::with_quota => the_staging_quota_refuses_uploads_until_ingest_drains);
on_both_backends!(super::with_byte_quota => the_byte_quota_counts_staged_bytes);
