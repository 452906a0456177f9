//! The command line, as clap parses it (docs/protocol.md, "`larder`").

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::cache_ref::CacheRef;
pub use crate::queue::args::QueueCommand;
pub use crate::watch_store::args::WatchStoreArgs;

/// Larder's client: log in, configure Nix, push closures, manage caches.
#[derive(Debug, Parser)]
#[command(name = "larder", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Save a server's endpoint and token in the configuration.
    Login(LoginArgs),
    /// Configure Nix to substitute from a cache.
    Use(UseArgs),
    /// Push store paths and their closures to a cache.
    Push(PushArgs),
    /// Create, configure, inspect, list or destroy caches.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Pin a path: it and its closure in the cache never expire.
    Pin(PinArgs),
    /// Remove a pin.
    Unpin(UnpinArgs),
    /// List a cache's pins.
    Pins(PinsArgs),
    /// Remove a path from a cache now (needs the `d` permission).
    Delete(DeleteArgs),
    /// Push new store paths as Nix registers them, until SIGINT or SIGTERM.
    WatchStore(WatchStoreArgs),
    /// A durable local queue of paths to push (for Nix's post-build-hook).
    #[command(subcommand)]
    Queue(QueueCommand),
}

/// `larder login`.
#[derive(Debug, Args)]
#[command(
    after_help = "The configuration is $XDG_CONFIG_HOME/larder/config.toml (mode 0600). \
Without TOKEN, commands use $LARDER_TOKEN, then $ATTIC_TOKEN. The first server logged in to \
becomes the default. With --oidc (in CI), the token is minted by the server for this job's \
identity and lives at most as long as the server's trust policy allows."
)]
pub struct LoginArgs {
    /// A name for the server, used as `NAME:CACHE`.
    pub name: String,
    /// The server's URL, e.g. https://cache.example.com.
    pub endpoint: String,
    /// The token (a JWT from `larder-admin make-token`).
    #[arg(conflicts_with = "oidc")]
    pub token: Option<String>,
    /// Make this the default server.
    #[arg(long)]
    pub set_default: bool,
    /// In CI: exchange the job's OIDC identity token for a short-lived
    /// token (GitHub Actions: from the runner, with `permissions: id-token:
    /// write`; else --id-token-file, --id-token-env or $LARDER_OIDC_TOKEN).
    #[arg(long)]
    pub oidc: bool,
    /// The audience to request the ID token for on GitHub Actions (default: ENDPOINT).
    #[arg(long, requires = "oidc")]
    pub audience: Option<String>,
    /// Read the ID token from this file.
    #[arg(long, requires = "oidc", conflicts_with = "id_token_env")]
    pub id_token_file: Option<std::path::PathBuf>,
    /// Read the ID token from this environment variable (GitLab: the `id_tokens` entry's name).
    #[arg(long, requires = "oidc")]
    pub id_token_env: Option<String>,
}

/// `larder use`.
#[derive(Debug, Args)]
#[command(after_help = "Files written:
  nix.conf  $XDG_CONFIG_HOME/nix/nix.conf, or /etc/nix/nix.conf with --system;
            gets `extra-substituters`, `extra-trusted-public-keys` and, for a
            private cache, `netrc-file`. Running `larder use` again adds nothing.
  netrc     for a private cache: the file nix.conf's `netrc-file` names, else
            $XDG_CONFIG_HOME/nix/netrc (/etc/nix/netrc with --system), mode 0600;
            gets `machine HOST password TOKEN`.

Environment:
  LARDER_NIX_CONF  edit this nix.conf instead
  LARDER_NETRC     write this netrc instead (and point netrc-file at it)

Nix reads substituters from a user's nix.conf only for trusted users
(`trusted-users` in /etc/nix/nix.conf); otherwise use --system as root.")]
pub struct UseArgs {
    /// The cache, `[SERVER:]CACHE`.
    pub cache: CacheRef,
    /// Edit the system-wide /etc/nix/nix.conf (run as root).
    #[arg(long)]
    pub system: bool,
}

