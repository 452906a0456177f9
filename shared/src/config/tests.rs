use super::*;

const MINIMAL: &str = r#"
[database]
url = "postgres://postgres@127.0.0.1/larder"
[storage]
type = "local"
path = "/var/lib/larder"
[jwt.signing]
token-hs256-secret-base64 = "c2VjcmV0"
"#;

#[test]
fn minimal_config_gets_contract_defaults() {
    let c = Config::parse_toml(MINIMAL).unwrap();
    c.validate().unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.chunking.nar_size_threshold, 65536);
    assert_eq!(
        (
            c.chunking.min_size,
            c.chunking.avg_size,
            c.chunking.max_size
        ),
        (16384, 65536, 262144)
    );
    assert_eq!(c.garbage_collection.interval.as_secs(), 12 * 3600);
    assert_eq!(
        c.garbage_collection.default_retention_period.as_secs(),
        30 * 86400
    );
    assert_eq!(c.garbage_collection.grace_period.as_secs(), 3600);
    assert_eq!(c.jwt.revocation_refresh.as_secs(), 5);
    assert_eq!(c.staging.max_age.as_secs(), 86400);
    assert_eq!(c.access.flush_interval.as_secs(), 30);
    assert_eq!(c.compression.level, 3);
    assert_eq!(c.http.narinfo_max_age.as_secs(), 60);
    let http =
        Config::parse_toml(&format!("{MINIMAL}\n[http]\nnarinfo-max-age = \"5s\"\n")).unwrap();
    assert_eq!(http.http.narinfo_max_age.as_secs(), 5);
}

#[test]
fn staging_quota_is_off_unless_set() {
    let c = Config::parse_toml(MINIMAL).unwrap();
    assert_eq!((c.staging.max_bytes, c.staging.max_nars), (0, 0));
    let text = format!("{MINIMAL}\n[staging]\nmax-bytes = 10737418240\nmax-nars = 5000\n");
    let c = Config::parse_toml(&text).unwrap();
    c.validate().unwrap();
    assert_eq!((c.staging.max_bytes, c.staging.max_nars), (10 << 30, 5000));
    assert_eq!(
        c.staging.max_age.as_secs(),
        86400,
        "other keys keep defaults"
    );
    let typo = format!("{MINIMAL}\n[staging]\nmax-nar = 1\n");
    let err = Config::parse_toml(&typo).unwrap_err().to_string();
    assert!(err.contains("max-nar"), "{err}");
}

