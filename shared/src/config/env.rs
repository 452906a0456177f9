//! The environment variables Larder reads, and secrets read from files.
//!
//! Every secret variable `X` may instead be given as `X_FILE`, naming a file
//! whose content is the value (one trailing newline dropped): the convention
//! of Docker's and Kubernetes' mounted secrets (`/run/secrets/…`), so no
//! secret needs to sit in a compose file or a process environment. Giving
//! both `X` and `X_FILE` is an error rather than a silent precedence.
//!
//! The file's mode is not checked (unlike `[signing] key-encryption-key-file`):
//! mounted secrets are often 0444 inside a single-purpose container, and
//! refusing them would push operators back to plain variables.

use std::path::PathBuf;

use super::ConfigError;

/// Suffix naming the file form of a secret variable.
pub const FILE_SUFFIX: &str = "_FILE";

/// One environment variable Larder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvVar {
    /// Its name.
    pub name: &'static str,
    /// A secret: `<name>_FILE` is accepted too.
    pub secret: bool,
}

const fn plain(name: &'static str) -> EnvVar {
    EnvVar {
        name,
        secret: false,
    }
}

const fn secret(name: &'static str) -> EnvVar {
    EnvVar { name, secret: true }
}

/// `AWS_ACCESS_KEY_ID`: with the secret key, static S3 credentials.
pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// `AWS_SECRET_ACCESS_KEY`.
pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// `AWS_SESSION_TOKEN`, for temporary credentials.
pub const AWS_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

/// The variables a Larder server binary reads (docs/protocol.md "Config"):
/// the config loader's overrides, the binaries' own (`LARDER_CONFIG`,
/// `LARDER_DATA_DIR`, `LARDER_LOG`), and the usual `AWS_*` variables the S3
/// client reads when `[storage.credentials]` is absent (it knows more; only
/// the credentials have a `_FILE` form). `--check-config` refuses a
/// `LARDER_*` variable not listed here, since a typo would otherwise be
/// ignored silently.
pub const ENV_VARS: &[EnvVar] = &[
    plain("LARDER_CONFIG"),
    plain("LARDER_DATA_DIR"),
    plain("LARDER_LOG"),
    plain("LARDER_LISTEN"),
    secret("LARDER_DATABASE_URL"),
    secret("LARDER_SERVER_TOKEN_RS256_SECRET_BASE64"),
    secret("LARDER_SERVER_TOKEN_RS256_PUBKEY_BASE64"),
    secret("LARDER_SERVER_TOKEN_HS256_SECRET_BASE64"),
    secret(crate::signing_keys::KEK_ENV),
    secret(AWS_ACCESS_KEY_ID),
    secret(AWS_SECRET_ACCESS_KEY),
    secret(AWS_SESSION_TOKEN),
    plain("AWS_REGION"),
    plain("AWS_DEFAULT_REGION"),
    plain("AWS_ENDPOINT"),
    plain("AWS_ENDPOINT_URL"),
    plain("AWS_ALLOW_HTTP"),
    plain("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
    plain("AWS_WEB_IDENTITY_TOKEN_FILE"),
    plain("AWS_ROLE_ARN"),
];

/// Whether `name` is a variable Larder reads (a secret's `_FILE` form included).
pub fn is_known(name: &str) -> bool {
    ENV_VARS.iter().any(|v| {
        v.name == name
            || (v.secret
                && name
                    .strip_suffix(FILE_SUFFIX)
                    .is_some_and(|base| base == v.name))
    })
}

/// `LARDER_*` variables in `vars` that Larder does not read, sorted.
pub fn unknown_larder_vars<'a>(vars: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut unknown: Vec<String> = vars
        .into_iter()
        .filter(|k| k.starts_with("LARDER_") && !is_known(k))
        .map(str::to_owned)
        .collect();
    unknown.sort();
    unknown
}

