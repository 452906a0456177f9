//! `larder login NAME ENDPOINT [TOKEN] [--set-default]`.

use crate::cli::LoginArgs;
use crate::config::{self, Config, ConfigError};

/// Records the server and reports what happened.
pub fn run(args: &LoginArgs) -> Result<String, ConfigError> {
    let path = config::default_path()?;
    let mut config = Config::load(&path)?;
    let replaced = config.servers.contains_key(&args.name);
    let is_default = config.login(
        &args.name,
        &args.endpoint,
        args.token.clone(),
        args.set_default,
    )?;
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
    if args.token.is_none() {
        message
            .push_str("\nNo token given: commands will use $LARDER_TOKEN or $ATTIC_TOKEN if set.");
    }
    Ok(message)
}