/// `larder push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The cache, `[SERVER:]CACHE`.
    pub cache: CacheRef,
    /// Store paths, or links to them such as ./result.
    #[arg(required_unless_present = "stdin")]
    pub paths: Vec<PathBuf>,
    /// Push only the paths given, not their closures.
    #[arg(long)]
    pub no_closure: bool,
    /// Also read paths from stdin, one or more per line, pushing as they come.
    #[arg(long)]
    pub stdin: bool,
    /// Uploads in parallel.
    #[arg(short = 'j', long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// Also push paths signed by one of the cache's upstream keys.
    #[arg(long)]
    pub ignore_upstream_cache_filter: bool,
    /// Upload the paths even if the cache has them, replacing any it holds
    /// with a different NAR (needs the d permission; otherwise the first
    /// push wins and a different NAR is refused). With the closure unless
    /// --no-closure.
    #[arg(long)]
    pub replace: bool,
    /// Upload whole NARs, as to an Attic server, even when the server takes
    /// chunk-level push (which sends only the chunks the cache lacks).
    #[arg(long)]
    pub whole_nars: bool,
}

/// `larder cache …`.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Create a cache.
    Create(CreateArgs),
    /// Change a cache's settings; only the options given are changed.
    Configure(ConfigureArgs),
    /// Show a cache's settings, public key and substituter URL.
    Info(CacheArg),
    /// Destroy a cache and everything in it.
    Destroy(DestroyArgs),
    /// List the caches the token has any permission on.
    List(ListArgs),
}

/// A cache argument alone.
#[derive(Debug, Args)]
pub struct CacheArg {
    /// The cache, `[SERVER:]CACHE`.
    pub cache: CacheRef,
}

/// `larder cache create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The cache, `[SERVER:]CACHE`.
    pub cache: CacheRef,
    /// Let anyone pull (default: only token holders with `r`).
    #[arg(long)]
    pub public: bool,
    /// Substituter priority; lower is preferred (cache.nixos.org is 40).
    #[arg(long, default_value_t = 41)]
    pub priority: i32,
    /// Key names whose signed paths are not pushed (repeatable;
    /// default: cache.nixos.org-1).
    #[arg(long = "upstream-cache-key-name", value_name = "NAME")]
    pub upstream_cache_key_names: Vec<String>,
    /// The store directory of the paths the cache will hold.
    #[arg(long, default_value = "/nix/store", value_name = "DIR")]
    pub store_dir: String,
    /// Sign with this key (`name:base64`, as `nix-store --generate-binary-cache-key`
    /// writes it) instead of a fresh one.
    #[arg(long, value_name = "FILE")]
    pub keypair_file: Option<PathBuf>,
}

/// `larder cache configure`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("visibility").args(["public", "private"])))]
#[command(group(ArgGroup::new("retention").args(["retention_period", "reset_retention_period"])))]
pub struct ConfigureArgs {
    /// The cache, `[SERVER:]CACHE`.
    pub cache: CacheRef,
    /// Let anyone pull.
    #[arg(long)]
    pub public: bool,
    /// Only token holders with `r` may pull.
    #[arg(long)]
    pub private: bool,
    /// Substituter priority; lower is preferred.
    #[arg(long)]
    pub priority: Option<i32>,
    /// Replace the upstream key names (repeatable).
    #[arg(long = "upstream-cache-key-name", value_name = "NAME")]
    pub upstream_cache_key_names: Vec<String>,
    /// Keep unused paths this long (`30d`, `6 months`; `0` keeps forever).
    #[arg(long, value_name = "DURATION", value_parser = parse_retention)]
    pub retention_period: Option<u64>,
    /// Use the server's default retention again.
    #[arg(long)]
    pub reset_retention_period: bool,
    /// Add a fresh signing key (`<cache>-N`); the old one keeps signing for the
    /// server's rotation overlap, so hosts keep working until they `larder use` again.
    #[arg(long)]
    pub regenerate_keypair: bool,
    /// With --regenerate-keypair: the old key stops signing at once (a compromised key).
    #[arg(long, requires = "regenerate_keypair")]
    pub no_overlap: bool,
}

