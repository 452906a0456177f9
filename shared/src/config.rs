//! Configuration: one typed tree, loaded once, shared as `Arc<Config>`.
//!
//! Keys follow Attic's `server.toml` where the concept is the same (docs/protocol.md),
//! so an operator's muscle memory carries over. Unknown keys are errors that name
//! the key. Environment variables override the file (`LARDER_*`).

mod duration;
mod embedded;
mod storage;
mod trusted_proxy;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkingParams;
pub use duration::ConfigDuration;
pub use embedded::{EmbeddedDefault, default_data_dir, write_private};
pub use storage::{S3Config, S3Credentials, StorageConfig};
pub use trusted_proxy::TrustedProxy;

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (names the key).
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// Which file.
        path: PathBuf,
        /// The TOML error, naming key and line.
        source: Box<toml::de::Error>,
    },
    /// An environment variable has an invalid value.
    #[error("invalid value in environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Values that parse but do not make sense together; every problem is listed.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
    /// The embedded default could not be created.
    #[error("cannot set up the embedded default in {path}: {source}")]
    Embedded {
        /// The data directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A secret string: never printed by `Debug`, so configs can be logged.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The whole configuration of a Larder deployment (API and workers share it).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Address the API listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Public base URL of the API, used in the substituter endpoint shown to clients.
    #[serde(default)]
    pub api_endpoint: Option<String>,
    /// `Host` headers accepted; empty means any.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Where metadata lives.
    pub database: DatabaseConfig,
    /// Where chunk objects (and by default staged uploads) live.
    pub storage: StorageConfig,
    /// Content-defined chunking parameters.
    #[serde(default)]
    pub chunking: ChunkingConfig,
    /// Compression of stored chunks.
    #[serde(default)]
    pub compression: CompressionConfig,
    /// Garbage collection schedule and retention.
    #[serde(default)]
    pub garbage_collection: GcConfig,
    /// Token verification.
    pub jwt: JwtConfig,
    /// Staging of uploads before ingest.
    #[serde(default)]
    pub staging: StagingConfig,
    /// Job workers.
    #[serde(default)]
    pub worker: WorkerConfig,
    /// Access-time recording.
    #[serde(default)]
    pub access: AccessConfig,
    /// Prometheus metrics.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// HTTP behaviour: connection handling, and Cache-Control towards the caches in front of Larder.
    #[serde(default)]
    pub http: HttpConfig,
    /// Cache signing keys: the key-encryption key, rotation overlap.
    #[serde(default)]
    pub signing: SigningConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

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
    /// zstd level (1–22). 3 is Nix's own default and zstd's sweet spot.
    #[serde(default = "d_level")]
    pub level: i32,
}

fn d_level() -> i32 {
    3
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            kind: CompressionType::Zstd,
            level: d_level(),
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
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StagingConfig {
    /// A shared directory for staged uploads (shorthand for a local
    /// `[staging.storage]`); unset means the storage backend (prefix
    /// `staging/`), which every worker can read.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A backend of its own for staged uploads, e.g. a fast local disk on a
    /// single node whose chunks live in S3. Every worker must reach it.
    #[serde(default)]
    pub storage: Option<StorageConfig>,
    /// Uploads abandoned longer than this are removed.
    #[serde(default = "d_staging_age")]
    pub max_age: ConfigDuration,
}

fn d_staging_age() -> ConfigDuration {
    ConfigDuration::from_secs(24 * 3600)
}

impl Default for StagingConfig {
    fn default() -> Self {
        Self {
            path: None,
            storage: None,
            max_age: d_staging_age(),
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
}

fn d_concurrency() -> usize {
    num_cpus::get().max(1)
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            embedded: 0,
            concurrency: d_concurrency(),
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
        }
    }
}

/// `[signing]`: how cache signing keys are kept and rotated
/// (docs/operations.md "Signing keys").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SigningConfig {
    /// File holding the key-encryption key (32 bytes, base64 or hex, mode
    /// 0600) that seals every cache's secret key in the database. Keep it
    /// out of database backups: a dump without it signs nothing.
    #[serde(default)]
    pub key_encryption_key_file: Option<PathBuf>,
    /// The KEK text itself, from `LARDER_SIGNING_KEK` only (never the file,
    /// so it does not end up in a config that gets copied around); wins
    /// over the file.
    #[serde(skip)]
    pub key_encryption_key: Option<Secret>,
    /// After a key rotation the previous keys keep signing this long, so
    /// hosts that trust only the old key keep working while they update.
    #[serde(default = "d_rotation_overlap")]
    pub rotation_overlap: ConfigDuration,
}

