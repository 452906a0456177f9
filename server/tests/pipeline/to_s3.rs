//! Moving a running install from local storage to S3 as docs/operations.md
//! "Moving a running install to S3" says: copy every object but in-progress
//! writes (the test's own sync stands in for `aws s3 sync`: each key to the
//! same key), switch `[storage]` to the bucket, and the same database
//! serves every path, ingests what was still staged, and `verify` finds
//! nothing missing or damaged.

use futures::TryStreamExt;

use larder_worker::jobs::verify;

use super::*;

pub(super) async fn local_store_moves_to_s3(app: &TestApp) {
    let Some(section) = common::s3_storage_toml() else {
        return;
    };
    app.create_cache("mv", false).await;
    let token = app.token(&[("mv", PULL_PUSH)]);
    let ingested = TestNar::files("ingested", 0x70, &[300 * KIB, 2 * KIB]);
    let staged = TestNar::files("staged", 0x71, &[200 * KIB]);
    assert_kind(&app.upload(&token, "mv", &ingested).await, "Uploaded");
    assert_eq!(app.drain_jobs().await, 1);
    assert_kind(&app.upload(&token, "mv", &staged).await, "Uploaded");

    // The sync: every object, in-progress writes (`.tmp-*`) left out.
    let on_s3 = app.with_storage(&section).await;
    let from = &app.state.storage;
    let keys: Vec<_> = from
        .list("")
        .try_collect::<Vec<_>>()
        .await
        .expect("listing local storage");
    assert!(keys.len() >= 2, "a pack and a staged copy: {keys:?}");
    for meta in keys {
        let body = from.get(&meta.key, None).await.expect("reading");
        on_s3
            .state
            .storage
            .put(&meta.key, body)
            .await
            .expect("copying");
    }

    // The config switched: the same database reads everything from S3.
    for n in [&ingested, &staged] {
        assert!(fetch(&on_s3, &token, "mv", &format!("nar/{}.nar", n.url_hash())).await == n.bytes);
    }
    let zst = fetch(
        &on_s3,
        &token,
        "mv",
        &format!("nar/{}.nar.zst", ingested.url_hash()),
    )
    .await;
    assert!(unzstd(&zst) == ingested.bytes);
    for id in on_s3.staged_nar_ids().await {
        ingest::ingest(&on_s3.services, id)
            .await
            .expect("ingest from S3");
    }
    assert_ready_readable(&on_s3, &token, "mv", &staged).await;
    let report = verify::run(&on_s3.services, unix_now(), false)
        .await
        .expect("verify");
    assert!(
        report.damaged_chunks.is_empty()
            && report.orphan_objects.is_empty()
            && report.nars_marked_broken == 0,
        "{report:?}"
    );
    on_s3.teardown().await;
}
