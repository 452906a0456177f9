//! `--check-config` of every server binary: load the configuration exactly
//! as a start would (file, `LARDER_*` overrides, `*_FILE` secrets), check
//! the keys it names, and exit without touching the database or storage.
//!
//! It is what a deployment runs before its first start (and what the test
//! suite runs against `compose.yaml`'s services): a typo in a variable
//! name, an unreadable mounted secret or a malformed key fails here, with
//! the reason, instead of at 3 a.m. in a restart loop.

use std::path::Path;

use larder_shared::config::{Config, StorageConfig, env};
use larder_shared::signing_keys::Kek;
use larder_shared::token::TokenKey;

/// Why a configuration does not pass the check.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No config file given.
    #[error("no config to check: pass -f CONFIG or set LARDER_CONFIG")]
    NoConfig,
    /// The file, the environment or a secret file is wrong.
    #[error(transparent)]
    Config(#[from] larder_shared::config::ConfigError),
    /// `[jwt.signing]` does not hold a usable key.
    #[error("[jwt.signing]: {0}")]
    TokenKey(larder_shared::token::KeyError),
    /// The signing keys' KEK cannot be read or parsed.
    #[error("signing keys' KEK: {0}")]
    Kek(#[from] larder_shared::signing_keys::KeyError),
    /// Environment variables that look like Larder's but are not read.
    #[error("unknown environment variables (not read by Larder): {}", .0.join(", "))]
    UnknownEnv(Vec<String>),
}

/// What a binary needs beyond a valid file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// `larder-api`: the KEK is required to start.
    Kek,
    /// `larder-worker`, `larder-admin`: the KEK only while plain keys remain.
    Nothing,
}

/// Loads and checks the config at `path` with the process environment;
/// on success returns a one-line summary without secrets.
pub fn check(path: Option<&Path>, needs: Needs) -> Result<String, CheckError> {
    let path = path.ok_or(CheckError::NoConfig)?;
    let unknown = env::unknown_larder_vars(
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str),
    );
    if !unknown.is_empty() {
        return Err(CheckError::UnknownEnv(unknown));
    }
    let config = Config::load_file(path)?;
    TokenKey::from_config(&config.jwt.signing).map_err(CheckError::TokenKey)?;
    match needs {
        Needs::Kek => {
            Kek::require(&config.signing)?;
        }
        Needs::Nothing => {
            Kek::from_config(&config.signing)?;
        }
    }
    Ok(summary(path, &config))
}

/// `config OK: …` with where things are, never a secret.
fn summary(path: &Path, config: &Config) -> String {
    let url = config.database.url.expose();
    let database = if url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    };
    let storage = match &config.storage.backend {
        StorageConfig::Local { path } => format!("local {}", path.display()),
        StorageConfig::S3(s3) => format!(
            "s3 bucket {} at {}{}",
            s3.bucket,
            s3.endpoint.as_deref().unwrap_or("AWS"),
            if s3.credentials.is_some() {
                " (static credentials)"
            } else {
                ""
            }
        ),
    };
    let metrics = config
        .worker
        .metrics_listen
        .map(|a| format!(", worker metrics and health on {a}"))
        .unwrap_or_default();
    format!(
        "config OK: {}: listen {}, database {database}, storage {storage}, {} embedded workers{metrics}",
        path.display(),
        config.listen,
        config.worker.embedded
    )
}
