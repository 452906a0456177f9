//! Cache signing keys at rest and rotation (docs/operations.md "Signing keys";
//! docs/operations.md "Signing keys"), on SQLite and PostgreSQL:
//!
//! - keys made through the API are sealed: no secret byte (raw seed, its
//!   base64 or hex, Nix's `name:base64` text) is in the SQLite files
//!   (database, WAL) or in a `pg_dump`;
//! - rotation adds `<cache>-N`, narinfos carry both signatures during the
//!   overlap, `no_overlap` drops the old key from signing and from
//!   cache-config at once, and its secret leaves the row;
//! - a database from before migration 0010 (plain `caches.keypair`) gets
//!   its keys sealed by the first process with the KEK; processes without
//!   the KEK refuse to start naming the config key and the variable, one
//!   with the wrong KEK refuses to start too; their logs hold no secret.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use sqlx::AssertSqlSafe;

use larder_core::nix::signing::{PublicKey, SigningKey};
use larder_shared::config::Config;
use larder_shared::db::Db;
use larder_shared::db::cache_keys;
use larder_shared::db::caches;

use crate::common::nar::TestNar;
use crate::common::read::{assert_signed, narinfo};
use crate::common::{self, Backend, TEST_KEK, TestApp};

/// The secret forms a key could leak in: Nix's text, its base64, the
/// seed's base64 and hex, and the raw seed bytes.
fn needles(key: &SigningKey) -> Vec<(String, Vec<u8>)> {
    let text = key.export_secret();
    let b64 = text.split_once(':').expect("name:base64").1.to_owned();
    let seed = key.seed();
    vec![
        ("secret key text".into(), text.clone().into_bytes()),
        ("secret key base64".into(), b64.into_bytes()),
        ("seed base64".into(), BASE64.encode(seed).into_bytes()),
        (
            "seed hex".into(),
            seed.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes(),
        ),
        ("raw seed".into(), seed.to_vec()),
    ]
}

/// The first secret form of any key found in `haystack`.
fn find_secret(haystack: &[u8], keys: &[SigningKey]) -> Option<String> {
    keys.iter().find_map(|key| {
        needles(key).into_iter().find_map(|(form, needle)| {
            haystack
                .windows(needle.len())
                .any(|w| w == needle.as_slice())
                .then(|| format!("the {form} of signing key {}", key.name()))
        })
    })
}

/// Panics if any secret form of any key occurs in `haystack`.
#[track_caller]
fn assert_no_secret(haystack: &[u8], keys: &[SigningKey], what: &str) {
    if let Some(found) = find_secret(haystack, keys) {
        panic!("{what} contains {found}");
    }
}

/// The SQLite database file of a `sqlite://PATH?…` URL.
fn sqlite_path(url: &str) -> PathBuf {
    let rest = url.strip_prefix("sqlite://").expect("sqlite URL");
    PathBuf::from(rest.split('?').next().expect("path"))
}

/// Where a secret shows in what a backup would hold: the SQLite files
/// (database, WAL, shm), or a `pg_dump` of the PostgreSQL database (else
/// every key column).
async fn secret_in_database(db: &Db, url: &str, keys: &[SigningKey]) -> Option<String> {
    match db {
        Db::Sqlite(_) => {
            let path = sqlite_path(url);
            let mut scanned = 0;
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let file = PathBuf::from(format!("{}{suffix}", path.display()));
                if let Ok(bytes) = std::fs::read(&file) {
                    scanned += bytes.len();
                    if let Some(found) = find_secret(&bytes, keys) {
                        return Some(format!("{}: {found}", file.display()));
                    }
                }
            }
            assert!(scanned > 0, "no SQLite file at {}", path.display());
            None
        }
        Db::Postgres(pool) => {
            let name = url.rsplit('/').next().expect("database name");
            let dump = Command::new("pg_dump")
                .args(["-h", "127.0.0.1", "-U", "postgres", name])
                .output();
            match dump {
                Ok(out) if out.status.success() => {
                    assert!(
                        String::from_utf8_lossy(&out.stdout).contains("CREATE TABLE public.caches"),
                        "pg_dump dumped the schema"
                    );
                    find_secret(&out.stdout, keys).map(|f| format!("pg_dump: {f}"))
                }
                _ => {
                    let rows: Vec<(String,)> =
                        sqlx::query_as("SELECT CAST(row_to_json(k) AS TEXT) FROM cache_keys k")
                            .fetch_all(pool)
                            .await
                            .unwrap_or_default();
                    find_secret(format!("{rows:?}").as_bytes(), keys)
                        .map(|f| format!("cache_keys rows: {f}"))
                }
            }
        }
    }
}

