//! First push wins (docs/protocol.md "Published paths (first push wins)"): a published path keeps its NAR. An
//! upload of another NAR under it is a 409 that changes nothing; the same
//! NAR again is a refresh; a broken NAR may be replaced; replacing a healthy
//! one takes `X-Larder-Replace` and the `d` permission.

use axum::http::StatusCode;

use larder_core::nix::store_path::StorePathHash;
use larder_shared::db::verify;
use larder_shared::db::{caches, objects};
use larder_shared::token::Permission;

use crate::common::nar::TestNar;
use crate::common::read::{assert_kind, narinfo, narinfo_line};
use crate::common::{TestApp, TestResponse, upload_request};

const PULL_PUSH: &[Permission] = &[Permission::Pull, Permission::Push];
const PULL_PUSH_DELETE: &[Permission] = &[Permission::Pull, Permission::Push, Permission::Delete];

/// The published path and an impostor: another NAR under the same store path.
fn path_and_impostor() -> (TestNar, TestNar) {
    let nar = TestNar::files("openssl-3.0", 41, &[5000, 70_000]);
    let impostor = TestNar {
        base_name: nar.base_name.clone(),
        ..TestNar::files("openssl-3.0", 42, &[5000, 70_000])
    };
    assert_ne!(nar.nar_hash, impostor.nar_hash);
    (nar, impostor)
}

async fn upload_replacing(app: &TestApp, token: &str, nar: &TestNar) -> TestResponse {
    let mut req = upload_request(token, &nar.info("trusted"), nar.bytes.clone());
    req.headers_mut()
        .insert("x-larder-replace", "1".parse().expect("header value"));
    app.send(req).await
}

async fn last_accessed_at(app: &TestApp, nar: &TestNar) -> i64 {
    let hash: StorePathHash = nar.store_hash().parse().expect("store path hash");
    let mut conn = app.state.db.conn().await.expect("connection");
    let name = "trusted".parse().expect("cache name");
    let cache = caches::get_by_name(conn.raw(), &name)
        .await
        .expect("query")
        .expect("the cache")
        .id;
    objects::find(conn.raw(), cache, &hash)
        .await
        .expect("query")
        .expect("the path is there")
        .last_accessed_at
}

/// A different NAR is refused before and after ingest and leaves nothing;
/// the same NAR again is a 200 that refreshes the path's use.
pub async fn a_published_path_keeps_its_nar(app: &TestApp) {
    app.create_cache("trusted", false).await;
    let token = app.token(&[("trusted", PULL_PUSH)]);
    let (nar, impostor) = path_and_impostor();
    assert_kind(&app.upload(&token, "trusted", &nar).await, "Uploaded");

    // Refused while the first push is staged, and after it is ingested.
    for ingested in [false, true] {
        if ingested {
            app.drain_jobs().await;
        }
        let (before, _) = narinfo(app, &token, "trusted", &nar).await;
        let rows = (app.count("objects").await, app.count("nars").await);
        let staged = app.files_on_disk("staging");
        for resp in [
            app.upload(&token, "trusted", &impostor).await,
            app.upload_preamble(&token, "trusted", &impostor).await,
        ] {
            resp.assert_error(StatusCode::CONFLICT, "PathConflict");
        }
        let (after, _) = narinfo(app, &token, "trusted", &nar).await;
        assert_eq!(before, after, "the served narinfo is byte-identical");
        assert_eq!(
            (app.count("objects").await, app.count("nars").await),
            rows,
            "no rows added"
        );
        assert_eq!(app.files_on_disk("staging"), staged, "nothing staged");
    }

    // The same NAR again: idempotent, and it counts as a use.
    app.assert_staging_empty().await;
    app.execute("UPDATE objects SET last_accessed_at = 1").await;
    assert_kind(&app.upload(&token, "trusted", &nar).await, "Deduplicated");
    assert!(last_accessed_at(app, &nar).await > 1, "use refreshed");
    let (text, _) = narinfo(app, &token, "trusted", &nar).await;
    assert_eq!(
        narinfo_line(&text, "NarHash"),
        Some(nar.nar_hash.to_string().as_str())
    );
}

/// A NAR that verify marked broken may be replaced by any verified upload.
pub async fn a_broken_nar_may_be_replaced(app: &TestApp) {
    app.create_cache("trusted", false).await;
    let token = app.token(&[("trusted", PULL_PUSH)]);
    let (nar, impostor) = path_and_impostor();
    assert_kind(&app.upload(&token, "trusted", &nar).await, "Uploaded");
    app.drain_jobs().await;
    let id = app.nar_record(&nar).await.id;
    {
        let mut conn = app.state.db.conn().await.expect("connection");
        assert!(
            verify::mark_broken(conn.raw(), id, 1)
                .await
                .expect("mark broken")
        );
    }
    assert_kind(&app.upload(&token, "trusted", &impostor).await, "Uploaded");
    let (_, served) = narinfo(app, &token, "trusted", &impostor).await;
    assert_eq!(served.nar_hash, impostor.nar_hash);
}

/// `X-Larder-Replace` without `d` is a 403 that changes nothing; with `d`
/// the new NAR is served at once.
pub async fn replacing_needs_the_delete_permission(app: &TestApp) {
    app.create_cache("trusted", false).await;
    let pusher = app.token(&[("trusted", PULL_PUSH)]);
    let admin = app.token(&[("trusted", PULL_PUSH_DELETE)]);
    let (nar, impostor) = path_and_impostor();
    assert_kind(&app.upload(&pusher, "trusted", &nar).await, "Uploaded");
    app.drain_jobs().await;
    let (before, _) = narinfo(app, &pusher, "trusted", &nar).await;

    upload_replacing(app, &pusher, &impostor)
        .await
        .assert_error(StatusCode::FORBIDDEN, "PermissionDenied");
    let (after, _) = narinfo(app, &pusher, "trusted", &nar).await;
    assert_eq!(before, after);
    app.assert_staging_empty().await;

    // Without the flag, `d` alone does not replace.
    app.upload(&admin, "trusted", &impostor)
        .await
        .assert_error(StatusCode::CONFLICT, "PathConflict");

    assert_kind(&upload_replacing(app, &admin, &impostor).await, "Uploaded");
    let (_, served) = narinfo(app, &pusher, "trusted", &impostor).await;
    assert_eq!(served.nar_hash, impostor.nar_hash);
    app.drain_jobs().await;
    let (_, served) = narinfo(app, &pusher, "trusted", &impostor).await;
    assert_eq!(served.nar_hash, impostor.nar_hash);
    // The old NAR is now an orphan, released as a delete releases it.
    let orphans = app
        .scalar(
            "SELECT COUNT(*) FROM nars n WHERE NOT EXISTS (SELECT 1 FROM objects o WHERE o.nar_id = n.id)",
        )
        .await;
    assert_eq!(orphans, 1);
}
