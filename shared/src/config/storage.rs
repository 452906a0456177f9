//! `[storage]` and `[staging.storage]`: which object store holds the bytes.
//!
//! Keys follow Attic's `server.toml` (`type = "local"` + `path`, or
//! `type = "s3"` + `bucket`, `region`, `endpoint`, `[storage.credentials]`),
//! so an `attic.toml` storage section carries over.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigDuration, Secret};
use crate::storage::validate_prefix;

/// `[storage]`: the backend chunks live in, and how they are packed.
///
/// The backend's keys sit beside `pack-size` in the same table (as in
/// Attic's `server.toml`), hence the flattened enum.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MainStorageConfig {
    /// Target size of a chunk pack in bytes (docs/architecture.md "Packs"):
    /// an ingest seals a pack once it holds this much. `0` stores every
    /// chunk as its own object, as Larder did before packs.
    #[serde(default = "d_pack_size")]
    pub pack_size: u64,
    /// Compaction rewrites a pack once less than this fraction of its bytes
    /// is live (chunks still used), and merges packs smaller than a quarter
    /// of `pack-size` (docs/gc.md "Compaction"). `0` never compacts.
    #[serde(default = "d_compaction_threshold")]
    pub compaction_threshold: f64,
    /// The backend.
    #[serde(flatten)]
    pub backend: StorageConfig,
}

/// Default [`MainStorageConfig::pack_size`]: 32 MiB keeps an S3 PUT per
/// 32 MiB of new chunks and objects far above the 16 MiB mean the storage
/// bill wants, while an open pack streams and needs no buffer
/// (docs/measurements.md "Packs").
pub const DEFAULT_PACK_SIZE: u64 = 32 * 1024 * 1024;

fn d_pack_size() -> u64 {
    DEFAULT_PACK_SIZE
}

fn d_compaction_threshold() -> f64 {
    0.5
}

/// Smallest accepted non-zero pack size.
const MIN_PACK_SIZE: u64 = 1024 * 1024;
/// Largest accepted pack size (a chunk row stores offsets as i64, S3 caps
/// multipart objects far above this).
const MAX_PACK_SIZE: u64 = 4 * 1024 * 1024 * 1024;

impl std::ops::Deref for MainStorageConfig {
    type Target = StorageConfig;
    fn deref(&self) -> &StorageConfig {
        &self.backend
    }
}

impl MainStorageConfig {
    /// Problems of this section, each prefixed with `section`.
    pub(super) fn problems(&self, section: &str, out: &mut Vec<String>) {
        self.backend.problems(section, out);
        if self.pack_size != 0 && !(MIN_PACK_SIZE..=MAX_PACK_SIZE).contains(&self.pack_size) {
            out.push(format!(
                "{section}.pack-size: {} must be 0 (no packs) or between 1 MiB and 4 GiB",
                self.pack_size
            ));
        }
        if !(0.0..1.0).contains(&self.compaction_threshold) {
            out.push(format!(
                "{section}.compaction-threshold: {} must be at least 0 (never) and below 1",
                self.compaction_threshold
            ));
        }
    }
}

/// `[storage]`'s backend (and `[staging.storage]`): a tagged choice.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StorageConfig {
    /// A local directory (or a shared filesystem mounted on every host).
    Local {
        /// Root directory.
        path: PathBuf,
    },
    /// An S3-compatible bucket (AWS S3, R2, B2, Garage, SeaweedFS, MinIO, Ceph).
    S3(S3Config),
}

/// `type = "s3"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name; the bucket must exist.
    pub bucket: String,
    /// Region; AWS needs the bucket's, most other servers accept any.
    /// Unset: `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint URL of a non-AWS server (`https://…`, `http://` allowed).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Key prefix inside the bucket (`larder` puts chunks at `larder/chunks/…`),
    /// so one bucket can serve several installs.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Path-style URLs (`endpoint/bucket/key`) rather than virtual-hosted
    /// (`bucket.endpoint/key`). Default: true when `endpoint` is set (what
    /// self-hosted servers need), false for AWS.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// Static credentials; unset: the `AWS_*` environment variables (or the
    /// instance/web-identity credentials AWS provides).
    #[serde(default)]
    pub credentials: Option<S3Credentials>,
    /// Requests this process has in flight at most (each waits for a slot).
    #[serde(default = "d_max_requests")]
    pub max_requests: usize,
    /// Retries of a failed request (5xx, 429, timeouts, connection resets).
    #[serde(default = "d_max_retries")]
    pub max_retries: usize,
    /// Give up retrying a request after this long; the error then surfaces.
    #[serde(default = "d_retry_timeout")]
    pub retry_timeout: ConfigDuration,
}

fn d_max_requests() -> usize {
    64
}
fn d_max_retries() -> usize {
    10
}
fn d_retry_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(180)
}

impl S3Config {
    /// Whether requests use path-style URLs (see [`S3Config::path_style`]).
    pub fn path_style(&self) -> bool {
        self.path_style.unwrap_or(self.endpoint.is_some())
    }

    /// The key prefix without surrounding slashes, if any.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix
            .as_deref()
            .map(|p| p.trim_matches('/'))
            .filter(|p| !p.is_empty())
    }

    /// Problems of this section, each prefixed with `section`.
    fn problems(&self, section: &str, out: &mut Vec<String>) {
        if self.bucket.is_empty() {
            out.push(format!("{section}.bucket: must not be empty"));
        }
        if let Some(e) = &self.endpoint
            && !(e.starts_with("https://") || e.starts_with("http://"))
        {
            out.push(format!(
                "{section}.endpoint: {e:?} must start with https:// or http://"
            ));
        }
        if let Some(p) = self.prefix()
            && let Err(e) = validate_prefix(&format!("{p}/"))
        {
            out.push(format!("{section}.prefix: {e}"));
        }
        if self.max_requests == 0 {
            out.push(format!("{section}.max-requests: must be at least 1"));
        }
    }
}

/// `[storage.credentials]`. Attic's snake_case spellings are accepted too.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct S3Credentials {
    /// Access key id.
    #[serde(alias = "access_key_id")]
    pub access_key_id: Secret,
    /// Secret access key.
    #[serde(alias = "secret_access_key")]
    pub secret_access_key: Secret,
    /// Session token of temporary credentials.
    #[serde(default, alias = "session_token")]
    pub session_token: Option<Secret>,
}

impl StorageConfig {
    /// Problems of this section, each prefixed with `section`.
    pub(super) fn problems(&self, section: &str, out: &mut Vec<String>) {
        match self {
            Self::Local { .. } => {}
            Self::S3(s3) => s3.problems(section, out),
        }
    }
}
