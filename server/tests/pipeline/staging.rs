//! Staging intents (docs/gc.md "Staging objects"): an upload that dies
//! between staging and its commit leaves an intent and an object, which the
//! sweeper deletes once the intent is older than `[staging] max-age`, found
//! through the database alone (no listing of storage); a committed upload's
//! copy is never touched; `verify` is what finds a copy older versions left
//! with no intent.

use std::convert::Infallible;
use std::sync::Arc;

use axum::http::StatusCode;
use bytes::Bytes;

use larder_api::staging::{self, Expected};
use larder_shared::db::{staging_intents, unix_now};
use larder_shared::storage::{ObjectKey, layout};
use larder_worker::Services;
use larder_worker::jobs::verify;
use larder_worker::sweeper;

use super::{KIB, PULL_PUSH};
use crate::common::TestApp;
use crate::common::counting::Counting;
use crate::common::nar::TestNar;
use crate::common::read::assert_ready_readable;

/// The app's services with staging and chunk storage behind one
/// [`Counting`], to show what lists.
fn counted(app: &TestApp) -> (Services, Arc<Counting>) {
    let counter = Counting::wrap(app.state.staging.clone());
    let svc = Services::new(
        app.services.config.clone(),
        app.state.db.clone(),
        counter.clone(),
        counter.clone(),
    );
    (svc, counter)
}

async fn exists(app: &TestApp, key: &ObjectKey) -> bool {
    app.state.staging.head(key).await.expect("head").is_some()
}

/// What an upload does up to its commit, then dies: the intent is committed
/// before the first byte, the object written and verified.
async fn stage_and_die(app: &TestApp, nar: &TestNar) -> ObjectKey {
    let key = staging::reserve(&app.state.db).await.expect("reserve");
    assert!(!exists(app, &key).await, "reserved before any byte");
    let body = futures::stream::iter([Ok::<_, Infallible>(nar.bytes.clone())]);
    let expected = Expected {
        nar_hash: nar.nar_hash,
        nar_size: nar.nar_size(),
    };
    staging::stage(
        &app.state.db,
        &app.state.staging,
        &key,
        body,
        expected,
        None,
    )
    .await
    .expect("stage");
    key
}

pub(super) async fn abandoned_uploads_are_found_through_the_database(app: &TestApp) {
    app.create_cache("si", false).await;
    let token = app.token(&[("si", PULL_PUSH)]);
    let committed = TestNar::files("committed-1.0", 93, &[60 * KIB]);
    app.upload(&token, "si", &committed)
        .await
        .assert_status(StatusCode::OK);
    assert_eq!(
        app.count("staging_intents").await,
        0,
        "the commit took the intent over"
    );
    let held = app.object_keys("staging/").await;
    assert_eq!(held.len(), 1);

    let dead = stage_and_die(app, &TestNar::files("dead-1.0", 94, &[40 * KIB])).await;
    assert_eq!(app.count("staging_intents").await, 1);
    assert!(exists(app, &dead).await);

    let (svc, counter) = counted(app);
    let now = unix_now();
    let max_age = svc.config.staging.max_age.as_secs() as i64;
    for at in [now, now + max_age - 60] {
        let report = sweeper::sweep(&svc, at).await.expect("sweep");
        assert_eq!(report.staging_deleted, 0, "at now + {}", at - now);
        assert!(exists(app, &dead).await, "younger than max-age: kept");
        assert_eq!(app.count("staging_intents").await, 1);
    }
    let report = sweeper::sweep(&svc, now + max_age + 60)
        .await
        .expect("sweep");
    assert_eq!(report.staging_deleted, 1);
    assert!(!exists(app, &dead).await, "abandoned: deleted");
    assert_eq!(app.count("staging_intents").await, 0, "and its intent");
    let report = sweeper::sweep(&svc, now + 10 * max_age)
        .await
        .expect("sweep");
    assert_eq!(report.staging_deleted, 0);
    assert_eq!(
        app.object_keys("staging/").await,
        held,
        "a committed upload's copy is never the sweeper's"
    );
    assert_eq!(counter.lists(), 0, "the sweeper listed storage");

    // A copy with no intent (left by a version before intents) is
    // verify's: reported, and deleted by --repair once past max-age.
    let legacy = layout::new_staging_key();
    app.state
        .staging
        .put_bytes(&legacy, Bytes::from_static(b"partial"))
        .await
        .expect("put");
    sweeper::sweep(&svc, now + 10 * max_age)
        .await
        .expect("sweep");
    assert!(exists(app, &legacy).await, "the sweeper does not list");
    let report = verify::run(&svc, now, true).await.expect("verify");
    assert_eq!(report.orphan_staging, vec![legacy.as_str().to_owned()]);
    assert_eq!(report.orphan_staging_deleted, 0, "younger than max-age");
    let report = verify::run(&svc, now + max_age + 60, true)
        .await
        .expect("verify");
    assert_eq!(report.orphan_staging_deleted, 1);
    assert!(!exists(app, &legacy).await);
    assert_eq!(app.object_keys("staging/").await, held, "verify kept it");

    app.drain_jobs().await;
    app.assert_staging_empty().await;
    assert_ready_readable(app, &token, "si", &committed).await;
}

/// An ingest (or GC) that committed, handing its staged copy to a released
/// intent, and died before deleting it: the next sweep deletes it at once.
pub(super) async fn a_released_copy_is_deleted_at_once(app: &TestApp) {
    let key = layout::new_staging_key();
    app.state
        .staging
        .put_bytes(&key, Bytes::from_static(b"ingested"))
        .await
        .expect("put");
    let now = unix_now();
    {
        let mut conn = app.state.db.conn().await.expect("conn");
        staging_intents::release(conn.raw(), &key, now)
            .await
            .expect("release");
    }
    let (svc, counter) = counted(app);
    let report = sweeper::sweep(&svc, now).await.expect("sweep");
    assert_eq!(report.staging_deleted, 1);
    assert!(!exists(app, &key).await);
    app.assert_staging_empty().await;
    assert_eq!(counter.lists(), 0);
}
