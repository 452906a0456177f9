//! Authentication and authorization through the real router (docs/operations.md "Tokens and permissions"):
//!
//! 1. every bad credential, as Bearer and as Basic, against every endpoint
//!    class is a 401 whose JSON says why; valid tokens without the needed
//!    permission get 403; pattern precedence (exact name, first glob, no
//!    merging) as docs/protocol.md "Tokens" states;
//! 2. a stranger cannot tell an existing private cache or path from a
//!    missing one; a public cache grants pull, not push;
//! 3. tokens made outside Larder in Attic's exact shape (fixtures) grant
//!    exactly their claims, on RS256 and HS256 servers;
//! 4. the seed's `atticadm make-token` lines, run through the real
//!    `larder-admin` binary, and `list-tokens` / `revoke-token`;
//! 5. hostile input on every route answers JSON errors (`hostile_input`);
//! 6. clients that stop talking are cut off (`slowloris`);
//! 7. cache signing keys are sealed at rest and rotate with overlap
//!    (`signing_keys`);
//! 8. CI identity tokens exchanged for short-lived tokens (`oidc`).
//!
//! Everything runs on SQLite; the credential table also runs on PostgreSQL.

mod hostile_input;
mod oidc;
mod oidc_issuer;
mod read_path;
mod signing_keys;
mod slowloris;
mod support;

use crate::common;

use std::panic::{AssertUnwindSafe, resume_unwind};
use std::process::Command;

use axum::http::{StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::FutureExt as _;
use serde_json::{Value, json};

use larder_shared::db::unix_now;
use larder_shared::token::{Permission, Revocation, TokenKey, mint};

use common::nar::TestNar;
use common::{Backend, TestResponse};
use support::{
    Auth, Endpoint, Options, SecApp, Signing, assert_no_failures, check_error, fixture,
    peek_claims, tampered, unsigned_jwt,
};

const PRIV: &str = "sec-priv";
const PUB: &str = "sec-pub";
const NEW: &str = "sec-new";
const MISSING_CACHE: &str = "sec-none";

const ISSUER: &str = "https://larder.test";
const AUDIENCE: &str = "larder-test";
const SECOND_AUDIENCE: &str = "larder-test-2";

use Permission::{
    ConfigureCache as Cr, ConfigureCacheRetention as Cq, CreateCache as Cc, Delete as D,
    DestroyCache as Cd, Pull as R, Push as W,
};

/// Every endpoint class, each with the cache it is sent to in the tables.
const ALL_ENDPOINTS: [Endpoint; 11] = [
    Endpoint::NixCacheInfo,
    Endpoint::Narinfo,
    Endpoint::NarinfoHead,
    Endpoint::Nar,
    Endpoint::CacheConfigGet,
    Endpoint::Upload,
    Endpoint::MissingPaths,
    Endpoint::Configure,
    Endpoint::ConfigureRetention,
    Endpoint::Destroy,
    Endpoint::Create,
];

/// Runs `$body` with `$app` built from `$opts`, tearing the app down (its
/// PostgreSQL database) even when the body panics.
macro_rules! with_app {
    ($app:ident = $opts:expr => $body:expr) => {{
        let $app = SecApp::new($opts).await;
        let outcome = AssertUnwindSafe(async { $body }).catch_unwind().await;
        $app.teardown().await;
        if let Err(panic) = outcome {
            resume_unwind(panic);
        }
    }};
}

fn nar(name: &str, seed: u64) -> TestNar {
    TestNar::files(name, seed, &[700, 3000])
}

/// Creates `name` through the API with the root token.
async fn create_cache_http(app: &SecApp, name: &str, is_public: bool) {
    let body = json!({
        "keypair": "Generate",
        "is_public": is_public,
        "store_dir": "/nix/store",
        "priority": 41,
        "upstream_cache_key_names": [],
    });
    let req = axum::http::Request::post(format!("/_api/v1/cache-config/{name}"))
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", app.root_token()),
        )
        .header(header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .expect("request");
    app.send(req).await.assert_status(StatusCode::OK);
}

// --- 1. bad credentials -----------------------------------------------------

/// A credential that must be refused, and the word the 401 must contain.
struct Bad {
    name: &'static str,
    auths: Vec<Auth>,
    why: &'static str,
}

impl Bad {
    fn token(name: &'static str, token: String, why: &'static str) -> Self {
        Self {
            name,
            auths: Auth::both(&token).to_vec(),
            why,
        }
    }
}

fn cache_for(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Create => NEW,
        _ => PRIV,
    }
}

async fn bad_credentials(backend: Backend) {
    with_app!(app = Options {
        backend,
        signing: Signing::fixture_rs256(),
        bound_issuer: Some(ISSUER.into()),
        bound_audiences: Some(vec![AUDIENCE.into(), SECOND_AUDIENCE.into()]),
    } => bad_credentials_scenario(&app).await)
}

