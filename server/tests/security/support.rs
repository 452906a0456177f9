//! Helpers for `security.rs`: an app whose `[jwt]` section each test chooses
//! (fixture RSA key, HS256 secret, bound issuer and audiences), written to a
//! real config file that `larder-admin -f` can read too; token forging;
//! requests to every endpoint class with every credential scheme.
//!
//! `common::TestApp` fixes one HS256 key and no bindings, so this builds its
//! own state the same way (`larder_api::server::build_state`) and reuses
//! `common` only for NARs and for sending requests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use larder_api::state::AppState;
use larder_core::CacheName;
use larder_shared::config::Config;
use larder_shared::db::caches::{self, NewCache};
use larder_shared::db::{tokens, unix_now};
use larder_shared::signing_keys::rotation::{self, NewKey};
use larder_shared::token::{
    CachePattern, Claims, ClaimsBuilder, Permission, Revocation, TokenKey, mint,
};

use crate::common::nar::TestNar;
use crate::common::{Backend, TestResponse, send};

/// `shared/tests/fixtures/tokens/NAME`, trimmed.
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/tests/fixtures/tokens")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// The `[jwt.signing]` key of a test app.
#[derive(Debug, Clone)]
pub enum Signing {
    /// `token-rs256-secret-base64`.
    Rs256Secret(String),
    /// `token-rs256-pubkey-base64` (verify-only replica).
    Rs256Pubkey(String),
    /// `token-hs256-secret-base64`.
    Hs256(String),
}

impl Signing {
    /// The fixture RSA key (PKCS#1 PEM), as Attic's docs configure it.
    pub fn fixture_rs256() -> Self {
        Self::Rs256Secret(fixture("rs256-secret.base64"))
    }

    /// The fixture HMAC secret.
    pub fn fixture_hs256() -> Self {
        Self::Hs256(fixture("hs256-secret.base64"))
    }

    fn toml(&self) -> String {
        let (key, value) = match self {
            Self::Rs256Secret(v) => ("token-rs256-secret-base64", v),
            Self::Rs256Pubkey(v) => ("token-rs256-pubkey-base64", v),
            Self::Hs256(v) => ("token-hs256-secret-base64", v),
        };
        format!("{key} = \"{value}\"\n")
    }
}

/// How to build a [`SecApp`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Metadata database.
    pub backend: Backend,
    /// The key.
    pub signing: Signing,
    /// `[jwt] token-bound-issuer`.
    pub bound_issuer: Option<String>,
    /// `[jwt] token-bound-audiences`.
    pub bound_audiences: Option<Vec<String>>,
}

impl Options {
    /// SQLite, no bindings.
    pub fn sqlite(signing: Signing) -> Self {
        Self {
            backend: Backend::Sqlite,
            signing,
            bound_issuer: None,
            bound_audiences: None,
        }
    }
}

/// One isolated server: config file, database, storage, router.
pub struct SecApp {
    /// What handlers see.
    pub state: AppState,
    /// The config file (for `larder-admin -f`).
    pub config_path: PathBuf,
    /// The server's key (`None` for a verify-only replica).
    key: Option<TokenKey>,
    issuer: Option<String>,
    audiences: Option<Vec<String>>,
    router: Router,
    pg_database: Option<String>,
    _dir: tempfile::TempDir,
}

impl SecApp {
    /// A fresh, migrated app.
    pub async fn new(opts: Options) -> Self {
        Self::with_config(opts, "").await
    }

    /// A fresh, migrated app whose config file ends with `extra` (more
    /// sections, such as `[oidc]`).
    pub async fn with_config(opts: Options, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (db_url, pg_database) = crate::common::fresh_database(opts.backend, dir.path()).await;
        let mut jwt = String::from("[jwt]\n");
        if let Some(iss) = &opts.bound_issuer {
            jwt += &format!("token-bound-issuer = {}\n", json!(iss));
        }
        if let Some(aud) = &opts.bound_audiences {
            jwt += &format!("token-bound-audiences = {}\n", json!(aud));
        }
        let toml = format!(
            "[database]\nurl = \"{db_url}\"\n\
             [storage]\ntype = \"local\"\npath = \"{}\"\n\
             [worker]\nembedded = 0\n\
             {jwt}[jwt.signing]\n{}{extra}",
            dir.path().join("storage").display(),
            opts.signing.toml(),
        );
        let config_path = dir.path().join("server.toml");
        std::fs::write(&config_path, &toml).expect("writing the config");
        let mut config = Config::parse_toml(&toml).expect("test config parses");
        config.validate().expect("test config is valid");
        crate::common::with_test_kek(&mut config);
        let config = Arc::new(config);
        let state = larder_api::server::build_state(config.clone())
            .await
            .expect("opening database and storage");
        state.db.migrate().await.expect("migrations");
        let key = TokenKey::from_config(&config.jwt.signing).expect("key");
        let key = (!matches!(opts.signing, Signing::Rs256Pubkey(_))).then_some(key);
        Self {
            router: larder_api::app::router(state.clone()),
            state,
            config_path,
            key,
            issuer: opts.bound_issuer,
            audiences: opts.bound_audiences,
            pg_database,
            _dir: dir,
        }
    }

