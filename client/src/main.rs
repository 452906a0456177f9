//! `larder`: the user's command-line client (docs/protocol.md, "`larder`").
//!
//! Each command lives in its own module; this file only parses the command
//! line, runs the command on a Tokio runtime, and turns the outcome into
//! output and an exit status (1 on any failure, 2 for usage errors).

mod api;
mod cache;
mod cache_ref;
mod cli;
mod config;
mod error;
mod files;
mod login;
mod nix;
mod pins;
mod push;
mod queue;
mod session;
mod use_cache;
mod watch_store;

use std::process::ExitCode;

use clap::Parser as _;

use cli::{CacheCommand, Cli, Command};
use error::Error;
use session::Session;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    match cli.command {
        Command::Login(args) if args.oidc => {
            println!("{}", login::run_oidc(&args).await?);
        }
        Command::Login(args) => {
            println!("{}", login::run(&args)?);
        }
        Command::Use(args) => {
            let session = Session::open(args.cache.server.as_deref())?;
            let targets = use_cache::Targets::from_env(args.system)?;
            let report = use_cache::run(
                &session.api,
                &args.cache.cache,
                session.token.as_deref(),
                &targets,
            )
            .await?;
            print_use_report(&args.cache.to_string(), &report, args.system);
        }
        Command::Push(args) => {
            let session = Session::open(args.cache.server.as_deref())?;
            let options = push::PushOptions {
                paths: args.paths,
                closure: !args.no_closure,
                stdin: args.stdin,
                jobs: usize::from(args.jobs),
                ignore_upstream_filter: args.ignore_upstream_cache_filter,
                replace: args.replace,
                whole_nars: args.whole_nars,
            };
            let summary = push::run(&session.api, &args.cache.cache, &options).await?;
            println!("{summary}");
            if summary.failed > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Cache(command) => run_cache(command).await?,
        Command::WatchStore(args) => return Ok(watch_store::run(args).await?),
        Command::Queue(command) => return Ok(queue::run(command).await?),
        Command::Pin(args) => {
            let session = Session::open(args.cache.server.as_deref())?;
            let path = pins::pin(&session.api, &args.cache.cache, &args.name, &args.path).await?;
            println!("Pinned {path} as {:?} in {}.", args.name, args.cache);
        }
        Command::Unpin(args) => {
            let session = Session::open(args.cache.server.as_deref())?;
            session
                .api
                .remove_pin(&args.cache.cache, &args.name)
                .await?;
            println!("Removed pin {:?} from {}.", args.name, args.cache);
        }
        Command::Pins(args) => {
            let session = Session::open(args.cache.server.as_deref())?;
            print!(
                "{}",
                pins::render(&session.api.list_pins(&args.cache.cache).await?)
            );
        }
        Command::Delete(args) => {
            let session = Session::open(args.cache.server.as_deref())?;
            let path = pins::delete(&session.api, &args.cache.cache, &args.path).await?;
            println!("Deleted {path} from {}.", args.cache);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_cache(command: CacheCommand) -> Result<(), Error> {
    match command {
        CacheCommand::Create(args) => {
            let body = cache::create_body(&args)?;
            let session = Session::open(args.cache.server.as_deref())?;
            session.api.create_cache(&args.cache.cache, &body).await?;
            let r = format!("{}:{}", session.server, args.cache.cache);
            println!("Created cache {r}.");
            println!(
                "Push to it with `larder push {r} PATH…`; configure Nix with `larder use {r}`."
            );
        }
        CacheCommand::Configure(args) => {
            let body = cache::configure_body(&args)?;
            let session = Session::open(args.cache.server.as_deref())?;
            session
                .api
                .configure_cache(&args.cache.cache, &body)
                .await?;
            println!("Configured cache {}:{}.", session.server, args.cache.cache);
            if args.regenerate_keypair && args.no_overlap {
                println!(
                    "Its signing key changed and the old key no longer signs: run `larder use` again where it is used."
                );
            } else if args.regenerate_keypair {
                println!(
                    "It has a new signing key; the old one keeps signing during the server's rotation overlap. Run `larder use` again where it is used."
                );
            }
        }
        CacheCommand::Info(args) => {
            let session = Session::open(args.cache.server.as_deref())?;
            let cfg = session.api.get_cache_config(&args.cache.cache).await?;
            print!("{}", cache::render_info(&args.cache.cache, &cfg));
        }
        CacheCommand::Destroy(args) => {
            let session = Session::open(args.cache.server.as_deref())?;
            if !args.no_confirm {
                cache::confirm_destroy(&args.cache.cache, &session.server)?;
            }
            session.api.destroy_cache(&args.cache.cache).await?;
            println!("Destroyed cache {}:{}.", session.server, args.cache.cache);
        }
        CacheCommand::List(args) => {
            let session = Session::open(args.server.as_deref())?;
            print!("{}", cache::list(&session.api).await?);
        }
    }
    Ok(())
}

fn print_use_report(cache: &str, report: &use_cache::Report, system: bool) {
    println!("Cache {cache}: substituter {}", report.substituter);
    for key in &report.public_keys {
        println!("  trusted public key {key}");
    }
    match &report.nix_conf_changed {
        Some(path) => println!("  updated {}", path.display()),
        None => println!("  nix.conf already up to date"),
    }
    if let Some(path) = &report.netrc_changed {
        println!("  wrote the token to {}", path.display());
    }
    if !system && report.nix_conf_changed.is_some() {
        println!(
            "Nix honours substituters in a user's nix.conf only for trusted users; otherwise run `larder use --system` as root."
        );
    }
}
