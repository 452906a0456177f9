//! `larder use [SERVER:]CACHE`: configure the local Nix to substitute from
//! a cache.
//!
//! Adds `extra-substituters` and `extra-trusted-public-keys` to nix.conf
//! and, for a private cache, the token to a netrc file that nix.conf names
//! with `netrc-file` (stock Nix can send credentials only from a netrc).
//! Running it again changes nothing; after a key change it replaces the
//! cache's old key.

pub mod netrc;
pub mod nix_conf;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use larder_core::CacheName;
use larder_core::nix::signing::{PublicKey, SigningError};

use crate::api::{ApiClient, ApiError};
use crate::config::{self, ConfigError};
use crate::files::{self, FileError};
use nix_conf::NixConf;

/// Overrides the nix.conf to edit (tests, unusual set-ups).
pub const NIX_CONF_ENV: &str = "LARDER_NIX_CONF";
/// Overrides the netrc file to write.
pub const NETRC_ENV: &str = "LARDER_NETRC";
/// nix.conf of `--system`.
const SYSTEM_NIX_CONF: &str = "/etc/nix/nix.conf";
/// netrc of `--system` (Nix's default `netrc-file`).
const SYSTEM_NETRC: &str = "/etc/nix/netrc";
/// Mode of a new nix.conf.
const NIX_CONF_MODE: u32 = 0o644;

/// Why the Nix configuration could not be updated.
#[derive(Debug, thiserror::Error)]
pub enum UseError {
    /// The server refused or failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The configuration directory is unknown.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Reading or writing a file failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The server's answer lacks a field Nix needs.
    #[error("the server did not return the cache's {0}")]
    Missing(&'static str),
    /// The server's public key is malformed.
    #[error("the server returned an invalid public key: {0}")]
    BadKey(#[from] SigningError),
    /// The substituter URL has no host to put in netrc.
    #[error("cannot find the host of substituter {0}")]
    NoHost(String),
    /// A private cache, and no token to give Nix.
    #[error(
        "cache {0} is private and no token is configured (larder login … TOKEN, or LARDER_TOKEN)"
    )]
    NoToken(CacheName),
    /// The file is a symlink (home-manager, NixOS): editing would replace it.
    #[error(
        "{path} is a symbolic link, probably managed by NixOS or home-manager; add these lines there instead:\n{lines}"
    )]
    Managed {
        /// The file.
        path: PathBuf,
        /// What to add.
        lines: String,
    },
}

/// Where to write.
#[derive(Debug, Clone)]
pub struct Targets {
    /// The nix.conf to edit.
    pub nix_conf: PathBuf,
    /// The netrc, if forced by `LARDER_NETRC`; else nix.conf's
    /// `netrc-file`, else [`Targets::default_netrc`].
    pub netrc_override: Option<PathBuf>,
    /// The netrc to use when nothing names one.
    pub default_netrc: PathBuf,
}

impl Targets {
    /// The user's files (`$XDG_CONFIG_HOME/nix/…`) or, with `system`,
    /// `/etc/nix/…`; `LARDER_NIX_CONF` and `LARDER_NETRC` override.
    pub fn from_env(system: bool) -> Result<Self, ConfigError> {
        let env_path = |var| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let (conf, netrc) = if system {
            (PathBuf::from(SYSTEM_NIX_CONF), PathBuf::from(SYSTEM_NETRC))
        } else {
            let dir = config::config_home()?.join("nix");
            (dir.join("nix.conf"), dir.join("netrc"))
        };
        Ok(Self {
            nix_conf: env_path(NIX_CONF_ENV).unwrap_or(conf),
            netrc_override: env_path(NETRC_ENV),
            default_netrc: netrc,
        })
    }
}

/// What `use` did, for the user.
#[derive(Debug, Default)]
pub struct Report {
    /// The substituter URL.
    pub substituter: String,
    /// The public keys trusted (every active key of the cache, newest first).
    pub public_keys: Vec<String>,
    /// The nix.conf, if it was changed.
    pub nix_conf_changed: Option<PathBuf>,
    /// The netrc, if it was changed.
    pub netrc_changed: Option<PathBuf>,
}

/// Runs `larder use`.
pub async fn run(
    api: &ApiClient,
    cache: &CacheName,
    token: Option<&str>,
    targets: &Targets,
) -> Result<Report, UseError> {
    let cfg = api.get_cache_config(cache).await?;
    let substituter = cfg
        .substituter_endpoint
        .ok_or(UseError::Missing("substituter_endpoint"))?;
    // Larder lists every active key (a rotation's overlap); Attic only one.
    let listed = match (cfg.public_keys, cfg.public_key) {
        (Some(keys), _) if !keys.is_empty() => keys,
        (_, Some(key)) => vec![key],
        _ => return Err(UseError::Missing("public_key")),
    };
    let keys = listed
        .iter()
        .map(|k| k.parse::<PublicKey>().map(|k| k.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let private = !cfg.is_public.unwrap_or(false);

    let mut conf = NixConf::parse(&files::read_or_empty(&targets.nix_conf)?);
    let mut changed = conf.add_substituter(&substituter);
    changed |= conf.add_trusted_keys(&keys);
    let mut report = Report {
        substituter: substituter.clone(),
        public_keys: keys,
        ..Report::default()
    };
    if private {
        let token = token.ok_or_else(|| UseError::NoToken(cache.clone()))?;
        let host = reqwest::Url::parse(&substituter)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .ok_or_else(|| UseError::NoHost(substituter.clone()))?;
        let netrc_path = targets
            .netrc_override
            .clone()
            .or_else(|| conf.get("netrc-file").map(PathBuf::from))
            .unwrap_or_else(|| targets.default_netrc.clone());
        let (text, netrc_changed) =
            netrc::upsert(&files::read_or_empty(&netrc_path)?, &host, token);
        if netrc_changed {
            refuse_symlink(&netrc_path, &netrc::entry(&host, "<token>"))?;
            files::write_private(&netrc_path, text.as_bytes())?;
            report.netrc_changed = Some(netrc_path.clone());
        }
        changed |= conf.set("netrc-file", &netrc_path.to_string_lossy());
    }
    if changed {
        let mut manual = format!(
            "extra-substituters = {}\nextra-trusted-public-keys = {}",
            report.substituter,
            report.public_keys.join(" ")
        );
        if let Some(netrc_file) = conf.get("netrc-file").filter(|_| private) {
            manual.push_str(&format!("\nnetrc-file = {netrc_file}"));
        }
        refuse_symlink(&targets.nix_conf, &manual)?;
        let wanted = conf.render();
        let mode = fs::metadata(&targets.nix_conf)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(NIX_CONF_MODE);
        files::write_atomic(&targets.nix_conf, wanted.as_bytes(), mode)?;
        report.nix_conf_changed = Some(targets.nix_conf.clone());
    }
    Ok(report)
}

fn refuse_symlink(path: &Path, lines: &str) -> Result<(), UseError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(UseError::Managed {
            path: path.to_owned(),
            lines: lines.to_owned(),
        }),
        _ => Ok(()),
    }
}
