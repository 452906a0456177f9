//! [`TestApp`]: the real router over a fresh database (SQLite file or a
//! PostgreSQL database of its own) and local storage in a temp directory,
//! driven in-process with `oneshot` (axum `examples/testing`), no TCP.
//!
//! No in-process workers run (`[worker] embedded = 0`): tests call
//! [`TestApp::drain_jobs`], which runs the ingest handler for every staged
//! NAR right away, so nothing ever waits on a timer.

pub mod counting;
pub mod inspect;
pub mod nar;
pub mod read;
pub mod s3_server;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection};
use tower::ServiceExt;

use larder_api::state::AppState;
use larder_core::nix::signing::PublicKey;
use larder_shared::config::Config;
use larder_shared::db::unix_now;
use larder_shared::token::{CachePattern, ClaimsBuilder, Permission, TokenKey, mint};
use larder_worker::Services;
use larder_worker::jobs::ingest::{self, Outcome};

use self::nar::TestNar;

/// PostgreSQL server for tests: trust auth on loopback.
pub const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
/// HS256 secret of every test app (base64 of 32 bytes).
pub const HS256_SECRET: &str = "bGFyZGVyLXBpcGVsaW5lLXRlc3RzLWhzMjU2LXNlY3I=";

/// Which metadata database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the test's temp directory.
    Sqlite,
    /// A fresh PostgreSQL database `larder_t_<ulid>`.
    Postgres,
}

/// Where an app's chunks and staged uploads live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// A directory in the test's temp directory.
    Local,
    /// A fresh key prefix on the real S3 server named by
    /// `LARDER_TEST_S3_*` (scripts/test-all starts SeaweedFS), for chunks
    /// and staging alike.
    S3,
}

/// The `[storage]` section for the S3 test server, or `None` (with a
/// message) when `LARDER_TEST_S3_ENDPOINT` is unset.
pub fn s3_storage_toml() -> Option<String> {
    let Ok(endpoint) = std::env::var("LARDER_TEST_S3_ENDPOINT") else {
        eprintln!("LARDER_TEST_S3_ENDPOINT unset: skipping S3 test (scripts/test-all sets it)");
        return None;
    };
    Some(s3_storage_toml_at(&endpoint, 5))
}

/// The `[storage]` section for an S3 server at `endpoint` with the test
/// credentials, in a fresh prefix, retrying `max_retries` times.
pub fn s3_storage_toml_at(endpoint: &str, max_retries: usize) -> String {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} must be set"));
    format!(
        r#"[storage]
type = "s3"
bucket = "{}"
endpoint = "{endpoint}"
region = "us-east-1"
prefix = "t-{}"
max-retries = {max_retries}
retry-timeout = "90s"
[storage.credentials]
access_key_id = "{}"
secret_access_key = "{}"
"#,
        var("LARDER_TEST_S3_BUCKET"),
        ulid::Ulid::new().to_string().to_lowercase(),
        var("LARDER_TEST_S3_ACCESS_KEY_ID"),
        var("LARDER_TEST_S3_SECRET_ACCESS_KEY"),
    )
}

/// One isolated Larder: database, storage, router, token key.
pub struct TestApp {
    /// Which database this app runs on.
    pub backend: Backend,
    /// Where its objects live.
    pub store: Store,
    /// What handlers see.
    pub state: AppState,
    /// What job handlers see (same database and storage).
    pub services: Services,
    /// The app's config as a file, for running `larder-admin -f` on it.
    pub config_path: PathBuf,
    router: Router,
    key: TokenKey,
    storage_root: PathBuf,
    pg_database: Option<String>,
    _dir: tempfile::TempDir,
}