#[track_caller]
fn assert_clean(found: Option<String>) {
    if let Some(found) = found {
        panic!("the database holds a secret: {found}");
    }
}

/// The decrypted active keys of `cache`, through the app's key ring.
async fn active_keys(app: &TestApp, cache: &str) -> Vec<SigningKey> {
    let mut conn = app.state.db.conn().await.expect("conn");
    let rec = caches::get_by_name(conn.raw(), &cache.parse().expect("name"))
        .await
        .expect("query")
        .expect("cache exists");
    let rows = cache_keys::of_cache(conn.raw(), rec.id)
        .await
        .expect("rows");
    let now = larder_shared::db::unix_now();
    rows.iter()
        .filter(|r| r.is_active(now))
        .map(|r| (*app.state.keys.key(cache, r).expect("key opens")).clone())
        .collect()
}

async fn cache_config(app: &TestApp, cache: &str) -> Value {
    let resp = app
        .get(
            &format!("/_api/v1/cache-config/{cache}"),
            Some(&app.root_token()),
        )
        .await;
    resp.assert_status(StatusCode::OK);
    resp.json()
}

async fn configure(app: &TestApp, cache: &str, body: Value) -> common::TestResponse {
    let req = common::request(
        Method::PATCH,
        &format!("/_api/v1/cache-config/{cache}"),
        Some(&app.root_token()),
    )
    .header(header::CONTENT_TYPE, "application/json")
    .body(Body::from(body.to_string()))
    .expect("request");
    app.send(req).await
}

fn public_keys(cfg: &Value) -> Vec<String> {
    cfg["public_keys"]
        .as_array()
        .expect("public_keys list")
        .iter()
        .map(|k| k.as_str().expect("string").to_owned())
        .collect()
}

fn key_names(sigs: &[String]) -> Vec<&str> {
    sigs.iter()
        .map(|s| s.split(':').next().unwrap_or_default())
        .collect()
}

