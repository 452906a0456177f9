//! `larder-worker -f CONFIG [--concurrency N] [--check-config]`: a job worker. Any number may
//! run against the same database and storage. With `[worker]
//! metrics-listen` it also serves `GET /metrics`, `/_health` and `/_ready`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use larder_server::config_check::{Needs, check};
use larder_shared::bootstrap;
use larder_shared::config::Config;
use larder_worker::Services;

/// Larder job worker: ingest, garbage collection, maintenance.
#[derive(Debug, Parser)]
#[command(name = "larder-worker", version)]
struct Args {
    /// Config file (else $LARDER_CONFIG).
    #[arg(short = 'f', long = "config", env = "LARDER_CONFIG")]
    config: PathBuf,
    /// Jobs run at once (default: `[worker] concurrency`, else 8 per core).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Load and check the config (file, environment, secret files, keys), print a summary and exit.
    #[arg(long)]
    check_config: bool,
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
        let summary = check(Some(&args.config), Needs::Nothing)?;
        println!("{summary}");
        return Ok(());
    }
    let config = Arc::new(Config::load_file(&args.config)?);
    let concurrency = args.concurrency.unwrap_or(config.worker.concurrency);
    let opened = bootstrap::open(&config, (concurrency as u32 + 4).max(8))
        .await
        .context("opening database and storage")?;
    opened.db.migrate().await.context("applying migrations")?;
    bootstrap::prepare_signing_keys(&config, &opened.db)
        .await
        .context("sealing signing keys")?;
    let shutdown = CancellationToken::new();
    // SIGTERM too: what `docker stop` and Kubernetes send before SIGKILL.
    larder_server::shutdown::cancel_on_signal(shutdown.clone());
    let probes = larder_server::worker_metrics::Probes {
        db: opened.db.clone(),
        storage: opened.storage.clone(),
    };
    let metrics = larder_server::worker_metrics::spawn(&config, probes, shutdown.clone()).await?;
    tracing::info!(concurrency, "larder-worker started");
    let svc = Services::new(config, opened.db, opened.storage, opened.staging);
    let result = larder_worker::run(svc, concurrency, shutdown.clone()).await;
    // The worker stopped (signal or error): so does its metrics endpoint.
    shutdown.cancel();
    if let Some((listen, served)) = metrics {
        served
            .await
            .context("metrics task")?
            .with_context(|| format!("serving /metrics on {listen}"))?;
    }
    result
}
