//! `larder cache create|configure|info|destroy|list`: cache management
//! through `/_api/v1/cache-config/{cache}` and `/_api/v1/caches`.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use reqwest::StatusCode;

use larder_core::CacheName;
use larder_core::nix::signing::{SigningError, SigningKey};

use crate::api::{ApiClient, ApiError, CacheList};
use crate::cli::{ConfigureArgs, CreateArgs};
use larder_core::wire::{CacheConfig, CacheSummary, KeypairConfig, RetentionPeriodConfig};

/// The upstream key of a new cache when none is given: paths from
/// cache.nixos.org need not be stored again.
pub const DEFAULT_UPSTREAM: &str = "cache.nixos.org-1";

/// Why a cache command failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The server refused or failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// `--keypair-file` could not be read.
    #[error("reading {path}: {source}")]
    KeypairFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `--keypair-file` does not hold `name:base64(64 bytes)`.
    #[error("{path} is not a Nix secret key (`name:base64`): {source}")]
    BadKeypair {
        /// The file.
        path: PathBuf,
        /// Why.
        source: SigningError,
    },
    /// `configure` without any option.
    #[error("nothing to configure: give at least one option (see `larder cache configure --help`)")]
    NothingToConfigure,
    /// The user did not confirm.
    #[error("aborted: cache not destroyed")]
    Aborted,
    /// The confirmation prompt failed.
    #[error("reading the confirmation: {0}")]
    Prompt(std::io::Error),
    /// The server has no `GET /_api/v1/caches`.
    #[error("the server at {endpoint} cannot list caches: {source}")]
    ListUnsupported {
        /// The server.
        endpoint: String,
        /// What it answered.
        source: Box<ApiError>,
    },
}

/// The `POST` body of `cache create`: every field the server requires.
pub fn create_body(args: &CreateArgs) -> Result<CacheConfig, CacheError> {
    let keypair = match &args.keypair_file {
        Some(path) => KeypairConfig::Keypair(read_keypair(path)?),
        None => KeypairConfig::Generate,
    };
    let upstream = if args.upstream_cache_key_names.is_empty() {
        vec![DEFAULT_UPSTREAM.to_owned()]
    } else {
        args.upstream_cache_key_names.clone()
    };
    Ok(CacheConfig {
        keypair: Some(keypair),
        is_public: Some(args.public),
        store_dir: Some(args.store_dir.clone()),
        priority: Some(args.priority),
        upstream_cache_key_names: Some(upstream),
        ..CacheConfig::default()
    })
}

/// Reads and checks a secret key file, so a typo fails here and not as a
/// server 400.
fn read_keypair(path: &Path) -> Result<String, CacheError> {
    let text = std::fs::read_to_string(path).map_err(|source| CacheError::KeypairFile {
        path: path.to_owned(),
        source,
    })?;
    let text = text.trim();
    text.parse::<SigningKey>()
        .map_err(|source| CacheError::BadKeypair {
            path: path.to_owned(),
            source,
        })?;
    Ok(text.to_owned())
}

/// The `PATCH` body of `cache configure`: only the fields given.
pub fn configure_body(args: &ConfigureArgs) -> Result<CacheConfig, CacheError> {
    let body = CacheConfig {
        keypair: args.regenerate_keypair.then_some(KeypairConfig::Generate),
        no_overlap: args.no_overlap.then_some(true),
        is_public: match (args.public, args.private) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        priority: args.priority,
        upstream_cache_key_names: (!args.upstream_cache_key_names.is_empty())
            .then(|| args.upstream_cache_key_names.clone()),
        retention_period: match (args.retention_period, args.reset_retention_period) {
            (Some(secs), _) => Some(RetentionPeriodConfig::Period(secs)),
            (None, true) => Some(RetentionPeriodConfig::Global),
            (None, false) => None,
        },
        ..CacheConfig::default()
    };
    if body == CacheConfig::default() {
        return Err(CacheError::NothingToConfigure);
    }
    Ok(body)
}

