//! The `[section]` tables of the configuration file, one struct each, with
//! their defaults (docs/protocol.md lists every key).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigDuration, Secret, StorageConfig, TrustedProxy};
use crate::chunk::ChunkingParams;

/// `[database]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://…` or `sqlite://…`.
    pub url: Secret,
}

/// `[chunking]` in bytes; see [`ChunkingParams`].
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ChunkingConfig {
    /// NARs smaller than this stay one chunk.
    #[serde(default = "d_threshold")]
    pub nar_size_threshold: u32,
    /// Smallest chunk FastCDC may cut.
    #[serde(default = "d_min")]
    pub min_size: u32,
    /// FastCDC's target average.
    #[serde(default = "d_avg")]
    pub avg_size: u32,
    /// Largest chunk FastCDC may cut.
    #[serde(default = "d_max")]
    pub max_size: u32,
}

fn d_threshold() -> u32 {
    64 * 1024
}
fn d_min() -> u32 {
    16 * 1024
}
fn d_avg() -> u32 {
    64 * 1024
}
fn d_max() -> u32 {
    256 * 1024
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        Self {
            nar_size_threshold: d_threshold(),
            min_size: d_min(),
            avg_size: d_avg(),
            max_size: d_max(),
        }
    }
}

impl ChunkingConfig {
    /// The parameters the chunker takes.
    pub fn params(&self) -> ChunkingParams {
        ChunkingParams {
            nar_size_threshold: self.nar_size_threshold,
            min_size: self.min_size,
            avg_size: self.avg_size,
            max_size: self.max_size,
        }
    }
}

/// Compression algorithm of stored chunks. Only zstd: frames concatenate into
/// a valid `.nar.zst` stream without recompression.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CompressionType {
    /// Zstandard.
    #[default]
    Zstd,
}

/// `[compression]`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CompressionConfig {
    /// Algorithm.
    #[serde(default, rename = "type")]
    pub kind: CompressionType,
    /// zstd level (1–22) of ingest. 3 is Nix's own default and zstd's
    /// sweet spot: pushes stay at compression speed.
    #[serde(default = "d_level")]
    pub level: i32,
    /// zstd level (1–22) GC recompresses cold packs at; 0 (or a level not
    /// above `level`) never recompresses. 19 stores about 6% less than
    /// level 8 at about 250 CPU seconds per GB of NAR, spent once, in the
    /// background (docs/measurements.md "Compression levels").
    #[serde(default = "d_archive_level")]
    pub archive_level: i32,
    /// How long after it was written a pack counts as cold.
    #[serde(default = "d_archive_after")]
    pub archive_after: ConfigDuration,
}

fn d_level() -> i32 {
    3
}
fn d_archive_level() -> i32 {
    19
}
fn d_archive_after() -> ConfigDuration {
    ConfigDuration::from_secs(7 * 86400)
}

impl CompressionConfig {
    /// The level cold packs are recompressed at, if recompression is on.
    pub fn archive(&self) -> Option<i32> {
        (self.archive_level > self.level).then_some(self.archive_level)
    }
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            kind: CompressionType::Zstd,
            level: d_level(),
            archive_level: d_archive_level(),
            archive_after: d_archive_after(),
        }
    }
}

/// `[garbage-collection]`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GcConfig {
    /// How often the workers run GC.
    #[serde(default = "d_gc_interval")]
    pub interval: ConfigDuration,
    /// Retention of caches that set none; 0 keeps forever.
    #[serde(default = "d_retention")]
    pub default_retention_period: ConfigDuration,
    /// How long data of a just-expired path stays readable.
    #[serde(default = "d_grace")]
    pub grace_period: ConfigDuration,
}

fn d_gc_interval() -> ConfigDuration {
    ConfigDuration::from_secs(12 * 3600)
}
fn d_retention() -> ConfigDuration {
    ConfigDuration::from_secs(30 * 86400)
}
fn d_grace() -> ConfigDuration {
    ConfigDuration::from_secs(3600)
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            interval: d_gc_interval(),
            default_retention_period: d_retention(),
            grace_period: d_grace(),
        }
    }
}

/// `[jwt]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct JwtConfig {
    /// Required `iss`, if set.
    #[serde(default)]
    pub token_bound_issuer: Option<String>,
    /// Accepted `aud` values, if set.
    #[serde(default)]
    pub token_bound_audiences: Option<Vec<String>>,
    /// How soon a revocation reaches every replica.
    #[serde(default = "d_revocation_refresh")]
    pub revocation_refresh: ConfigDuration,
    /// The one signing key.
    pub signing: JwtSigningConfig,
}

fn d_revocation_refresh() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}

/// `[jwt.signing]`: exactly one of the three keys.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct JwtSigningConfig {
    /// Base64 of an RSA private key PEM: signs and verifies RS256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_rs256_secret_base64: Option<Secret>,
    /// Base64 of an RSA public key PEM: verifies only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_rs256_pubkey_base64: Option<Secret>,
    /// Base64 of an HMAC secret: HS256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hs256_secret_base64: Option<Secret>,
}

/// `[staging]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct StagingConfig {
    /// A shared directory for staged uploads (shorthand for a local
    /// `[staging.storage]`); unset means the storage backend (prefix
    /// `staging/`), which every worker can read.
    pub path: Option<PathBuf>,
    /// A backend of its own for staged uploads, e.g. a fast local disk on a
    /// single node whose chunks live in S3. Every worker must reach it.
    pub storage: Option<StorageConfig>,
    /// Uploads abandoned longer than this are removed.
    pub max_age: ConfigDuration,
    /// Staging quota in uncompressed NAR bytes staged and not yet ingested
    /// (`0`, the default: unlimited). Past it, Attic-API uploads get `503`
    /// with `Retry-After` until workers catch up, so a backlog cannot fill
    /// the staging disk (docs/operations.md "Scaling").
    pub max_bytes: u64,
    /// The same quota counted in staged NARs (`0`: unlimited).
    pub max_nars: u64,
}

