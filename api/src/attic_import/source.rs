//! Attic's own `server.toml`, read for what the import needs: the database
//! URL, storage (a local path, or an S3 bucket with its region, endpoint and
//! credentials) and JWT settings, plus a list of what Larder
//! cannot carry over. Attic's keys (zhaofengli/attic `server/src/config.rs`)
//! are read loosely, as TOML values: its format is not ours to validate, and
//! an unknown Attic key is something to report, not an error.

use std::path::{Path, PathBuf};

use larder_shared::config::S3Config;
use toml::Value;

/// Why Attic's config is unusable for an import.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML.
    #[error("{path} is not valid TOML: {message}")]
    Parse {
        /// Which file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A required setting is missing or has the wrong type.
    #[error("Attic config: {0}")]
    Missing(String),
}

/// Where Attic keeps chunk files.
#[derive(Debug, Clone)]
pub enum AtticStorage {
    /// `[storage] type = "local"`: files under `path`.
    Local(PathBuf),
    /// `[storage] type = "s3"`: objects in a bucket, keyed by chunk file
    /// name (no prefix: Attic has none). Credentials unset in Attic's file
    /// come from the `AWS_*` variables, as they do for Attic.
    S3(Box<S3Config>),
    /// Any other type: not importable; the type name.
    Unsupported(String),
}

/// Attic's JWT settings, as Larder's `[jwt]` needs them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AtticJwt {
    /// `token-bound-issuer`.
    pub bound_issuer: Option<String>,
    /// `token-bound-audiences`.
    pub bound_audiences: Option<Vec<String>>,
    /// `token-rs256-secret-base64`.
    pub rs256_secret: Option<String>,
    /// `token-rs256-pubkey-base64`.
    pub rs256_pubkey: Option<String>,
    /// `token-hs256-secret-base64`.
    pub hs256_secret: Option<String>,
}

/// What the import reads from Attic's config.
#[derive(Debug, Clone)]
pub struct AtticConfig {
    /// `[database] url`.
    pub database_url: String,
    /// `[storage]`.
    pub storage: AtticStorage,
    /// `[jwt]`, `[jwt.signing]` (or the older top-level keys).
    pub jwt: AtticJwt,
    /// `[garbage-collection] default-retention-period`, as Attic wrote it.
    pub default_retention_period: Option<String>,
    /// Settings Larder does not carry over, as `key = value` (secrets elided).
    pub not_carried: Vec<String>,
}

/// Keys whose meaning the import carries over (or that need no carrying).
const CARRIED: &[&str] = &[
    "database.url",
    "storage.type",
    "storage.path",
    "storage.region",
    "storage.bucket",
    "storage.endpoint",
    "storage.credentials.access_key_id",
    "storage.credentials.secret_access_key",
    "jwt.token-bound-issuer",
    "jwt.token-bound-audiences",
    "jwt.signing.token-rs256-secret-base64",
    "jwt.signing.token-rs256-pubkey-base64",
    "jwt.signing.token-hs256-secret-base64",
    "token-hs256-secret-base64",
    "token-rs256-secret-base64",
];

/// Keys Larder has under the same name: set them in larder.toml by hand if
/// the values should stay the same (reported so the operator sees them).
const SAME_NAME: &[&str] = &[
    "listen",
    "api-endpoint",
    "allowed-hosts",
    "chunking.nar-size-threshold",
    "chunking.min-size",
    "chunking.avg-size",
    "chunking.max-size",
    "compression.type",
    "compression.level",
    "garbage-collection.interval",
    "garbage-collection.default-retention-period",
];