/// `cache info` as aligned `Label: value` lines.
pub fn render_info(cache: &CacheName, cfg: &CacheConfig) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "(not given)".to_owned());
    let retention = cfg.retention_period.map(|r| match r {
        RetentionPeriodConfig::Global => "server default".to_owned(),
        RetentionPeriodConfig::Period(0) => "forever".to_owned(),
        RetentionPeriodConfig::Period(s) => {
            humantime::format_duration(std::time::Duration::from_secs(s)).to_string()
        }
    });
    let rows = [
        ("Cache", Some(cache.to_string())),
        ("Public", cfg.is_public.map(|p| p.to_string())),
        // Every active key during a rotation's overlap, newest first.
        (
            "Public Key",
            match &cfg.public_keys {
                Some(keys) if !keys.is_empty() => Some(keys.join(" ")),
                _ => cfg.public_key.clone(),
            },
        ),
        ("Substituter Endpoint", cfg.substituter_endpoint.clone()),
        ("API Endpoint", cfg.api_endpoint.clone()),
        ("Store Directory", cfg.store_dir.clone()),
        ("Priority", cfg.priority.map(|p| p.to_string())),
        (
            "Upstream Cache Keys",
            cfg.upstream_cache_key_names.as_ref().map(|k| {
                if k.is_empty() {
                    "(none)".to_owned()
                } else {
                    k.join(" ")
                }
            }),
        ),
        ("Retention Period", retention),
    ];
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    rows.into_iter()
        .map(|(label, value)| format!("{label:>width$}: {}\n", opt(value)))
        .collect()
}

/// `cache list` output, one cache per line: name, visibility, priority and
/// the caller's permissions.
pub fn render_list(list: &CacheList) -> String {
    match list {
        CacheList::Summaries(caches) => render_summaries(caches),
        CacheList::Other(value) => render_json_list(value),
    }
}

fn render_summaries(caches: &[CacheSummary]) -> String {
    let width = caches.iter().map(|c| c.name.len()).max().unwrap_or(0);
    caches
        .iter()
        .map(|c| {
            let visibility = if c.is_public { "public " } else { "private" };
            let line = format!(
                "{:width$}  {visibility}  priority {}  permissions {}",
                c.name,
                c.priority,
                c.permissions.join(",")
            );
            format!("{}\n", line.trim_end())
        })
        .collect()
}