async fn bad_credentials_scenario(app: &SecApp) {
    let path = nar("secret", 1);
    create_cache_http(app, PRIV, false).await;
    app.push_ok(&app.root_token(), PRIV, &path).await;

    let now = unix_now() as u64;
    let full: &[(&str, &[Permission])] = &[("sec-*", &Permission::ALL)];
    let valid = app.claims("alice", full);
    let valid_json = serde_json::to_value(&valid).expect("claims JSON");
    let with = |edit: &dyn Fn(&mut larder_shared::token::Claims)| {
        let mut c = valid.clone();
        edit(&mut c);
        app.sign(&c)
    };

    let other_rsa = TokenKey::from_rs256_secret_base64(
        &TokenKey::generate_rs256().expect("generating an RSA key"),
    )
    .expect("generated key loads");
    let random_hmac =
        TokenKey::from_hs256_secret_base64(&STANDARD.encode("not the server's key")).unwrap();
    // HMAC keyed with the server's own public key PEM (the exact bytes a
    // confused verifier would use): the classic RS256 → HS256 confusion.
    let pubkey_hmac = TokenKey::from_hs256_secret_base64(&fixture("rs256-pubkey.base64")).unwrap();

    let revoked_jti = app.claims("revoked-by-jti", full);
    let revoked_sub = app.claims("revoked-by-sub", full);

    let mut table = vec![
        Bad {
            name: "no token",
            auths: vec![Auth::Anonymous, Auth::Basic(String::new())],
            why: "authentication required",
        },
        Bad::token("alg none (fixture)", fixture("alg-none.jwt"), "algorithm"),
        Bad::token(
            "alg none, valid claims",
            unsigned_jwt(&json!({"alg": "none", "typ": "JWT"}), &valid_json),
            "algorithm",
        ),
        Bad::token(
            "alg NONE, valid claims",
            unsigned_jwt(&json!({"alg": "NONE"}), &valid_json),
            "algorithm",
        ),
        Bad::token(
            "HS256 with another secret",
            mint(&random_hmac, &valid).unwrap(),
            "algorithm",
        ),
        Bad::token(
            "HS256 keyed with the RSA public key PEM (fixture)",
            fixture("hs256-with-rs256-pubkey.jwt"),
            "algorithm",
        ),
        Bad::token(
            "HS256 keyed with the RSA public key PEM, valid claims",
            mint(&pubkey_hmac, &valid).unwrap(),
            "algorithm",
        ),
        Bad::token(
            "RS256 signed by another key",
            mint(&other_rsa, &valid).unwrap(),
            "signature",
        ),
        Bad::token(
            "payload swapped under a valid signature",
            tampered(&app.token("alice", &[("nothing-*", &[R])]), &valid_json),
            "signature",
        ),
        Bad::token(
            "expired an hour ago",
            with(&|c| {
                c.exp = now - 3600;
                c.nbf = Some(now - 7200);
                c.iat = Some(now - 7200);
            }),
            "expired",
        ),
        Bad::token("expired (fixture)", fixture("rs256-expired.jwt"), "expired"),
        Bad::token(
            "nbf beyond the leeway",
            with(&|c| {
                c.nbf = Some(now + 120);
                c.iat = None;
            }),
            "not yet valid",
        ),
        Bad::token(
            "iat in the future",
            with(&|c| {
                c.nbf = None;
                c.iat = Some(now + 3600);
            }),
            "not yet valid",
        ),
        Bad::token(
            "wrong issuer",
            with(&|c| c.iss = Some("https://evil.test".into())),
            "issuer",
        ),
        Bad::token("no issuer", with(&|c| c.iss = None), "issuer"),
        Bad::token(
            "wrong audience",
            with(&|c| c.aud = vec!["evil".into()]),
            "audience",
        ),
        Bad::token("no audience", with(&|c| c.aud.clear()), "audience"),
        Bad::token("garbage", "garbage".into(), "malformed"),
        Bad::token("three garbage parts", "a.b.c".into(), "malformed"),
        Bad::token("huge", "x".repeat(20_000), "malformed"),
        Bad::token("revoked by jti", app.sign(&revoked_jti), "revoked"),
        Bad::token("revoked by subject", app.sign(&revoked_sub), "revoked"),
        Bad {
            name: "malformed headers",
            auths: vec![
                Auth::Header("Bearer".into()),
                Auth::Header("Bearer ".into()),
                Auth::Header("Basic !!!not-base64".into()),
            ],
            why: "malformed",
        },
        Bad {
            name: "unsupported scheme",
            auths: vec![Auth::Header(format!("Token {}", app.sign(&valid)))],
            why: "unsupported Authorization scheme",
        },
    ];
    // Fixture tokens carry no `iss`: with bindings they fail on that.
    table.push(Bad::token(
        "Attic fixture without iss on a bound server",
        fixture("rs256-attic.jwt"),
        "issuer",
    ));

    app.revoke(&Revocation::Token {
        jti: revoked_jti.jti.clone().expect("jti"),
    })
    .await;
    app.revoke(&Revocation::subject_now(
        "revoked-by-sub",
        unix_now() as u64,
    ))
    .await;

    let mut failures = Vec::new();
    let mut checked = 0;
    for bad in &table {
        for auth in &bad.auths {
            for endpoint in ALL_ENDPOINTS {
                let resp = app.call(endpoint, cache_for(endpoint), &path, auth).await;
                checked += 1;
                let outcome = if endpoint == Endpoint::NarinfoHead {
                    // HEAD answers carry no body.
                    (resp.status == StatusCode::UNAUTHORIZED)
                        .then_some(())
                        .ok_or_else(|| format!("status {}", resp.status))
                } else {
                    check_error(&resp, StatusCode::UNAUTHORIZED, "Unauthorized", bad.why)
                };
                if let Err(e) = outcome {
                    failures.push(format!(
                        "{} as {} → {endpoint:?}: {e}",
                        bad.name,
                        auth.scheme()
                    ));
                }
            }
        }
    }
    assert_no_failures("bad credentials", &failures);
    assert!(checked > 500, "the table ran ({checked} requests)");

    // Nothing happened: the cache is intact, nothing was created.
    assert!(app.cache_exists(PRIV).await && !app.cache_exists(NEW).await);
    let root = Auth::Bearer(app.root_token());
    let cfg: Value = app
        .call(Endpoint::CacheConfigGet, PRIV, &path, &root)
        .await
        .json();
    assert_eq!(
        (cfg["priority"].clone(), cfg["retention_period"].clone()),
        (json!(41), json!("Global"))
    );

    // Controls: the same requests with acceptable tokens succeed, so each
    // 401 above was about the credential and nothing else.
    let mut controls = vec![("valid", app.sign(&valid))];
    controls.push(("expired within the leeway", with(&|c| c.exp = now - 30)));
    controls.push((
        "nbf within the leeway",
        with(&|c| {
            c.nbf = Some(now + 30);
            c.iat = None;
        }),
    ));
    controls.push((
        "second bound audience among others",
        with(&|c| c.aud = vec!["unrelated".into(), SECOND_AUDIENCE.into()]),
    ));
    controls.push(("unrevoked subject", app.token("alice", full)));
    for (name, token) in &controls {
        for auth in Auth::both(token) {
            for endpoint in [
                Endpoint::NixCacheInfo,
                Endpoint::Narinfo,
                Endpoint::NarinfoHead,
                Endpoint::Nar,
                Endpoint::CacheConfigGet,
                Endpoint::Upload,
                Endpoint::MissingPaths,
                Endpoint::Configure,
                Endpoint::ConfigureRetention,
                Endpoint::Create,
            ] {
                let resp = app.call(endpoint, cache_for(endpoint), &path, &auth).await;
                if resp.status != StatusCode::OK {
                    failures.push(format!(
                        "control {name} as {} → {endpoint:?}: {} {}",
                        auth.scheme(),
                        resp.status,
                        resp.text()
                    ));
                }
                if endpoint == Endpoint::Create {
                    let resp = app.call(Endpoint::Destroy, NEW, &path, &auth).await;
                    if resp.status != StatusCode::OK {
                        failures.push(format!("control {name}: destroy {NEW}: {}", resp.status));
                    }
                }
            }
        }
    }
    assert_no_failures("controls", &failures);
    app.call(Endpoint::Destroy, PRIV, &path, &root)
        .await
        .assert_status(StatusCode::OK);
    assert!(!app.cache_exists(PRIV).await);
}