impl AtticConfig {
    /// Reads `path`; environment variables Attic honours
    /// (`ATTIC_SERVER_DATABASE_URL`, `ATTIC_SERVER_TOKEN_*_BASE64`) fill
    /// what the file leaves out, as they do for Attic.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, SourceError> {
        let text = std::fs::read_to_string(path).map_err(|source| SourceError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, env)
    }

    /// Parses the text of Attic's config (`origin` names it in errors;
    /// a relative storage path is taken relative to its directory).
    pub fn parse(
        text: &str,
        origin: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SourceError> {
        let root: Value = toml::from_str(text).map_err(|e| SourceError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        let str_at = |path: &str| {
            lookup(&root, path)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let database_url = str_at("database.url")
            .or_else(|| env("ATTIC_SERVER_DATABASE_URL"))
            .ok_or_else(|| SourceError::Missing("no [database] url".into()))?;
        let storage = match str_at("storage.type").as_deref() {
            Some("local") => {
                let p = str_at("storage.path").ok_or_else(|| {
                    SourceError::Missing("[storage] type = \"local\" without path".into())
                })?;
                let p = PathBuf::from(p);
                let p = if p.is_relative() {
                    origin.parent().unwrap_or(Path::new(".")).join(p)
                } else {
                    p
                };
                AtticStorage::Local(p)
            }
            Some("s3") => AtticStorage::S3(Box::new(s3_config(&root)?)),
            Some(other) => AtticStorage::Unsupported(other.to_owned()),
            None => return Err(SourceError::Missing("no [storage] type".into())),
        };
        let signing = |key: &str, env_name: &str| {
            str_at(&format!("jwt.signing.{key}"))
                .or_else(|| str_at(key))
                .or_else(|| env(env_name))
        };
        let jwt = AtticJwt {
            bound_issuer: str_at("jwt.token-bound-issuer"),
            bound_audiences: lookup(&root, "jwt.token-bound-audiences")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                }),
            rs256_secret: signing(
                "token-rs256-secret-base64",
                "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64",
            ),
            rs256_pubkey: signing(
                "token-rs256-pubkey-base64",
                "ATTIC_SERVER_TOKEN_RS256_PUBKEY_BASE64",
            ),
            hs256_secret: signing(
                "token-hs256-secret-base64",
                "ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64",
            ),
        };
        let mut not_carried = Vec::new();
        let mut leaves = Vec::new();
        flatten(&root, "", &mut leaves);
        for (key, value) in leaves {
            if CARRIED.contains(&key.as_str()) {
                continue;
            }
            if key.starts_with("storage.") && matches!(storage, AtticStorage::Local(_)) {
                not_carried.push(format!("{key} = {value} (Larder's [storage] is its own)"));
            } else if key.starts_with("storage.") {
                // S3 settings may be secrets: never echo them.
                not_carried.push(format!("{key} (not read by the import)"));
            } else if SAME_NAME.contains(&key.as_str()) {
                not_carried.push(format!(
                    "{key} = {value} (same key in larder.toml: set it there to keep it)"
                ));
            } else {
                not_carried.push(format!("{key} = {value} (no Larder equivalent)"));
            }
        }
        Ok(Self {
            database_url,
            storage,
            jwt,
            default_retention_period: str_at("garbage-collection.default-retention-period"),
            not_carried,
        })
    }
}

impl AtticJwt {
    /// The `[jwt]` lines for larder.toml that keep Attic's tokens valid.
    pub fn larder_toml(&self) -> String {
        let q = |s: &str| Value::String(s.to_owned()).to_string();
        let mut out = String::from("[jwt]\n");
        if let Some(iss) = &self.bound_issuer {
            out.push_str(&format!("token-bound-issuer = {}\n", q(iss)));
        }
        if let Some(aud) = &self.bound_audiences {
            let list: Vec<String> = aud.iter().map(|a| q(a)).collect();
            out.push_str(&format!("token-bound-audiences = [{}]\n", list.join(", ")));
        }
        out.push_str("[jwt.signing]\n");
        // Larder takes exactly one key; RS256 wins as it does in Attic.
        if let Some(k) = &self.rs256_secret {
            out.push_str(&format!("token-rs256-secret-base64 = {}\n", q(k)));
        } else if let Some(k) = &self.rs256_pubkey {
            out.push_str(&format!("token-rs256-pubkey-base64 = {}\n", q(k)));
        } else if let Some(k) = &self.hs256_secret {
            out.push_str(&format!("token-hs256-secret-base64 = {}\n", q(k)));
        }
        out
    }
}

