//! What each node of a [`crate::cluster::Cluster`] is configured with: the
//! production shape (PostgreSQL, S3 for chunks and staging, RS256, no
//! in-process workers), with the database and bucket at the addresses that
//! node reaches them at, in a private file (mode 0600) beside its own copy
//! of the key-encryption key.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use anyhow::Context;
use base64::Engine as _;

use crate::replica::{PG_SERVER, PgDatabase};

/// The test PostgreSQL server's address (see [`PG_SERVER`]).
pub const PG_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5432);

/// The S3 test server and bucket, from the `LARDER_TEST_S3_*` variables
/// `scripts/s3-test-server` prints.
#[derive(Debug, Clone)]
pub struct S3Bucket {
    /// `host:port` of the server (loopback).
    pub endpoint: SocketAddr,
    /// Bucket name.
    pub bucket: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
}

impl S3Bucket {
    /// The test server, or `None` if `LARDER_TEST_S3_ENDPOINT` is unset.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        let Ok(endpoint) = std::env::var("LARDER_TEST_S3_ENDPOINT") else {
            return Ok(None);
        };
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        let endpoint = endpoint
            .strip_prefix("http://")
            .unwrap_or(&endpoint)
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("LARDER_TEST_S3_ENDPOINT={endpoint} is not http://IP:PORT"))?;
        Ok(Some(Self {
            endpoint,
            bucket: var("LARDER_TEST_S3_BUCKET"),
            access_key: var("LARDER_TEST_S3_ACCESS_KEY_ID"),
            secret_key: var("LARDER_TEST_S3_SECRET_ACCESS_KEY"),
        }))
    }
}

/// What every node's config shares.
pub struct ClusterSettings<'a> {
    /// The database (its name; nodes reach the server through forwarders).
    pub db: &'a PgDatabase,
    /// The bucket; the cluster uses a fresh key prefix in it.
    pub s3: &'a S3Bucket,
    /// `token-rs256-secret-base64`.
    pub rs256_key: &'a str,
    /// `[jwt] revocation-refresh`, e.g. `"1s"`.
    pub revocation_refresh: &'a str,
}

/// The production-shape config (PostgreSQL, S3 for chunks and staging,
/// RS256, no in-process workers) with the database at `pg` and the bucket
/// at `s3`, and its key-encryption key beside it; both mode 0600.
pub fn write_node_config(
    path: &Path,
    settings: &ClusterSettings<'_>,
    prefix: &str,
    pg: SocketAddr,
    s3: SocketAddr,
    metrics_listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let dir = path.parent().context("config path without a directory")?;
    std::fs::create_dir_all(dir)?;
    let kek = dir.join("signing.kek");
    let kek_text = base64::engine::general_purpose::STANDARD.encode([0x42u8; 32]);
    write_private(&kek, &format!("{kek_text}\n"))?;
    let db_url = settings
        .db
        .url()
        .replacen(PG_SERVER, &format!("postgres://postgres@{pg}"), 1);
    let metrics = metrics_listen
        .map(|a| format!("metrics-listen = \"{a}\"\n"))
        .unwrap_or_default();
    let S3Bucket {
        bucket,
        access_key,
        secret_key,
        ..
    } = settings.s3;
    let text = format!(
        r#"[database]
url = "{db_url}"

[storage]
type = "s3"
bucket = "{bucket}"
endpoint = "http://{s3}"
prefix = "{prefix}"

[storage.credentials]
access-key-id = "{access_key}"
secret-access-key = "{secret_key}"

[jwt]
revocation-refresh = "{refresh}"

[jwt.signing]
token-rs256-secret-base64 = "{key}"

[worker]
embedded = 0
{metrics}
[signing]
key-encryption-key-file = "{kek}"
"#,
        refresh = settings.revocation_refresh,
        key = settings.rs256_key,
        kek = kek.display(),
    );
    write_private(path, &text)
}

/// Writes `text` to `path` with mode 0600.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