#[tokio::test]
async fn bad_credentials_are_401_with_the_reason_sqlite() {
    bad_credentials(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_401_with_the_reason_postgres() {
    bad_credentials(Backend::Postgres).await;
}

// --- 1b. valid tokens, wrong permissions --------------------------------------

/// Sends `endpoint` and checks the status; on 403 the JSON names `why`.
#[track_caller]
fn expect(
    resp: &TestResponse,
    status: StatusCode,
    why: &str,
    what: &str,
    failures: &mut Vec<String>,
) {
    let outcome = match status {
        StatusCode::FORBIDDEN => check_error(resp, status, "PermissionDenied", why),
        StatusCode::UNAUTHORIZED => check_error(resp, status, "Unauthorized", why),
        _ if resp.status == status => Ok(()),
        _ => Err(format!(
            "status {} (want {status}): {}",
            resp.status,
            resp.text()
        )),
    };
    if let Err(e) = outcome {
        failures.push(format!("{what}: {e}"));
    }
}

/// One row of a permission table: endpoint, cache, path, the status
/// expected, the reason a 401 or 403 must name, and what the row checks.
type Row<'a> = (Endpoint, &'a str, &'a TestNar, StatusCode, &'a str, &'a str);

/// Sends each row's request with `auth`, in order (rows may change state:
/// an upload, a create), and records every row whose answer differs;
/// `prefix` (if not empty) starts each row's name.
async fn check_rows(
    app: &SecApp,
    auth: &Auth,
    prefix: &str,
    rows: &[Row<'_>],
    failures: &mut Vec<String>,
) {
    for &(endpoint, cache, nar, status, why, what) in rows {
        let what = if prefix.is_empty() {
            what.to_owned()
        } else {
            format!("{prefix}: {what}")
        };
        expect(
            &app.call(endpoint, cache, nar, auth).await,
            status,
            why,
            &what,
            failures,
        );
    }
}

#[tokio::test]
async fn valid_tokens_without_the_permission_are_403() {
    let app = SecApp::new(Options::sqlite(Signing::fixture_hs256())).await;
    let p1 = nar("first", 11);
    let p2 = nar("second", 12);
    let p3 = nar("third", 13);
    app.create_cache_db(PRIV, false).await;
    app.create_cache_db("sec-other", false).await;
    let root = app.root_token();
    app.push_ok(&root, PRIV, &p1).await;
    app.push_ok(&root, "sec-other", &p1).await;

    let mut f = Vec::new();
    let ok = StatusCode::OK;
    let denied = StatusCode::FORBIDDEN;
    let everything_but = |p: Permission| -> Vec<Permission> {
        Permission::ALL.into_iter().filter(|q| *q != p).collect()
    };

    // Pull-only cannot push.
    let t = Auth::Bearer(app.token("puller", &[(PRIV, &[R])]));
    check_rows(
        &app,
        &t,
        "",
        &[
            (Endpoint::Upload, PRIV, &p2, denied, "push (w)", "r: upload"),
            (
                Endpoint::MissingPaths,
                PRIV,
                &p2,
                denied,
                "push (w)",
                "r: missing",
            ),
            (Endpoint::Narinfo, PRIV, &p1, ok, "", "r: narinfo"),
            (Endpoint::Nar, PRIV, &p1, ok, "", "r: nar"),
        ],
        &mut f,
    )
    .await;

    // Push-only pushes to a private cache and checks existence, but cannot read NARs.
    for t in Auth::both(&app.token("pusher", &[(PRIV, &[W])])) {
        let s = t.scheme();
        check_rows(
            &app,
            &t,
            &format!("w/{s}"),
            &[
                (Endpoint::Upload, PRIV, &p2, ok, "", "upload"),
                (Endpoint::MissingPaths, PRIV, &p2, ok, "", "missing"),
                (Endpoint::NixCacheInfo, PRIV, &p1, ok, "", "nix-cache-info"),
                (Endpoint::Narinfo, PRIV, &p1, ok, "", "narinfo"),
                (Endpoint::NarinfoHead, PRIV, &p2, ok, "", "HEAD narinfo"),
                (Endpoint::CacheConfigGet, PRIV, &p1, ok, "", "cache-config"),
                (Endpoint::Nar, PRIV, &p1, denied, "pull (r)", "nar"),
                (Endpoint::Nar, PRIV, &p2, denied, "pull (r)", "own nar"),
            ],
            &mut f,
        )
        .await;
    }

    // Configure without cr; retention without cq; destroy without cd; create without cc.
    let t = Auth::Bearer(app.token("no-cr", &[("sec-*", &everything_but(Cr))]));
    check_rows(
        &app,
        &t,
        "",
        &[
            (
                Endpoint::Configure,
                PRIV,
                &p1,
                denied,
                "configure cache (cr)",
                "no cr: configure",
            ),
            (
                Endpoint::ConfigureRetention,
                PRIV,
                &p1,
                denied,
                "configure cache (cr)",
                "no cr: retention",
            ),
        ],
        &mut f,
    )
    .await;
    let t = Auth::Bearer(app.token("cr-only", &[("sec-*", &[Cr])]));
    check_rows(
        &app,
        &t,
        "",
        &[
            (Endpoint::Configure, PRIV, &p1, ok, "", "cr: configure"),
            (
                Endpoint::ConfigureRetention,
                PRIV,
                &p1,
                denied,
                "retention (cq)",
                "cr: retention",
            ),
            (
                Endpoint::Narinfo,
                PRIV,
                &p1,
                denied,
                "pull (r)",
                "cr: narinfo",
            ),
        ],
        &mut f,
    )
    .await;
    let t = Auth::Bearer(app.token("cq-only", &[("sec-*", &[Cq])]));
    expect(
        &app.call(Endpoint::ConfigureRetention, PRIV, &p1, &t).await,
        denied,
        "configure cache (cr)",
        "cq: retention",
        &mut f,
    );
    let t = Auth::Bearer(app.token("cr-cq", &[("sec-*", &[Cr, Cq])]));
    expect(
        &app.call(Endpoint::ConfigureRetention, PRIV, &p1, &t).await,
        ok,
        "",
        "cr+cq: retention",
        &mut f,
    );
    let t = Auth::Bearer(app.token("no-cd", &[("sec-*", &everything_but(Cd))]));
    expect(
        &app.call(Endpoint::Destroy, PRIV, &p1, &t).await,
        denied,
        "destroy cache (cd)",
        "no cd: destroy",
        &mut f,
    );
    let t = Auth::Bearer(app.token("no-cc", &[("sec-*", &everything_but(Cc))]));
    expect(
        &app.call(Endpoint::Create, NEW, &p1, &t).await,
        denied,
        "create cache (cc)",
        "no cc: create",
        &mut f,
    );
    let t = Auth::Bearer(app.token("d-only", &[(PRIV, &[D])]));
    check_rows(
        &app,
        &t,
        "",
        &[
            (
                Endpoint::Narinfo,
                PRIV,
                &p1,
                denied,
                "pull (r)",
                "d: narinfo",
            ),
            (Endpoint::Upload, PRIV, &p3, denied, "push (w)", "d: upload"),
        ],
        &mut f,
    )
    .await;
    let t = Auth::Bearer(app.token("elsewhere", &[("other-*", &Permission::ALL)]));
    expect(
        &app.call(Endpoint::Create, NEW, &p1, &t).await,
        StatusCode::UNAUTHORIZED,
        "authentication required",
        "no rights: create",
        &mut f,
    );
    assert!(app.cache_exists(PRIV).await && !app.cache_exists(NEW).await);
    let t = Auth::Bearer(app.token("cc-only", &[(NEW, &[Cc])]));
    check_rows(
        &app,
        &t,
        "",
        &[
            (Endpoint::Create, NEW, &p1, ok, "", "cc: create"),
            (
                Endpoint::Create,
                NEW,
                &p1,
                StatusCode::CONFLICT,
                "",
                "cc: create again",
            ),
        ],
        &mut f,
    )
    .await;
    let t = Auth::Bearer(app.token("cd-only", &[(NEW, &[Cd])]));
    expect(
        &app.call(Endpoint::Destroy, NEW, &p1, &t).await,
        ok,
        "",
        "cd: destroy",
        &mut f,
    );

    // An exact name wins over an earlier glob.
    let t = Auth::Bearer(app.token("exact", &[("sec-*", &[R]), (PRIV, &[W])]));
    check_rows(
        &app,
        &t,
        "",
        &[
            (Endpoint::Upload, PRIV, &p3, ok, "", "exact wins: upload"),
            (
                Endpoint::Nar,
                PRIV,
                &p1,
                denied,
                "pull (r)",
                "exact wins: nar",
            ),
            (
                Endpoint::Nar,
                "sec-other",
                &p1,
                ok,
                "",
                "glob elsewhere: nar",
            ),
            (
                Endpoint::Upload,
                "sec-other",
                &p3,
                denied,
                "push (w)",
                "glob elsewhere: upload",
            ),
        ],
        &mut f,
    )
    .await;

    // The first matching glob wins, in the token's JSON order.
    let t = Auth::Bearer(app.token("first-glob", &[("sec-p*", &[W]), ("sec-*", &[R, W])]));
    check_rows(
        &app,
        &t,
        "",
        &[
            (
                Endpoint::Nar,
                PRIV,
                &p1,
                denied,
                "pull (r)",
                "first glob (w): nar",
            ),
            (
                Endpoint::Upload,
                PRIV,
                &p3,
                ok,
                "",
                "first glob (w): upload",
            ),
            (Endpoint::Nar, "sec-other", &p1, ok, "", "second glob: nar"),
        ],
        &mut f,
    )
    .await;
    let t = Auth::Bearer(app.token("first-glob-2", &[("sec-*", &[R]), ("sec-p*", &[W])]));
    check_rows(
        &app,
        &t,
        "",
        &[
            (Endpoint::Nar, PRIV, &p1, ok, "", "first glob (r): nar"),
            (
                Endpoint::Upload,
                PRIV,
                &p3,
                denied,
                "push (w)",
                "first glob (r): upload",
            ),
        ],
        &mut f,
    )
    .await;

    // Permissions of different matching patterns are not merged.
    let t = Auth::Bearer(app.token(
        "no-merge",
        &[
            ("sec-*", &[R]),
            ("*-priv", &[W]),
            ("s*", &[Cc]),
            (PRIV, &[Cr]),
        ],
    ));
    check_rows(
        &app,
        &t,
        "",
        &[
            (
                Endpoint::Nar,
                PRIV,
                &p1,
                denied,
                "pull (r)",
                "no merge: exact entry has no r",
            ),
            (Endpoint::Configure, PRIV, &p1, ok, "", "no merge: exact cr"),
            (
                Endpoint::Upload,
                "sec-other",
                &p3,
                denied,
                "push (w)",
                "no merge: upload",
            ),
            (
                Endpoint::Create,
                NEW,
                &p1,
                denied,
                "create cache (cc)",
                "no merge: create",
            ),
        ],
        &mut f,
    )
    .await;
    let t = Auth::Bearer(app.token("no-merge-2", &[("sec-*", &[R]), ("*-priv", &[W])]));
    check_rows(
        &app,
        &t,
        "",
        &[
            (Endpoint::Nar, PRIV, &p1, ok, "", "no merge 2: nar"),
            (
                Endpoint::Upload,
                PRIV,
                &p3,
                denied,
                "push (w)",
                "no merge 2: upload",
            ),
            (
                Endpoint::MissingPaths,
                PRIV,
                &p3,
                denied,
                "push (w)",
                "no merge 2: missing",
            ),
        ],
        &mut f,
    )
    .await;

    assert_no_failures("permissions", &f);
    assert!(app.cache_exists(PRIV).await && !app.cache_exists(NEW).await);
    app.teardown().await;
}

// --- 2. existence hiding and public caches ----------------------------------

#[tokio::test]
async fn strangers_cannot_tell_what_exists() {
    let app = SecApp::new(Options::sqlite(Signing::fixture_hs256())).await;
    let stored = nar("stored", 21);
    let absent = nar("absent", 22);
    app.create_cache_db(PRIV, false).await;
    app.create_cache_db("other-cache", false).await;
    app.push_ok(&app.root_token(), PRIV, &stored).await;
    app.push_ok(&app.root_token(), "other-cache", &absent).await;

    let stranger = app.token(
        "stranger",
        &[("other-*", &Permission::ALL), ("sec-p", &[R])],
    );
    let strangers = [
        Auth::Anonymous,
        Auth::Bearer(stranger.clone()),
        Auth::Basic(stranger.clone()),
    ];
    let probes: [(&str, &str, &TestNar); 3] = [
        ("existing path, existing cache", PRIV, &stored),
        ("missing path, existing cache", PRIV, &absent),
        ("missing cache", MISSING_CACHE, &stored),
    ];
    let mut f = Vec::new();
    let mut first_body: Option<bytes::Bytes> = None;
    for auth in &strangers {
        for endpoint in [
            Endpoint::Narinfo,
            Endpoint::NarinfoHead,
            Endpoint::Nar,
            Endpoint::NixCacheInfo,
            Endpoint::CacheConfigGet,
            Endpoint::MissingPaths,
            Endpoint::Upload,
            Endpoint::Configure,
            Endpoint::Destroy,
        ] {
            let mut answers = Vec::new();
            for (what, cache, path) in probes {
                let resp = app.call(endpoint, cache, path, auth).await;
                answers.push((what, resp));
            }
            let (_, first) = &answers[0];
            if first.status != StatusCode::UNAUTHORIZED {
                f.push(format!(
                    "{} {endpoint:?}: status {}",
                    auth.scheme(),
                    first.status
                ));
            }
            if endpoint != Endpoint::NarinfoHead {
                // Every hidden answer is the same bytes, whatever the endpoint.
                match &first_body {
                    None => first_body = Some(first.body.clone()),
                    Some(b) if *b != first.body => f.push(format!(
                        "{} {endpoint:?}: body {:?} differs from {:?}",
                        auth.scheme(),
                        first.text(),
                        String::from_utf8_lossy(b)
                    )),
                    Some(_) => {}
                }
            }
            for (what, resp) in &answers[1..] {
                let same_headers = [header::CONTENT_TYPE, header::CONTENT_LENGTH]
                    .iter()
                    .all(|h| resp.headers.get(h) == first.headers.get(h));
                if resp.status != first.status || resp.body != first.body || !same_headers {
                    f.push(format!(
                        "{} {endpoint:?}: {what} answers {} {:?} {:?}, existing path answers {} {:?} {:?}",
                        auth.scheme(),
                        resp.status,
                        resp.headers,
                        resp.text(),
                        first.status,
                        first.headers,
                        first.text()
                    ));
                }
            }
        }
    }
    assert_no_failures("existence hiding", &f);
    let hidden = first_body.expect("bodies compared");
    assert_eq!(
        serde_json::from_slice::<Value>(&hidden).unwrap(),
        json!({"code": 401, "error": "Unauthorized", "message": "authentication required, or no access to this cache"})
    );
    app.teardown().await;
}

#[tokio::test]
async fn public_cache_grants_pull_to_anyone_and_push_to_pushers_only() {
    let app = SecApp::new(Options::sqlite(Signing::fixture_hs256())).await;
    let public_path = nar("public", 31);
    let private_path = nar("private", 32);
    let new_path = nar("new", 33);
    create_cache_http(&app, PUB, true).await;
    create_cache_http(&app, PRIV, false).await;
    app.push_ok(&app.root_token(), PUB, &public_path).await;
    app.push_ok(&app.root_token(), PRIV, &private_path).await;

    let mut f = Vec::new();
    let ok = StatusCode::OK;
    let anon = Auth::Anonymous;
    // Pull: nix-cache-info, narinfo, NAR, cache config.
    expect(
        &app.call(Endpoint::NixCacheInfo, PUB, &public_path, &anon)
            .await,
        ok,
        "",
        "anon nix-cache-info",
        &mut f,
    );
    expect(
        &app.call(Endpoint::Narinfo, PUB, &public_path, &anon).await,
        ok,
        "",
        "anon narinfo",
        &mut f,
    );
    expect(
        &app.call(Endpoint::CacheConfigGet, PUB, &public_path, &anon)
            .await,
        ok,
        "",
        "anon cache-config",
        &mut f,
    );
    let nar_resp = app.call(Endpoint::Nar, PUB, &public_path, &anon).await;
    nar_resp.assert_status(ok);
    assert_eq!(nar_resp.body, public_path.bytes, "anonymous NAR download");
    // A public cache says what it lacks.
    let missing = app.call(Endpoint::Narinfo, PUB, &new_path, &anon).await;
    expect(
        &missing,
        StatusCode::NOT_FOUND,
        "",
        "anon missing narinfo",
        &mut f,
    );
    assert_eq!(missing.json::<Value>()["error"], json!("NoSuchObject"));
    // ... but never serves another cache's data, hash known or not.
    for endpoint in [Endpoint::Narinfo, Endpoint::Nar] {
        let resp = app.call(endpoint, PUB, &private_path, &anon).await;
        expect(
            &resp,
            StatusCode::NOT_FOUND,
            "",
            &format!("private path via public cache: {endpoint:?}"),
            &mut f,
        );
    }

    // Push: anonymous callers and tokens without `w` are refused. The code
    // answers 403 (the caller holds pull on a public cache), not 401.
    let pull_only = app.token("reader", &[(PUB, &[R])]);
    let elsewhere = app.token("elsewhere", &[("other-*", &Permission::ALL)]);
    for (who, auth) in [
        ("anonymous", anon.clone()),
        ("token with r", Auth::Bearer(pull_only.clone())),
        ("token with r (Basic)", Auth::Basic(pull_only)),
        ("token for other caches", Auth::Bearer(elsewhere)),
    ] {
        expect(
            &app.call(Endpoint::Upload, PUB, &new_path, &auth).await,
            StatusCode::FORBIDDEN,
            "push (w)",
            &format!("{who}: upload"),
            &mut f,
        );
        expect(
            &app.call(Endpoint::MissingPaths, PUB, &new_path, &auth)
                .await,
            StatusCode::FORBIDDEN,
            "push (w)",
            &format!("{who}: missing"),
            &mut f,
        );
        check_rows(
            &app,
            &auth,
            who,
            &[
                (
                    Endpoint::Configure,
                    PUB,
                    &new_path,
                    StatusCode::FORBIDDEN,
                    "configure cache (cr)",
                    "configure",
                ),
                (
                    Endpoint::Destroy,
                    PUB,
                    &new_path,
                    StatusCode::FORBIDDEN,
                    "destroy cache (cd)",
                    "destroy",
                ),
            ],
            &mut f,
        )
        .await;
    }
    expect(
        &app.call(
            Endpoint::Narinfo,
            PUB,
            &new_path,
            &Auth::Bearer(app.root_token()),
        )
        .await,
        StatusCode::NOT_FOUND,
        "",
        "nothing was pushed",
        &mut f,
    );
    let pusher = Auth::Bearer(app.token("pusher", &[(PUB, &[W])]));
    expect(
        &app.call(Endpoint::Upload, PUB, &new_path, &pusher).await,
        ok,
        "",
        "pusher: upload",
        &mut f,
    );
    expect(
        &app.call(Endpoint::Narinfo, PUB, &new_path, &anon).await,
        ok,
        "",
        "anon reads the pushed path",
        &mut f,
    );
    assert_no_failures("public cache", &f);
    app.teardown().await;
}

// --- 3. fixture tokens in Attic's shape --------------------------------------

/// Caches the fixture's `rs256-attic.jwt` / `hs256-attic.jwt` speak about,
/// with the permissions its claims grant there (worked out by hand from
/// `claims.json`, not by the code under test).
const ATTIC_GRANTS: &[(&str, &[&str])] = &[
    ("all-x", &["r"]),
    ("all-ci-x", &["r"]), // first glob `all-*` wins over `all-ci-*`
    ("all-rw", &["r"]),   // `all-*` comes before `*-rw`
    ("x-rw", &["d"]),
    ("cache-rw", &["r", "w"]), // exact entry wins over the earlier `*-rw`
    ("cache-ro", &["r"]),
    ("team-a", &["r", "w", "cc"]),
    ("ops-1", &["d", "cr", "cq", "cd"]),
    ("ops-12", &[]), // `?` is exactly one character
    ("other", &[]),
];

/// Names to create, with what the fixture grants there.
const ATTIC_CREATES: &[(&str, &[&str])] = &[
    ("all-new", &["r"]),
    ("x2-rw", &["d"]),
    ("team-new", &["r", "w", "cc"]),
    ("ops-2", &["d", "cr", "cq", "cd"]),
    ("ops-22", &[]),
    ("elsewhere", &[]),
];

fn status_for(perms: &[&str], needs_all: &[&str], needs_any: &[&str]) -> StatusCode {
    if perms.is_empty() {
        StatusCode::UNAUTHORIZED
    } else if needs_all.iter().all(|p| perms.contains(p))
        && (needs_any.is_empty() || needs_any.iter().any(|p| perms.contains(p)))
    {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    }
}

fn needs(endpoint: Endpoint) -> (&'static [&'static str], &'static [&'static str]) {
    match endpoint {
        Endpoint::NixCacheInfo
        | Endpoint::Narinfo
        | Endpoint::NarinfoHead
        | Endpoint::CacheConfigGet => (&[], &["r", "w"]),
        Endpoint::Nar => (&["r"], &[]),
        Endpoint::Upload | Endpoint::MissingPaths => (&["w"], &[]),
        Endpoint::Configure => (&["cr"], &[]),
        Endpoint::ConfigureRetention => (&["cr", "cq"], &[]),
        Endpoint::Destroy => (&["cd"], &[]),
        Endpoint::Create => (&["cc"], &[]),
    }
}

/// Checks every endpoint on every fixture cache with `token`.
async fn check_attic_fixture(app: &SecApp, token: &str) {
    let path = nar("fixture", 41);
    let root = app.root_token();
    for (cache, _) in ATTIC_GRANTS {
        app.create_cache_db(cache, false).await;
        app.push_ok(&root, cache, &path).await;
    }
    let mut f = Vec::new();
    let mut check = |resp: &TestResponse, want: StatusCode, what: String| {
        let outcome = match want {
            StatusCode::UNAUTHORIZED => {
                check_error(resp, want, "Unauthorized", "authentication required")
            }
            StatusCode::FORBIDDEN => {
                check_error(resp, want, "PermissionDenied", "permission denied")
            }
            _ if resp.status == want => Ok(()),
            _ => Err(format!(
                "status {} (want {want}): {}",
                resp.status,
                resp.text()
            )),
        };
        if let Err(e) = outcome {
            f.push(format!("{what}: {e}"));
        }
    };
    for auth in Auth::both(token) {
        for (cache, perms) in ATTIC_GRANTS {
            for endpoint in ALL_ENDPOINTS {
                if matches!(
                    endpoint,
                    Endpoint::Destroy | Endpoint::Create | Endpoint::NarinfoHead
                ) {
                    continue;
                }
                let (all, any) = needs(endpoint);
                let resp = app.call(endpoint, cache, &path, &auth).await;
                check(
                    &resp,
                    status_for(perms, all, any),
                    format!("{} {cache} {endpoint:?}", auth.scheme()),
                );
            }
        }
        for (cache, perms) in ATTIC_CREATES {
            let resp = app.call(Endpoint::Create, cache, &path, &auth).await;
            check(
                &resp,
                status_for(perms, &["cc"], &[]),
                format!("{} create {cache}", auth.scheme()),
            );
            if resp.status == StatusCode::OK {
                // Leave the name free for the next scheme.
                app.call(Endpoint::Destroy, cache, &path, &Auth::Bearer(root.clone()))
                    .await
                    .assert_status(StatusCode::OK);
            }
        }
    }
    // Destroy last: only `ops-1` goes.
    for (cache, perms) in ATTIC_GRANTS {
        let resp = app
            .call(Endpoint::Destroy, cache, &path, &Auth::Basic(token.into()))
            .await;
        check(
            &resp,
            status_for(perms, &["cd"], &[]),
            format!("destroy {cache}"),
        );
        assert_eq!(
            app.cache_exists(cache).await,
            *cache != "ops-1",
            "{cache} after destroy"
        );
    }
    assert_no_failures("Attic fixture token", &f);
}

/// The fixture made from the seed's make-token line: `snyssen-*` r, w, cc.
async fn check_seed_fixture(app: &SecApp) {
    let token = fixture("rs256-seed.jwt");
    let path = nar("seed", 42);
    app.create_cache_db("other-cache", false).await;
    for auth in Auth::both(&token) {
        app.call(Endpoint::Create, "snyssen-infra", &path, &auth)
            .await
            .assert_status(StatusCode::OK);
        app.call(Endpoint::Upload, "snyssen-infra", &path, &auth)
            .await
            .assert_status(StatusCode::OK);
        app.call(Endpoint::Narinfo, "snyssen-infra", &path, &auth)
            .await
            .assert_status(StatusCode::OK);
        app.call(Endpoint::Nar, "snyssen-infra", &path, &auth)
            .await
            .assert_status(StatusCode::OK);
        app.call(Endpoint::Configure, "snyssen-infra", &path, &auth)
            .await
            .assert_error(StatusCode::FORBIDDEN, "PermissionDenied");
        app.call(Endpoint::Destroy, "snyssen-infra", &path, &auth)
            .await
            .assert_error(StatusCode::FORBIDDEN, "PermissionDenied");
        app.call(Endpoint::NixCacheInfo, "other-cache", &path, &auth)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "Unauthorized");
        app.call(
            Endpoint::Destroy,
            "snyssen-infra",
            &path,
            &Auth::Bearer(app.root_token()),
        )
        .await
        .assert_status(StatusCode::OK);
    }
}