#[test]
fn http_section_defaults_and_overrides() {
    let c = Config::parse_toml(MINIMAL).unwrap();
    assert_eq!(c.http.header_read_timeout.as_secs(), 30);
    assert_eq!(c.http.idle_timeout.as_secs(), 60);
    assert_eq!(c.http.body_min_rate, 1024);
    assert_eq!(c.http.body_rate_window.as_secs(), 60);
    assert_eq!(c.http.max_connections, 512);
    // A partial section keeps the other defaults.
    let text = format!("{MINIMAL}\n[http]\nidle-timeout = \"250ms\"\nmax-connections = 8\n");
    let c = Config::parse_toml(&text).unwrap();
    c.validate().unwrap();
    assert_eq!(
        c.http.idle_timeout.get(),
        std::time::Duration::from_millis(250)
    );
    assert_eq!(c.http.max_connections, 8);
    assert_eq!(c.http.header_read_timeout.as_secs(), 30);
    let err = Config::parse_toml(&format!("{MINIMAL}\n[http]\nidle = 5\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("idle"), "{err}");
    let text = format!("{MINIMAL}\n[http]\nmax-connections = 0\nheader-read-timeout = \"1ms\"\n");
    match Config::parse_toml(&text).unwrap().validate() {
        Err(ConfigError::Invalid(p)) => assert_eq!(p.len(), 2, "{p:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn log_size_and_zstd_window_limits() {
    let c = Config::parse_toml(MINIMAL).unwrap();
    assert_eq!(c.http.max_log_size, 16 << 20);
    assert_eq!(c.http.max_zstd_window_log, 27);
    let text = format!("{MINIMAL}\n[http]\nmax-log-size = 1024\nmax-zstd-window-log = 31\n");
    let c = Config::parse_toml(&text).unwrap();
    c.validate().unwrap();
    assert_eq!(
        (c.http.max_log_size, c.http.max_zstd_window_log),
        (1024, 31)
    );
    let text = format!("{MINIMAL}\n[http]\nmax-zstd-window-log = 32\n");
    match Config::parse_toml(&text).unwrap().validate() {
        Err(ConfigError::Invalid(p)) => assert!(p[0].contains("max-zstd-window-log"), "{p:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn trusted_proxies_default_empty_and_parse() {
    let c = Config::parse_toml(MINIMAL).unwrap();
    assert!(c.http.trusted_proxies.is_empty());
    let text = format!("{MINIMAL}\n[http]\ntrusted-proxies = [\"10.0.0.0/8\", \"::1\"]\n");
    let c = Config::parse_toml(&text).unwrap();
    let shown: Vec<String> = c
        .http
        .trusted_proxies
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(shown, ["10.0.0.0/8", "::1/128"]);
    let err = Config::parse_toml(&format!(
        "{MINIMAL}\n[http]\ntrusted-proxies = [\"proxy\"]\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("trusted-proxies") && err.contains("proxy"),
        "{err}"
    );
}

#[test]
fn unknown_key_is_named() {
    let text = format!("{MINIMAL}\n[chunking]\nmin-sise = 1\n");
    let err = Config::parse_toml(&text).unwrap_err().to_string();
    assert!(err.contains("min-sise"), "{err}");
}

#[test]
fn humantime_and_integer_durations() {
    let text = format!(
        "{MINIMAL}\n[garbage-collection]\ninterval = \"3 hours\"\ndefault-retention-period = 86400\n"
    );
    let c = Config::parse_toml(&text).unwrap();
    assert_eq!(c.garbage_collection.interval.as_secs(), 3 * 3600);
    assert_eq!(
        c.garbage_collection.default_retention_period.as_secs(),
        86400
    );
    let bad = format!("{MINIMAL}\n[garbage-collection]\ninterval = \"soon\"\n");
    let err = Config::parse_toml(&bad).unwrap_err().to_string();
    assert!(err.contains("soon"), "{err}");
}

#[test]
fn validate_lists_every_problem() {
    let text = format!("{MINIMAL}\n[chunking]\nmin-size = 300000\n[compression]\nlevel = 40\n");
    let c = Config::parse_toml(&text).unwrap();
    match c.validate() {
        Err(ConfigError::Invalid(p)) => {
            assert_eq!(p.len(), 2, "{p:?}");
            assert!(p[0].contains("min-size"));
            assert!(p[1].contains("compression.level"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn env_overrides_file() {
    let mut c = Config::parse_toml(MINIMAL).unwrap();
    c.apply_env(|k| match k {
        "LARDER_LISTEN" => Some("127.0.0.1:9999".into()),
        "LARDER_DATABASE_URL" => Some("sqlite://x.db".into()),
        "LARDER_SERVER_TOKEN_RS256_PUBKEY_BASE64" => Some("cHVi".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(c.listen.port(), 9999);
    assert_eq!(c.database.url.expose(), "sqlite://x.db");
    assert!(c.jwt.signing.token_hs256_secret_base64.is_none());
    assert!(c.jwt.signing.token_rs256_pubkey_base64.is_some());
    c.validate().unwrap();
    let bad = c.apply_env(|k| (k == "LARDER_LISTEN").then(|| "nope".into()));
    assert!(matches!(
        bad,
        Err(ConfigError::Env {
            var: "LARDER_LISTEN",
            ..
        })
    ));
}

#[test]
fn secrets_are_redacted_in_debug() {
    let c = Config::parse_toml(MINIMAL).unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("c2VjcmV0"));
    assert!(!dbg.contains("postgres://"));
}

#[test]
fn embedded_default_is_created_once_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let first = EmbeddedDefault::open_or_create(dir.path()).unwrap();
    assert!(first.created);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first.config_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(first.config.worker.embedded >= 1);
    let second = EmbeddedDefault::open_or_create(dir.path()).unwrap();
    assert!(!second.created);
    assert_eq!(
        first.config.jwt.signing.token_rs256_secret_base64,
        second.config.jwt.signing.token_rs256_secret_base64
    );
    // The signing keys' KEK sits beside the config, mode 0600, and is kept.
    let kek = first
        .config
        .signing
        .key_encryption_key_file
        .clone()
        .unwrap();
    assert_eq!(kek, dir.path().canonicalize().unwrap().join("signing.kek"));
    let text = std::fs::read_to_string(&kek).unwrap();
    crate::signing_keys::Kek::read_file(&kek).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&kek).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(std::fs::read_to_string(&kek).unwrap(), text);
    assert_eq!(second.config.signing.key_encryption_key_file, Some(kek));
    assert_eq!(second.config.signing.rotation_overlap.as_secs(), 30 * 86400);
}

#[test]
fn embedded_default_from_before_sealed_keys_gets_a_kek() {
    let dir = tempfile::tempdir().unwrap();
    let first = EmbeddedDefault::open_or_create(dir.path()).unwrap();
    let kek = first.config.signing.key_encryption_key_file.unwrap();
    // An older generated config: no [signing] section, no KEK file.
    let text = std::fs::read_to_string(&first.config_path).unwrap();
    let old: String = text
        .lines()
        .filter(|l| {
            !l.starts_with("[signing]")
                && !l.starts_with("key-encryption-key-file")
                && !l.starts_with("rotation-overlap")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&first.config_path, old).unwrap();
    std::fs::remove_file(&kek).unwrap();
    let again = EmbeddedDefault::open_or_create(dir.path()).unwrap();
    assert_eq!(
        again.config.signing.key_encryption_key_file,
        Some(kek.clone())
    );
    crate::signing_keys::Kek::read_file(&kek).unwrap();
}

#[test]
fn signing_section_and_kek_from_the_environment() {
    let text = format!(
        "{MINIMAL}[signing]\nkey-encryption-key-file = \"/etc/larder/kek\"\nrotation-overlap = \"7d\"\n"
    );
    let mut c = Config::parse_toml(&text).unwrap();
    assert_eq!(c.signing.rotation_overlap.as_secs(), 7 * 86400);
    assert!(c.signing.key_encryption_key.is_none());
    c.apply_env(|k| (k == "LARDER_SIGNING_KEK").then(|| "a2V5".into()))
        .unwrap();
    assert_eq!(
        c.signing.key_encryption_key.as_ref().unwrap().expose(),
        "a2V5"
    );
    assert!(
        !format!("{c:?}").contains("a2V5"),
        "the KEK never shows in Debug"
    );
    // Only the environment gives the KEK text; the file names a path.
    let inline = format!("{MINIMAL}[signing]\nkey-encryption-key = \"a2V5\"\n");
    assert!(Config::parse_toml(&inline).is_err());
    let defaults = Config::parse_toml(MINIMAL).unwrap();
    assert_eq!(defaults.signing.rotation_overlap.as_secs(), 30 * 86400);
}

const S3_BASE: &str = r#"
[database]
url = "postgres://postgres@127.0.0.1/larder"
[jwt.signing]
token-hs256-secret-base64 = "c2VjcmV0"
"#;

#[test]
fn s3_storage_with_attic_or_kebab_credentials_and_local_staging() {
    for (id, secret) in [
        ("access-key-id", "secret-access-key"),
        ("access_key_id", "secret_access_key"),
    ] {
        let text = format!(
            r#"{S3_BASE}
[storage]
type = "s3"
bucket = "nix"
region = "eu-central-1"
endpoint = "http://127.0.0.1:8333"
prefix = "larder/"
[storage.credentials]
{id} = "AKIDEXAMPLE"
{secret} = "wJalrXUtnFEMI"
[staging.storage]
type = "local"
path = "/var/lib/larder/staging"
"#
        );
        let c = Config::parse_toml(&text).unwrap();
        c.validate().unwrap();
        let StorageConfig::S3(s3) = &c.storage.backend else {
            panic!("not s3: {:?}", c.storage)
        };
        assert_eq!(s3.bucket, "nix");
        assert_eq!(s3.prefix(), Some("larder"));
        assert!(s3.path_style(), "an endpoint defaults to path style");
        assert_eq!(s3.max_requests, 64);
        let creds = s3.credentials.as_ref().unwrap();
        assert_eq!(creds.secret_access_key.expose(), "wJalrXUtnFEMI");
        let debug = format!("{c:?}");
        assert!(!debug.contains("wJalrXUtnFEMI") && !debug.contains("AKIDEXAMPLE"));
        assert!(matches!(
            c.staging.storage,
            Some(StorageConfig::Local { .. })
        ));
    }
}

#[test]
fn s3_defaults_and_problems() {
    let aws = format!("{S3_BASE}\n[storage]\ntype = \"s3\"\nbucket = \"nix\"\n");
    let c = Config::parse_toml(&aws).unwrap();
    c.validate().unwrap();
    let StorageConfig::S3(s3) = &c.storage.backend else {
        panic!()
    };
    assert!(!s3.path_style() && s3.credentials.is_none() && s3.prefix().is_none());

    let typo = format!("{aws}buckett = \"x\"\n");
    let err = Config::parse_toml(&typo).unwrap_err().to_string();
    assert!(err.contains("buckett"), "{err}");

    let bad = format!(
        "{S3_BASE}\n[storage]\ntype = \"s3\"\nbucket = \"\"\nendpoint = \"127.0.0.1:8333\"\nprefix = \"a b\"\nmax-requests = 0\n[staging]\npath = \"/x\"\n[staging.storage]\ntype = \"local\"\npath = \"/y\"\n"
    );
    let err = Config::parse_toml(&bad)
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    for needle in [
        "storage.bucket",
        "storage.endpoint",
        "storage.prefix",
        "storage.max-requests",
        "not both",
    ] {
        assert!(err.contains(needle), "{needle} in {err}");
    }
}

#[test]
fn pack_size_sits_beside_the_backend_keys() {
    let c = Config::parse_toml(MINIMAL).unwrap();
    assert_eq!(c.storage.pack_size, DEFAULT_PACK_SIZE);
    let with = MINIMAL.replace("[storage]\n", "[storage]\npack-size = 8388608\n");
    let c = Config::parse_toml(&with).unwrap();
    c.validate().unwrap();
    assert_eq!(c.storage.pack_size, 8 * 1024 * 1024);
    assert!(matches!(c.storage.backend, StorageConfig::Local { .. }));
    let legacy = MINIMAL.replace("[storage]\n", "[storage]\npack-size = 0\n");
    Config::parse_toml(&legacy).unwrap().validate().unwrap();
    let tiny = MINIMAL.replace("[storage]\n", "[storage]\npack-size = 1000\n");
    let err = Config::parse_toml(&tiny)
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("storage.pack-size"), "{err}");
    assert_eq!(c.storage.compaction_threshold, 0.5);
    let never = MINIMAL.replace("[storage]\n", "[storage]\ncompaction-threshold = 0\n");
    Config::parse_toml(&never).unwrap().validate().unwrap();
    let always = MINIMAL.replace("[storage]\n", "[storage]\ncompaction-threshold = 1.0\n");
    let err = Config::parse_toml(&always)
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("storage.compaction-threshold"), "{err}");
    // The backend's own keys stay strict beside it.
    let typo = MINIMAL.replace("[storage]\n", "[storage]\npack-size = 0\npaht = \"/x\"\n");
    let err = Config::parse_toml(&typo).unwrap_err().to_string();
    assert!(err.contains("paht"), "{err}");
}

#[test]
fn worker_metrics_listen_is_off_by_default_and_needs_its_own_port() {
    let c = Config::parse_toml(MINIMAL).unwrap();
    assert_eq!(c.worker.metrics_listen, None);
    let text = format!("{MINIMAL}\n[worker]\nmetrics-listen = \"127.0.0.1:9101\"\n");
    let c = Config::parse_toml(&text).unwrap();
    c.validate().unwrap();
    assert_eq!(
        c.worker.metrics_listen,
        Some("127.0.0.1:9101".parse().unwrap())
    );
    for bad in ["127.0.0.1:0", "127.0.0.1:8080"] {
        let text = format!("{MINIMAL}\n[worker]\nmetrics-listen = \"{bad}\"\n");
        match Config::parse_toml(&text).unwrap().validate() {
            Err(ConfigError::Invalid(p)) => {
                assert_eq!(p.len(), 1, "{p:?}");
                assert!(p[0].starts_with("worker.metrics-listen"), "{p:?}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn oidc_policies_parse_and_validate() {
    let policy = r#"
[oidc]
jwks-min-refresh = "1m"
[[oidc.policy]]
name = "infra-main"
issuer = "https://token.actions.githubusercontent.com"
audience = "https://cache.example.com"
claims = { repository = "snyssen/infra", ref = ["refs/heads/main", "refs/tags/v*"] }
pull = ["snyssen-*"]
push = ["snyssen-*"]
"#;
    let c = Config::parse_toml(&format!("{MINIMAL}{policy}")).unwrap();
    c.validate().unwrap();
    assert_eq!(c.oidc.jwks_min_refresh.as_secs(), 60);
    let policies = c.oidc.trust_policies();
    assert_eq!(policies[0].max_validity.as_secs(), 3600);
    assert_eq!(
        serde_json::to_string(&policies[0].caches).unwrap(),
        r#"{"snyssen-*":{"r":1,"w":1}}"#
    );
    assert_eq!(
        Config::parse_toml(MINIMAL)
            .unwrap()
            .oidc
            .jwks_min_refresh
            .as_secs(),
        30
    );

    // Unknown keys name themselves; names are unique; problems are listed.
    let typo = format!("{MINIMAL}{policy}claim = {{ a = \"b\" }}\n");
    let err = Config::parse_toml(&typo).unwrap_err().to_string();
    assert!(err.contains("claim"), "{err}");
    let twice = format!("{MINIMAL}{policy}{}", &policy[policy.find("[[").unwrap()..]);
    let err = Config::parse_toml(&twice).unwrap().validate().unwrap_err();
    assert!(err.to_string().contains("used twice"), "{err}");
    let http = policy.replace("https://token", "http://token");
    let err = Config::parse_toml(&format!("{MINIMAL}{http}"))
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("oidc.policy[0].issuer"), "{err}");
}
