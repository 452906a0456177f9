//! The client's configuration: named servers and which one is the default.
//!
//! It lives at `$XDG_CONFIG_HOME/larder/config.toml` (`~/.config` when
//! `XDG_CONFIG_HOME` is unset), and is written with mode 0600 because it
//! holds tokens. The shape is Attic's client config, so a user can copy
//! theirs over:
//!
//! ```toml
//! default-server = "local"
//!
//! [servers.local]
//! endpoint = "http://127.0.0.1:8080"
//! token = "eyJ…"          # or: token-file = "/run/secrets/larder"
//! ```
//!
//! A server without a token falls back to `$LARDER_TOKEN`, then
//! `$ATTIC_TOKEN` (docs/protocol.md), so CI can keep the token out of files.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files::{self, FileError};
/// Environment variables consulted, in order, when a server has no token.
pub const TOKEN_ENV_VARS: [&str; 2] = ["LARDER_TOKEN", "ATTIC_TOKEN"];

/// Why the configuration could not be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither `$XDG_CONFIG_HOME` nor `$HOME` is set to an absolute path.
    #[error("cannot locate the configuration directory: set XDG_CONFIG_HOME or HOME")]
    NoConfigDir,
    /// Reading or writing a file failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The file is not valid TOML of the expected shape.
    #[error("invalid configuration {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said.
        source: Box<toml::de::Error>,
    },
    /// Serialising the configuration failed (a bug).
    #[error("cannot serialise the configuration: {0}")]
    Serialize(#[from] toml::ser::Error),
    /// A server name that cannot be used in `SERVER:CACHE`.
    #[error("invalid server name {0:?}: it must be non-empty, without `:` or whitespace")]
    InvalidServerName(String),
    /// An endpoint that is not an http(s) URL with a host.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// What was given.
        endpoint: String,
        /// Why it was refused.
        reason: String,
    },
    /// `SERVER:` names a server that was never logged in to.
    #[error("no server named {0:?} in the configuration; run `larder login {0} ENDPOINT TOKEN`")]
    NoSuchServer(String),
    /// No `SERVER:` prefix and no default server.
    #[error(
        "no default server; run `larder login NAME ENDPOINT TOKEN --set-default` or write SERVER:CACHE"
    )]
    NoDefaultServer,
}

/// The whole file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Server used when a command names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_server: Option<String>,
    /// Servers by the name given to `larder login`.
    #[serde(default)]
    pub servers: BTreeMap<String, ServerConfig>,
}

/// One server. `Debug` hides the token so it never reaches a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServerConfig {
    /// Base URL, e.g. `https://cache.example.com`; the API is below `/_api/v1`.
    pub endpoint: String,
    /// The JWT, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A file holding the JWT (Attic's `token-file`), read at each use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .finish()
    }
}

impl ServerConfig {
    /// The token to send: the configured one, else the first non-empty
    /// variable of [`TOKEN_ENV_VARS`] as `env` reports it. `env` is a
    /// parameter so tests need not touch the process environment.
    pub fn resolve_token(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<String>, ConfigError> {
        if let Some(token) = self
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            return Ok(Some(token.to_owned()));
        }
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path).map_err(|source| FileError {
                action: "reading token file",
                path: path.clone(),
                source,
            })?;
            let token = text.trim();
            if !token.is_empty() {
                return Ok(Some(token.to_owned()));
            }
        }
        Ok(TOKEN_ENV_VARS
            .iter()
            .filter_map(|var| env(var))
            .map(|t| t.trim().to_owned())
            .find(|t| !t.is_empty()))
    }
}

/// The configuration directory: `$XDG_CONFIG_HOME`, else `$HOME/.config`.
/// Relative values are ignored, as the XDG specification says.
pub fn config_home() -> Result<PathBuf, ConfigError> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    absolute("XDG_CONFIG_HOME")
        .or_else(|| absolute("HOME").map(|h| h.join(".config")))
        .ok_or(ConfigError::NoConfigDir)
}

/// `$XDG_CONFIG_HOME/larder/config.toml`.
pub fn default_path() -> Result<PathBuf, ConfigError> {
    Ok(config_home()?.join("larder").join("config.toml"))
}

/// Checks a server name: it is the part before `:` in `SERVER:CACHE`.
pub fn validate_server_name(name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.contains(':') || name.contains(char::is_whitespace) {
        return Err(ConfigError::InvalidServerName(name.to_owned()));
    }
    Ok(())
}

/// Checks an endpoint: an `http` or `https` URL with a host, no query.
pub fn validate_endpoint(endpoint: &str) -> Result<(), ConfigError> {
    let invalid = |reason: &str| ConfigError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let url = reqwest::Url::parse(endpoint).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it must not have a query or fragment"));
    }
    Ok(())
}