/// `larder cache destroy`.
#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// The cache, `[SERVER:]CACHE`.
    pub cache: CacheRef,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub no_confirm: bool,
}

/// `larder cache list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The server (default: the default server).
    pub server: Option<String>,
}

/// A retention period in seconds: a bare number of seconds, or a duration
/// such as `30d` or `6 months`.
pub fn parse_retention(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs);
    }
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|e| format!("{e} (try `30d`, `6 months` or `0` to keep forever)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn retention_durations() {
        assert_eq!(parse_retention("0"), Ok(0));
        assert_eq!(parse_retention("3600"), Ok(3600));
        assert_eq!(parse_retention("30d"), Ok(30 * 86_400));
        assert_eq!(parse_retention("1h 30m"), Ok(5400));
        assert!(parse_retention("soon").is_err());
    }

    #[test]
    fn parses_the_contract_command_lines() {
        let cli = Cli::try_parse_from([
            "larder",
            "push",
            "prod:demo",
            "/nix/store/x",
            "-j",
            "8",
            "--no-closure",
        ])
        .unwrap();
        let Command::Push(p) = cli.command else {
            panic!("not push")
        };
        assert_eq!(p.cache.to_string(), "prod:demo");
        assert_eq!(p.jobs, 8);
        assert!(p.no_closure);
        assert!(!p.replace);
        let cli = Cli::try_parse_from(["larder", "push", "demo", "/x", "--replace"]).unwrap();
        let Command::Push(p) = cli.command else {
            panic!("not push")
        };
        assert!(p.replace);
        assert!(Cli::try_parse_from(["larder", "push", "demo"]).is_err());
        assert!(Cli::try_parse_from(["larder", "push", "demo", "--stdin"]).is_ok());
        assert!(Cli::try_parse_from(["larder", "push", "demo", "/x", "-j", "0"]).is_err());
        assert!(
            Cli::try_parse_from([
                "larder",
                "cache",
                "configure",
                "demo",
                "--public",
                "--private"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "larder",
                "cache",
                "configure",
                "demo",
                "--retention-period",
                "1d",
                "--reset-retention-period"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["larder", "push", "bad name", "/x"]).is_err());
        assert!(Cli::try_parse_from(["larder", "queue", "push", "s:c", "/x", "/y"]).is_ok());
        assert!(Cli::try_parse_from(["larder", "queue", "push", "s:c"]).is_err());
        assert!(Cli::try_parse_from(["larder", "queue", "drain", "--watch"]).is_ok());
        let cli =
            Cli::try_parse_from(["larder", "watch-store", "c", "--debounce", "500ms"]).unwrap();
        let Command::WatchStore(w) = cli.command else {
            panic!("not watch-store")
        };
        assert_eq!(w.debounce, std::time::Duration::from_millis(500));
    }
}

/// `larder pin CACHE NAME PATH`.
#[derive(Debug, Args)]
pub struct PinArgs {
    /// The cache, `[SERVER:]CACHE`.
    pub cache: CacheRef,
    /// Pin name (moving an existing pin to the new path).
    pub name: String,
    /// Store path, or a link to one such as ./result.
    pub path: PathBuf,
}

/// `larder unpin CACHE NAME`.
#[derive(Debug, Args)]
pub struct UnpinArgs {
    /// The cache, `[SERVER:]CACHE`.
    pub cache: CacheRef,
    /// Pin name.
    pub name: String,
}

/// `larder pins CACHE`.
#[derive(Debug, Args)]
pub struct PinsArgs {
    /// The cache, `[SERVER:]CACHE`.
    pub cache: CacheRef,
}

/// `larder delete CACHE PATH`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The cache, `[SERVER:]CACHE`.
    pub cache: CacheRef,
    /// Store path, or a link to one such as ./result.
    pub path: PathBuf,
}
