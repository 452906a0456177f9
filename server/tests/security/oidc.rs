//! Secretless CI (docs/operations.md "Secretless CI with OIDC"): ID tokens
//! from a local issuer ([`super::oidc_issuer`]) exchanged at
//! `POST /_api/v1/oidc/exchange` through the real router.
//!
//! 1. an RS256 and an ES256 token matching a policy get a token limited to
//!    the policy's caches, expiring within its max-validity, recorded for
//!    `list-tokens`, and stopped by `revoke-token --sub`;
//! 2. every refusal (wrong issuer, audience, expired, future `nbf`,
//!    `alg: none`, HS256 keyed with the public key, unknown `kid`, a `kid`
//!    of another key type, a bad signature, a claim or repository that does
//!    not match, a token too old, a discovery document naming another
//!    issuer) answers 401/403/502 saying which check failed, never a policy;
//! 3. key rotation is followed; unknown `kid`s refetch the JWKS at most once
//!    per `jwks-min-refresh`;
//! 4. policies added with `larder-admin oidc add` work and `oidc remove`
//!    stops them;
//! 5. `larder login --oidc` on "GitHub Actions" (the runner's token
//!    endpoint, served by the local issuer) logs in with a minted token.

use std::process::Command;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};

use larder_shared::db::unix_now;
use larder_shared::token::{LEEWAY_SECS, TokenError};

use super::oidc_issuer::{RUNNER_SECRET, SigningKey, TestIssuer};
use super::support::{Auth, Endpoint, Options, SecApp, Signing, check_error};
use super::{admin, nar};
use crate::common::{self, Backend, TestResponse};

const AUDIENCE: &str = "https://larder.test";
const POLICY: &str = "infra-main";
const REPO: &str = "snyssen/infra";
const MAIN: &str = "refs/heads/main";

/// `[oidc]` trusting `issuer` for pushes to `ci-*` from snyssen/infra's main.
fn oidc_toml(issuer: &str, min_refresh: &str) -> String {
    format!(
        "[oidc]\njwks-min-refresh = \"{min_refresh}\"\n\
         [[oidc.policy]]\nname = \"{POLICY}\"\nissuer = \"{issuer}\"\naudience = \"{AUDIENCE}\"\n\
         claims = {{ repository = \"{REPO}\", ref = \"{MAIN}\" }}\n\
         pull = [\"ci-*\"]\npush = [\"ci-*\"]\nmax-validity = \"10m\"\n\
         [[oidc.policy]]\nname = \"by-hostname\"\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\n\
         claims = {{ repository = \"{REPO}\" }}\npull = [\"ci-*\"]\n",
        issuer.replace("127.0.0.1", "localhost")
    )
}

async fn app_for(backend: Backend, issuer: &TestIssuer, min_refresh: &str) -> SecApp {
    app_with(backend, &oidc_toml(issuer.url(), min_refresh)).await
}

/// A server (RS256 fixture key, no bound issuer or audience) with `toml`.
async fn app_with(backend: Backend, toml: &str) -> SecApp {
    let opts = Options {
        backend,
        signing: Signing::fixture_rs256(),
        bound_issuer: None,
        bound_audiences: None,
    };
    SecApp::with_config(opts, toml).await
}

async fn exchange(app: &SecApp, id_token: &str) -> TestResponse {
    let req = Request::post("/_api/v1/oidc/exchange")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "token": id_token }).to_string()))
        .expect("request");
    app.send(req).await
}

/// Exchanges `id_token`, which must succeed; the response JSON.
async fn exchange_ok(app: &SecApp, id_token: &str) -> Value {
    let resp = exchange(app, id_token).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    resp.json()
}

// --- 1. what a minted token may do -------------------------------------------

