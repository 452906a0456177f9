//! What the read path keeps in memory must not outlive what it stands for
//! (issue 13), on SQLite and PostgreSQL:
//!
//! - a token's verification is cached, yet a revocation takes effect at
//!   the replica's next refresh, as without the cache;
//! - a cache made private stops answering strangers at once on the replica
//!   that changed it and at the next refresh on every other one;
//! - a key rotation changes the served signatures, on every replica.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};

use larder_core::nix::narinfo::NarInfo;
use larder_core::nix::signing::PublicKey;
use larder_shared::token::{Permission, Revocation};

use crate::common::Backend;
use crate::common::nar::TestNar;
use crate::common::read::assert_signed;

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

fn parse(resp: &crate::common::TestResponse) -> NarInfo {
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
