//! Picking the server a command talks to: `SERVER:` from the argument,
//! else the configuration's default, with its token resolved.

use crate::api::ApiClient;
use crate::config::{self, Config};
use crate::error::Error;

/// A server, ready to call.
#[derive(Debug)]
pub struct Session {
    /// Its name in the configuration.
    pub server: String,
    /// Its API.
    pub api: ApiClient,
    /// The token in use (for `larder use`, which hands it to Nix).
    pub token: Option<String>,
}

impl Session {
    /// Opens the server `name` (or the default) from the configuration.
    pub fn open(name: Option<&str>) -> Result<Self, Error> {
        let config = Config::load(&config::default_path()?)?;
        let (server, settings) = config.server(name)?;
        let token = settings.resolve_token(|var| std::env::var(var).ok())?;
        let api = ApiClient::new(&settings.endpoint, token.clone())?;
        Ok(Self {
            server: server.to_owned(),
            api,
            token,
        })
    }
}