impl Default for StagingConfig {
    fn default() -> Self {
        Self {
            path: None,
            storage: None,
            max_age: ConfigDuration::from_secs(24 * 3600),
            max_bytes: 0,
            max_nars: 0,
        }
    }
}

/// `[worker]`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WorkerConfig {
    /// In-process workers in `larder-api`; 0 for stateless API replicas.
    #[serde(default)]
    pub embedded: usize,
    /// Jobs one worker process runs at once.
    #[serde(default = "d_concurrency")]
    pub concurrency: usize,
    /// Where `larder-worker` serves `GET /metrics` (guarded by `[metrics]
    /// token`). Unset by default: a worker opened no port before this key
    /// existed, several workers on one host each need a port of their own,
    /// and an API node's `/metrics` already covers its in-process workers
    /// (`larder-api` ignores this key).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

/// Eight jobs per core: an ingest waits much of its time (staging reads,
/// lookups, its pack's seal, its commit) and small ones running together
/// share a pack, so more jobs ingest faster and write fewer objects, and
/// their CPU work shares one pool of a thread per core (`crate::background`)
/// (docs/measurements.md "Chunk packs", "Background priority"). Memory
/// stays bounded: each job holds at most a quarter pack of frames.
pub fn default_concurrency() -> usize {
    num_cpus::get().max(1) * 8
}

fn d_concurrency() -> usize {
    default_concurrency()
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            embedded: 0,
            concurrency: d_concurrency(),
            metrics_listen: None,
        }
    }
}

/// `[access]`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AccessConfig {
    /// How often aggregated access times are written to the database.
    #[serde(default = "d_flush")]
    pub flush_interval: ConfigDuration,
}

fn d_flush() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            flush_interval: d_flush(),
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MetricsConfig {
    /// Bearer token required for `/metrics`; unset means open, without
    /// per-cache labels for private caches.
    #[serde(default)]
    pub token: Option<Secret>,
}

/// `[http]`: how `larder-api` treats connections, and what it tells the
/// caches in front of it. The timeouts bound what a
/// client that stops talking (slowloris, a dead link) can hold; they are
/// generous because honest clients push multi-GB NARs over slow links.
/// Every key has a default, so new keys go here with a default too.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A request's head (request line and headers) must be complete this
    /// long after its first byte arrived.
    pub header_read_timeout: ConfigDuration,
    /// A connection with no request in progress is closed after this long
    /// without receiving a byte (a fresh connection included).
    pub idle_timeout: ConfigDuration,
    /// Slowest accepted request body, in bytes per second, averaged over
    /// `body-rate-window` of waiting for the client; 0 disables the check.
    pub body_min_rate: u64,
    /// The window over which `body-min-rate` is measured.
    pub body_rate_window: ConfigDuration,
    /// Connections served at once; further clients wait in the listen
    /// backlog until one closes (they are not refused).
    pub max_connections: usize,
    /// How long shared caches (nginx, a CDN) may keep a narinfo, `.ls` or
    /// `nix-cache-info`: the longest a delete or key rotation takes to show
    /// through them. NARs are immutable and cached for a year regardless.
    pub narinfo_max_age: ConfigDuration,
    /// Reverse proxies (CIDRs or addresses) whose `X-Forwarded-For` names
    /// the client in the audit trail; empty: the TCP peer is the client.
    pub trusted_proxies: Vec<TrustedProxy>,
    /// Largest build log accepted (`PUT /{cache}/log/<drv>`), in bytes
    /// once decoded; larger ones are a 413. Logs live in the database.
    pub max_log_size: u64,
    /// Largest zstd window (log2 bytes) a NAR or metadata upload may ask
    /// the decoder for; a frame wanting more is refused, not allocated.
    pub max_zstd_window_log: u32,
    /// On shutdown, how long requests in progress may take to finish before
    /// their connections are closed: a stalled client must not keep a
    /// replica from stopping (an upload cut off is not acknowledged, and
    /// its staged bytes are cleaned up as after a crash).
    pub shutdown_timeout: ConfigDuration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: ConfigDuration::from_secs(30),
            idle_timeout: ConfigDuration::from_secs(60),
            body_min_rate: 1024,
            body_rate_window: ConfigDuration::from_secs(60),
            max_connections: 512,
            narinfo_max_age: ConfigDuration::from_secs(60),
            trusted_proxies: Vec::new(),
            max_log_size: 16 * 1024 * 1024,
            max_zstd_window_log: 27,
            shutdown_timeout: ConfigDuration::from_secs(25),
        }
    }
}

/// `[signing]`: how cache signing keys are kept and rotated
/// (docs/operations.md "Signing keys").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct SigningConfig {
    /// File holding the key-encryption key (32 bytes, base64 or hex, mode
    /// 0600) that seals every cache's secret key in the database. Keep it
    /// out of database backups: a dump without it signs nothing.
    pub key_encryption_key_file: Option<PathBuf>,
    /// The KEK text itself, from `LARDER_SIGNING_KEK` only (never the file,
    /// so it does not end up in a config that gets copied around); wins
    /// over the file.
    #[serde(skip)]
    pub key_encryption_key: Option<Secret>,
    /// After a key rotation the previous keys keep signing this long, so
    /// hosts that trust only the old key keep working while they update.
    pub rotation_overlap: ConfigDuration,
}

impl Default for SigningConfig {
    fn default() -> Self {
        Self {
            key_encryption_key_file: None,
            key_encryption_key: None,
            rotation_overlap: ConfigDuration::from_secs(30 * 86400),
        }
    }
}
