//! Token revocation across API replicas (docs/operations.md, "Tokens and
//! permissions"): two `larder-api` processes over one PostgreSQL database,
//! `larder-admin revoke-token`, and each replica refusing the token within
//! its `[jwt] revocation-refresh`, without a restart.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine as _;

use larder_e2e::cli::{admin, jwt_claims, make_token};
use larder_e2e::replica::{ApiReplica, PgDatabase};
use larder_e2e::{Client, wait};

/// Bound on a revocation reaching a replica (refresh is 1 s here).
pub(crate) const REVOCATION_LIMIT: Duration = Duration::from_secs(20);

/// A fresh 2048-bit RSA key as `openssl genrsa 2048 | base64 -w0`.
pub(crate) async fn rs256_key() -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.args(["genrsa", "2048"]).kill_on_drop(true);
    let pem = larder_e2e::nix::run(cmd)
        .await
        .context("openssl genrsa 2048 (install openssl)")?;
    Ok(base64::engine::general_purpose::STANDARD.encode(pem))
}

/// The production-shape config: PostgreSQL, local storage, RS256, no
/// in-process workers, revocations reloaded every second. Mode 0600.
fn write_config(path: &Path, db_url: &str, storage: &Path, key: &str) -> anyhow::Result<()> {
    let kek = path.with_file_name("signing.kek");
    let text = format!(
        r#"[database]
url = "{db_url}"

[storage]
type = "local"
path = "{}"

[jwt]
revocation-refresh = "1s"

[jwt.signing]
token-rs256-secret-base64 = "{key}"

[worker]
embedded = 0

[signing]
key-encryption-key-file = "{}"
"#,
        storage.display(),
        kek.display()
    );
    let kek_text = base64::engine::general_purpose::STANDARD.encode([0x42u8; 32]);
    std::fs::write(&kek, format!("{kek_text}\n"))?;
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600))?;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// `GET /_api/v1/cache-config/<cache>` with `token` from the replica at
/// `replica` (its base URL): the status and body.
pub(crate) async fn cache_config(
    replica: &str,
    token: &str,
    cache: &str,
) -> anyhow::Result<(reqwest::StatusCode, String)> {
    let resp = Client::new(replica, token)
        .request(
            reqwest::Method::GET,
            &format!("/_api/v1/cache-config/{cache}"),
        )
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    let status = resp.status();
    Ok((status, resp.text().await?))
}

/// Polls the replica at `replica` (its base URL) until it answers 401
/// "…revoked…" for `token`; returns the time since `since`.
pub(crate) async fn wait_refused(
    name: &str,
    replica: &str,
    token: &str,
    cache: &str,
    since: Instant,
) -> anyhow::Result<Duration> {
    let last = std::sync::Mutex::new(String::new());
    wait::until(
        &format!("replica {name} to refuse the revoked token"),
        REVOCATION_LIMIT,
        Duration::from_millis(50),
        || async {
            let (status, body) = cache_config(replica, token, cache).await?;
            if status == reqwest::StatusCode::UNAUTHORIZED {
                anyhow::ensure!(
                    body.contains("revoked"),
                    "replica {name}: 401 without \"revoked\": {body}"
                );
                return Ok(Some(since.elapsed()));
            }
            *last.lock().unwrap_or_else(|e| e.into_inner()) = format!("{status} {body}");
            Ok(None)
        },
    )
    .await
    .map_err(|e| {
        let last = last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        e.context(format!("replica {name}'s last answer: {last}"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_two_api_processes() -> anyhow::Result<()> {
    let db = PgDatabase::create("larder_e2e_revoke").await?;
    let result = run_revocation(&db).await;
    db.drop_now().await?;
    result
}

/// Two `larder-api` replicas of the production-shape config over one
/// database, sharing its storage directory; `dir` holds the config, the
/// storage and their logs.
pub(crate) struct TwoReplicas {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub a: ApiReplica,
    pub b: ApiReplica,
}

impl TwoReplicas {
    /// Starts both together (both migrate the fresh database) and waits
    /// until they are ready.
    pub(crate) async fn start(db: &PgDatabase) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("larder-e2e-replicas-")
            .tempdir()?;
        let config = dir.path().join("larder.toml");
        write_config(
            &config,
            &db.url(),
            &dir.path().join("storage"),
            &rs256_key().await?,
        )?;
        let mut a = ApiReplica::spawn(&config, dir.path().join("api-a.log"))?;
        let mut b = ApiReplica::spawn(&config, dir.path().join("api-b.log"))?;
        a.wait_ready().await?;
        b.wait_ready().await?;
        Ok(Self { dir, config, a, b })
    }
}

async fn run_revocation(db: &PgDatabase) -> anyhow::Result<()> {
    let TwoReplicas {
        dir: _dir,
        config,
        a,
        b,
    } = TwoReplicas::start(db).await?;
    let logs = |e: anyhow::Error| e.context(format!("{}\n{}", a.log(), b.log()));

    let cache = "rev-cache";
    let token = make_token(
        &config,
        "e2e-revoke",
        &["--pull", "rev-*", "--create-cache", "rev-*"],
    )
    .await?;
    // Same subject, another token: revoking one jti must spare it.
    let sibling = make_token(&config, "e2e-revoke", &["--pull", "rev-*"]).await?;
    let jti = jwt_claims(&token)?["jti"]
        .as_str()
        .context("the token has no jti")?
        .to_owned();
    let listed = admin(&config, &["list-tokens"]).await?;
    assert!(
        listed.contains(&jti),
        "list-tokens does not show {jti}:\n{listed}"
    );

    Client::new(&a.url(), &token)
        .create_cache(cache)
        .await
        .map_err(logs)?;
    for (name, replica) in [("a", &a), ("b", &b)] {
        for t in [&token, &sibling] {
            let (status, body) = cache_config(&replica.url(), t, cache).await?;
            assert_eq!(
                status,
                reqwest::StatusCode::OK,
                "replica {name} before revocation: {body}"
            );
        }
    }

    let revoking = Instant::now();
    let out = admin(&config, &["revoke-token", "--jti", &jti]).await?;
    let (a_url, b_url) = (a.url(), b.url());
    let (lat_a, lat_b) = tokio::try_join!(
        wait_refused("a", &a_url, &token, cache, revoking),
        wait_refused("b", &b_url, &token, cache, revoking),
    )
    .map_err(logs)?;
    // The other token of the same subject still works everywhere, and the
    // revoked one stays refused.
    for (name, replica) in [("a", &a), ("b", &b)] {
        let (status, body) = cache_config(&replica.url(), &sibling, cache).await?;
        assert_eq!(
            status,
            reqwest::StatusCode::OK,
            "replica {name}: revoking one jti refused another token: {body}"
        );
        let (status, _) = cache_config(&replica.url(), &token, cache).await?;
        assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED, "replica {name}");
    }
    let listed = admin(&config, &["list-tokens"]).await?;
    let line = listed
        .lines()
        .find(|l| l.contains(&jti))
        .with_context(|| format!("list-tokens lost {jti}:\n{listed}"))?;
    assert!(line.contains("revoked"), "list-tokens: {line}");
    eprintln!(
        "revoke-token said {:?}; the token was refused by replica a after {lat_a:?}, by b after {lat_b:?} (from the start of revoke-token)",
        out.trim()
    );
    Ok(())
}