#[tokio::test]
async fn attic_fixture_tokens_rs256_pkcs1_key() {
    let app = SecApp::new(Options::sqlite(Signing::fixture_rs256())).await;
    check_attic_fixture(&app, &fixture("rs256-attic.jwt")).await;
    check_seed_fixture(&app).await;
    // The HS256 twin, and the expired one, are refused by this server.
    for (token, why) in [
        (fixture("hs256-attic.jwt"), "algorithm"),
        (fixture("hs256-with-rs256-pubkey.jwt"), "algorithm"),
        (fixture("alg-none.jwt"), "algorithm"),
        (fixture("rs256-expired.jwt"), "expired"),
    ] {
        let resp = app
            .call(
                Endpoint::NixCacheInfo,
                "cache-ro",
                &nar("x", 1),
                &Auth::Bearer(token),
            )
            .await;
        check_error(&resp, StatusCode::UNAUTHORIZED, "Unauthorized", why).unwrap();
    }
    // Attic's tokens have no `jti`: revoking their subject revokes them
    // (issued at their `nbf`), and no one else's.
    app.revoke(&Revocation::subject_now("meow", unix_now() as u64))
        .await;
    let path = nar("x", 1);
    let resp = app
        .call(
            Endpoint::NixCacheInfo,
            "cache-ro",
            &path,
            &Auth::Basic(fixture("rs256-attic.jwt")),
        )
        .await;
    check_error(
        &resp,
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "token revoked",
    )
    .unwrap();
    app.call(
        Endpoint::Create,
        "snyssen-x",
        &path,
        &Auth::Bearer(fixture("rs256-seed.jwt")),
    )
    .await
    .assert_status(StatusCode::OK);
    app.teardown().await;
}

