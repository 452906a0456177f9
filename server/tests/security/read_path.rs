//! What the read path keeps in memory must not outlive what it stands for
//! (issue 13), on SQLite and PostgreSQL:
//!
//! - a token's verification is cached, yet a revocation takes effect at
//!   the replica's next refresh, as without the cache;
//! - a cache made private stops answering strangers at once on the replica
//!   that changed it and at the next refresh on every other one;
//! - a key rotation changes the served signatures, on every replica;
//! - a narinfo kept rendered goes with its deleted path, and is signed
//!   anew after a key rotation: at once on the replica that made the
//!   change, at the next refresh on every other one.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};

use larder_core::nix::narinfo::NarInfo;
use larder_core::nix::signing::PublicKey;
use larder_shared::token::{Permission, Revocation};

use crate::common::nar::TestNar;
use crate::common::read::assert_signed;
use crate::common::{Backend, TestApp, TestResponse, request};

use super::support::{Auth, Endpoint, Options, SecApp, Signing, check_error};

const CACHE: &str = "read-path";

fn options(backend: Backend) -> Options {
    Options {
        backend,
        ..Options::sqlite(Signing::fixture_rs256())
    }
}

async fn create_cache(app: &SecApp, is_public: bool) {
    let body = json!({
        "keypair": "Generate",
        "is_public": is_public,
        "store_dir": "/nix/store",
        "priority": 41,
        "upstream_cache_key_names": [],
    });
    configure(app, Method::POST, body).await;
}

/// `POST` or `PATCH` `/_api/v1/cache-config/read-path` with the root token.
async fn configure(app: &SecApp, method: Method, body: Value) {
    let req = Request::builder()
        .method(method)
        .uri(format!("/_api/v1/cache-config/{CACHE}"))
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", app.root_token()),
        )
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    app.send(req).await.assert_status(StatusCode::OK);
}

/// The cache's newest public key, from `cache-config`.
async fn public_key(app: &SecApp, nar: &TestNar) -> PublicKey {
    let resp = app
        .call(
            Endpoint::CacheConfigGet,
            CACHE,
            nar,
            &Auth::Bearer(app.root_token()),
        )
        .await;
    resp.assert_status(StatusCode::OK);
    let cfg: Value = resp.json();
    cfg["public_key"]
        .as_str()
        .expect("public_key")
        .parse()
        .expect("a Nix public key")
}

fn parse(resp: &TestResponse) -> NarInfo {
    resp.assert_status(StatusCode::OK);
    NarInfo::parse(&resp.text()).expect("narinfo parses").0
}

fn key_names(info: &NarInfo) -> Vec<String> {
    info.sigs
        .iter()
        .map(|s| s.split(':').next().unwrap_or_default().to_owned())
        .collect()
}

async fn revoked_while_cached(backend: Backend) {
    let app = SecApp::new(options(backend)).await;
    create_cache(&app, false).await;
    let nar = TestNar::files("cached-token", 31, &[900]);
    app.push_ok(&app.root_token(), CACHE, &nar).await;
    let claims = app.claims("nix", &[(CACHE, &[Permission::Pull])]);
    let token = app.sign(&claims);
    let basic = Auth::Basic(token.clone());
    for _ in 0..2 {
        app.call(Endpoint::Narinfo, CACHE, &nar, &basic)
            .await
            .assert_status(StatusCode::OK);
    }
    assert!(
        !app.state.verified_tokens.is_empty(),
        "the verification is cached"
    );

    // Recorded and refreshed, as the refresher does every `revocation-refresh`.
    let jti = claims.jti.clone().expect("jti");
    app.revoke(&Revocation::Token { jti }).await;
    for auth in Auth::both(&token) {
        for endpoint in [Endpoint::Narinfo, Endpoint::Nar, Endpoint::NixCacheInfo] {
            let resp = app.call(endpoint, CACHE, &nar, &auth).await;
            check_error(
                &resp,
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "token revoked",
            )
            .unwrap_or_else(|e| panic!("{} {endpoint:?}: {e}", auth.scheme()));
        }
    }
    app.teardown().await;
}

