//! `larder-admin -f CONFIG <command>`: the operator CLI.

mod audit;
mod cache_key;
mod grants;
mod import_attic;
mod maintenance;
mod make_token;
mod oidc;
mod tokens;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use larder_server::config_check::{Needs, check};
use larder_shared::bootstrap;
use larder_shared::config::Config;
use larder_shared::db::Db;

/// Larder operator commands.
#[derive(Debug, Parser)]
#[command(name = "larder-admin", version)]
struct Args {
    /// Server config file (else $LARDER_CONFIG).
    #[arg(short = 'f', long = "config", env = "LARDER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Load and check the config (file, environment, secret files, keys), print a summary and exit without running the command.
    #[arg(long, global = true)]
    check_config: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mint a token (same flags as atticadm make-token); it is recorded.
    MakeToken(make_token::MakeToken),
    /// Revoke one token (--jti) or every token of a subject issued until now (--sub).
    RevokeToken(tokens::RevokeToken),
    /// List the tokens minted by larder-admin, with their status and last use.
    ListTokens,
    /// Print the audit trail (pushes, deletes, caches, pins, tokens, GC), oldest first.
    Audit(audit::Audit),
    /// Show one path of a cache, with who pushed it.
    PathInfo(audit::PathInfo),
    /// Run garbage collection now and print what it freed.
    Gc {
        /// Delete nothing: print each path that would expire, with why, and a summary.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: as JSON.
        #[arg(long, requires = "dry_run")]
        json: bool,
    },
    /// Print storage statistics, global and per cache.
    Stats {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reconcile storage with the database (exit status 1 if anything is wrong).
    Verify(maintenance::Verify),
    /// Move chunks stored one per object (before packs) into packs, online.
    Repack {
        /// Also recompress every pack below `[compression] archive-level`
        /// now, however recently written (GC otherwise does it to packs
        /// older than `archive-after`, a budget per pass).
        #[arg(long)]
        archive: bool,
    },
    /// Import caches, paths and NARs from an Attic deployment (read-only on Attic's side).
    ImportAttic(import_attic::ImportAttic),
    /// Apply database migrations (and seal plain signing keys) and exit: the compose stack's one-shot service.
    Migrate,
    /// Give a cache a new signing key: a key file on the server, or a fresh sealed one.
    CacheKey(cache_key::CacheKey),
    /// Trust policies for CI identity tokens (OIDC): add, list, remove.
    #[command(subcommand)]
    Oidc(oidc::Oidc),
}

/// Opens the database (applying migrations, so a fresh install works).
pub async fn open_db(config: &Config) -> anyhow::Result<Db> {
    let db = bootstrap::open_db(config, 2)
        .await
        .context("connecting to the database")?;
    db.migrate().await.context("applying migrations")?;
    bootstrap::prepare_signing_keys(config, &db)
        .await
        .context("sealing signing keys")?;
    Ok(db)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.check_config {
        let summary = check(args.config.as_deref(), Needs::Nothing)?;
        println!("{summary}");
        return Ok(());
    }
    let path = args
        .config
        .ok_or_else(|| anyhow::anyhow!("no config: pass -f CONFIG or set LARDER_CONFIG"))?;
    let config = Config::load_file(&path)?;
    match args.command {
        Command::MakeToken(cmd) => cmd.run(&config).await,
        Command::RevokeToken(cmd) => cmd.run(&config).await,
        Command::ListTokens => tokens::list(&config).await,
        Command::Audit(cmd) => cmd.run(&config).await,
        Command::PathInfo(cmd) => cmd.run(&config).await,
        Command::Gc { dry_run, json } => maintenance::run_gc(&config, dry_run, json).await,
        Command::Stats { json } => maintenance::run_stats(&config, json).await,
        Command::Repack { archive } => maintenance::run_repack(&config, archive).await,
        Command::CacheKey(cmd) => cmd.run(&config).await,
        Command::Oidc(cmd) => cmd.run(&config).await,
        Command::Migrate => {
            open_db(&config).await?;
            println!("database migrated");
            Ok(())
        }
        Command::ImportAttic(cmd) => {
            if !cmd.run(&config).await? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Verify(cmd) => {
            if !cmd.run(&config).await? {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