#[tokio::test]
async fn attic_fixture_tokens_rs256_pkcs8_key() {
    let app = SecApp::new(Options::sqlite(Signing::Rs256Secret(fixture(
        "rs256-secret-pkcs8.base64",
    ))))
    .await;
    check_attic_fixture(&app, &fixture("rs256-attic.jwt")).await;
    app.teardown().await;
}

#[tokio::test]
async fn attic_fixture_tokens_hs256() {
    let app = SecApp::new(Options::sqlite(Signing::fixture_hs256())).await;
    check_attic_fixture(&app, &fixture("hs256-attic.jwt")).await;
    for token in [fixture("rs256-attic.jwt"), fixture("alg-none.jwt")] {
        let resp = app
            .call(
                Endpoint::NixCacheInfo,
                "cache-ro",
                &nar("x", 1),
                &Auth::Bearer(token),
            )
            .await;
        check_error(&resp, StatusCode::UNAUTHORIZED, "Unauthorized", "algorithm").unwrap();
    }
    app.teardown().await;
}

/// A replica configured with the public key only verifies the same tokens.
#[tokio::test]
async fn attic_fixture_tokens_on_a_verify_only_replica() {
    let app = SecApp::new(Options::sqlite(Signing::Rs256Pubkey(fixture(
        "rs256-pubkey.base64",
    ))))
    .await;
    let path = nar("x", 1);
    for (cache, _) in ATTIC_GRANTS {
        app.create_cache_db(cache, false).await;
    }
    let token = Auth::Bearer(fixture("rs256-attic.jwt"));
    app.call(Endpoint::NixCacheInfo, "cache-ro", &path, &token)
        .await
        .assert_status(StatusCode::OK);
    app.call(Endpoint::CacheConfigGet, "team-a", &path, &token)
        .await
        .assert_status(StatusCode::OK);
    app.call(Endpoint::NixCacheInfo, "x-rw", &path, &token)
        .await
        .assert_error(StatusCode::FORBIDDEN, "PermissionDenied");
    app.call(Endpoint::NixCacheInfo, "other", &path, &token)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    for bad in [
        "hs256-attic.jwt",
        "hs256-with-rs256-pubkey.jwt",
        "alg-none.jwt",
    ] {
        let resp = app
            .call(
                Endpoint::NixCacheInfo,
                "cache-ro",
                &path,
                &Auth::Bearer(fixture(bad)),
            )
            .await;
        check_error(&resp, StatusCode::UNAUTHORIZED, "Unauthorized", "algorithm").unwrap();
    }
    app.teardown().await;
}