#[tokio::test]
async fn a_revoked_token_is_refused_though_its_verification_is_cached_sqlite() {
    revoked_while_cached(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_though_its_verification_is_cached_postgres() {
    revoked_while_cached(Backend::Postgres).await;
}

async fn made_private_on_every_replica(backend: Backend) {
    let app = SecApp::new(options(backend)).await;
    let other = app.replica().await;
    create_cache(&app, true).await;
    let nar = TestNar::files("made-private", 32, &[800]);
    app.push_ok(&app.root_token(), CACHE, &nar).await;
    let stranger = Auth::Anonymous;
    for endpoint in [Endpoint::NixCacheInfo, Endpoint::Narinfo, Endpoint::Nar] {
        app.call(endpoint, CACHE, &nar, &stranger)
            .await
            .assert_status(StatusCode::OK);
        other
            .call(endpoint, CACHE, &nar, &stranger)
            .await
            .assert_status(StatusCode::OK);
    }

    configure(&app, Method::PATCH, json!({"is_public": false})).await;
    let hidden = |resp: &crate::common::TestResponse, which: &str, e: Endpoint| {
        check_error(resp, StatusCode::UNAUTHORIZED, "Unauthorized", "")
            .unwrap_or_else(|err| panic!("{which} {e:?}: {err}"));
    };
    // The replica that changed it: at once.
    for endpoint in [Endpoint::NixCacheInfo, Endpoint::Narinfo, Endpoint::Nar] {
        hidden(
            &app.call(endpoint, CACHE, &nar, &stranger).await,
            "same replica",
            endpoint,
        );
    }
    // Another replica: at its next refresh.
    other.refresh().await;
    for endpoint in [Endpoint::NixCacheInfo, Endpoint::Narinfo, Endpoint::Nar] {
        hidden(
            &other.call(endpoint, CACHE, &nar, &stranger).await,
            "other replica",
            endpoint,
        );
    }
    // A pull token still reads it there.
    let token = app.token("nix", &[(CACHE, &[Permission::Pull])]);
    other
        .call(Endpoint::Narinfo, CACHE, &nar, &Auth::Basic(token))
        .await
        .assert_status(StatusCode::OK);
    other.close().await;
    app.teardown().await;
}

#[tokio::test]
async fn a_cache_made_private_stops_answering_strangers_on_every_replica_sqlite() {
    made_private_on_every_replica(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_made_private_stops_answering_strangers_on_every_replica_postgres() {
    made_private_on_every_replica(Backend::Postgres).await;
}

async fn rotation_on_every_replica(backend: Backend) {
    let app = SecApp::new(options(backend)).await;
    let other = app.replica().await;
    create_cache(&app, false).await;
    let nar = TestNar::files("rotated-read", 33, &[1200]);
    let token = app.root_token();
    app.push_ok(&token, CACHE, &nar).await;
    let auth = Auth::Basic(token);
    let first = public_key(&app, &nar).await;
    for _ in 0..2 {
        let info = parse(&other.call(Endpoint::Narinfo, CACHE, &nar, &auth).await);
        assert_eq!(key_names(&info), [CACHE]);
        assert_signed(&info, &first, &nar);
    }

    // A compromised key: retired at once.
    configure(
        &app,
        Method::PATCH,
        json!({"keypair": "Generate", "no_overlap": true}),
    )
    .await;
    let second = public_key(&app, &nar).await;
    assert_ne!(second.to_string(), first.to_string());
    let info = parse(&app.call(Endpoint::Narinfo, CACHE, &nar, &auth).await);
    assert_eq!(key_names(&info), [format!("{CACHE}-2")]);
    assert_signed(&info, &second, &nar);
    other.refresh().await;
    let info = parse(&other.call(Endpoint::Narinfo, CACHE, &nar, &auth).await);
    assert_eq!(key_names(&info), [format!("{CACHE}-2")]);
    assert_signed(&info, &second, &nar);
    other.close().await;
    app.teardown().await;
}

#[tokio::test]
async fn a_key_rotation_changes_the_served_signatures_on_every_replica_sqlite() {
    rotation_on_every_replica(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_changes_the_served_signatures_on_every_replica_postgres() {
    rotation_on_every_replica(Backend::Postgres).await;
}

// --- narinfos kept rendered (crate::narinfo_texts) -------------------------------

/// A second replica of a [`TestApp`]: its database and storage, its own
/// memory (catalog, kept narinfos).
struct TestReplica {
    state: larder_api::state::AppState,
    router: axum::Router,
}

impl TestReplica {
    async fn of(app: &TestApp) -> Self {
        let state = larder_api::server::build_state(app.state.config.clone())
            .await
            .expect("opening the replica's database and storage");
        Self {
            router: larder_api::app::router(state.clone()),
            state,
        }
    }

    async fn get(&self, uri: &str, token: &str) -> TestResponse {
        let req = request(Method::GET, uri, None)
            .header(header::AUTHORIZATION, basic(token))
            .body(Body::empty())
            .expect("request");
        crate::common::send(&self.router, req).await
    }

    /// What the background refresher does every `revocation-refresh`.
    async fn refresh(&self) {
        self.state
            .catalog
            .refresh(&self.state.db)
            .await
            .expect("refreshing the cache catalog");
    }
}

/// `Authorization: Basic`, as Nix sends a netrc password.
fn basic(token: &str) -> String {
    use base64::Engine;
    let pair = format!("nix:{token}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// An ingested path, read twice on `app` and on a second replica, so both
/// keep its narinfo.
async fn kept_on_two_replicas(app: &TestApp, nar: &TestNar) -> TestReplica {
    app.create_cache(CACHE, false).await;
    let token = app.root_token();
    app.upload(&token, CACHE, nar)
        .await
        .assert_status(StatusCode::OK);
    assert_eq!(app.drain_jobs().await, 1);
    let other = TestReplica::of(app).await;
    let uri = narinfo_uri(nar);
    for _ in 0..2 {
        app.get(&uri, Some(&token))
            .await
            .assert_status(StatusCode::OK);
        other.get(&uri, &token).await.assert_status(StatusCode::OK);
    }
    assert!(!app.state.narinfos.is_empty(), "kept by the first replica");
    assert!(!other.state.narinfos.is_empty(), "kept by the second");
    other
}

fn narinfo_uri(nar: &TestNar) -> String {
    format!("/{CACHE}/{}.narinfo", nar.store_hash())
}

async fn kept_narinfo_goes_with_its_path(backend: Backend) {
    let app = TestApp::new(backend).await;
    let nar = TestNar::files("kept-deleted", 34, &[1500]);
    let other = kept_on_two_replicas(&app, &nar).await;
    let token = app.root_token();
    let uri = narinfo_uri(&nar);
    let delete = request(Method::DELETE, &uri, Some(&token))
        .body(Body::empty())
        .expect("request");
    app.send(delete).await.assert_status(StatusCode::NO_CONTENT);
    // The replica that deleted it: at once.
    app.get(&uri, Some(&token))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");
    // Another replica: at its next refresh.
    other.refresh().await;
    other
        .get(&uri, &token)
        .await
        .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");
    other.state.db.close().await;
    app.teardown().await;
}

#[tokio::test]
async fn a_kept_narinfo_goes_with_its_deleted_path_on_every_replica_sqlite() {
    kept_narinfo_goes_with_its_path(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_narinfo_goes_with_its_deleted_path_on_every_replica_postgres() {
    kept_narinfo_goes_with_its_path(Backend::Postgres).await;
}

async fn kept_narinfo_resigned_after_rotation(backend: Backend) {
    let app = TestApp::new(backend).await;
    let nar = TestNar::files("kept-rotated", 35, &[1700]);
    let other = kept_on_two_replicas(&app, &nar).await;
    let token = app.root_token();
    let first = app.public_key(CACHE).await;
    let uri = narinfo_uri(&nar);
    let info = parse(&other.get(&uri, &token).await);
    assert_signed(&info, &first, &nar);

    // A compromised key: retired at once.
    let rotate = request(
        Method::PATCH,
        &format!("/_api/v1/cache-config/{CACHE}"),
        Some(&token),
    )
    .header(header::CONTENT_TYPE, "application/json")
    .body(Body::from(
        json!({"keypair": "Generate", "no_overlap": true}).to_string(),
    ))
    .expect("request");
    app.send(rotate).await.assert_status(StatusCode::OK);
    let second = app.public_key(CACHE).await;
    assert_ne!(second.to_string(), first.to_string());
    let resp = app.get(&uri, Some(&token)).await;
    let info = parse(&resp);
    assert_eq!(key_names(&info), [format!("{CACHE}-2")]);
    assert_signed(&info, &second, &nar);
    other.refresh().await;
    let info = parse(&other.get(&uri, &token).await);
    assert_eq!(key_names(&info), [format!("{CACHE}-2")]);
    assert_signed(&info, &second, &nar);
    other.state.db.close().await;
    app.teardown().await;
}

#[tokio::test]
async fn a_kept_narinfo_is_signed_anew_after_a_key_rotation_on_every_replica_sqlite() {
    kept_narinfo_resigned_after_rotation(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_narinfo_is_signed_anew_after_a_key_rotation_on_every_replica_postgres() {
    kept_narinfo_resigned_after_rotation(Backend::Postgres).await;
}