fn d_rotation_overlap() -> ConfigDuration {
    ConfigDuration::from_secs(30 * 86400)
}

impl Default for SigningConfig {
    fn default() -> Self {
        Self {
            key_encryption_key_file: None,
            key_encryption_key: None,
            rotation_overlap: d_rotation_overlap(),
        }
    }
}

impl Config {
    /// Reads a config file, then applies `LARDER_*` environment overrides, then validates.
    pub fn load_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        config.apply_env(|k| std::env::var(k).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text without environment or validation (tests, generation).
    pub fn parse_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Applies the environment overrides of docs/protocol.md through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("LARDER_LISTEN") {
            self.listen = v.parse().map_err(|_| ConfigError::Env {
                var: "LARDER_LISTEN",
                message: format!("{v:?} is not an address like 127.0.0.1:8080"),
            })?;
        }
        if let Some(v) = get("LARDER_DATABASE_URL") {
            self.database.url = Secret::new(v);
        }
        if let Some(v) = get(crate::signing_keys::KEK_ENV) {
            self.signing.key_encryption_key = Some(Secret::new(v));
        }
        let keys = [
            "LARDER_SERVER_TOKEN_RS256_SECRET_BASE64",
            "LARDER_SERVER_TOKEN_RS256_PUBKEY_BASE64",
            "LARDER_SERVER_TOKEN_HS256_SECRET_BASE64",
        ];
        let given: Vec<_> = keys.iter().map(|k| get(k)).collect();
        if given.iter().any(Option::is_some) {
            // A key from the environment replaces the file's key entirely.
            let mut it = given.into_iter();
            self.jwt.signing = JwtSigningConfig {
                token_rs256_secret_base64: it.next().flatten().map(Secret::new),
                token_rs256_pubkey_base64: it.next().flatten().map(Secret::new),
                token_hs256_secret_base64: it.next().flatten().map(Secret::new),
            };
        }
        Ok(())
    }

    /// Checks values that parse but do not fit together; lists every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Err(invalid) = self.chunking.params().validate() {
            problems.extend(invalid.0.iter().map(|p| format!("chunking: {p}")));
        }
        if !(1..=22).contains(&self.compression.level) {
            problems.push(format!(
                "compression.level: {} is outside 1..=22",
                self.compression.level
            ));
        }
        let url = self.database.url.expose();
        if !(url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite:"))
        {
            problems.push("database.url: must start with postgres:// or sqlite:".into());
        }
        let s = &self.jwt.signing;
        let n = [
            s.token_rs256_secret_base64.is_some(),
            s.token_rs256_pubkey_base64.is_some(),
            s.token_hs256_secret_base64.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if n != 1 {
            problems.push(format!(
                "jwt.signing: set exactly one of token-rs256-secret-base64, token-rs256-pubkey-base64, token-hs256-secret-base64 (found {n})"
            ));
        }
        if self.worker.concurrency == 0 {
            problems.push("worker.concurrency: must be at least 1".into());
        }
        self.storage.problems("storage", &mut problems);
        if let Some(staging) = &self.staging.storage {
            staging.problems("staging.storage", &mut problems);
            if self.staging.path.is_some() {
                problems.push("staging: set path or [staging.storage], not both".into());
            }
        }
        if self.access.flush_interval.as_secs() == 0 {
            problems.push("access.flush-interval: must be at least 1s".into());
        }
        let http = &self.http;
        for (key, d) in [
            ("header-read-timeout", http.header_read_timeout),
            ("idle-timeout", http.idle_timeout),
            ("body-rate-window", http.body_rate_window),
        ] {
            if d.get() < std::time::Duration::from_millis(10) {
                problems.push(format!("http.{key}: must be at least 10ms"));
            }
        }
        if http.max_connections == 0 {
            problems.push("http.max-connections: must be at least 1".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

#[cfg(test)]
mod tests;