// --- 4. the seed's make-token lines through larder-admin ----------------------

/// Runs `larder-admin -f CONFIG ARGS…` with no `LARDER_*` overrides from
/// the environment; returns stdout, panicking with stderr on failure.
fn admin(app: &SecApp, args: &[&str]) -> String {
    let mut cmd = Command::new(common::package_binary("larder-admin"));
    cmd.arg("-f").arg(&app.config_path).args(args);
    for var in [
        "LARDER_CONFIG",
        "LARDER_DATA_DIR",
        "LARDER_LISTEN",
        "LARDER_DATABASE_URL",
        "LARDER_SERVER_TOKEN_RS256_SECRET_BASE64",
        "LARDER_SERVER_TOKEN_RS256_PUBKEY_BASE64",
        "LARDER_SERVER_TOKEN_HS256_SECRET_BASE64",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("running larder-admin");
    assert!(
        out.status.success(),
        "larder-admin {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("larder-admin prints UTF-8")
}

#[tokio::test]
async fn seed_make_token_lines_through_larder_admin() {
    let app = SecApp::new(Options::sqlite(Signing::fixture_rs256())).await;
    let mine = nar("mine", 51);
    let ci_path = nar("ci", 52);
    app.create_cache_db("other-cache", false).await;
    app.push_ok(&app.root_token(), "other-cache", &mine).await;

    // The seed's two lines, verbatim.
    let user = admin(
        &app,
        &[
            "make-token",
            "--sub",
            "your-username",
            "--validity",
            "365d",
            "--create-cache",
            "snyssen-*",
            "--push",
            "snyssen-*",
            "--pull",
            "snyssen-*",
        ],
    )
    .trim()
    .to_owned();
    let ci = admin(
        &app,
        &[
            "make-token",
            "--sub",
            "github-actions-ci",
            "--validity",
            "365d",
            "--push",
            "snyssen-*",
            "--pull",
            "snyssen-*",
        ],
    )
    .trim()
    .to_owned();
    let (user_claims, ci_claims) = (peek_claims(&user), peek_claims(&ci));
    for (claims, sub, perms) in [
        (
            &user_claims,
            "your-username",
            json!({"r": 1, "w": 1, "cc": 1}),
        ),
        (&ci_claims, "github-actions-ci", json!({"r": 1, "w": 1})),
    ] {
        assert_eq!(claims["sub"], json!(sub));
        assert_eq!(
            claims["https://jwt.attic.rs/v1"],
            json!({"caches": {"snyssen-*": perms}})
        );
        let (exp, iat) = (
            claims["exp"].as_u64().unwrap(),
            claims["iat"].as_u64().unwrap(),
        );
        assert_eq!(exp - iat, 365 * 86_400, "--validity 365d");
        assert!(iat.abs_diff(unix_now() as u64) < 600);
        assert!(
            claims["jti"].as_str().is_some_and(|j| j.len() == 26),
            "{claims}"
        );
    }

    let (u, c) = (Auth::Bearer(user.clone()), Auth::Basic(ci.clone()));
    // The personal token creates the cache, pushes to it and pulls from it.
    app.call(Endpoint::Create, "snyssen-infra", &mine, &u)
        .await
        .assert_status(StatusCode::OK);
    app.call(Endpoint::Upload, "snyssen-infra", &mine, &u)
        .await
        .assert_status(StatusCode::OK);
    app.call(Endpoint::NixCacheInfo, "snyssen-infra", &mine, &u)
        .await
        .assert_status(StatusCode::OK);
    app.call(Endpoint::Narinfo, "snyssen-infra", &mine, &u)
        .await
        .assert_status(StatusCode::OK);
    let got = app.call(Endpoint::Nar, "snyssen-infra", &mine, &u).await;
    got.assert_status(StatusCode::OK);
    assert_eq!(got.body, mine.bytes);
    // Nothing on other-cache, which exists.
    let mut f = Vec::new();
    for auth in [&u, &c] {
        for endpoint in ALL_ENDPOINTS {
            let cache = if endpoint == Endpoint::Create {
                "other-cache-2"
            } else {
                "other-cache"
            };
            let resp = app.call(endpoint, cache, &mine, auth).await;
            if endpoint == Endpoint::NarinfoHead {
                if resp.status != StatusCode::UNAUTHORIZED {
                    f.push(format!(
                        "{} other-cache {endpoint:?}: {}",
                        auth.scheme(),
                        resp.status
                    ));
                }
            } else if let Err(e) = check_error(
                &resp,
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "authentication required",
            ) {
                f.push(format!("{} other-cache {endpoint:?}: {e}", auth.scheme()));
            }
        }
    }
    assert_no_failures("other-cache", &f);
    assert!(app.cache_exists("other-cache").await && !app.cache_exists("other-cache-2").await);

    // The CI token cannot create, but pushes and pulls (as Nix would, with Basic).
    app.call(Endpoint::Create, "snyssen-ci", &mine, &c)
        .await
        .assert_error(StatusCode::FORBIDDEN, "PermissionDenied");
    app.call(Endpoint::Upload, "snyssen-infra", &ci_path, &c)
        .await
        .assert_status(StatusCode::OK);
    app.call(Endpoint::MissingPaths, "snyssen-infra", &ci_path, &c)
        .await
        .assert_status(StatusCode::OK);
    for path in [&mine, &ci_path] {
        app.call(Endpoint::Narinfo, "snyssen-infra", path, &c)
            .await
            .assert_status(StatusCode::OK);
        app.call(Endpoint::Nar, "snyssen-infra", path, &c)
            .await
            .assert_status(StatusCode::OK);
    }
    assert!(!app.cache_exists("snyssen-ci").await);

    // list-tokens shows both, valid.
    let (user_jti, ci_jti) = (
        user_claims["jti"].as_str().unwrap(),
        ci_claims["jti"].as_str().unwrap(),
    );
    let line = |listing: &str, jti: &str| -> String {
        listing
            .lines()
            .find(|l| l.contains(jti))
            .unwrap_or_else(|| panic!("list-tokens lacks {jti}:\n{listing}"))
            .to_owned()
    };
    let listing = admin(&app, &["list-tokens"]);
    for (jti, sub) in [(user_jti, "your-username"), (ci_jti, "github-actions-ci")] {
        let l = line(&listing, jti);
        assert!(
            l.contains(sub) && l.contains("valid") && l.contains("snyssen-*"),
            "{l}"
        );
    }

    // revoke-token --sub: recorded at once, in force after the replica's
    // next refresh (no refresher runs here, so the token still works until
    // we refresh by hand — what the `revocation-refresh` interval means).
    admin(&app, &["revoke-token", "--sub", "github-actions-ci"]);
    app.call(Endpoint::Narinfo, "snyssen-infra", &mine, &c)
        .await
        .assert_status(StatusCode::OK);
    app.refresh_revocations().await;
    for endpoint in [
        Endpoint::Narinfo,
        Endpoint::Nar,
        Endpoint::Upload,
        Endpoint::MissingPaths,
    ] {
        for auth in Auth::both(&ci) {
            let resp = app.call(endpoint, "snyssen-infra", &ci_path, &auth).await;
            check_error(
                &resp,
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "token revoked",
            )
            .unwrap_or_else(|e| panic!("revoked CI token, {} {endpoint:?}: {e}", auth.scheme()));
        }
    }
    app.call(Endpoint::Nar, "snyssen-infra", &ci_path, &u)
        .await
        .assert_status(StatusCode::OK);
    let listing = admin(&app, &["list-tokens"]);
    assert!(line(&listing, ci_jti).contains("revoked"), "{listing}");
    let l = line(&listing, user_jti);
    assert!(l.contains("valid") && !l.contains("revoked"), "{l}");
    app.teardown().await;
}
