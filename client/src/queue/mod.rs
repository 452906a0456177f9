//! `larder queue …`: a durable local queue of store paths to push.
//!
//! Nix runs its `post-build-hook` synchronously after every build, so the
//! hook must not wait for the network. `larder queue push` only resolves
//! the server's name from the configuration and checks that the arguments
//! are store paths (no network, no Nix) before appending them to
//! `$XDG_STATE_HOME/larder/queue.db` ([`store`]); it returns in
//! milliseconds. `larder queue drain` ([`drain`]), a systemd service or
//! `larder watch-store` push the queue later, with retries and backoff
//! ([`backoff`]); `larder queue status` ([`status`]) shows what is
//! pending and what failed, and `larder queue drop` removes entries that
//! should not be pushed after all.

pub mod args;
pub mod backoff;
pub mod drain;
pub mod shutdown;
pub mod status;
mod store;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use store::{Entry, Queue, QueueError, Target, unix_now};

use crate::cache_ref::CacheRef;
use crate::config::{self, Config};
use crate::nix::Nix;
use args::{DrainArgs, DropArgs, QueueCommand, QueuePushArgs};
use drain::DrainOptions;
use shutdown::Shutdown;

/// The state directory: `$XDG_STATE_HOME`, else `$HOME/.local/state`.
/// Relative values are ignored, as the XDG specification says.
pub fn state_home() -> Result<PathBuf, QueueError> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    absolute("XDG_STATE_HOME")
        .or_else(|| absolute("HOME").map(|h| h.join(".local").join("state")))
        .ok_or(QueueError::NoStateDir)
}

/// `$XDG_STATE_HOME/larder/queue.db`.
pub fn default_path() -> Result<PathBuf, QueueError> {
    Ok(state_home()?.join("larder").join("queue.db"))
}

/// Resolves `[SERVER:]CACHE` from the configuration alone: the entry keeps
/// the server's name, so a later change of default does not redirect it.
pub fn target(cache: &CacheRef) -> Result<Target, QueueError> {
    let config = Config::load(&config::default_path()?)?;
    let (server, _) = config.server(cache.server.as_deref())?;
    Ok(Target {
        server: server.to_owned(),
        cache: cache.cache.clone(),
    })
}

/// Runs a `larder queue` command.
pub async fn run(command: QueueCommand) -> Result<ExitCode, QueueError> {
    let path = default_path()?;
    match command {
        QueueCommand::Push(args) => push(&path, &args).await,
        QueueCommand::Drain(args) => drain_command(&path, &args).await,
        QueueCommand::Status => {
            let queue = Queue::open(&path).await?;
            let entries = queue.all().await?;
            queue.close().await;
            print!("{}", status::render(&path, &entries, unix_now()));
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Drop(args) => drop_entries(&path, &args).await,
    }
}

/// `larder queue drop`: removes the selected entries in one transaction.
async fn drop_entries(path: &Path, args: &DropArgs) -> Result<ExitCode, QueueError> {
    let queue = Queue::open(path).await?;
    let ids: Vec<i64> = queue
        .all()
        .await?
        .iter()
        .filter(|e| args.selects(e))
        .map(|e| e.id)
        .collect();
    queue.remove(&ids).await?;
    queue.close().await;
    eprintln!("dropped {} entries from {}", ids.len(), path.display());
    Ok(ExitCode::SUCCESS)
}

/// `larder queue push`: appends, in one transaction, and says so on
/// stderr (stdout of a post-build hook ends up in the build log).
async fn push(path: &Path, args: &QueuePushArgs) -> Result<ExitCode, QueueError> {
    let target = target(&args.cache)?;
    let nix = Nix::from_env()?;
    let paths = args
        .paths
        .iter()
        .map(|p| {
            nix.resolve_path(p)
                .map(|sp| sp.to_absolute(nix.store_dir()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let queue = Queue::open(path).await?;
    queue.enqueue(&target, &paths, unix_now()).await?;
    queue.close().await;
    eprintln!("queued {} paths for {target}", paths.len());
    Ok(ExitCode::SUCCESS)
}

/// `larder queue drain [--watch]`.
async fn drain_command(path: &Path, args: &DrainArgs) -> Result<ExitCode, QueueError> {
    let shutdown = Shutdown::install().map_err(QueueError::Signal)?;
    let queue = Queue::open(path).await?;
    let options = DrainOptions {
        jobs: usize::from(args.jobs),
    };
    let result = if args.watch {
        drain::watch(&queue, options, &shutdown).await
    } else {
        drain::once(&queue, options, &shutdown).await
    };
    queue.close().await;
    let report = result?;
    if args.watch {
        return Ok(ExitCode::SUCCESS);
    }
    println!("{report}");
    Ok(if report.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