/// The value of secret variable `var`: from `var` itself, or read from the
/// file `var_FILE` names. Both set is an error.
pub fn secret_value(
    var: &'static str,
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, ConfigError> {
    let file_var = format!("{var}{FILE_SUFFIX}");
    match (get(var), get(&file_var)) {
        (Some(_), Some(_)) => Err(ConfigError::Env {
            var,
            message: format!("set {var} or {file_var}, not both"),
        }),
        (Some(value), None) => Ok(Some(value)),
        (None, Some(path)) => read_secret_file(var, PathBuf::from(path)).map(Some),
        (None, None) => Ok(None),
    }
}

/// Reads a secret file, dropping one trailing newline (`echo` and editors
/// add one; no secret Larder reads ends in one).
fn read_secret_file(var: &'static str, path: PathBuf) -> Result<String, ConfigError> {
    match std::fs::read_to_string(&path) {
        Ok(mut text) => {
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            Ok(text)
        }
        Err(source) => Err(ConfigError::SecretFile { var, path, source }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::{Config, StorageConfig};
    use super::*;

    const S3: &str = r#"
[database]
url = "postgres://larder@postgres/larder"
[storage]
type = "s3"
bucket = "larder"
endpoint = "http://s3:8333"
[staging.storage]
type = "s3"
bucket = "larder-staging"
endpoint = "http://s3:8333"
[jwt.signing]
token-hs256-secret-base64 = "c2VjcmV0"
"#;

    fn env(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn secret_file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn secrets_come_from_files_without_their_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let url = secret_file(&dir, "url", "postgres://larder:pw@db/larder\n");
        let rsa = secret_file(&dir, "rsa", "UlNB\r\n");
        let kek = secret_file(&dir, "kek", "a2V5");
        let mut c = Config::parse_toml(S3).unwrap();
        c.apply_env(env(&[
            ("LARDER_DATABASE_URL_FILE", url),
            ("LARDER_SERVER_TOKEN_RS256_SECRET_BASE64_FILE", rsa),
            ("LARDER_SIGNING_KEK_FILE", kek),
        ]))
        .unwrap();
        assert_eq!(c.database.url.expose(), "postgres://larder:pw@db/larder");
        let signing = &c.jwt.signing;
        assert_eq!(
            signing.token_rs256_secret_base64.as_ref().unwrap().expose(),
            "UlNB"
        );
        assert!(signing.token_hs256_secret_base64.is_none());
        let kek = c.signing.key_encryption_key.as_ref().unwrap();
        assert_eq!(kek.expose(), "a2V5");
        c.validate().unwrap();
    }

    #[test]
    fn a_secret_and_its_file_together_or_a_missing_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let url = secret_file(&dir, "url", "postgres://x@db/larder");
        let mut c = Config::parse_toml(S3).unwrap();
        let both = c.apply_env(env(&[
            ("LARDER_DATABASE_URL", "postgres://y@db/larder".into()),
            ("LARDER_DATABASE_URL_FILE", url),
        ]));
        match both {
            Err(ConfigError::Env { var, message }) => {
                assert_eq!(var, "LARDER_DATABASE_URL");
                assert!(message.contains("not both"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let missing = dir.path().join("absent").display().to_string();
        let err = c
            .apply_env(env(&[("LARDER_SIGNING_KEK_FILE", missing.clone())]))
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::SecretFile {
                var: "LARDER_SIGNING_KEK",
                ..
            }
        ));
        let shown = err.to_string();
        assert!(
            shown.contains("LARDER_SIGNING_KEK_FILE") && shown.contains(&missing),
            "{shown}"
        );
    }

    #[test]
    fn aws_credential_files_become_every_s3_backends_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let id = secret_file(&dir, "id", "AKIDEXAMPLE\n");
        let key = secret_file(&dir, "key", "wJalrXUtnFEMI\n");
        let mut c = Config::parse_toml(S3).unwrap();
        c.apply_env(env(&[
            ("AWS_ACCESS_KEY_ID_FILE", id.clone()),
            ("AWS_SECRET_ACCESS_KEY_FILE", key),
        ]))
        .unwrap();
        let staging = c.staging.storage.as_ref().unwrap();
        for backend in [&c.storage.backend, staging] {
            let StorageConfig::S3(s3) = backend else {
                panic!("not s3")
            };
            let creds = s3.credentials.as_ref().unwrap();
            assert_eq!(creds.access_key_id.expose(), "AKIDEXAMPLE");
            assert_eq!(creds.secret_access_key.expose(), "wJalrXUtnFEMI");
            assert!(creds.session_token.is_none());
        }
        assert!(!format!("{c:?}").contains("wJalrXUtnFEMI"));
        // Plain variables alone are left to the S3 client; half a pair is an error.
        let mut plain = Config::parse_toml(S3).unwrap();
        plain
            .apply_env(env(&[("AWS_ACCESS_KEY_ID", "AKID".into())]))
            .unwrap();
        let StorageConfig::S3(s3) = &plain.storage.backend else {
            panic!("not s3")
        };
        assert!(s3.credentials.is_none());
        let half = plain.apply_env(env(&[("AWS_ACCESS_KEY_ID_FILE", id)]));
        assert!(matches!(half, Err(ConfigError::Env { .. })), "{half:?}");
    }

    #[test]
    fn only_unknown_larder_variables_are_reported() {
        assert!(is_known("LARDER_DATABASE_URL_FILE"));
        assert!(is_known("LARDER_LOG"));
        assert!(!is_known("LARDER_LOG_FILE"), "not a secret");
        let unknown = unknown_larder_vars([
            "PATH",
            "LARDER_DATABASE_URL",
            "LARDER_DATABSE_URL",
            "AWS_PROFILE",
            "LARDER_SIGNING_KEK_FILE",
        ]);
        assert_eq!(unknown, ["LARDER_DATABSE_URL"]);
    }
}