    /// Closes the pool and drops the PostgreSQL database (best effort).
    pub async fn teardown(self) {
        self.state.db.close().await;
        if let Some(name) = &self.pg_database {
            crate::common::drop_database(name).await;
        }
    }

    // --- tokens -------------------------------------------------------------

    /// Valid claims for `sub` (one hour, the server's bound `iss`/`aud`),
    /// granting per pattern in the given order.
    pub fn claims(&self, sub: &str, grants: &[(&str, &[Permission])]) -> Claims {
        let mut b = ClaimsBuilder::new(sub, Duration::from_secs(3600), unix_now() as u64)
            .issuer(self.issuer.clone())
            .audiences(self.audiences.clone());
        for (pattern, perms) in grants {
            let pattern = CachePattern::new(pattern).expect("valid cache pattern");
            b = b.grant_all(&pattern, perms.iter().copied());
        }
        b.build().expect("claims")
    }

    /// Signs `claims` with the server's key.
    pub fn sign(&self, claims: &Claims) -> String {
        mint(self.key.as_ref().expect("this app can mint"), claims).expect("mint")
    }

    /// A valid token.
    pub fn token(&self, sub: &str, grants: &[(&str, &[Permission])]) -> String {
        self.sign(&self.claims(sub, grants))
    }

    /// Every permission on every cache.
    pub fn root_token(&self) -> String {
        self.token("root", &[("*", &Permission::ALL)])
    }

    /// Records a revocation and reloads this replica's list.
    pub async fn revoke(&self, r: &Revocation) {
        let mut conn = self.state.db.conn().await.expect("connection");
        tokens::revoke(conn.raw(), r, unix_now())
            .await
            .expect("recording the revocation");
        drop(conn);
        self.refresh_revocations().await;
    }

    /// What the background refresher does every `revocation-refresh`.
    pub async fn refresh_revocations(&self) {
        self.state
            .revocations
            .refresh(&self.state.db)
            .await
            .expect("refreshing revocations");
    }

    /// A second API replica on this app's database and storage, with its
    /// own in-memory state (token cache, revocations, cache catalog).
    pub async fn replica(&self) -> Replica {
        let state = larder_api::server::build_state(self.state.config.clone())
            .await
            .expect("opening the replica's database and storage");
        state
            .revocations
            .refresh(&state.db)
            .await
            .expect("loading revocations");
        Replica {
            router: larder_api::app::router(state.clone()),
            state,
        }
    }

    // --- caches and paths ---------------------------------------------------

    /// Creates a cache straight in the database (no token needed).
    pub async fn create_cache_db(&self, name: &str, is_public: bool) {
        let name: CacheName = name.parse().expect("cache name");
        let now = unix_now();
        let mut tx = self.state.db.begin().await.expect("transaction");
        let rec = caches::create(
            tx.raw(),
            &NewCache {
                name: &name,
                is_public,
                store_dir: &Default::default(),
                priority: 41,
                upstream_cache_key_names: &[],
                retention_period: None,
            },
            now,
        )
        .await
        .expect("creating the cache")
        .expect("cache name is free");
        let kek = self.state.keys.kek();
        rotation::add_key(&mut tx, kek, &name, rec.id, NewKey::Generate, now, now)
            .await
            .expect("signing key");
        tx.commit().await.expect("commit");
    }

    /// Whether the cache exists (straight from the database).
    pub async fn cache_exists(&self, name: &str) -> bool {
        let name: CacheName = name.parse().expect("cache name");
        let mut conn = self.state.db.conn().await.expect("connection");
        caches::get_by_name(conn.raw(), &name)
            .await
            .expect("reading the cache")
            .is_some()
    }

