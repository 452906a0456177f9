//! `larder-admin -f CONFIG <command>`: the operator CLI.

mod make_token;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use larder_shared::config::Config;

/// Larder operator commands.
#[derive(Debug, Parser)]
#[command(name = "larder-admin", version)]
struct Args {
    /// Server config file (else $LARDER_CONFIG).
    #[arg(short = 'f', long = "config", env = "LARDER_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mint a token (same flags as atticadm make-token).
    MakeToken(make_token::MakeToken),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let path = args
        .config
        .ok_or_else(|| anyhow::anyhow!("no config: pass -f CONFIG or set LARDER_CONFIG"))?;
    let config = Config::load_file(&path)?;
    match args.command {
        Command::MakeToken(cmd) => cmd.run(&config),
    }
}
