//! `larder login NAME ENDPOINT [TOKEN] [--set-default]`, and
//! `larder login --oidc NAME ENDPOINT` in CI ([`oidc`]).

pub mod oidc;

use crate::cli::LoginArgs;
use crate::config::{self, Config, ConfigError};
use crate::error::Error;

/// Records the server and reports what happened.
pub fn run(args: &LoginArgs) -> Result<String, ConfigError> {
    save(args, args.token.clone())
}

/// `--oidc`: reads the job's ID token, exchanges it, and records the server
/// with the minted token.
pub async fn run_oidc(args: &LoginArgs) -> Result<String, Error> {
    config::validate_endpoint(&args.endpoint)?;
    let env = |k: &str| std::env::var(k).ok();
    let source =
        oidc::IdTokenSource::pick(args.id_token_file.clone(), args.id_token_env.clone(), env)?;
    let audience = args
        .audience
        .clone()
        .unwrap_or_else(|| args.endpoint.trim_end_matches('/').to_owned());
    let id_token = source.read(&audience, env).await?;
    let minted = oidc::exchange(&args.endpoint, &id_token).await?;
    let mut message = save(args, Some(minted.token))?;
    let until = std::time::UNIX_EPOCH + std::time::Duration::from_secs(minted.expires_at);
    message.push_str(&format!(
        "\nLogged in as {} until {} with {}",
        minted.subject,
        humantime::format_rfc3339_seconds(until),
        minted.caches
    ));
    Ok(message)
}

fn save(args: &LoginArgs, token: Option<String>) -> Result<String, ConfigError> {
    let path = config::default_path()?;
    let mut config = Config::load(&path)?;
    let replaced = config.servers.contains_key(&args.name);
    let has_token = token.is_some();
    let is_default = config.login(&args.name, &args.endpoint, token, args.set_default)?;
    config.save(&path)?;
    let verb = if replaced { "Updated" } else { "Added" };
    let mut message = format!(
        "{verb} server {:?} ({}) in {}",
        args.name,
        args.endpoint,
        path.display()
    );
    if is_default {
        message.push_str("; it is the default server");
    }
    if !has_token {
        message
            .push_str("\nNo token given: commands will use $LARDER_TOKEN or $ATTIC_TOKEN if set.");
    }
    Ok(message)
}