/// A response with its body collected.
#[derive(Debug)]
pub struct TestResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl TestResponse {
    /// The body as UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("body is UTF-8")
    }

    /// The body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not the expected JSON ({e}): {}", self.text()))
    }

    /// Asserts the status, with the body in the failure message.
    #[track_caller]
    pub fn assert_status(&self, status: StatusCode) -> &Self {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            String::from_utf8_lossy(&self.body)
        );
        self
    }

    /// Asserts a docs/protocol.md error: this status and a JSON body
    /// `{"code": <status>, "error": <kind>, "message": <non-empty>}`.
    #[track_caller]
    pub fn assert_error(&self, status: StatusCode, kind: &str) {
        self.assert_status(status);
        let body: Value = self.json();
        assert_eq!(body["code"], json!(status.as_u16()), "{body}");
        assert_eq!(body["error"], json!(kind), "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error message missing: {body}"
        );
    }

    /// `Content-Length`, which must be present.
    #[track_caller]
    pub fn content_length(&self) -> u64 {
        self.headers
            .get(header::CONTENT_LENGTH)
            .expect("response has Content-Length")
            .to_str()
            .expect("Content-Length is ASCII")
            .parse()
            .expect("Content-Length is a number")
    }
}

/// The signing keys' KEK of every test app (base64 of 32 bytes), as
/// `LARDER_SIGNING_KEK` would give it (set on the config, not the process
/// environment, which tests share).
pub const TEST_KEK: &str = "dGVzdC1rZXktZW5jcnlwdGlvbi1rZXktMzItYnl0ZXM=";

/// Sets [`TEST_KEK`] on a parsed test config.
pub fn with_test_kek(config: &mut Config) {
    config.signing.key_encryption_key = Some(larder_shared::config::Secret::new(TEST_KEK));
}

/// A fresh metadata database for one test: a SQLite file in `dir`, or a
/// PostgreSQL database `larder_t_<ulid>` of its own, whose name comes back
/// for [`drop_database`].
pub async fn fresh_database(backend: Backend, dir: &Path) -> (String, Option<String>) {
    match backend {
        Backend::Sqlite => (
            format!("sqlite://{}?mode=rwc", dir.join("larder.db").display()),
            None,
        ),
        Backend::Postgres => {
            let name = format!("larder_t_{}", ulid::Ulid::new().to_string().to_lowercase());
            let mut admin = pg_admin().await;
            sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                .execute(&mut admin)
                .await
                .expect("CREATE DATABASE");
            let _ = admin.close().await;
            (format!("{PG_SERVER}/{name}"), Some(name))
        }
    }
}

/// Drops a test's PostgreSQL database (best effort: a leftover `larder_t_*`
/// database harms nothing).
pub async fn drop_database(name: &str) {
    let mut admin = pg_admin().await;
    let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    if let Err(e) = sqlx::query(AssertSqlSafe(drop)).execute(&mut admin).await {
        eprintln!("could not drop test database {name}: {e}");
    }
    let _ = admin.close().await;
}

