//! Loading: file, then `LARDER_*` environment overrides, then validation.

use std::path::Path;

use super::env::{AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, secret_value};
use super::{Config, ConfigError, JwtSigningConfig, S3Credentials, Secret, StorageConfig};

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
    /// Every secret may come from a file instead (`X_FILE`, see [`super::env`]).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("LARDER_LISTEN") {
            self.listen = v.parse().map_err(|_| ConfigError::Env {
                var: "LARDER_LISTEN",
                message: format!("{v:?} is not an address like 127.0.0.1:8080"),
            })?;
        }
        if let Some(v) = secret_value("LARDER_DATABASE_URL", &get)? {
            self.database.url = Secret::new(v);
        }
        if let Some(v) = secret_value(crate::signing_keys::KEK_ENV, &get)? {
            self.signing.key_encryption_key = Some(Secret::new(v));
        }
        let keys = [
            "LARDER_SERVER_TOKEN_RS256_SECRET_BASE64",
            "LARDER_SERVER_TOKEN_RS256_PUBKEY_BASE64",
            "LARDER_SERVER_TOKEN_HS256_SECRET_BASE64",
        ];
        let mut given = Vec::with_capacity(keys.len());
        for key in keys {
            given.push(secret_value(key, &get)?);
        }
        if given.iter().any(Option::is_some) {
            // A key from the environment replaces the file's key entirely.
            let mut it = given.into_iter();
            self.jwt.signing = JwtSigningConfig {
                token_rs256_secret_base64: it.next().flatten().map(Secret::new),
                token_rs256_pubkey_base64: it.next().flatten().map(Secret::new),
                token_hs256_secret_base64: it.next().flatten().map(Secret::new),
            };
        }
        if let Some(credentials) = s3_credentials_from_files(&get)? {
            for backend in [
                Some(&mut self.storage.backend),
                self.staging.storage.as_mut(),
            ] {
                if let Some(StorageConfig::S3(s3)) = backend {
                    s3.credentials = Some(credentials.clone());
                }
            }
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
        if !(0..=22).contains(&self.compression.archive_level) {
            problems.push(format!(
                "compression.archive-level: {} is outside 0..=22 (0 = never recompress)",
                self.compression.archive_level
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
        // zstd decodes windows from 2^10 to 2^31 bytes.
        if !(10..=31).contains(&self.http.max_zstd_window_log) {
            problems.push("http.max-zstd-window-log: must be between 10 and 31".into());
        }
        if self.worker.concurrency == 0 {
            problems.push("worker.concurrency: must be at least 1".into());
        }
        if let Some(addr) = self.worker.metrics_listen {
            if addr.port() == 0 {
                problems.push("worker.metrics-listen: needs a fixed port to be scraped".into());
            }
            if addr == self.listen {
                problems.push(format!(
                    "worker.metrics-listen: {addr} is also `listen`: a worker beside an API node could not bind it"
                ));
            }
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
        self.oidc.problems(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// Static S3 credentials when `AWS_ACCESS_KEY_ID_FILE` or
/// `AWS_SECRET_ACCESS_KEY_FILE` is set. The S3 client reads the plain
/// `AWS_*` variables itself, but not files: these become the
/// `[storage.credentials]` of every S3 backend (environment over file).
fn s3_credentials_from_files(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<S3Credentials>, ConfigError> {
    let file = |var: &str| get(&format!("{var}{}", super::env::FILE_SUFFIX)).is_some();
    if !(file(AWS_ACCESS_KEY_ID) || file(AWS_SECRET_ACCESS_KEY)) {
        return Ok(None);
    }
    let id = secret_value(AWS_ACCESS_KEY_ID, get)?;
    let key = secret_value(AWS_SECRET_ACCESS_KEY, get)?;
    let (Some(id), Some(key)) = (id, key) else {
        return Err(ConfigError::Env {
            var: AWS_ACCESS_KEY_ID,
            message: "AWS_ACCESS_KEY_ID(_FILE) and AWS_SECRET_ACCESS_KEY(_FILE) go together".into(),
        });
    };
    Ok(Some(S3Credentials {
        access_key_id: Secret::new(id),
        secret_access_key: Secret::new(key),
        session_token: secret_value(AWS_SESSION_TOKEN, get)?.map(Secret::new),
    }))
}
