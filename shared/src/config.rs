//! Configuration: one typed tree, loaded once, shared as `Arc<Config>`.
//!
//! Keys follow Attic's `server.toml` where the concept is the same (docs/protocol.md),
//! so an operator's muscle memory carries over. Unknown keys are errors that name
//! the key. Environment variables override the file (`LARDER_*`); secrets
//! may come from files named by `*_FILE` variables ([`env`]).

mod chunk_push;
mod duration;
mod embedded;
pub mod env;
mod load;
mod oidc;
mod secret;
mod sections;
mod storage;
mod trusted_proxy;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use chunk_push::ChunkPushConfig;
pub use duration::ConfigDuration;
pub use embedded::{EmbeddedDefault, default_data_dir, write_private};
pub use oidc::OidcConfig;
pub use secret::Secret;
pub use sections::{
    AccessConfig, ChunkingConfig, CompressionConfig, CompressionType, DatabaseConfig, GcConfig,
    HttpConfig, JwtConfig, JwtSigningConfig, MetricsConfig, SigningConfig, StagingConfig,
    WorkerConfig,
};
pub use storage::{DEFAULT_PACK_SIZE, MainStorageConfig, S3Config, S3Credentials, StorageConfig};
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
    /// A secret's `*_FILE` variable names a file that cannot be read.
    #[error("cannot read {var}_FILE {path}: {source}")]
    SecretFile {
        /// The secret variable (without `_FILE`).
        var: &'static str,
        /// The file it names.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
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
    pub storage: MainStorageConfig,
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
    /// Trust policies for CI identity tokens (`POST /_api/v1/oidc/exchange`).
    #[serde(default)]
    pub oidc: OidcConfig,
    /// Larder's chunk-level push API.
    #[serde(default)]
    pub chunk_push: ChunkPushConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

#[cfg(test)]
mod tests;
