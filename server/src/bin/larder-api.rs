//! `larder-api [-f CONFIG] [--listen ADDR] [--no-migrate] [--check-config]`: the HTTP server.
//! Without a config it runs the embedded default (docs/protocol.md).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use larder_server::config_check::{Needs, check};
use larder_shared::audit::Actor;
use larder_shared::config::{Config, EmbeddedDefault, default_data_dir};
use larder_shared::db::tokens::{self, TokenRecord};
use larder_shared::db::{Db, audit, unix_now};
use larder_shared::token::{CachePattern, ClaimsBuilder, Permission, TokenKey, mint};

/// Larder HTTP server.
#[derive(Debug, Parser)]
#[command(name = "larder-api", version)]
struct Args {
    /// Config file (else $LARDER_CONFIG, else the embedded default in $LARDER_DATA_DIR).
    #[arg(short = 'f', long = "config", env = "LARDER_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address, overriding the config.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Do not apply database migrations on start.
    #[arg(long)]
    no_migrate: bool,
    /// Load and check the config (file, environment, secret files, keys), print a summary and exit.
    #[arg(long)]
    check_config: bool,
}

/// Root token validity for the embedded default.
const ROOT_VALIDITY: Duration = Duration::from_secs(2 * 365 * 86400 + 86400 / 2);

/// Mints the embedded default's root token and records it, so
/// `larder-admin list-tokens` and `revoke-token` know it.
async fn root_token(config: &Config, db: &Db) -> anyhow::Result<String> {
    let key = TokenKey::from_config(&config.jwt.signing)?;
    let pattern = CachePattern::new("*")?;
    let claims = ClaimsBuilder::new("root", ROOT_VALIDITY, unix_now() as u64)
        .grant_all(&pattern, Permission::ALL)
        .build()?;
    let token = mint(&key, &claims)?;
    if let Some(record) = TokenRecord::from_claims(&claims) {
        let mut tx = db.begin().await?;
        tokens::record(tx.raw(), &record).await?;
        let event = record.mint_event()?;
        let actor = Actor::process("larder-api:first-start");
        audit::insert(tx.raw(), unix_now(), &actor, &event).await?;
        tx.commit().await?;
    }
    Ok(token)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LARDER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.check_config {
        let summary = check(args.config.as_deref(), Needs::Kek)?;
        println!("{summary}");
        return Ok(());
    }
    let (mut config, first_start) = match &args.config {
        Some(path) => (Config::load_file(path)?, None),
        None => {
            let dir = default_data_dir();
            let e = EmbeddedDefault::open_or_create(&dir)?;
            let created = e.created.then_some(e.config_path.clone());
            (e.config, created)
        }
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let config = Arc::new(config);
    let state = larder_api::server::build_state(config.clone()).await?;
    larder_api::server::prepare_db(&state, !args.no_migrate).await?;
    if let Some(path) = first_start {
        // Printed once, to stdout only: never through the log.
        let token = root_token(&config, &state.db)
            .await
            .context("minting the root token")?;
        println!(
            "Larder created its embedded default configuration in {}",
            path.display()
        );
        println!();
        println!("Root token (all permissions on every cache, valid 2 years):");
        println!("    {token}");
        println!();
        println!("Log in with:");
        println!(
            "    larder login local http://{} {token} --set-default",
            config.listen
        );
        println!();
    }
    let shutdown = CancellationToken::new();
    larder_server::shutdown::cancel_on_signal(shutdown.clone());
    larder_server::api_node::serve(state, config.listen, shutdown).await
}