    /// Uploads `nar` to `cache`, which must succeed.
    pub async fn push_ok(&self, token: &str, cache: &str, nar: &TestNar) {
        let resp = self
            .send(Endpoint::Upload.request(cache, nar, &Auth::Bearer(token.into())))
            .await;
        resp.assert_status(StatusCode::OK);
    }

    // --- HTTP ---------------------------------------------------------------

    /// Serves the router on a loopback port (real TCP) until the test's
    /// runtime ends; returns the base URL.
    pub async fn serve(&self) -> String {
        crate::common::serve_router(self.router.clone()).await
    }

    /// Sends one request through the router.
    pub async fn send(&self, req: Request<Body>) -> TestResponse {
        send(&self.router, req).await
    }

    /// Sends `endpoint`'s request for `cache` and `nar` with `auth`.
    pub async fn call(
        &self,
        endpoint: Endpoint,
        cache: &str,
        nar: &TestNar,
        auth: &Auth,
    ) -> TestResponse {
        self.send(endpoint.request(cache, nar, auth)).await
    }
}

/// Another API replica of a [`SecApp`] (its database, its own memory).
pub struct Replica {
    /// What its handlers see.
    pub state: AppState,
    router: Router,
}

impl Replica {
    /// Sends `endpoint`'s request for `cache` and `nar` with `auth`.
    pub async fn call(
        &self,
        endpoint: Endpoint,
        cache: &str,
        nar: &TestNar,
        auth: &Auth,
    ) -> TestResponse {
        send(&self.router, endpoint.request(cache, nar, auth)).await
    }

    /// What the background refresher does every `revocation-refresh`.
    pub async fn refresh(&self) {
        self.state
            .revocations
            .refresh(&self.state.db)
            .await
            .expect("refreshing revocations");
        self.state
            .catalog
            .refresh(&self.state.db)
            .await
            .expect("refreshing the cache catalog");
    }

    /// Closes its pool (before the app drops its database).
    pub async fn close(self) {
        self.state.db.close().await;
    }
}

/// The claims of a JWT, read without verifying (tests only).
pub fn peek_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT has a payload");
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .expect("payload is base64url");
    serde_json::from_slice(&json).expect("payload is JSON")
}

/// A JWT with this header and payload and no signature: what an attacker
/// writes for `alg: none`.
pub fn unsigned_jwt(header: &Value, payload: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    )
}

/// `token` with its payload replaced, the signature kept.
pub fn tampered(token: &str, payload: &Value) -> String {
    let mut parts = token.split('.');
    let header = parts.next().expect("header");
    let _ = parts.next();
    let sig = parts.next().expect("signature");
    format!(
        "{header}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(payload.to_string())
    )
}

/// How a request carries (or lacks) credentials.
#[derive(Debug, Clone)]
pub enum Auth {
    /// No `Authorization` header.
    Anonymous,
    /// `Authorization: Bearer <jwt>`.
    Bearer(String),
    /// `Authorization: Basic base64(user:<jwt>)`, as Nix sends from a netrc.
    Basic(String),
    /// This exact header value.
    Header(String),
}

impl Auth {
    /// The token sent as Bearer and as Basic.
    pub fn both(token: &str) -> [Auth; 2] {
        [Auth::Bearer(token.into()), Auth::Basic(token.into())]
    }

    /// Short name for failure messages.
    pub fn scheme(&self) -> &'static str {
        match self {
            Auth::Anonymous => "anonymous",
            Auth::Bearer(_) => "Bearer",
            Auth::Basic(_) => "Basic",
            Auth::Header(_) => "raw header",
        }
    }

    fn apply(&self, b: axum::http::request::Builder) -> axum::http::request::Builder {
        match self {
            Auth::Anonymous => b,
            Auth::Bearer(t) => b.header(header::AUTHORIZATION, format!("Bearer {t}")),
            Auth::Basic(t) => b.header(
                header::AUTHORIZATION,
                format!("Basic {}", STANDARD.encode(format!("nix-user:{t}"))),
            ),
            Auth::Header(h) => b.header(header::AUTHORIZATION, h.as_str()),
        }
    }
}