/// A binary of this package, as cargo built it for the integration tests
/// (it builds a package's binaries first and names them in
/// `CARGO_BIN_EXE_<name>`); else the one next to the test binary's
/// directory (`target/debug/deps/…` → `target/debug/<name>`).
pub fn package_binary(name: &str) -> PathBuf {
    let built = match name {
        "larder-admin" => option_env!("CARGO_BIN_EXE_larder-admin"),
        "larder-api" => option_env!("CARGO_BIN_EXE_larder-api"),
        "larder-worker" => option_env!("CARGO_BIN_EXE_larder-worker"),
        _ => None,
    };
    let path = built.map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("test binary path");
        exe.parent()
            .and_then(Path::parent)
            .expect("target directory")
            .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
    });
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --bins` first",
        path.display()
    );
    path
}

fn config_toml(db_url: &str, storage: &str) -> String {
    format!(
        r#"
[database]
url = "{db_url}"
[jwt.signing]
token-hs256-secret-base64 = "{HS256_SECRET}"
[worker]
embedded = 0
{storage}
"#
    )
}

/// The API's state and the job handlers' services for `config`, sharing
/// its database and storage.
async fn open(config: Arc<Config>) -> (AppState, Services) {
    let state = larder_api::server::build_state(config.clone())
        .await
        .expect("opening database and storage");
    let services = Services::new(
        config,
        state.db.clone(),
        state.storage.clone(),
        state.staging.clone(),
    );
    (state, services)
}

fn local_storage_toml(root: &Path) -> String {
    format!(
        "[storage]\ntype = \"local\"\npath = \"{}\"\n",
        root.display()
    )
}

pub async fn pg_admin() -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&format!("{PG_SERVER}/postgres"))
        .await
        .expect("PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth)")
}

/// How a [`TestApp`] is made: the one way every suite builds its app
/// (`TestApp::builder(backend).config("[http]…").build()`).
pub struct TestAppBuilder {
    backend: Backend,
    storage: Option<String>,
    /// Keys added to the `[storage]` section.
    storage_keys: Vec<String>,
    extra: String,
}

impl TestAppBuilder {
    /// Chunks and staging in this `[storage]` section (S3) instead of a
    /// local directory.
    pub fn storage(mut self, section: String) -> Self {
        self.storage = Some(section);
        self
    }

    /// `[storage] pack-size`: 0 stores each chunk as its own object (the
    /// layout before packs, which old stores still hold).
    pub fn pack_size(mut self, bytes: u64) -> Self {
        self.storage_keys.push(format!("pack-size = {bytes}"));
        self
    }

    /// `[storage] compaction-threshold` (0: GC never compacts).
    pub fn compaction_threshold(mut self, fraction: f64) -> Self {
        self.storage_keys
            .push(format!("compaction-threshold = {fraction:?}"));
        self
    }

    /// TOML appended to the config (e.g. an `[http]` section); the router
    /// and the job handlers both read it.
    pub fn config(mut self, extra: &str) -> Self {
        self.extra.push_str(extra);
        self
    }

    /// A fresh, migrated app.
    pub async fn build(self) -> TestApp {
        TestApp::with_config(self.backend, self.storage, &self.storage_keys, &self.extra).await
    }
}

impl TestApp {
    /// Starts a [`TestAppBuilder`] on `backend` (local storage, the default
    /// config).
    pub fn builder(backend: Backend) -> TestAppBuilder {
        TestAppBuilder {
            backend,
            storage: None,
            storage_keys: Vec::new(),
            extra: String::new(),
        }
    }

    /// A fresh, migrated app on `backend` with local storage.
    pub async fn new(backend: Backend) -> Self {
        Self::builder(backend).build().await
    }

    /// A fresh, migrated app on `backend` whose chunks and staging are on the
    /// S3 test server; `None` (skip) when it is not configured.
    pub async fn on_s3(backend: Backend) -> Option<Self> {
        let storage = s3_storage_toml()?;
        Some(Self::builder(backend).storage(storage).build().await)
    }

    async fn with_config(
        backend: Backend,
        storage: Option<String>,
        storage_keys: &[String],
        extra: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage_root = dir.path().join("storage");
        let store = if storage.is_some() {
            Store::S3
        } else {
            Store::Local
        };
        let mut storage = storage.unwrap_or_else(|| local_storage_toml(&storage_root));
        for key in storage_keys {
            storage = storage.replacen("[storage]\n", &format!("[storage]\n{key}\n"), 1);
        }
        let (db_url, pg_database) = fresh_database(backend, dir.path()).await;
        let toml = format!("{}{extra}", config_toml(&db_url, &storage));
        let config_path = dir.path().join("larder.toml");
        std::fs::write(&config_path, &toml).expect("writing the test config");
        let mut config = Config::parse_toml(&toml).expect("test config parses");
        config.validate().expect("test config is valid");
        with_test_kek(&mut config);
        let config = Arc::new(config);
        let key = TokenKey::from_config(&config.jwt.signing).expect("HS256 key");
        let (state, services) = open(config).await;
        state.db.migrate().await.expect("migrations");
        Self {
            backend,
            store,
            router: larder_api::app::router(state.clone()),
            state,
            services,
            config_path,
            key,
            storage_root,
            pg_database,
            _dir: dir,
        }
    }

    /// The same deployment (database, tokens, keys) restarted with its
    /// `[storage]` replaced by `section`: what an operator's config change
    /// looks like. Its teardown leaves the database to this app's.
    pub async fn with_storage(&self, section: &str) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let parsed = Config::parse_toml(&config_toml("sqlite::memory:", section))
            .expect("storage section parses");
        let mut config: Config = (*self.services.config).clone();
        config.storage = parsed.storage;
        let (state, services) = open(Arc::new(config)).await;
        Self {
            backend: self.backend,
            store: Store::S3,
            router: larder_api::app::router(state.clone()),
            state,
            services,
            config_path: self.config_path.clone(),
            key: TokenKey::from_config(&self.services.config.jwt.signing).expect("HS256 key"),
            storage_root: dir.path().join("storage"),
            pg_database: None,
            _dir: dir,
        }
    }

    /// Runs `scenario` on this app, then tears the app down even when the
    /// scenario panicked (no side effects in `Drop`), then re-raises the
    /// panic.
    pub async fn run(self, scenario: impl AsyncFnOnce(&TestApp)) {
        use futures::FutureExt as _;
        let outcome = std::panic::AssertUnwindSafe(scenario(&self))
            .catch_unwind()
            .await;
        self.teardown().await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    /// Closes the pool and drops the PostgreSQL database (best effort: a
    /// leftover `larder_t_*` database harms nothing).
    pub async fn teardown(self) {
        self.state.db.close().await;
        if let Some(name) = &self.pg_database {
            drop_database(name).await;
        }
    }

    // --- tokens -----------------------------------------------------------

    /// A token granting, per pattern, the listed permissions.
    pub fn token(&self, grants: &[(&str, &[Permission])]) -> String {
        self.token_as("pipeline-test", grants)
    }

    /// [`Self::token`] with subject `sub`: another tenant.
    pub fn token_as(&self, sub: &str, grants: &[(&str, &[Permission])]) -> String {
        let mut claims = ClaimsBuilder::new(sub, Duration::from_secs(3600), unix_now() as u64);
        for (pattern, perms) in grants {
            let pattern = CachePattern::new(pattern).expect("valid cache pattern");
            claims = claims.grant_all(&pattern, perms.iter().copied());
        }
        mint(&self.key, &claims.build().expect("claims")).expect("mint")
    }

    /// Every permission on every cache.
    pub fn root_token(&self) -> String {
        self.token(&[("*", &Permission::ALL)])
    }

    // --- HTTP -------------------------------------------------------------

    /// Sends one request through a clone of the router.
    pub async fn send(&self, req: Request<Body>) -> TestResponse {
        send(&self.router, req).await
    }

    /// The router, to move into spawned tasks.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves the router on a loopback port (real TCP, real hyper), until
    /// the test's runtime ends; returns the base URL.
    pub async fn serve(&self) -> String {
        serve_router(self.router.clone()).await
    }

    /// `GET uri`, with a bearer token if given.
    pub async fn get(&self, uri: &str, token: Option<&str>) -> TestResponse {
        self.send(
            request(Method::GET, uri, token)
                .body(Body::empty())
                .expect("request"),
        )
        .await
    }

    /// Creates a cache through `POST /_api/v1/cache-config/{cache}`.
    pub async fn create_cache(&self, name: &str, is_public: bool) {
        let body = json!({
            "keypair": "Generate",
            "is_public": is_public,
            "store_dir": "/nix/store",
            "priority": 41,
            "upstream_cache_key_names": [],
        });
        let req = request(
            Method::POST,
            &format!("/_api/v1/cache-config/{name}"),
            Some(&self.root_token()),
        )
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
        self.send(req).await.assert_status(StatusCode::OK);
    }

    /// The cache's public key, from `GET /_api/v1/cache-config/{cache}`.
    pub async fn public_key(&self, cache: &str) -> PublicKey {
        let resp = self
            .get(
                &format!("/_api/v1/cache-config/{cache}"),
                Some(&self.root_token()),
            )
            .await;
        resp.assert_status(StatusCode::OK);
        let cfg: Value = resp.json();
        cfg["public_key"]
            .as_str()
            .expect("public_key in cache config")
            .parse()
            .expect("public key parses")
    }

    /// `PUT /_api/v1/upload-path` with the metadata in `X-Attic-Nar-Info`.
    pub async fn upload(&self, token: &str, cache: &str, nar: &TestNar) -> TestResponse {
        self.upload_with(token, &nar.info(cache), nar.bytes.clone())
            .await
    }

    /// Uploads `body` under arbitrary metadata (for malformed uploads).
    pub async fn upload_with(&self, token: &str, info: &Value, body: Bytes) -> TestResponse {
        self.send(upload_request(token, info, body)).await
    }

    /// `PUT /_api/v1/upload-path` with the metadata as a preamble, the body
    /// sent in small pieces so the preamble ends mid-piece.
    pub async fn upload_preamble(&self, token: &str, cache: &str, nar: &TestNar) -> TestResponse {
        let preamble = nar.info(cache).to_string().into_bytes();
        let mut all = preamble.clone();
        all.extend_from_slice(&nar.bytes);
        let pieces: Vec<Result<Bytes, std::io::Error>> = all
            .chunks(1000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let req = request(Method::PUT, "/_api/v1/upload-path", Some(token))
            .header("x-attic-nar-info-preamble-size", preamble.len())
            .header(header::CONTENT_TYPE, "application/x-nix-nar")
            .body(Body::from_stream(futures::stream::iter(pieces)))
            .expect("request");
        self.send(req).await
    }

    /// What the API's background refresher does every
    /// `[jwt] revocation-refresh`: reloads the cache catalog.
    pub async fn refresh_catalog(&self) {
        self.state
            .catalog
            .refresh(&self.state.db)
            .await
            .expect("refreshing the cache catalog");
    }

    // --- jobs ---------------------------------------------------------------

    /// Runs ingest for every NAR still staged; returns how many were ingested.
    /// Panics if one fails or a NAR is still staged afterwards.
    pub async fn drain_jobs(&self) -> usize {
        let ids = self.staged_nar_ids().await;
        let mut ingested = 0;
        for id in ids {
            match ingest::ingest(&self.services, id).await {
                Ok(Outcome::Ingested { .. }) => ingested += 1,
                Ok(Outcome::Skipped) => {}
                Err(e) => panic!("ingest of NAR {id} failed: {e:#}"),
            }
        }
        assert!(
            self.staged_nar_ids().await.is_empty(),
            "NARs still staged after drain"
        );
        ingested
    }
}

/// A request builder with the method, URI and bearer token set.
pub fn request(method: Method, uri: &str, token: Option<&str>) -> axum::http::request::Builder {
    let b = Request::builder().method(method).uri(uri);
    match token {
        Some(t) => b.header(header::AUTHORIZATION, format!("Bearer {t}")),
        None => b,
    }
}

/// An upload with metadata in `X-Attic-Nar-Info`.
pub fn upload_request(token: &str, info: &Value, body: Bytes) -> Request<Body> {
    request(Method::PUT, "/_api/v1/upload-path", Some(token))
        .header("x-attic-nar-info", info.to_string())
        .header(header::CONTENT_TYPE, "application/x-nix-nar")
        .body(Body::from(body))
        .expect("request")
}

/// Sends `req` through `router` and collects the response.
/// Serves `router` on a loopback port (real TCP, real hyper) until the
/// test's runtime ends; returns the base URL.
pub async fn serve_router(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback port");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

pub async fn send(router: &Router, req: Request<Body>) -> TestResponse {
    let resp = router
        .clone()
        .oneshot(req)
        .await
        .expect("router is infallible");
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("response body of a {} failed mid-stream: {e}", parts.status))
        .to_bytes();
    TestResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}