impl Config {
    /// Reads `path`; a missing file is an empty configuration (first login).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = files::read_or_empty(path)?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Writes `path` with mode 0600, atomically (temporary file, then
    /// rename), so a crash never leaves a half-written file or a moment
    /// where the tokens are readable by others.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(self)?;
        Ok(files::write_private(path, text.as_bytes())?)
    }

    /// Records a login. Returns whether the server became the default:
    /// with `set_default`, or when there was no default yet (first login).
    /// Without a token the stored one is dropped, as Attic does, so the
    /// environment variables take over.
    pub fn login(
        &mut self,
        name: &str,
        endpoint: &str,
        token: Option<String>,
        set_default: bool,
    ) -> Result<bool, ConfigError> {
        validate_server_name(name)?;
        validate_endpoint(endpoint)?;
        self.servers.insert(
            name.to_owned(),
            ServerConfig {
                endpoint: endpoint.to_owned(),
                token,
                token_file: None,
            },
        );
        let default_is_valid = self
            .default_server
            .as_ref()
            .is_some_and(|d| self.servers.contains_key(d));
        if set_default || !default_is_valid {
            self.default_server = Some(name.to_owned());
            return Ok(true);
        }
        Ok(false)
    }

    /// The server a command talks to: `name` if given, else the default.
    pub fn server(&self, name: Option<&str>) -> Result<(&str, &ServerConfig), ConfigError> {
        let name = match name {
            Some(n) => n,
            None => self
                .default_server
                .as_deref()
                .ok_or(ConfigError::NoDefaultServer)?,
        };
        self.servers
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| ConfigError::NoSuchServer(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt as _;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("larder").join("config.toml");
        let mut config = Config::default();
        assert!(
            config
                .login("local", "http://127.0.0.1:8080", Some("tok".into()), false)
                .unwrap()
        );
        config.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Config::load(&path).unwrap(), config);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("default-server = \"local\""), "{text}");
        assert!(text.contains("[servers.local]"), "{text}");
    }

    #[test]
    fn save_tightens_an_existing_world_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(&path, "").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        Config::default().save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn missing_file_is_empty_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::load(&dir.path().join("nope.toml")).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn reads_attic_style_file_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(
            &path,
            "default-server = \"a\"\n[servers.a]\nendpoint = \"https://x.example\"\ntoken = \"t\"\n",
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        let (name, server) = config.server(None).unwrap();
        assert_eq!(name, "a");
        assert_eq!(server.endpoint, "https://x.example");
        fs::write(&path, "bogus = 1\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn first_login_becomes_default_later_ones_only_when_asked() {
        let mut c = Config::default();
        assert!(c.login("a", "http://a", None, false).unwrap());
        assert!(!c.login("b", "http://b", None, false).unwrap());
        assert_eq!(c.default_server.as_deref(), Some("a"));
        assert!(c.login("b", "http://b", None, true).unwrap());
        assert_eq!(c.default_server.as_deref(), Some("b"));
        assert_eq!(c.server(Some("a")).unwrap().1.endpoint, "http://a");
        assert!(matches!(
            c.server(Some("zz")),
            Err(ConfigError::NoSuchServer(_))
        ));
    }

    #[test]
    fn login_validates_name_and_endpoint() {
        let mut c = Config::default();
        assert!(c.login("a:b", "http://a", None, false).is_err());
        assert!(c.login("", "http://a", None, false).is_err());
        assert!(c.login("a", "ftp://a", None, false).is_err());
        assert!(c.login("a", "not a url", None, false).is_err());
        assert!(c.login("a", "http://a/?q=1", None, false).is_err());
        assert!(
            c.login("a", "https://a.example/prefix/", None, false)
                .is_ok()
        );
    }

    #[test]
    fn no_default_server_is_an_error() {
        assert!(matches!(
            Config::default().server(None),
            Err(ConfigError::NoDefaultServer)
        ));
    }

    #[test]
    fn token_precedence_config_then_larder_then_attic() {
        let mut server = ServerConfig {
            endpoint: "http://a".into(),
            token: Some("from-config".into()),
            token_file: None,
        };
        let env = |var: &str| match var {
            "LARDER_TOKEN" => Some("from-larder".to_owned()),
            "ATTIC_TOKEN" => Some("from-attic".to_owned()),
            _ => None,
        };
        assert_eq!(
            server.resolve_token(env).unwrap().as_deref(),
            Some("from-config")
        );
        server.token = None;
        assert_eq!(
            server.resolve_token(env).unwrap().as_deref(),
            Some("from-larder")
        );
        let attic_only = |var: &str| (var == "ATTIC_TOKEN").then(|| "from-attic".to_owned());
        assert_eq!(
            server.resolve_token(attic_only).unwrap().as_deref(),
            Some("from-attic")
        );
        assert_eq!(server.resolve_token(no_env).unwrap(), None);
    }

    #[test]
    fn token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tok");
        fs::write(&file, "secret\n").unwrap();
        let server = ServerConfig {
            endpoint: "http://a".into(),
            token: None,
            token_file: Some(file),
        };
        assert_eq!(
            server.resolve_token(no_env).unwrap().as_deref(),
            Some("secret")
        );
    }

    #[test]
    fn debug_hides_the_token() {
        let server = ServerConfig {
            endpoint: "http://a".into(),
            token: Some("very-secret".into()),
            token_file: None,
        };
        assert!(!format!("{server:?}").contains("very-secret"));
    }
}
