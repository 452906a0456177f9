//! Rows decode into domain types once, where they are read (`db/objects`,
//! `db/caches`): a row that does not decode is a server error, never a
//! panic; a path keeps the store directory it was pushed under.

use axum::body::Body;
use axum::http::{Method, StatusCode};

use larder_shared::token::Permission;

use crate::common::nar::TestNar;
use crate::common::read::{assert_kind, narinfo_line};
use crate::common::{TestApp, request};

const ALL: &[Permission] = &[Permission::Pull, Permission::Push, Permission::Delete];

/// A cache `rows` with one path pushed; its token and the path.
async fn one_path(app: &TestApp, name: &str, seed: u64) -> (String, TestNar) {
    app.create_cache("rows", false).await;
    let token = app.token(&[("rows", ALL)]);
    let nar = TestNar::files(name, seed, &[900]);
    assert_kind(&app.upload(&token, "rows", &nar).await, "Uploaded");
    (token, nar)
}

/// An `objects` row whose references are not store paths is a 500 on its
/// narinfo (the request fails, the server does not).
pub async fn a_corrupt_object_row_is_a_server_error(app: &TestApp) {
    let (token, nar) = one_path(app, "corrupt-1.0", 71).await;
    app.execute("UPDATE objects SET refs = 'not-a-store-path'")
        .await;
    let uri = format!("/rows/{}.narinfo", nar.store_hash());
    app.get(&uri, Some(&token))
        .await
        .assert_status(StatusCode::INTERNAL_SERVER_ERROR);
    // The server still answers.
    app.get("/rows/nix-cache-info", Some(&token))
        .await
        .assert_status(StatusCode::OK);
}

/// After the cache's store directory changes, a path pushed before is
/// served as it was before rows were typed (under the cache's directory,
/// which its signature covers), and its deletion is audited with the
/// directory it was pushed under.
pub async fn a_path_keeps_the_directory_it_was_pushed_under(app: &TestApp) {
    let (token, nar) = one_path(app, "moved-1.0", 72).await;
    app.execute("UPDATE caches SET store_dir = '/other/store' WHERE name = 'rows'")
        .await;
    // What every replica's background refresh does within `revocation-refresh`.
    app.state
        .catalog
        .refresh(&app.state.db)
        .await
        .expect("refresh");
    let uri = format!("/rows/{}.narinfo", nar.store_hash());
    let resp = app.get(&uri, Some(&token)).await;
    resp.assert_status(StatusCode::OK);
    let text = resp.text();
    let served = format!("/other/store/{}", nar.base_name);
    assert_eq!(narinfo_line(&text, "StorePath"), Some(served.as_str()));

    let req = request(Method::DELETE, &uri, Some(&token))
        .body(Body::empty())
        .expect("request");
    app.send(req).await.assert_status(StatusCode::NO_CONTENT);
    let audited = app
        .scalar(&format!(
            "SELECT COUNT(*) FROM audit_log WHERE kind = 'delete' AND store_path = '/nix/store/{}'",
            nar.base_name
        ))
        .await;
    assert_eq!(audited, 1, "the delete names the pushed directory");
}