/// Attic's `[storage]` S3 keys (zhaofengli/attic `server/src/storage/s3.rs`)
/// as Larder's S3 client settings; path-style when an endpoint is set, as
/// for Larder's own buckets.
fn s3_config(root: &Value) -> Result<S3Config, SourceError> {
    let mut table = toml::Table::new();
    for key in ["bucket", "region", "endpoint"] {
        if let Some(v) = lookup(root, &format!("storage.{key}")) {
            table.insert(key.to_owned(), v.clone());
        }
    }
    if let Some(Value::Table(c)) = lookup(root, "storage.credentials") {
        let mut creds = toml::Table::new();
        for key in ["access_key_id", "secret_access_key"] {
            if let Some(v) = c.get(key) {
                creds.insert(key.to_owned(), v.clone());
            }
        }
        table.insert("credentials".to_owned(), Value::Table(creds));
    }
    Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| {
            SourceError::Missing(format!("[storage] type = \"s3\": {}", e.message()))
        })
}

fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |v, k| v.get(k))
}

fn flatten(v: &Value, prefix: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(v, &key, out);
            }
        }
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
listen = "[::]:8080"
allowed-hosts = []
soft-delete-caches = false
[database]
url = "postgresql://attic:pw@postgres:5432/attic"
heartbeat = true
[storage]
type = "local"
path = "/attic/storage"
[chunking]
nar-size-threshold = 65536
min-size = 16384
avg-size = 65536
max-size = 262144
[compression]
type = "zstd"
[garbage-collection]
interval = "12 hours"
default-retention-period = "30 days"
[jwt]
token-bound-issuer = "attic"
[jwt.signing]
token-rs256-secret-base64 = "c2VjcmV0"
"#;

    #[test]
    fn reads_the_seed_config() {
        let c = AtticConfig::parse(SEED, Path::new("/attic/attic.toml"), |_| None).unwrap();
        assert_eq!(c.database_url, "postgresql://attic:pw@postgres:5432/attic");
        assert!(
            matches!(&c.storage, AtticStorage::Local(p) if p.as_path() == Path::new("/attic/storage"))
        );
        assert_eq!(c.jwt.rs256_secret.as_deref(), Some("c2VjcmV0"));
        assert_eq!(c.default_retention_period.as_deref(), Some("30 days"));
        let toml = c.jwt.larder_toml();
        assert!(toml.contains("token-bound-issuer = \"attic\""), "{toml}");
        assert!(
            toml.contains("token-rs256-secret-base64 = \"c2VjcmV0\""),
            "{toml}"
        );
        // Parses as Larder's own [jwt] section.
        let v: Value = toml::from_str(&toml).unwrap();
        assert_eq!(
            v["jwt"]["signing"]["token-rs256-secret-base64"].as_str(),
            Some("c2VjcmV0")
        );
        assert!(
            c.not_carried
                .iter()
                .any(|l| l.starts_with("soft-delete-caches"))
        );
        assert!(
            c.not_carried
                .iter()
                .any(|l| l.starts_with("database.heartbeat"))
        );
        assert!(!c.not_carried.iter().any(|l| l.contains("c2VjcmV0")));
    }

    #[test]
    fn env_fills_what_the_file_leaves_out() {
        let text = "[storage]\ntype = \"s3\"\nbucket = \"b\"\nregion = \"eu-1\"\nendpoint = \"http://s3:9000\"\n[storage.credentials]\naccess_key_id = \"id\"\nsecret_access_key = \"hidden\"\n";
        let c = AtticConfig::parse(text, Path::new("x.toml"), |k| match k {
            "ATTIC_SERVER_DATABASE_URL" => Some("sqlite:///a.db".into()),
            "ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64" => Some("aGs=".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.database_url, "sqlite:///a.db");
        let AtticStorage::S3(s3) = &c.storage else {
            panic!("{:?}", c.storage)
        };
        assert_eq!(
            (
                s3.bucket.as_str(),
                s3.region.as_deref(),
                s3.endpoint.as_deref()
            ),
            ("b", Some("eu-1"), Some("http://s3:9000"))
        );
        let creds = s3.credentials.as_ref().unwrap();
        assert_eq!(creds.secret_access_key.expose(), "hidden");
        assert!(!format!("{:?}", c.storage).contains("hidden"));
        assert_eq!(c.jwt.hs256_secret.as_deref(), Some("aGs="));
        assert!(!c.not_carried.iter().any(|l| l.contains("hidden")));
    }
}