async fn rotation_and_sealed_keys(backend: Backend) {
    let app = TestApp::new(backend).await;
    let token = app.root_token();
    app.create_cache("keys", false).await;
    let nar = TestNar::files("rotated", 19, &[3000]);
    app.upload(&token, "keys", &nar)
        .await
        .assert_status(StatusCode::OK);

    let first = app.public_key("keys").await;
    assert_eq!(
        first.name(),
        "keys",
        "a cache's first key is named after it"
    );
    let (_, info) = narinfo(&app, &token, "keys", &nar).await;
    assert_eq!(key_names(&info.sigs), ["keys"]);
    assert_signed(&info, &first, &nar);
    let mut secrets = active_keys(&app, "keys").await;

    // Rotation with overlap: a new name, both keys sign, newest first.
    configure(&app, "keys", json!({"keypair": "Generate"}))
        .await
        .assert_status(StatusCode::OK);
    let cfg = cache_config(&app, "keys").await;
    let listed = public_keys(&cfg);
    assert_eq!(listed.len(), 2, "{cfg}");
    let second: PublicKey = listed[0].parse().expect("key");
    assert_eq!(second.name(), "keys-2");
    assert_eq!(listed[1], first.to_string());
    assert_eq!(
        cfg["public_key"],
        json!(listed[0]),
        "Attic's field: the newest key"
    );
    let (_, info) = narinfo(&app, &token, "keys", &nar).await;
    assert_eq!(key_names(&info.sigs), ["keys-2", "keys"]);
    assert_signed(&info, &first, &nar);
    assert_signed(&info, &second, &nar);
    secrets.extend(active_keys(&app, "keys").await);

    // `no_overlap` is a rotation flag.
    configure(&app, "keys", json!({"no_overlap": true}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    // An imported key must not reuse a name the cache had.
    let clash = SigningKey::generate("keys").expect("key").export_secret();
    configure(&app, "keys", json!({"keypair": {"Keypair": clash}}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "BadRequest");

    // A compromised key: retired at once, from signing and cache-config.
    configure(
        &app,
        "keys",
        json!({"keypair": "Generate", "no_overlap": true}),
    )
    .await
    .assert_status(StatusCode::OK);
    let cfg = cache_config(&app, "keys").await;
    let listed = public_keys(&cfg);
    assert_eq!(listed.len(), 1, "{cfg}");
    let third: PublicKey = listed[0].parse().expect("key");
    assert_eq!(third.name(), "keys-3");
    let (_, info) = narinfo(&app, &token, "keys", &nar).await;
    assert_eq!(key_names(&info.sigs), ["keys-3"]);
    assert_signed(&info, &third, &nar);
    secrets.extend(active_keys(&app, "keys").await);
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM cache_keys WHERE secret IS NOT NULL")
            .await,
        1,
        "retired keys keep no secret"
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM cache_keys WHERE secret NOT LIKE 'v1:%'")
            .await,
        0
    );

    // Everything a backup holds, after all that churn.
    let url = app.state.config.database.url.expose().to_owned();
    assert_eq!(secrets.len(), 4, "keys, keys, keys-2, keys-3");
    assert_clean(secret_in_database(&app.state.db, &url, &secrets).await);
    app.teardown().await;
}

#[tokio::test]
async fn rotation_overlaps_and_keys_are_sealed_sqlite() {
    rotation_and_sealed_keys(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_overlaps_and_keys_are_sealed_postgres() {
    rotation_and_sealed_keys(Backend::Postgres).await;
}

// --- a database from before migration 0010 -----------------------------------

/// Runs a Larder binary on `config` with no `LARDER_*` from the test's
/// environment except `env`; gives up (kills it) after a minute, since a
/// server that starts instead of failing would run forever.
fn run(name: &str, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(common::package_binary(name));
    cmd.arg("-f").arg(config).args(args);
    for (var, _) in std::env::vars() {
        if var.starts_with("LARDER_") {
            cmd.env_remove(var);
        }
    }
    cmd.env("LARDER_LOG", "debug");
    cmd.envs(env.iter().copied());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{name} {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

#[track_caller]
fn assert_fails_with(out: &Output, what: &str, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} should fail:\n{stderr}");
    for n in needles {
        assert!(
            stderr.contains(n),
            "{what}: error should mention {n:?}:\n{stderr}"
        );
    }
}

/// A database as Larder left it before migration 0010, with two caches
/// whose keys are plain text in `caches.keypair`.
async fn old_database(url: &str, dialect: &str, keys: &[(&str, &SigningKey)]) {
    let db = Db::connect(url, 1).await.expect("connect");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations")
        .join(dialect);
    let mut m = sqlx::migrate::Migrator::new(dir).await.expect("migrations");
    m.dangerous_set_table_name("larder_migrations");
    match &db {
        Db::Sqlite(p) => m.run_to(9, p).await,
        Db::Postgres(p) => m.run_to(9, p).await,
    }
    .expect("migrating to 0009");
    for (cache, key) in keys {
        let sql = AssertSqlSafe(format!(
            "INSERT INTO caches (name, keypair, is_public, store_dir, priority, upstream_cache_key_names, created_at)
             VALUES ('{cache}', '{}', TRUE, '/nix/store', 41, '[]', 1)",
            key.export_secret()
        ));
        match &db {
            Db::Sqlite(p) => sqlx::query(sql).execute(p).await.map(drop),
            Db::Postgres(p) => sqlx::query(sql).execute(p).await.map(drop),
        }
        .expect("plain key row");
    }
    db.close().await;
}

async fn old_database_gets_sealed(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (url, pg) = common::fresh_database(backend, dir.path()).await;
    let dialect = if pg.is_some() { "postgres" } else { "sqlite" };
    let a = SigningKey::generate("old-1").expect("key");
    let b = SigningKey::generate("legacy.example.org-1").expect("key");
    old_database(&url, dialect, &[("old", &a), ("legacy", &b)]).await;
    let keys = [a.clone(), b.clone()];
    // The scan finds the plain keys before sealing (it can see them).
    let db = Db::connect(&url, 1).await.expect("connect");
    let found = secret_in_database(&db, &url, &keys).await;
    assert!(
        found.is_some(),
        "the plain keys must be visible to the scan"
    );
    db.close().await;

    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{url}\"\n[storage]\ntype = \"local\"\npath = \"{}\"\n\
             [jwt.signing]\ntoken-hs256-secret-base64 = \"{}\"\n[worker]\nembedded = 0\n",
            dir.path().join("storage").display(),
            common::HS256_SECRET,
        ),
    )
    .expect("config");
    // The same config naming a KEK file this host lacks (a worker host).
    let absent = dir.path().join("absent.kek");
    let elsewhere = dir.path().join("elsewhere.toml");
    std::fs::write(
        &elsewhere,
        format!(
            "{}[signing]\nkey-encryption-key-file = \"{}\"\n",
            std::fs::read_to_string(&config).expect("config"),
            absent.display()
        ),
    )
    .expect("config");
    let mut logs = Vec::new();

    // No KEK: the server refuses to start, naming both ways to give one.
    let out = run("larder-api", &config, &["--listen", "127.0.0.1:0"], &[]);
    assert_fails_with(
        &out,
        "larder-api without a KEK",
        &["key-encryption-key-file", "LARDER_SIGNING_KEK"],
    );
    logs.push(out);
    // Nor does any other process touch plain keys without it: the
    // migration runs, the sealing step refuses.
    let out = run("larder-admin", &config, &["list-tokens"], &[]);
    assert_fails_with(
        &out,
        "larder-admin without a KEK",
        &["key-encryption-key-file", "LARDER_SIGNING_KEK"],
    );
    logs.push(out);

    let out = run("larder-admin", &elsewhere, &["list-tokens"], &[]);
    assert_fails_with(
        &out,
        "larder-admin with an unreadable KEK file",
        &["absent.kek"],
    );
    logs.push(out);

    // With the KEK the first process seals them in place.
    let out = run(
        "larder-admin",
        &config,
        &["list-tokens"],
        &[("LARDER_SIGNING_KEK", TEST_KEK)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    logs.push(out);

    // Sealed, a process that seals nothing runs without the KEK file.
    let out = run("larder-admin", &elsewhere, &["list-tokens"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    logs.push(out);

    // A server with another KEK cannot open them, and says so at start.
    let wrong = BASE64.encode([9u8; 32]);
    let out = run(
        "larder-api",
        &config,
        &["--listen", "127.0.0.1:0"],
        &[("LARDER_SIGNING_KEK", &wrong)],
    );
    assert_fails_with(
        &out,
        "larder-api with the wrong KEK",
        &["cannot decrypt signing key"],
    );
    logs.push(out);

    // In process, with the right KEK: the sealed keys open to the same keys.
    let mut cfg = Config::parse_toml(&std::fs::read_to_string(&config).expect("config"))
        .expect("config parses");
    common::with_test_kek(&mut cfg);
    let state = larder_api::server::build_state(std::sync::Arc::new(cfg))
        .await
        .expect("state");
    larder_api::server::prepare_db(&state, true)
        .await
        .expect("prepare is idempotent");
    let mut conn = state.db.conn().await.expect("conn");
    for (cache, key) in [("old", &a), ("legacy", &b)] {
        let rec = caches::get_by_name(conn.raw(), &cache.parse().expect("name"))
            .await
            .expect("query")
            .expect("cache survives the migration");
        let rows = cache_keys::of_cache(conn.raw(), rec.id)
            .await
            .expect("rows");
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.key_name, key.name());
        assert_eq!(row.public_key, key.public_key().to_string());
        assert!(row.secret.as_deref().is_some_and(|s| s.starts_with("v1:")));
        let opened = state.keys.key(cache, row).expect("opens");
        assert_eq!(opened.export_secret(), key.export_secret());
    }
    drop(conn);
    assert_clean(secret_in_database(&state.db, &url, &keys).await);
    state.db.close().await;
    for out in &logs {
        assert_no_secret(&out.stdout, &keys, "process stdout");
        assert_no_secret(&out.stderr, &keys, "process log");
    }
    if let Some(name) = pg {
        common::drop_database(&name).await;
    }
}

#[tokio::test]
async fn old_database_keys_are_sealed_on_start_sqlite() {
    old_database_gets_sealed(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_database_keys_are_sealed_on_start_postgres() {
    old_database_gets_sealed(Backend::Postgres).await;
}

// --- a key kept in a file on the server --------------------------------------

#[tokio::test]
async fn a_cache_key_can_live_in_a_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let app = TestApp::new(Backend::Sqlite).await;
    let token = app.root_token();
    app.create_cache("filekeys", false).await;
    let nar = TestNar::files("filekey", 7, &[500]);
    app.upload(&token, "filekeys", &nar)
        .await
        .assert_status(StatusCode::OK);
    let dir = tempfile::tempdir().expect("temp dir");
    let larder_shared::config::StorageConfig::Local { path: storage } =
        &app.state.config.storage.backend
    else {
        panic!("local storage");
    };
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\n[storage]\ntype = \"local\"\npath = \"{}\"\n\
             [jwt.signing]\ntoken-hs256-secret-base64 = \"{}\"\n",
            app.state.config.database.url.expose(),
            storage.display(),
            common::HS256_SECRET,
        ),
    )
    .expect("config");
    let key = SigningKey::generate("files.example.org-1").expect("key");
    let key_file = dir.path().join("cache.key");
    std::fs::write(&key_file, key.export_secret()).expect("key file");
    let path = key_file.to_str().expect("UTF-8 path");
    let kek = [("LARDER_SIGNING_KEK", TEST_KEK)];
    let args = ["cache-key", "filekeys", "--key-file", path];

    // A key file other users may read is refused, naming the fix.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = run("larder-admin", &config, &args, &kek);
    assert_fails_with(
        &out,
        "a world-readable key file",
        &["mode 644", "chmod 600"],
    );
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = run("larder-admin", &config, &args, &kek);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        key.public_key().to_string()
    );

    // It signs, newest first, next to the generated key (overlap), once the
    // replica's background refresh has read the new row.
    app.state
        .catalog
        .refresh(&app.state.db)
        .await
        .expect("refresh");
    let cfg = cache_config(&app, "filekeys").await;
    assert_eq!(public_keys(&cfg)[0], key.public_key().to_string(), "{cfg}");
    let (_, info) = narinfo(&app, &token, "filekeys", &nar).await;
    assert_eq!(key_names(&info.sigs), ["files.example.org-1", "filekeys"]);
    assert_signed(&info, &key.public_key(), &nar);
    // Nothing secret of it is in the database: only the path.
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM cache_keys WHERE key_file IS NOT NULL AND secret IS NULL")
            .await,
        1
    );
    let url = app.state.config.database.url.expose().to_owned();
    assert_clean(secret_in_database(&app.state.db, &url, std::slice::from_ref(&key)).await);
    assert_no_secret(&out.stderr, std::slice::from_ref(&key), "larder-admin log");
    app.teardown().await;
}