/// One endpoint of each permission class (docs/protocol.md "HTTP").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /{cache}/nix-cache-info` (`r` or `w`).
    NixCacheInfo,
    /// `GET /{cache}/<hash>.narinfo` (`r` or `w`).
    Narinfo,
    /// `HEAD /{cache}/<hash>.narinfo` (`r` or `w`).
    NarinfoHead,
    /// `GET /{cache}/nar/<narhash>.nar` (`r`).
    Nar,
    /// `GET /_api/v1/cache-config/{cache}` (`r` or `w`).
    CacheConfigGet,
    /// `PUT /_api/v1/upload-path` (`w`).
    Upload,
    /// `POST /_api/v1/get-missing-paths` (`w`).
    MissingPaths,
    /// `PATCH /_api/v1/cache-config/{cache}`, priority only (`cr`).
    Configure,
    /// `PATCH` with `retention_period` (`cr` + `cq`).
    ConfigureRetention,
    /// `DELETE /_api/v1/cache-config/{cache}` (`cd`).
    Destroy,
    /// `POST /_api/v1/cache-config/{cache}` (`cc`).
    Create,
}

impl Endpoint {
    /// The request for `cache`, about `nar` where a path is involved.
    pub fn request(self, cache: &str, nar: &TestNar, auth: &Auth) -> Request<Body> {
        let json_req = |method: Method, uri: String, body: Value| {
            auth.apply(Request::builder().method(method).uri(uri))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .expect("request")
        };
        let plain = |method: Method, uri: String| {
            auth.apply(Request::builder().method(method).uri(uri))
                .body(Body::empty())
                .expect("request")
        };
        let config_uri = format!("/_api/v1/cache-config/{cache}");
        match self {
            Endpoint::NixCacheInfo => plain(Method::GET, format!("/{cache}/nix-cache-info")),
            Endpoint::Narinfo => plain(
                Method::GET,
                format!("/{cache}/{}.narinfo", nar.store_hash()),
            ),
            Endpoint::NarinfoHead => plain(
                Method::HEAD,
                format!("/{cache}/{}.narinfo", nar.store_hash()),
            ),
            Endpoint::Nar => plain(Method::GET, format!("/{cache}/nar/{}.nar", nar.url_hash())),
            Endpoint::CacheConfigGet => plain(Method::GET, config_uri),
            Endpoint::Upload => auth
                .apply(
                    Request::builder()
                        .method(Method::PUT)
                        .uri("/_api/v1/upload-path"),
                )
                .header("x-attic-nar-info", nar.info(cache).to_string())
                .header(header::CONTENT_TYPE, "application/x-nix-nar")
                .body(Body::from(nar.bytes.clone()))
                .expect("request"),
            Endpoint::MissingPaths => json_req(
                Method::POST,
                "/_api/v1/get-missing-paths".into(),
                json!({"cache": cache, "store_path_hashes": [nar.store_hash()]}),
            ),
            Endpoint::Configure => json_req(Method::PATCH, config_uri, json!({"priority": 42})),
            Endpoint::ConfigureRetention => json_req(
                Method::PATCH,
                config_uri,
                json!({"retention_period": {"Period": 86400}}),
            ),
            Endpoint::Destroy => plain(Method::DELETE, config_uri),
            Endpoint::Create => json_req(
                Method::POST,
                config_uri,
                json!({
                    "keypair": "Generate",
                    "is_public": false,
                    "store_dir": "/nix/store",
                    "priority": 41,
                    "upstream_cache_key_names": [],
                }),
            ),
        }
    }
}

/// Checks a docs/protocol.md error body: exactly `code`, `error`, `message`,
/// the message containing `why` (case-insensitive). Returns a description
/// of what is wrong, for tables that report every failure at once.
pub fn check_error(
    resp: &TestResponse,
    status: StatusCode,
    kind: &str,
    why: &str,
) -> Result<(), String> {
    if resp.status != status {
        return Err(format!(
            "status {} (want {status}), body {}",
            resp.status,
            resp.text()
        ));
    }
    let body: Value = serde_json::from_slice(&resp.body)
        .map_err(|e| format!("body is not JSON ({e}): {:?}", resp.text()))?;
    let Some(obj) = body.as_object() else {
        return Err(format!("body is not an object: {body}"));
    };
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != ["code", "error", "message"] {
        return Err(format!("body keys {keys:?}: {body}"));
    }
    if body["code"] != json!(status.as_u16()) || body["error"] != json!(kind) {
        return Err(format!(
            "want code {} error {kind}: {body}",
            status.as_u16()
        ));
    }
    let message = body["message"].as_str().unwrap_or_default();
    if !message.to_lowercase().contains(&why.to_lowercase()) {
        return Err(format!("message {message:?} does not say {why:?}"));
    }
    Ok(())
}

/// Panics listing every failure of a table, if any.
#[track_caller]
pub fn assert_no_failures(what: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{what}: {} failure(s):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}