/// A body of another shape (another server's): an array of names or of
/// objects with some of [`CacheSummary`]'s fields (those it lacks are left
/// out), or `{"caches": [...]}`; anything else is printed as JSON.
fn render_json_list(value: &serde_json::Value) -> String {
    use serde_json::Value;
    let items = match value {
        Value::Array(items) => Some(items),
        Value::Object(o) => o.get("caches").and_then(Value::as_array),
        _ => None,
    };
    let Some(items) = items else {
        return serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    };
    let name_of = |item: &Value| match item {
        Value::String(name) => name.clone(),
        Value::Object(o) => o
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned(),
        other => other.to_string(),
    };
    let width = items.iter().map(|i| name_of(i).len()).max().unwrap_or(0);
    let mut out = String::new();
    for item in items {
        let mut line = format!("{:width$}", name_of(item));
        if let Value::Object(o) = item {
            match o.get("is_public").and_then(Value::as_bool) {
                Some(true) => line.push_str("  public "),
                Some(false) => line.push_str("  private"),
                None => {}
            }
            if let Some(p) = o.get("priority").and_then(Value::as_i64) {
                line.push_str(&format!("  priority {p}"));
            }
            if let Some(perms) = o.get("permissions").and_then(Value::as_array) {
                let perms: Vec<&str> = perms.iter().filter_map(Value::as_str).collect();
                line.push_str(&format!("  permissions {}", perms.join(",")));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `GET /_api/v1/caches`, with a clear message when the server lacks it.
pub async fn list(api: &ApiClient) -> Result<String, CacheError> {
    match api.list_caches().await {
        Ok(v) => Ok(render_list(&v)),
        Err(e)
            if matches!(
                e.status(),
                Some(StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED)
            ) =>
        {
            Err(CacheError::ListUnsupported {
                endpoint: api.endpoint().to_owned(),
                source: Box::new(e),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Asks, on a terminal, that the cache name be typed back. Off a terminal
/// (scripts) there is nobody to ask, and the command goes ahead.
pub fn confirm_destroy(cache: &CacheName, server: &str) -> Result<(), CacheError> {
    if !std::io::stdin().is_terminal() {
        return Ok(());
    }
    eprint!(
        "This destroys cache {cache} on server {server} and removes all its paths.\nType the cache name to confirm: "
    );
    std::io::stderr().flush().map_err(CacheError::Prompt)?;
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(CacheError::Prompt)?;
    if answer.trim() == cache.as_str() {
        Ok(())
    } else {
        Err(CacheError::Aborted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{CacheCommand, Cli, Command};
    use clap::Parser as _;

    fn create(args: &[&str]) -> CreateArgs {
        let cli = Cli::try_parse_from(["larder", "cache", "create"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Cache(CacheCommand::Create(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    fn configure(args: &[&str]) -> ConfigureArgs {
        let cli = Cli::try_parse_from(["larder", "cache", "configure"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Cache(CacheCommand::Configure(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_defaults() {
        let body = create_body(&create(&["demo"])).unwrap();
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({
                "keypair": "Generate",
                "is_public": false,
                "store_dir": "/nix/store",
                "priority": 41,
                "upstream_cache_key_names": ["cache.nixos.org-1"],
            })
        );
    }

    #[test]
    fn create_with_options_and_keypair_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key.sec");
        let key = SigningKey::generate("mykey-1").unwrap();
        std::fs::write(&file, format!("{}\n", key.export_secret())).unwrap();
        let body = create_body(&create(&[
            "srv:demo",
            "--public",
            "--priority",
            "30",
            "--upstream-cache-key-name",
            "a-1",
            "--upstream-cache-key-name",
            "b-1",
            "--keypair-file",
            file.to_str().unwrap(),
        ]))
        .unwrap();
        assert_eq!(body.is_public, Some(true));
        assert_eq!(body.priority, Some(30));
        assert_eq!(
            body.upstream_cache_key_names,
            Some(vec!["a-1".to_owned(), "b-1".to_owned()])
        );
        assert_eq!(
            body.keypair,
            Some(KeypairConfig::Keypair(key.export_secret()))
        );
        std::fs::write(&file, "garbage").unwrap();
        assert!(matches!(
            create_body(&create(&["demo", "--keypair-file", file.to_str().unwrap()])),
            Err(CacheError::BadKeypair { .. })
        ));
    }

    #[test]
    fn configure_sends_only_given_fields() {
        let v = |args: &[&str]| {
            serde_json::to_value(configure_body(&configure(args)).unwrap()).unwrap()
        };
        assert_eq!(
            v(&["demo", "--private"]),
            serde_json::json!({"is_public": false})
        );
        assert_eq!(
            v(&["demo", "--public", "--priority", "10"]),
            serde_json::json!({"is_public": true, "priority": 10})
        );
        assert_eq!(
            v(&["demo", "--retention-period", "1d"]),
            serde_json::json!({"retention_period": {"Period": 86400}})
        );
        assert_eq!(
            v(&["demo", "--reset-retention-period", "--regenerate-keypair"]),
            serde_json::json!({"retention_period": "Global", "keypair": "Generate"})
        );
        assert_eq!(
            v(&["demo", "--regenerate-keypair", "--no-overlap"]),
            serde_json::json!({"keypair": "Generate", "no_overlap": true})
        );
        assert!(
            crate::cli::Cli::try_parse_from([
                "larder",
                "cache",
                "configure",
                "demo",
                "--no-overlap"
            ])
            .is_err(),
            "--no-overlap needs --regenerate-keypair"
        );
        assert_eq!(
            v(&["demo", "--upstream-cache-key-name", "x-1"]),
            serde_json::json!({"upstream_cache_key_names": ["x-1"]})
        );
        assert!(matches!(
            configure_body(&configure(&["demo"])),
            Err(CacheError::NothingToConfigure)
        ));
    }

    #[test]
    fn info_lines() {
        let cfg = CacheConfig {
            public_key: Some("demo:abc".into()),
            is_public: Some(false),
            substituter_endpoint: Some("http://h/demo".into()),
            retention_period: Some(RetentionPeriodConfig::Period(86_400)),
            upstream_cache_key_names: Some(vec![]),
            ..CacheConfig::default()
        };
        let text = render_info(&"demo".parse().unwrap(), &cfg);
        assert!(text.contains("          Public Key: demo:abc\n"), "{text}");
        assert!(
            text.contains("Substituter Endpoint: http://h/demo\n"),
            "{text}"
        );
        assert!(text.contains("Retention Period: 1day\n"), "{text}");
        assert!(text.contains("Upstream Cache Keys: (none)\n"), "{text}");
    }

    #[test]
    fn list_shapes() {
        use serde_json::json;
        let list = |v: serde_json::Value| render_list(&serde_json::from_value(v).unwrap());
        assert_eq!(
            list(json!([
                {"name": "demo", "is_public": false, "priority": 41, "permissions": ["r", "w"]},
                {"name": "public", "is_public": true, "priority": 30, "permissions": ["r"], "new": 1},
            ])),
            "demo    private  priority 41  permissions r,w\npublic  public   priority 30  permissions r\n"
        );
        assert_eq!(list(json!(["a", "b"])), "a\nb\n");
        assert_eq!(
            list(json!([
                {"name": "demo", "is_public": false, "priority": 41, "permissions": ["r", "w"]},
                {"name": "pub", "is_public": true},
                {"name": "x"},
            ])),
            "demo  private  priority 41  permissions r,w\npub   public\nx\n"
        );
        assert_eq!(list(json!({"caches": ["a"]})), "a\n");
        assert!(list(json!({"weird": 1})).contains("\"weird\": 1"));
    }
}
