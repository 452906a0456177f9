//! A NAR ingested before migration 0007 (no `chunk_sizes`, no
//! `frames_digest` in its row) serves the same bytes and ETags as one
//! ingested after, by loading its chunk rows; the first download backfills
//! the row with exactly what ingest stores (docs/measurements.md "NAR
//! ranges").

use axum::http::StatusCode;
use reqwest::header;

use super::http::{Client, boundaries, check_ranges};
use crate::common::TestApp;
use crate::common::nar::TestNar;

/// What ingest before migration 0007 left in the row.
async fn forget_layouts(app: &TestApp) {
    app.execute("UPDATE nars SET chunk_sizes = NULL, frames_digest = NULL")
        .await;
}

pub async fn nar_ingested_before_layout_serves_the_same(app: &TestApp) {
    app.create_cache("legacy", false).await;
    let root = app.root_token();
    let big = TestNar::files("big", 1901, &[900_000, 1_100_000]);
    app.upload(&root, "legacy", &big)
        .await
        .assert_status(StatusCode::OK);
    app.drain_jobs().await;
    let stored = app
        .nar_record(&big)
        .await
        .layout
        .expect("ingest stores the layout");
    assert_eq!(
        stored.spans.len(),
        app.nar_record(&big).await.chunk_ids.len()
    );
    assert!(stored.spans.len() > 3, "the NAR is chunked");
    let (plain_cuts, zst_cuts) = boundaries(app, &big).await;

    let base = app.serve().await;
    let c = Client::new(&base, Some(root));
    for (ext, cuts) in [("nar", &plain_cuts), ("nar.zst", &zst_cuts)] {
        let url = format!("/legacy/nar/{}.{ext}", big.url_hash());
        let new = c.get(&url, &[]).await;
        assert_eq!(new.status, StatusCode::OK, "{url}");
        let etag = new.header(header::ETAG).expect("ETag").to_owned();

        forget_layouts(app).await;
        assert!(app.nar_record(&big).await.layout.is_none());
        let mid = cuts[cuts.len() / 2];
        let got = c.range(&url, &format!("bytes={}-", mid - 3)).await;
        assert_eq!(got.status, StatusCode::PARTIAL_CONTENT, "{url}");
        assert!(
            got.body == new.body[mid as usize - 3..],
            "{url}: range bytes"
        );
        assert_eq!(got.header(header::ETAG), Some(etag.as_str()), "{url}");
        assert_eq!(
            app.nar_record(&big).await.layout.as_ref(),
            Some(&stored),
            "{url}: the first download backfills what ingest stores"
        );

        forget_layouts(app).await;
        let head = c.send(reqwest::Method::HEAD, &url, &[]).await;
        assert_eq!(head.header(header::ETAG), Some(etag.as_str()), "HEAD {url}");
        assert_eq!(
            head.header(header::CONTENT_LENGTH),
            Some(new.body.len().to_string().as_str())
        );
        forget_layouts(app).await;
        let old = c.get(&url, &[]).await;
        assert_eq!(old.status, StatusCode::OK);
        assert!(old.body == new.body, "{url}: whole body");
        assert_eq!(old.header(header::ETAG), Some(etag.as_str()), "{url}");
        check_ranges(&c, &url, &new.body, cuts).await;
    }
}