async fn minted_token_is_limited(backend: Backend) {
    let (rsa, ec) = (SigningKey::rsa("rsa-1"), SigningKey::ec("ec-1"));
    let issuer = TestIssuer::start(vec![rsa.clone(), ec.clone()]).await;
    let app = app_for(backend, &issuer, "30s").await;
    app.create_cache_db("ci-cache", false).await;
    app.create_cache_db("other-cache", false).await;
    let claims = issuer.claims(AUDIENCE, REPO, MAIN);

    let before = unix_now() as u64;
    let minted = exchange_ok(&app, &rsa.sign(&claims)).await;
    let subject = format!("oidc:{POLICY}:repo:{REPO}:ref:{MAIN}");
    assert_eq!(minted["subject"], json!(subject));
    assert_eq!(minted["caches"], json!({"ci-*": {"r": 1, "w": 1}}));
    let expires = minted["expires_at"].as_u64().expect("expires_at");
    assert!(
        expires > before && expires <= unix_now() as u64 + 600,
        "{minted}"
    );
    let token = minted["token"].as_str().expect("token").to_owned();
    let es = exchange_ok(&app, &ec.sign(&claims)).await;
    assert_eq!(es["subject"], json!(subject));

    // Limited to the granted caches and permissions.
    let path = nar("oidc-pushed", 61);
    app.push_ok(&token, "ci-cache", &path).await;
    let auth = Auth::Bearer(token.clone());
    let other = app
        .call(Endpoint::Upload, "other-cache", &path, &auth)
        .await;
    check_error(
        &other,
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "no access",
    )
    .unwrap();
    let destroy = app.call(Endpoint::Destroy, "ci-cache", &path, &auth).await;
    check_error(
        &destroy,
        StatusCode::FORBIDDEN,
        "PermissionDenied",
        "destroy",
    )
    .unwrap();

    // It expires: the verifier refuses it after exp (plus the leeway).
    let err = app
        .state
        .tokens
        .verify(&token, expires + LEEWAY_SECS + 1)
        .unwrap_err();
    assert!(matches!(err, TokenError::Expired), "{err}");

    // Recorded like make-token's; revoking the subject stops it.
    let listed = admin(&app, &["list-tokens"]);
    let jti = minted["jti"].as_str().expect("jti");
    assert!(
        listed
            .lines()
            .any(|l| l.contains(jti) && l.contains("oidc:")),
        "{listed}"
    );
    admin(&app, &["revoke-token", "--sub", &subject]);
    app.refresh_revocations().await;
    let revoked = app.call(Endpoint::Upload, "ci-cache", &path, &auth).await;
    check_error(
        &revoked,
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "revoked",
    )
    .unwrap();
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_minted_token_is_limited_sqlite() {
    minted_token_is_limited(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_minted_token_is_limited_postgres() {
    minted_token_is_limited(Backend::Postgres).await;
}

// --- 2. refusals ------------------------------------------------------------

fn with(mut claims: Value, edit: &[(&str, Value)]) -> Value {
    for (k, v) in edit {
        match v {
            Value::Null => drop(claims.as_object_mut().expect("object").remove(*k)),
            v => claims[*k] = v.clone(),
        }
    }
    claims
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

async fn refusals(backend: Backend) {
    let (rsa, ec) = (SigningKey::rsa("rsa-1"), SigningKey::ec("ec-1"));
    let issuer = TestIssuer::start(vec![rsa.clone(), ec.clone()]).await;
    let app = app_for(backend, &issuer, "0s").await;
    let good = issuer.claims(AUDIENCE, REPO, MAIN);
    let now = unix_now() as u64;
    let ghost = SigningKey::ec("ghost");
    // HMAC keyed with the public key as the issuer publishes it.
    let public_jwk = serde_json::to_vec(&rsa.jwk).expect("JWK");
    let hs_confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &good,
        &jsonwebtoken::EncodingKey::from_secret(&public_jwk),
    )
    .expect("HS256");
    let signed = rsa.sign(&good);
    let tampered = {
        let parts: Vec<&str> = signed.split('.').collect();
        let wider = with(good.clone(), &[("repository", json!("snyssen/other"))]);
        format!("{}.{}.{}", parts[0], b64(&wider), parts[2])
    };
    let hostname_iss = issuer.url().replace("127.0.0.1", "localhost");
    let unauthorized = (StatusCode::UNAUTHORIZED, "Unauthorized");
    let forbidden = (StatusCode::FORBIDDEN, "PermissionDenied");
    let cases: Vec<(&str, String, (StatusCode, &str), &str)> = vec![
        (
            "wrong issuer",
            rsa.sign(&with(
                good.clone(),
                &[("iss", json!("https://evil.example"))],
            )),
            unauthorized,
            "issuer not trusted",
        ),
        (
            "wrong audience",
            rsa.sign(&with(good.clone(), &[("aud", json!("https://other.test"))])),
            unauthorized,
            "audience not accepted",
        ),
        (
            "expired",
            rsa.sign(&with(good.clone(), &[("exp", json!(now - 120))])),
            unauthorized,
            "expired",
        ),
        (
            "nbf in the future",
            ec.sign(&with(good.clone(), &[("nbf", json!(now + 600))])),
            unauthorized,
            "not yet valid",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "kid": "rsa-1"})),
                b64(&good)
            ),
            unauthorized,
            "algorithm not accepted",
        ),
        (
            "HS256 keyed with the public key",
            hs_confused,
            unauthorized,
            "algorithm not accepted",
        ),
        ("unknown kid", ghost.sign(&good), unauthorized, "key id"),
        (
            "kid of an RSA key on an ES256 token",
            ghost.sign_as("rsa-1", &good),
            unauthorized,
            "does not match its key",
        ),
        (
            "tampered payload",
            tampered,
            unauthorized,
            "signature invalid",
        ),
        ("not a JWT", "abc".into(), unauthorized, "malformed"),
        (
            "another branch",
            rsa.sign(&with(good.clone(), &[("ref", json!("refs/heads/dev"))])),
            forbidden,
            "claim `ref`",
        ),
        (
            "another repository",
            rsa.sign(&issuer.claims(AUDIENCE, "mallory/infra", MAIN)),
            forbidden,
            "claim `repository`",
        ),
        (
            "no repository claim",
            rsa.sign(&with(good.clone(), &[("repository", Value::Null)])),
            forbidden,
            "claim `repository`",
        ),
        (
            "issued longer ago than max-validity",
            rsa.sign(&with(
                good.clone(),
                &[("iat", json!(now - 700)), ("nbf", json!(now - 700))],
            )),
            forbidden,
            "too long ago",
        ),
        (
            "discovery names another issuer",
            rsa.sign(&with(good.clone(), &[("iss", json!(hostname_iss))])),
            (StatusCode::BAD_GATEWAY, "IssuerUnavailable"),
            "could not be fetched",
        ),
    ];
    let mut failures = Vec::new();
    for (name, token, (status, kind), why) in &cases {
        let resp = exchange(&app, token).await;
        if let Err(e) = check_error(&resp, *status, kind, why) {
            failures.push(format!("{name}: {e}"));
        }
        for secret in [POLICY, "by-hostname", REPO, "ci-*"] {
            if resp.text().contains(secret) {
                failures.push(format!(
                    "{name}: the refusal names {secret:?}: {}",
                    resp.text()
                ));
            }
        }
    }
    super::support::assert_no_failures("OIDC refusals", &failures);
    // Nothing was minted.
    assert!(!admin(&app, &["list-tokens"]).contains("oidc:"));
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_refusals_say_which_check_failed_sqlite() {
    refusals(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_refusals_say_which_check_failed_postgres() {
    refusals(Backend::Postgres).await;
}

// --- 3. rotation, bounded refresh ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_key_rotation_and_bounded_refresh() {
    let (old, ec) = (SigningKey::rsa("rsa-old"), SigningKey::ec("ec-1"));
    let issuer = TestIssuer::start(vec![old.clone(), ec.clone()]).await;
    let app = app_for(Backend::Sqlite, &issuer, "0s").await;
    let claims = issuer.claims(AUDIENCE, REPO, MAIN);
    exchange_ok(&app, &old.sign(&claims)).await;
    exchange_ok(&app, &ec.sign(&claims)).await;
    assert_eq!(issuer.jwks_fetches(), 1, "known keys come from the cache");

    // The issuer rotates its RSA key: the new kid triggers one refetch.
    let new = SigningKey::rsa("rsa-new");
    issuer.publish(vec![new.clone(), ec.clone()]);
    exchange_ok(&app, &new.sign(&claims)).await;
    assert_eq!(issuer.jwks_fetches(), 2);
    let resp = exchange(&app, &old.sign(&claims)).await;
    check_error(&resp, StatusCode::UNAUTHORIZED, "Unauthorized", "key id").unwrap();
    app.teardown().await;

    // With the default kind of bound, unknown kids do not hammer the issuer.
    let bounded = app_for(Backend::Sqlite, &issuer, "1h").await;
    let before = issuer.jwks_fetches();
    exchange_ok(&bounded, &new.sign(&claims)).await;
    for kid in ["ghost-1", "ghost-2", "ghost-3"] {
        let resp = exchange(&bounded, &ec.sign_as(kid, &claims)).await;
        check_error(&resp, StatusCode::UNAUTHORIZED, "Unauthorized", "key id").unwrap();
    }
    assert_eq!(issuer.jwks_fetches(), before + 1, "one fetch, no refreshes");
    bounded.teardown().await;
}

/// The issuer's JWKS goes down: once the key set is `jwks-max-age` old, a
/// refetch is tried and fails, and the keys fetched before keep verifying
/// (an outage does not stop CI pushes at once); a `kid` they lack is a 502
/// until the issuer is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_issuer_outage_keeps_known_keys() {
    let (key, next) = (SigningKey::rsa("rsa-1"), SigningKey::rsa("rsa-2"));
    let issuer = TestIssuer::start(vec![key.clone()]).await;
    let toml =
        oidc_toml(issuer.url(), "0s").replacen("[oidc]\n", "[oidc]\njwks-max-age = \"1s\"\n", 1);
    let app = app_with(Backend::Sqlite, &toml).await;
    let claims = issuer.claims(AUDIENCE, REPO, MAIN);
    exchange_ok(&app, &key.sign(&claims)).await;
    assert_eq!(issuer.jwks_fetches(), 1);

    issuer.set_jwks_down(true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    exchange_ok(&app, &key.sign(&claims)).await;
    assert_eq!(
        issuer.jwks_fetches(),
        2,
        "the stale set was refetched first"
    );
    let resp = exchange(&app, &next.sign(&claims)).await;
    check_error(
        &resp,
        StatusCode::BAD_GATEWAY,
        "IssuerUnavailable",
        "could not",
    )
    .unwrap();

    issuer.publish(vec![key.clone(), next.clone()]);
    issuer.set_jwks_down(false);
    exchange_ok(&app, &next.sign(&claims)).await;
    app.teardown().await;
}

// --- 4. policies in the database ----------------------------------------------

/// `larder-admin -f CONFIG ARGS…` that must fail; its stderr.
fn admin_fails(app: &SecApp, args: &[&str]) -> String {
    let out = Command::new(common::package_binary("larder-admin"))
        .arg("-f")
        .arg(&app.config_path)
        .args(args)
        .output()
        .expect("running larder-admin");
    assert!(!out.status.success(), "larder-admin {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn policies_from_larder_admin(backend: Backend) {
    let key = SigningKey::ec("ec-1");
    let issuer = TestIssuer::start(vec![key.clone()]).await;
    let other = TestIssuer::start(vec![key.clone()]).await;
    let app = app_for(backend, &other, "0s").await;
    let claims = issuer.claims(AUDIENCE, REPO, "refs/tags/v1");
    let resp = exchange(&app, &key.sign(&claims)).await;
    check_error(
        &resp,
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "issuer not trusted",
    )
    .unwrap();

    let add = |name: &'static str| {
        vec![
            "oidc",
            "add",
            name,
            "--issuer",
            issuer.url(),
            "--audience",
            AUDIENCE,
            "--claim",
            "repository=snyssen/*",
            "--claim",
            "ref=refs/heads/main",
            "--claim",
            "ref=refs/tags/v*",
            "--push",
            "tags-*",
            "--max-validity",
            "5m",
        ]
    };
    admin(&app, &add("tags"));
    let listed = admin(&app, &["oidc", "list"]);
    assert!(
        listed.contains("tags") && listed.contains("database"),
        "{listed}"
    );
    assert!(
        listed.contains(POLICY) && listed.contains("config"),
        "{listed}"
    );
    assert!(admin_fails(&app, &add("tags")).contains("already exists"));
    assert!(admin_fails(&app, &add(POLICY)).contains("already exists"));
    let mut no_claim = add("loose");
    no_claim.retain(|a| !a.starts_with("--claim") && !a.contains('='));
    assert!(admin_fails(&app, &no_claim).contains("claim"));

    let minted = exchange_ok(&app, &key.sign(&claims)).await;
    assert_eq!(
        minted["subject"],
        json!(format!("oidc:tags:repo:{REPO}:ref:refs/tags/v1"))
    );
    assert_eq!(minted["caches"], json!({"tags-*": {"w": 1}}));
    assert!(minted["expires_at"].as_u64().unwrap() <= unix_now() as u64 + 300);

    assert!(admin_fails(&app, &["oidc", "remove", POLICY]).contains("config file"));
    admin(&app, &["oidc", "remove", "tags"]);
    let audit = admin(&app, &["audit"]);
    for kind in ["oidc-policy-add", "oidc-policy-remove", "oidc:tags:repo:"] {
        assert!(audit.contains(kind), "{kind} in {audit}");
    }
    let resp = exchange(&app, &key.sign(&claims)).await;
    check_error(
        &resp,
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "issuer not trusted",
    )
    .unwrap();
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_policies_from_larder_admin_sqlite() {
    policies_from_larder_admin(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_policies_from_larder_admin_postgres() {
    policies_from_larder_admin(Backend::Postgres).await;
}

// --- 5. the client on GitHub Actions -----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn larder_login_oidc_on_github_actions() {
    let key = SigningKey::rsa("rsa-1");
    let issuer = TestIssuer::start(vec![key]).await;
    // The server's URL is the audience `larder login` asks the runner for.
    let app = app_for(Backend::Sqlite, &issuer, "30s").await;
    let endpoint = app.serve().await;
    let mut claims = issuer.claims(AUDIENCE, REPO, MAIN);
    claims.as_object_mut().expect("object").remove("aud");
    issuer.set_runner_claims(claims);
    app.create_cache_db("ci-cache", false).await;

    let home = tempfile::tempdir().expect("temp dir");
    let login = |extra: &[&str]| {
        let out = Command::new(common::package_binary("larder"))
            .args(["login", "--oidc", "ci", &endpoint])
            .args(extra)
            .env_clear()
            .env("XDG_CONFIG_HOME", home.path())
            .env(
                "ACTIONS_ID_TOKEN_REQUEST_URL",
                format!("{}/token?api-version=2.0", issuer.url()),
            )
            .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", RUNNER_SECRET)
            .output()
            .expect("running larder");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // Asked for the endpoint as audience, which the policy does not accept.
    let (ok, output) = login(&[]);
    assert!(!ok && output.contains("audience not accepted"), "{output}");
    assert_eq!(issuer.runner_audiences(), std::slice::from_ref(&endpoint));

    let (ok, output) = login(&["--audience", AUDIENCE]);
    assert!(ok, "{output}");
    assert!(
        output.contains(&format!("oidc:{POLICY}:repo:{REPO}")),
        "{output}"
    );
    let config = std::fs::read_to_string(home.path().join("larder/config.toml")).unwrap();
    let token = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("token = \"")?.strip_suffix('"'))
        .expect("token saved");
    app.push_ok(token, "ci-cache", &nar("via-login", 62)).await;
    app.teardown().await;
}
